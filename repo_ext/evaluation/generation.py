"""Sampling n answers per prompt: a transformers backend (CPU or one GPU) and a vLLM backend (GPUs).

Both take prompts as token ids (the chat template is applied once, by the caller, with the model's
own tokenizer) so the two backends see exactly the same prompt tokens.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

__all__ = ["SamplingSettings", "Completion", "Generator", "HFGenerator", "VLLMGenerator", "DTYPES", "resolve_dtype"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; the defaults are the paper's evaluation decoding.

    ``temperature == 0`` means greedy decoding (then ``n`` must be 1); ``top_k <= 0`` and
    ``top_p == 1`` switch those filters off.
    """

    n: int = 1
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1 (samples per problem), got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"--n {self.n} with --temperature 0: greedy decoding gives {self.n} identical samples; "
                f"use --n 1 or a temperature > 0"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    """One sampled answer: decoded text (special tokens removed), generated token count, and
    whether it stopped at ``max_new_tokens`` instead of an end-of-sequence token."""

    text: str
    num_tokens: int
    truncated: bool


class Generator(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """One list of ``settings.n`` completions per prompt, in the order of ``prompts``."""


def resolve_dtype(dtype: str, device: str):
    """The torch dtype to load the weights in (``"auto"``: as stored), for ``--dtype`` on ``device``.

    ``"auto"`` on a CPU is float32, whatever the folder stores: CPUs without bfloat16 matrix units
    generate 6-7x slower in bfloat16 (measured here, SmolLM2-135M: 7 tokens/s bfloat16 against
    48 float32), and verl's model merger writes bfloat16, so a merged checkpoint would otherwise
    be evaluated in bfloat16 while the training rollout (``hf_cpu``) runs float32.
    """
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; use one of {DTYPES}")
    if dtype == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else "auto"
    return getattr(torch, dtype)


class HFGenerator:
    """Batched ``transformers`` sampling.

    Prompts are sorted by length (longest first) so a batch holds similar lengths and little
    padding, left-padded, and sampled ``n`` times each with ``num_return_sequences``.
    ``batch_size`` counts sequences: a batch holds ``max(1, batch_size // n)`` prompts.
    Progress (samples done, rate, ETA) goes to stderr. ``threads`` sets torch's intra-op
    threads (default: torch's choice, one per core).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        batch_size: int = 32,
        device: str = "cpu",
        threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be >= 1, got {threads}")
            # On a shared CPU, more OpenMP threads than free cores spin against each other:
            # measured here (2 cores, other jobs running) 4 tokens/s with 2 threads, 30 with 1.
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=resolve_dtype(dtype, device), attn_implementation="sdpa"
        ).to(device)
        self.model.eval()
        self.eos_token_ids = self._eos_token_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    def _eos_token_ids(self) -> list[int]:
        """Every id that ends an answer: the generation config's and the tokenizer's EOS."""
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        for value in configured if isinstance(configured, (list, tuple)) else [configured]:
            if value is not None and value not in ids:
                ids.append(int(value))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(int(self.tokenizer.eos_token_id))
        if not ids:
            raise ValueError("the model has no end-of-sequence token (generation_config and tokenizer); cannot stop")
        return ids

    def _generation_config(self, settings: SamplingSettings):
        from transformers import GenerationConfig

        common = dict(
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=settings.n,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )
        if settings.temperature == 0:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=max(settings.top_k, 0),  # transformers: top_k=0 disables the filter
            **common,
        )

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[list[Completion]]:
        import torch
        from tqdm import tqdm

        torch.manual_seed(settings.seed)
        generation_config = self._generation_config(settings)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        per_batch = max(1, self.batch_size // settings.n)
        results: list[list[Completion] | None] = [None] * len(prompts)
        eos = torch.tensor(self.eos_token_ids)
        with tqdm(total=len(prompts) * settings.n, unit="sample", file=sys.stderr, mininterval=2.0) as bar:
            for start in range(0, len(order), per_batch):
                batch = order[start : start + per_batch]
                width = max(len(prompts[i]) for i in batch)
                input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids = torch.as_tensor(prompts[i], dtype=torch.long)
                    input_ids[row, width - len(ids) :] = ids
                    attention_mask[row, width - len(ids) :] = 1
                with torch.no_grad():
                    output = self.model.generate(
                        input_ids=input_ids.to(self.device),
                        attention_mask=attention_mask.to(self.device),
                        generation_config=generation_config,
                    )
                generated = output[:, width:].cpu()
                for row, i in enumerate(batch):
                    samples = []
                    for j in range(settings.n):
                        tokens = generated[row * settings.n + j]
                        stops = torch.isin(tokens, eos).nonzero()
                        if len(stops):
                            end = int(stops[0])
                            samples.append(self._completion(tokens[:end], end + 1, truncated=False))
                        else:
                            samples.append(self._completion(tokens, len(tokens), truncated=True))
                    results[i] = samples
                bar.update(len(batch) * settings.n)
        return results  # type: ignore[return-value]

    def _completion(self, tokens, num_tokens: int, truncated: bool) -> Completion:
        text = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Completion(text=text, num_tokens=num_tokens, truncated=truncated)


class VLLMGenerator:
    """vLLM offline engine (``vllm.LLM``) on GPUs: the vLLM that ``pip install 'repo-ext[gpu]'``
    brings (verl 0.9.1's pin, vllm 0.24.0). Imported lazily; never run on the CPU-only machines
    this project is developed on."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
    ):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                "--backend vllm needs vLLM on a GPU machine: pip install 'repo-ext[gpu]' "
                "(verl[vllm]==0.9.1); on a CPU machine use --backend hf"
            ) from error
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r} is not supported; use one of {DTYPES}")
        self.llm = LLM(
            model=str(model_dir),
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k if settings.top_k > 0 else -1,  # vLLM: -1 disables top-k
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
        )
        started = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], params, use_tqdm=True
        )
        print(f"vLLM: {len(prompts)} prompts x {settings.n} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return [
            [
                Completion(text=sample.text, num_tokens=len(sample.token_ids), truncated=sample.finish_reason == "length")
                for sample in request.outputs
            ]
            for request in outputs
        ]
