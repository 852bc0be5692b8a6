"""Batched token-in/token-out generation with HF transformers ``generate``, with per-token log-probs.

No Ray, no verl: :class:`HFBatchGenerator` takes a list of :class:`GenerationRequest` and runs
them as few ``generate`` calls as their sampling settings allow (one when they share them).
The Ray server in ``repo_ext.cpu.hf_rollout`` feeds it the requests that arrive concurrently.

Log-probs. verl 0.9.1 asks vLLM for ``logprobs_mode=processed_logprobs`` (rollout.yaml): the
log-probability of each sampled token under the distribution it was sampled from, i.e. after
temperature, top-k and top-p (tokens outside the top-k / top-p set get probability 0 and the
rest is renormalised). Here temperature, top-k and top-p are applied by HF's own warpers
(``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``, in HF's order) inside
one logits processor, :class:`_SampledTokenLogProbs`, which also keeps the log-softmax of the
result for the token sampled from it. (``output_scores=True`` would give the same numbers but
holds a [batch, vocab] tensor for every generated position.)
With top-k and top-p disabled it equals what verl's actor recomputes,
``log_softmax(logits / temperature)`` (``verl/workers/engine/fsdp/transformer_impl.py``).
``logprobs_mode=raw_logprobs`` gives ``log_softmax(logits)`` of the unprocessed model instead.
Greedy decoding (temperature 0) applies no temperature: its log-probs are those of the raw model.

Seeded sampling. Every request samples from its own ``torch.Generator`` (seeded with
``GenerationRequest.seed``, or from torch's global RNG when that is None): at each position a row
draws one uniform number from its generator and takes the token where it falls in the row's
cumulative sampling distribution (:func:`sample_rows`). A row's tokens therefore depend on its
own prompt, seed and logits only, not on which other requests share its ``generate`` call (HF's
own ``do_sample`` would draw all rows from one global stream). Batched logits can differ from
unbatched ones in the last float bits (padding, matmul blocking); that flips a sampled token only
when a uniform falls within that rounding of a distribution boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch

__all__ = [
    "GenerationRequest",
    "sample_rows",
    "GenerationResult",
    "SamplingSettings",
    "HFBatchGenerator",
    "parse_sampling_params",
    "LOGPROBS_MODES",
]

LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")

# keys of verl's agent-loop sampling_params this backend understands (agent_loop.py builds
# temperature/top_p/top_k/repetition_penalty/logprobs; max_tokens comes from partial rollout)
_KNOWN_SAMPLING_KEYS = {
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "logprobs",
    "max_tokens",
    "max_new_tokens",
    "ignore_eos",
}


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings shared by the requests of one ``generate`` call.

    temperature 0 means greedy; top_k <= 0 and top_p >= 1 mean "off".
    """

    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"sampling temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"sampling repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationRequest:
    """One prompt. ``max_tokens`` >= 1 new tokens at most; ``logprobs`` asks for per-token log-probs.

    ``seed`` seeds this request's own sampling stream (any int; reduced modulo 2**63); None draws a
    seed from torch's global RNG. Greedy requests ignore it. Two requests with the same prompt,
    settings and seed get the same tokens, in one batch or in two, in one server or in two: the
    caller gives each sample of a group its own seed (``repo_ext.cpu.hf_rollout.request_seed``).
    """

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    logprobs: bool = False
    seed: Optional[int] = None

    def __post_init__(self):
        if len(self.prompt_ids) == 0:
            raise ValueError("GenerationRequest.prompt_ids is empty: a prompt needs at least one token")
        if self.max_tokens < 1:
            raise ValueError(f"GenerationRequest.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class GenerationResult:
    """Response token ids (including the EOS token when one was produced) and their log-probs."""

    token_ids: list[int]
    log_probs: Optional[list[float]]
    finish_reason: str  # "stop" (EOS) or "length"


def parse_sampling_params(
    sampling_params: dict[str, Any], *, default_max_tokens: int, ignore_eos_default: bool = False
) -> tuple[SamplingSettings, int, bool]:
    """Turn verl's agent-loop ``sampling_params`` dict into (settings, max_tokens, want_logprobs).

    Raises ValueError naming any key this backend does not implement, rather than ignoring it.
    """
    unknown = set(sampling_params) - _KNOWN_SAMPLING_KEYS
    if unknown:
        raise ValueError(
            f"hf_cpu rollout: unsupported sampling parameter(s) {sorted(unknown)}; "
            f"supported: {sorted(_KNOWN_SAMPLING_KEYS)}"
        )
    if "max_tokens" in sampling_params:
        max_tokens = sampling_params["max_tokens"]
    elif "max_new_tokens" in sampling_params:
        max_tokens = sampling_params["max_new_tokens"]
    else:
        max_tokens = default_max_tokens
    top_k = sampling_params.get("top_k", -1)
    settings = SamplingSettings(
        temperature=float(sampling_params.get("temperature", 1.0)),
        top_k=-1 if top_k is None else int(top_k),
        top_p=float(sampling_params.get("top_p", 1.0)),
        repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
        ignore_eos=bool(sampling_params.get("ignore_eos", ignore_eos_default)),
    )
    return settings, int(max_tokens), bool(sampling_params.get("logprobs", False))


class HFBatchGenerator:
    """Generates for many requests at once with one HF ``generate`` call per distinct sampling setting.

    Args:
        model: a causal LM (its weights may be replaced in place with :meth:`load_weights`).
        eos_token_ids: generation stops at any of these; the EOS token is part of the response.
        pad_token_id: used to left-pad prompts; defaults to the first EOS id.
        logprobs_mode: "processed_logprobs" (verl's default, see module docstring) or "raw_logprobs".

    Example::

        >>> gen = HFBatchGenerator(model, eos_token_ids=[2], pad_token_id=0)
        >>> [r] = gen.generate([GenerationRequest(prompt_ids=[1, 5, 7], max_tokens=8, logprobs=True)])
        >>> len(r.token_ids) == len(r.log_probs) <= 8
        True
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_ids: Iterable[int],
        pad_token_id: Optional[int] = None,
        logprobs_mode: str = "processed_logprobs",
    ):
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"hf_cpu rollout: logprobs_mode={logprobs_mode!r} is not supported; use one of {LOGPROBS_MODES}"
            )
        self.model = model
        self.eos_token_ids = sorted({int(t) for t in eos_token_ids})
        if not self.eos_token_ids:
            raise ValueError("HFBatchGenerator needs at least one EOS token id (from the tokenizer or generation config)")
        self.pad_token_id = self.eos_token_ids[0] if pad_token_id is None else int(pad_token_id)
        self.logprobs_mode = logprobs_mode
        self.device = next(model.parameters()).device
        # parameters whose storage release_weights freed, with their shapes: a weight sync must refill all
        self._released: dict[int, tuple[torch.nn.Parameter, torch.Size]] = {}
        self._unfilled: set[int] = set()

    @property
    def weights_missing(self) -> int:
        """Parameters without weights: released by :meth:`release_weights` and not loaded since."""
        return len(self._released) + len(self._unfilled)

    @torch.no_grad()
    def release_weights(self) -> int:
        """Free every parameter's storage (verl's rollout ``sleep``); returns the bytes freed.

        The parameters stay registered in the model (a tied ``lm_head`` stays tied); the next
        :meth:`load_weights` allocates them again, and :meth:`generate` refuses to run until every
        one of them has been loaded.
        """
        freed = 0
        for param in self.model.parameters():  # unique parameters: a tied weight once
            if id(param) in self._released:
                continue
            self._released[id(param)] = (param, param.shape)
            self._unfilled.discard(id(param))
            freed += param.numel() * param.element_size()
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        return freed

    def _reallocate_released(self) -> None:
        for key, (param, shape) in self._released.items():
            param.data = torch.empty(shape, dtype=param.dtype, device=param.device)
            self._unfilled.add(key)
        self._released.clear()

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors into the model's parameters/buffers by name; returns how many were copied.

        Names are HF state-dict names. A tied ``lm_head.weight`` that shares storage with the
        embedding is filled through the embedding.
        """
        if self._released:
            self._reallocate_released()
        state = self.model.state_dict(keep_vars=True)
        copied = 0
        unknown = []
        for name, tensor in named_tensors:
            target = state.get(name)
            if target is None:
                unknown.append(name)
                continue
            if target.shape != tensor.shape:
                raise ValueError(
                    f"hf_cpu rollout: weight {name!r} has shape {tuple(tensor.shape)}, "
                    f"the rollout model expects {tuple(target.shape)}"
                )
            target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))
            self._unfilled.discard(id(target))
            copied += 1
        if unknown:
            raise KeyError(f"hf_cpu rollout: weights not in the rollout model: {unknown[:10]} ({len(unknown)} in all)")
        return copied

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Results in the order of ``requests``."""
        if self.weights_missing:
            raise RuntimeError(
                f"hf_cpu rollout: {self.weights_missing} parameters have no weights: they were released (the "
                "rollout's sleep) and the weight sync since did not load them; verl syncs the full weights "
                "before every generation (checkpoint_engine.backend=naive)"
            )
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        groups: dict[SamplingSettings, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.sampling, []).append(i)
        for settings, indices in groups.items():
            batch = [requests[i] for i in indices]
            for i, result in zip(indices, self._generate_group(batch, settings), strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _generation_config(self, settings: SamplingSettings, max_new_tokens: int):
        from transformers import GenerationConfig

        # An explicit, complete config: the model's own generation_config (e.g. HF's default
        # top_k=50) must not leak into the sampling distribution. Temperature/top-k/top-p are off
        # here because _SampledTokenLogProbs applies them, and it also samples (per-row
        # generators): it hands generate a distribution with all mass on the drawn token, so
        # generate's own decoding is greedy.
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_token_id,
            eos_token_id=None if settings.ignore_eos else list(self.eos_token_ids),
            repetition_penalty=settings.repetition_penalty,
            do_sample=False,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
        )

    @torch.no_grad()
    def _generate_group(self, batch: list[GenerationRequest], settings: SamplingSettings) -> list[GenerationResult]:
        from transformers import LogitsProcessorList

        max_new_tokens = max(r.max_tokens for r in batch)
        prompt_len = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), prompt_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), prompt_len), dtype=torch.long)
        for row, request in enumerate(batch):  # left padding: every prompt ends at the same column
            n = len(request.prompt_ids)
            input_ids[row, prompt_len - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            attention_mask[row, prompt_len - n :] = 1

        generators = None
        if not settings.greedy:
            generators = [_row_generator(request.seed) for request in batch]
        sampler = _SampledTokenLogProbs(settings, raw=self.logprobs_mode == "raw_logprobs", generators=generators)
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=self._generation_config(settings, max_new_tokens),
            logits_processor=LogitsProcessorList([sampler]),
        )
        new_tokens = sequences[:, prompt_len:].cpu()
        token_log_probs = sampler.finish(sequences).cpu()  # [B, generated]

        eos = set(self.eos_token_ids)
        results = []
        for row, request in enumerate(batch):
            tokens = new_tokens[row].tolist()[: request.max_tokens]
            finish_reason = "length"
            if not settings.ignore_eos:
                for pos, token in enumerate(tokens):
                    if token in eos:
                        tokens = tokens[: pos + 1]
                        finish_reason = "stop"
                        break
            log_probs = token_log_probs[row, : len(tokens)].tolist() if request.logprobs else None
            results.append(GenerationResult(token_ids=tokens, log_probs=log_probs, finish_reason=finish_reason))
        return results


_SEED_MODULUS = 2**63


def _row_generator(seed: Optional[int]) -> torch.Generator:
    if seed is None:
        seed = int(torch.randint(0, _SEED_MODULUS - 1, ()).item())
    return torch.Generator().manual_seed(int(seed) % _SEED_MODULUS)


def sample_rows(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row from ``softmax(scores)``, row i by inverse CDF with one uniform from ``generators[i]``.

    Args:
        scores: [batch, vocab] logits of the sampling distribution (-inf = excluded token).
        generators: one CPU generator per row; each call advances every generator by one draw.

    Returns:
        [batch] long tensor of token ids. Row i's token depends only on ``scores[i]`` and
        ``generators[i]``: the smallest id whose cumulative probability (float64) exceeds
        u * total, u ~ U[0, 1); tokens of probability 0 are never chosen.
    """
    if scores.dim() != 2 or len(generators) != scores.shape[0]:
        raise ValueError(
            f"sample_rows: scores must be [batch, vocab] with one generator per row; got scores of shape "
            f"{tuple(scores.shape)} and {len(generators)} generators"
        )
    cdf = torch.softmax(scores.detach().to("cpu", torch.float64), dim=-1).cumsum(dim=-1)
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    return tokens.clamp_(max=scores.shape[-1] - 1).to(scores.device)


class _SampledTokenLogProbs:
    """HF logits processor: applies temperature, top-k, top-p (HF's warpers, HF's order), samples
    each row with its own generator (:func:`sample_rows`) and records, for every generated
    position, the log-probability of the sampled token under the resulting distribution (or under
    the unprocessed one, with ``raw``). Without generators (greedy) it returns the processed
    scores, whose argmax generate then takes.

    ``generate`` calls it once per position before sampling; the token sampled at position t is
    the last column of ``input_ids`` at call t + 1 (and of the final sequences for the last one),
    so only one [batch, vocab] row of log-probs is kept at a time.
    """

    def __init__(self, settings: SamplingSettings, raw: bool, generators: Optional[list[torch.Generator]]):
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.warpers = []
        if not settings.greedy:  # greedy decoding takes the argmax of the unwarped scores
            if settings.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k > 0:
                self.warpers.append(TopKLogitsWarper(top_k=settings.top_k))
            if settings.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=settings.top_p))
        self.raw = raw
        if not settings.greedy and generators is None:
            raise ValueError("_SampledTokenLogProbs: sampling (temperature > 0) needs one generator per row")
        self.generators = None if settings.greedy else generators
        self._previous: Optional[torch.Tensor] = None
        self._chosen: list[torch.Tensor] = []

    def _record(self, sampled: torch.Tensor) -> None:
        if self._previous is not None:
            self._chosen.append(self._previous.gather(1, sampled[:, None]).squeeze(1))
            self._previous = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._record(input_ids[:, -1])
        processed = scores
        for warper in self.warpers:
            processed = warper(input_ids, processed)
        self._previous = torch.log_softmax((scores if self.raw else processed).float(), dim=-1)
        if self.generators is None:
            return processed
        chosen = sample_rows(processed, self.generators)
        point_mass = torch.full_like(processed, -math.inf)
        return point_mass.scatter_(1, chosen[:, None], 0.0)

    def finish(self, sequences: torch.LongTensor) -> torch.Tensor:
        """[batch, generated] log-probs of the generated tokens; call once after ``generate``."""
        self._record(sequences[:, -1])
        if not self._chosen:
            return torch.zeros((sequences.shape[0], 0))
        return torch.stack(self._chosen, dim=1)
