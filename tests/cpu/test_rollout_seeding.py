"""Seeded hf_cpu sampling: the seed of a request, and a server's responses under different batching.

The server runs in-process here (no Ray): ``HFRolloutServer`` is a plain class that verl's replica
wraps in ``ray.remote``.
"""

import asyncio
import hashlib
from collections import defaultdict

from repo_ext.cpu.hf_rollout import request_seed, sample_identity

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


def _server(tiny_model_path, max_num_seqs: int, seed: int = 42):
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
    return HFRolloutServer(rollout, HFModelConfig(path=str(tiny_model_path)), replica_rank=0)


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
