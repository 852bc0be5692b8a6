"""Seeded hf_cpu sampling: the seed of a request, a server's responses under different batching, and
the seeds of one prompt's n requests spread over two replicas (issue #23, finding 10).

The server runs in-process here (no Ray): ``HFRolloutServer`` is a plain class that verl's replica
wraps in ``ray.remote``.
"""

import asyncio
import hashlib
from collections import defaultdict

import pytest

from repo_ext.cpu.hf_rollout import SampleCounter, request_seed, sample_identity

PROMPTS = [[1, 87, 85, 262, 201], [1, 67, 85, 85, 260, 86, 263, 86, 201, 5, 9], [1, 40]]
SAMPLES = 3


def test_request_seed_is_the_hash_written_out():
    text = "42|3|det-5|prompt-abc|1"
    expected = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
    assert request_seed(42, 3, "det-5|prompt-abc", 1) == expected
    assert 0 <= expected < 2**63
    seeds = {request_seed(s, step, "x", k) for s in (1, 2) for step in (0, 1) for k in (0, 1)}
    assert len(seeds) == 8  # seed, step and occurrence each change it


def test_sample_identity_names_the_prompt_and_a_positional_request_id_only():
    digest = hashlib.blake2b(b"1,2,3", digest_size=16).hexdigest()
    assert sample_identity("det-7", [1, 2, 3]) == f"det-7|prompt-{digest}"
    assert sample_identity("0f3a9c", [1, 2, 3]) == f"|prompt-{digest}"  # verl's random uuid: ignored
    assert sample_identity("det-7", [1, 2]) != sample_identity("det-7", [1, 2, 3])


def _server(tiny_model_path, max_num_seqs: int, seed: int = 42, replica_rank: int = 0, sample_counter=None):
    from verl.workers.config import HFModelConfig, RolloutConfig

    from repo_ext.cpu.hf_rollout import HFRolloutServer

    rollout = RolloutConfig(
        name="hf_cpu",
        tensor_model_parallel_size=1,
        prompt_length=64,
        response_length=10,
        dtype="float32",
        seed=seed,
        max_num_seqs=max_num_seqs,
        engine_kwargs={"hf_cpu": {"batch_wait_ms": 20, "num_threads": 1}},
    )
    return HFRolloutServer(
        rollout, HFModelConfig(path=str(tiny_model_path)), replica_rank=replica_rank, sample_counter=sample_counter
    )


async def _one_step(server, step: int, order: list[int]) -> dict[int, list[tuple[int, ...]]]:
    """SAMPLES sampled requests per prompt, submitted concurrently in ``order``; responses per prompt."""
    await server.set_global_steps(step)
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    outputs = await asyncio.gather(
        *[server.generate(PROMPTS[p], params, request_id=f"r{i}") for i, p in enumerate(order)]
    )
    groups = defaultdict(list)
    for p, out in zip(order, outputs):
        groups[p].append(tuple(out.token_ids))
    return {p: sorted(g) for p, g in groups.items()}


def test_each_prompt_gets_the_same_responses_however_requests_are_batched(tiny_model_path):
    prompt_major = [p for p in range(len(PROMPTS)) for _ in range(SAMPLES)]
    interleaved = [p for _ in range(SAMPLES) for p in range(len(PROMPTS))]
    one_batch = _server(tiny_model_path, max_num_seqs=len(prompt_major))
    singles = _server(tiny_model_path, max_num_seqs=1)

    first = asyncio.run(_one_step(one_batch, step=0, order=prompt_major))
    second = asyncio.run(_one_step(singles, step=0, order=interleaved))
    assert list(one_batch.batch_sizes) == [len(prompt_major)]
    assert set(singles.batch_sizes) == {1}
    assert first == second
    # the n samples of a prompt are not copies of one another
    assert all(len(set(g)) > 1 for g in first.values())

    # the next step (new weights sync) and another rollout seed draw new samples
    assert asyncio.run(_one_step(one_batch, step=1, order=prompt_major)) != first
    other_seed = _server(tiny_model_path, max_num_seqs=len(prompt_major), seed=43)
    assert asyncio.run(_one_step(other_seed, step=0, order=prompt_major)) != first


def test_sample_counter_numbers_each_step_and_identity_and_forgets_old_steps():
    counter = SampleCounter(keep_steps=2)
    assert [counter.next(1, "a") for _ in range(3)] == [0, 1, 2]
    assert counter.next(1, "b") == 0 and counter.next(2, "a") == 0 and counter.next(None, "a") == 0
    # steps 1, 2, None seen: step 1 (the oldest) was dropped when None made a third
    assert counter.next(2, "a") == 1
    assert counter.next(1, "a") == 0
    with pytest.raises(ValueError, match="keep_steps must be >= 1, got 0"):
        SampleCounter(keep_steps=0)


def _seed_by_hand(run_seed: int, step: int, prompt: list[int], k: int) -> int:
    digest = hashlib.blake2b(",".join(map(str, prompt)).encode(), digest_size=16).hexdigest()
    text = f"{run_seed}|{step}||prompt-{digest}|{k}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _record_seeds(server, seeds: list[int]) -> None:
    generate = server.generator.generate

    def recording(requests):
        seeds.extend(r.seed for r in requests)
        return generate(requests)

    server.generator.generate = recording


async def _routed_step(servers, routing: list[int], prompt: list[int], step: int) -> list[tuple[int, ...]]:
    """One prompt's len(routing) sampled requests, request i sent to servers[routing[i]] (all concurrently)."""
    for server in servers:
        await server.set_global_steps(step)
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    outputs = await asyncio.gather(
        *[servers[r].generate(prompt, params, request_id=f"uuid-{i}") for i, r in enumerate(routing)]
    )
    return sorted(tuple(out.token_ids) for out in outputs)


def test_two_replicas_give_a_prompts_samples_distinct_seeds_whatever_the_routing(tiny_model_path):
    """verl's router spreads a prompt's n requests over the replicas; with one counter shared by the
    replicas the n seeds are the n seeds of the prompt's identity (k = 0..n-1, whoever serves them),
    so the samples differ and two runs routed differently give the same set of responses."""
    n, prompt, step = 4, PROMPTS[1], 3

    def run(routing):
        counter = SampleCounter()
        servers = [_server(tiny_model_path, max_num_seqs=n, replica_rank=r, sample_counter=counter) for r in (0, 1)]
        seeds = [[], []]
        for server, recorded in zip(servers, seeds):
            _record_seeds(server, recorded)
        responses = asyncio.run(_routed_step(servers, routing, prompt, step))
        return seeds, responses

    expected = {_seed_by_hand(42, step, prompt, k) for k in range(n)}
    assert len(expected) == n
    seeds, responses = run([0, 1, 0, 1])
    assert sorted(len(s) for s in seeds) == [2, 2]  # both replicas served the prompt
    assert set(seeds[0]) | set(seeds[1]) == expected
    assert len(set(responses)) == n  # no duplicated sample in the group

    # another routing (3 + 1) and fresh servers: the same seeds and the same responses
    seeds_again, responses_again = run([1, 1, 0, 1])
    assert sorted(len(s) for s in seeds_again) == [1, 3]
    assert set(seeds_again[0]) | set(seeds_again[1]) == expected
    assert responses_again == responses
