"""verl rollout backend ``hf_cpu``: a Ray server around HF ``generate``, for hosts without a GPU.

verl 0.9.1 registers only vllm/sglang/trtllm rollouts (``verl/workers/rollout/base.py``
``_ROLLOUT_REGISTRY``, ``verl/workers/rollout/replica.py`` ``RolloutReplicaRegistry``); its
``hf_rollout.py`` is not reachable from the trainer. This module implements the same three parts
as ``verl/workers/rollout/vllm_rollout``:

- :class:`HFRolloutServer` (Ray actor, one per replica): verl's agent loop calls
  ``generate(prompt_ids, sampling_params, request_id, ...) -> TokenOutput`` on it concurrently
  (``verl/workers/rollout/llm_server.py: LLMServerClient.generate``). Requests that arrive while a
  batch is running, or within ``batch_wait_ms`` of each other, are generated together in one
  ``generate`` call (:class:`repo_ext.cpu.hf_generation.HFBatchGenerator`).
- :class:`HFRolloutReplica` (``RolloutReplica``): starts the server next to the trainer workers.
- :class:`HFServerAdapter` (``BaseRollout``): lives in the actor worker (hybrid engine); verl calls
  its ``update_weights`` every step (``ActorRolloutRefWorker.update_weights`` in
  ``verl/workers/engine_workers.py``), and it ships the actor's full weights to the server.

Seeded sampling: each sampled request gets its own seed (:func:`request_seed`) from
``actor_rollout_ref.rollout.seed``, the step of the weights it is generated with (the
``global_steps`` of the latest weight sync) and the sample's place in that step: its prompt (token
ids) and how many sampled requests for the same prompt the step has already seen, counted over all
replicas of the rollout by one :class:`SampleCounter` (a Ray actor that every replica's server
asks). verl's router spreads a prompt's n requests over the replicas (least in-flight requests,
ties broken at random: ``verl/workers/rollout/router.py``), so a count per server would give the
first request on each replica the same seed and the group duplicated samples. Two runs with the
same weights and seed therefore give every prompt the same set of n responses, however the requests
are batched and whichever replica serves them. verl 0.9.1 does not tell a rollout server which of
a prompt's n samples a request is (the V1 trainer sends n identical requests; the row index it
assigns, ``priority``, is forwarded to vLLM only: ``LLMServerClient.generate`` in
``verl/workers/rollout/llm_server.py``), so which row of the group gets which response follows the
order in which the requests reach the counter. Where verl does name the row (``det-<row>``
request ids with ``actor_rollout_ref.rollout.full_determinism=True``, the row being unique in the
step's batch), the row is part of the seed and every row gets the same response in both runs.

Settings under ``actor_rollout_ref.rollout.engine_kwargs.hf_cpu``: ``num_threads`` (torch threads
for generation; default all cores: rollout and training alternate in verl's sync trainer) and
``batch_wait_ms`` (how long to keep collecting concurrent requests before a batch starts).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import time
from typing import Any, Generator, Optional

import ray
import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from repo_ext.cpu.hf_generation import GenerationRequest, HFBatchGenerator, parse_sampling_params
from repo_ext.cpu.malloc import keep_freed_blocks_in_heap, return_free_memory

__all__ = [
    "ROLLOUT_NAME",
    "HFRolloutServer",
    "HFRolloutReplica",
    "HFServerAdapter",
    "SampleCounter",
    "request_seed",
    "sample_counter_name",
    "sample_identity",
    "server_actor_name",
]

ROLLOUT_NAME = "hf_cpu"
_DEFAULT_BATCH_WAIT_MS = 200.0
# weights are sent to the server in buckets of about this size (the last tensor may overshoot)
_SYNC_BUCKET_BYTES = 64 * 1024**2


def server_actor_name(replica_rank: int, node_rank: int = 0, kind: str = "") -> str:
    """Ray actor name of a replica's server; the adapter in the trainer worker finds it by name."""
    return f"{ROLLOUT_NAME}_server{kind}_{replica_rank}_{node_rank}"


# verl's single-turn and tool agent loops name a request "det-<priority>" under
# rollout.full_determinism, priority being the row's index in the step's batch (agent_loop.py)
_POSITIONAL_REQUEST_ID = re.compile(r"det-\d+")


def sample_identity(request_id: str, prompt_ids: list[int]) -> str:
    """What names a sample within a step: its prompt's tokens, and verl's positional request id if any."""
    digest = hashlib.blake2b(",".join(map(str, prompt_ids)).encode(), digest_size=16).hexdigest()
    row = str(request_id) if _POSITIONAL_REQUEST_ID.fullmatch(str(request_id)) else ""
    return f"{row}|prompt-{digest}"


def request_seed(run_seed: int, weights_step: Optional[int], identity: str, occurrence: int) -> int:
    """Seed of one request's sampling stream: a 63-bit hash of (rollout seed, step of the weights,
    sample identity, how many sampled requests with that identity the step has seen before)."""
    text = f"{int(run_seed)}|{weights_step}|{identity}|{int(occurrence)}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class SampleCounter:
    """Numbers the sampled requests of each (step, sample identity), shared by a rollout's replicas.

    ``next(step, identity)`` returns 0, 1, 2, ... for successive calls with the same pair; the
    server turns that number into the request's seed (:func:`request_seed`). As a Ray actor (one per
    rollout, named by :func:`sample_counter_name`) its calls run one at a time, so no two requests
    of a step get the same number, whichever replica they reach. Counts are kept for the latest
    ``keep_steps`` distinct steps seen (a few hundred bytes per prompt and step); a request for an
    older step than those starts its count again.
    """

    def __init__(self, keep_steps: int = 16):
        if int(keep_steps) < 1:
            raise ValueError(f"SampleCounter: keep_steps must be >= 1, got {keep_steps!r}")
        self.keep_steps = int(keep_steps)
        self._counts: collections.OrderedDict[Optional[int], collections.Counter[str]] = collections.OrderedDict()

    def next(self, step: Optional[int], identity: str) -> int:
        counts = self._counts.get(step)
        if counts is None:
            counts = self._counts[step] = collections.Counter()
            while len(self._counts) > self.keep_steps:
                self._counts.popitem(last=False)
        occurrence = counts[identity]
        counts[identity] += 1
        return occurrence


def sample_counter_name(kind: str = "", name_suffix: str = "") -> str:
    """Ray actor name of the :class:`SampleCounter` that a rollout's replicas share."""
    return f"{ROLLOUT_NAME}_sample_counter{kind}{name_suffix}"


def _engine_kwargs(config: RolloutConfig) -> dict:
    kwargs = dict((config.engine_kwargs or {}).get(ROLLOUT_NAME) or {})
    unknown = set(kwargs) - {"num_threads", "batch_wait_ms"}
    if unknown:
        raise ValueError(
            f"actor_rollout_ref.rollout.engine_kwargs.{ROLLOUT_NAME}: unknown key(s) {sorted(unknown)}; "
            "known: num_threads, batch_wait_ms"
        )
    return kwargs


class _Pending:
    __slots__ = ("request", "future")

    def __init__(self, request: GenerationRequest, future: asyncio.Future):
        self.request = request
        self.future = future


class HFRolloutServer:
    """Token-in/token-out generation server on HF ``generate`` (run as a Ray actor).

    Implements the methods verl calls on a rollout server handle: ``generate``, ``wake_up``,
    ``sleep``, ``clear_kv_cache``, ``release_kv_cache``, ``resume_kv_cache``, ``set_global_steps``,
    ``abort_all_requests``, ``resume_generation``, ``wait_for_requests_to_drain``,
    ``start_profile``/``stop_profile``, plus ``update_weights`` for :class:`HFServerAdapter`.
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        replica_rank: int,
        sample_counter: Any = None,
    ):
        """``sample_counter``: the :class:`SampleCounter` shared with the rollout's other replicas,
        as a Ray actor handle or an in-process instance; None counts this server's requests alone
        (right for a single replica only: two servers would hand out the same seeds)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        engine_kwargs = _engine_kwargs(self.config)
        # generate reallocates its KV cache at every decoding step: keep those blocks in the heap
        # even where the run set a small MALLOC_MMAP_THRESHOLD_ (make demo; see repo_ext.cpu.malloc)
        keep_freed_blocks_in_heap()
        num_threads = engine_kwargs.get("num_threads") or os.cpu_count() or 1
        # Ray sets OMP_NUM_THREADS=1 in actors without CPUs; generation wants the cores.
        torch.set_num_threads(int(num_threads))
        self.batch_wait_s = float(engine_kwargs.get("batch_wait_ms", _DEFAULT_BATCH_WAIT_MS)) / 1000.0

        path = self.model_config.local_path
        dtype = getattr(torch, str(self.config.dtype).replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"actor_rollout_ref.rollout.dtype={self.config.dtype!r} is not a torch dtype name")
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=self.model_config.trust_remote_code
        )
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.model_config.trust_remote_code)
        eos_ids = set()
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        try:
            gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
        except OSError:  # no generation_config.json
            gen_eos = None
        if gen_eos is not None:
            eos_ids.update([gen_eos] if isinstance(gen_eos, int) else gen_eos)
        pad_id = tokenizer.pad_token_id
        self.generator = HFBatchGenerator(
            model, eos_token_ids=eos_ids, pad_token_id=pad_id, logprobs_mode=self.config.logprobs_mode
        )
        self.max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)

        self.global_steps: Optional[int] = None
        self._sync_copied = 0  # tensors loaded by the buckets of the weight sync in progress
        # numbers the sampled requests per (step, sample identity) (see request_seed)
        self._sample_counter = SampleCounter() if sample_counter is None else sample_counter
        self._queue: list[_Pending] = []
        self._new_request = asyncio.Event()
        self._model_lock = asyncio.Lock()
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._gate_open = asyncio.Event()
        self._gate_open.set()
        self._reject_when_closed = False
        self._batcher: Optional[asyncio.Task] = None
        # sizes of the latest generate calls, for tests and benchmarks
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)

    # ---------------------------------------------------------------- generation
    def _default_max_tokens(self, prompt_len: int) -> int:
        # same budget rule as verl's vLLMHttpServer.generate
        return min(self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len)

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise NotImplementedError("hf_cpu rollout generates from text token ids only; got multimodal data")
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"hf_cpu rollout: prompt of {len(prompt_ids)} tokens leaves no room within max_model_len "
                f"{self.max_model_len}"
            )
        settings, max_tokens, want_logprobs = parse_sampling_params(
            dict(sampling_params),
            default_max_tokens=self._default_max_tokens(len(prompt_ids)),
            ignore_eos_default=self.config.ignore_eos,
        )
        seed = None
        if not settings.greedy:
            step = self.global_steps  # read once: a weight sync may land while the counter answers
            identity = sample_identity(request_id, prompt_ids)
            if isinstance(self._sample_counter, SampleCounter):
                occurrence = self._sample_counter.next(step, identity)
            else:
                occurrence = await self._sample_counter.next.remote(step, identity)
            seed = request_seed(self.config.seed, step, identity, occurrence)
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            max_tokens=max(1, min(max_tokens, room)),
            sampling=settings,
            logprobs=want_logprobs,
            seed=seed,
        )
        if not self._gate_open.is_set():
            if self._reject_when_closed:
                return TokenOutput(token_ids=[], stop_reason="aborted", extra_fields={"global_steps": self.global_steps})
            await self._gate_open.wait()

        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        self._drained.clear()
        self._new_request.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        result = await future
        if result is None:  # aborted before its batch started
            return TokenOutput(token_ids=[], stop_reason="aborted", extra_fields={"global_steps": self.global_steps})
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _collect_batch(self) -> list[_Pending]:
        # keep collecting while requests keep arriving, at most max_num_seqs of them
        deadline = time.monotonic() + max(self.batch_wait_s * 50, 1.0)
        while len(self._queue) < self.config.max_num_seqs and time.monotonic() < deadline:
            self._new_request.clear()
            try:
                await asyncio.wait_for(self._new_request.wait(), timeout=self.batch_wait_s)
            except asyncio.TimeoutError:
                break
        batch, self._queue = self._queue[: self.config.max_num_seqs], self._queue[self.config.max_num_seqs :]
        return batch

    async def _run_batches(self) -> None:
        while self._queue:
            batch = await self._collect_batch()
            if not batch:  # abort_all_requests emptied the queue meanwhile
                break
            self._in_flight += len(batch)
            try:
                async with self._model_lock:
                    self.batch_sizes.append(len(batch))
                    start = time.monotonic()
                    results = await asyncio.to_thread(self.generator.generate, [p.request for p in batch])
                    seconds = time.monotonic() - start
                    new_tokens = sum(len(r.token_ids) for r in results)
                    # one line per generate call in verl's log: how the step's requests were batched
                    print(
                        f"hf_cpu rollout: {len(batch)} requests in one batch, {new_tokens} new tokens "
                        f"(longest {max(len(r.token_ids) for r in results)}), {seconds:.1f} s, "
                        f"{new_tokens / max(seconds, 1e-9):.1f} tokens/s, {torch.get_num_threads()} threads",
                        flush=True,
                    )
                for pending, result in zip(batch, results, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(result)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            finally:
                self._in_flight -= len(batch)
                if self._in_flight == 0 and not self._queue:
                    self._drained.set()

    # ---------------------------------------------------------------- weights
    async def update_weights(
        self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int] = None, last: bool = True
    ) -> int:
        """Replace model weights (HF names, full tensors); returns the number of tensors loaded.

        A sync may come in several calls (buckets, see :class:`HFServerAdapter`); only the one with
        ``last=True`` starts the new step and prints the sync's line.
        """
        async with self._model_lock:
            copied = await asyncio.to_thread(self.generator.load_weights, named_tensors.items())
            self._sync_copied += copied
            if not last:
                return copied
            copied, self._sync_copied = self._sync_copied, 0
            if self.generator.weights_missing:
                raise ValueError(
                    f"hf_cpu rollout: the weight sync for global_steps={global_steps} loaded {copied} tensors but "
                    f"{self.generator.weights_missing} parameters of the rollout model got none since sleep() "
                    "released them; the actor must send the full weights"
                )
            checksum = self._weights_checksum()
        if global_steps is not None:
            self._start_step(global_steps)
        # one line per sync, so a run's log shows that the rollout follows the actor
        print(
            f"[hf_cpu] replica {self.replica_rank}: loaded {copied} tensors for global_steps={global_steps}, "
            f"weights checksum {checksum!r}",
            flush=True,
        )
        return copied

    def _weights_checksum(self) -> float:
        return float(sum(p.detach().sum(dtype=torch.float64).item() for p in self.generator.model.parameters()))

    async def get_weights_checksum(self) -> Optional[float]:
        """Sum of all parameters (float64): lets a test see that the rollout's weights changed; None
        while :meth:`sleep` has released weights that no sync has brought back."""
        async with self._model_lock:
            return None if self.generator.weights_missing else self._weights_checksum()

    async def get_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)

    async def set_global_steps(self, global_steps: int):
        self._start_step(global_steps)

    def _start_step(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ---------------------------------------------------------------- lifecycle
    async def wake_up(self, tags: Optional[list[str]] = None):
        # weights come back with the next weight sync (verl's trainers sync after every sleep)
        return None

    async def sleep(self):
        """verl's trainers call this after every generation phase ("free weight and kv_cache device
        memory") and sync the full weights before the next one. The weights are freed here: while
        the actor trains, the rollout's copy of the model (0.5 GiB for a 135M model in fp32) is gone."""
        async with self._model_lock:
            freed = self.generator.release_weights()
            trimmed = return_free_memory()
        if freed:
            print(
                f"[hf_cpu] replica {self.replica_rank}: released {freed / 1024**2:.0f} MiB of weights until the "
                f"next weight sync{'' if trimmed else ' (malloc_trim returned nothing)'}",
                flush=True,
            )

    async def clear_kv_cache(self):
        return None  # HF generate keeps no cache between calls

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    async def wait_for_requests_to_drain(self):
        await self._drained.wait()

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Abort queued requests (they return ``stop_reason="aborted"``) and hold new ones until
        :meth:`resume_generation` (or reject them, with ``reject_request``). A batch already inside
        ``generate`` runs to completion."""
        self._gate_open.clear()
        self._reject_when_closed = reject_request
        aborted, self._queue = self._queue, []
        for pending in aborted:
            if not pending.future.done():
                pending.future.set_result(None)
        if self._in_flight == 0:
            self._drained.set()
        await self._drained.wait()
        return {"aborted_count": len(aborted), "request_ids": []}

    async def resume_generation(self):
        self._reject_when_closed = False
        self._gate_open.set()

    async def resume_engine_generation(self):
        return None

    async def open_submission_gate(self):
        await self.resume_generation()


class HFRolloutReplica(RolloutReplica):
    """One ``hf_cpu`` server per replica, placed on the node of the replica's first worker."""

    async def launch_servers(self):
        if self.nnodes != 1:
            raise ValueError(
                f"hf_cpu rollout runs on one node per replica; got a replica world size of {self.world_size} "
                f"over {self.nnodes} nodes. Set actor_rollout_ref.rollout.tensor_model_parallel_size=1."
            )
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        else:
            node_id = ray.get_runtime_context().get_node_id()
        kind = "_reward" if self.is_reward_model else "_teacher" if self.is_teacher_model else ""
        name = server_actor_name(self.replica_rank, 0, kind) + self.name_suffix
        # one counter for all replicas of this rollout: whichever replica launches first creates it
        counter = (
            ray.remote(SampleCounter)
            .options(name=sample_counter_name(kind, self.name_suffix), get_if_exists=True, num_cpus=0)
            .remote()
        )
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=name,
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
            )
            .remote(
                config=self.config,
                model_config=self.model_config,
                replica_rank=self.replica_rank,
                sample_counter=counter,
            )
        )
        await server.wake_up.remote()  # surfaces a failed __init__ here rather than at the first request
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}-replica-{self.replica_rank}{self.name_suffix}"


class HFServerAdapter(BaseRollout):
    """The rollout's side inside each trainer worker: forwards the actor's weights to the server.

    Every rank iterates the weight generator (for FSDP2 each full tensor is an all-gather, a
    collective); rank 0 of each replica collects the tensors on CPU and sends them to its server.
    """

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self._server = None
        self.sync_bucket_bytes = _SYNC_BUCKET_BYTES

    def _server_handle(self):
        if self.rollout_rank != 0:
            return None
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise ValueError(
                f"hf_cpu rollout receives full weights only (wire_format='named_tensors'), got {wire_format!r}; "
                "keep actor_rollout_ref.rollout.checkpoint_engine.backend=naive"
            )
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("hf_cpu rollout does not load LoRA adapters; set model.lora.merge=True")
        server = self._server_handle()
        # In buckets: one call with every tensor would hold a full copy of the weights here, in
        # Ray's object store and in the server at the same time (3 x 0.5 GiB for a 135M model in fp32).
        bucket, size = {}, 0
        for name, tensor in weights:  # every rank iterates: each full tensor is a collective
            if server is None:
                continue
            bucket[name] = tensor.detach().to("cpu").clone()
            size += bucket[name].nbytes
            if size >= self.sync_bucket_bytes:
                await server.update_weights.remote(bucket, global_steps=None, last=False)
                bucket, size = {}, 0
        if server is not None:
            await server.update_weights.remote(bucket, global_steps=global_steps, last=True)
