"""DeepMath-103K -> the paper's 1024 training prompts, in verl's parquet schema, from local files.

The paper's reference (src/build_training_dataset.py there) loads zwhe99/DeepMath-103K, shuffles
the train split with seed 42 and keeps the first 1024 rows; the prompt is the question alone as
one user message, and the answer is ``final_answer``. No hub is needed here: pass the dataset's
files that you have (the parquet shards ``data/train-*-of-*.parquet`` of the dataset repository,
or a jsonl export) with ``question`` and ``final_answer`` fields. Several files (or a folder) are
concatenated in sorted path order, which is the row order ``datasets.load_dataset`` gives the
shards, and the shuffle is ``numpy.random.default_rng(seed).permutation(rows)``, the permutation
``datasets.Dataset.shuffle(seed=seed)`` uses: the same 1024 prompts as the reference.

Writes to ``--out-dir``:

- ``deepmath_<num-prompts>.parquet`` (``deepmath_1024.parquet`` by default): the training prompts (data_source ``deepmath``; reward: math-verify on
  the last ``\\boxed{}`` via ``repo_ext.data.reward.compute_score``);
- ``math500.parquet``: MATH-500 in the same prompt style, the validation file of the run scripts.

Usage::

    python recipe/repo/prepare_deepmath.py --input ~/DeepMath-103K/data --out-dir ~/data/deepmath
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DATA_SOURCE = "deepmath"
VALIDATION_FILE = "math500.parquet"
REQUIRED_COLUMNS = ("question", "final_answer")
KEPT_COLUMNS = ("difficulty", "topic")  # copied into extra_info when present


def input_files(paths: list[Path]) -> list[Path]:
    """The data files named by ``--input``: files as given, folders expanded to their
    ``*.parquet`` / ``*.jsonl`` files; all in sorted path order."""
    files: list[Path] = []
    for path in paths:
        path = path.expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl"))
            if not found:
                raise FileNotFoundError(f"--input {path}: the folder holds no .parquet or .jsonl file")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in (".parquet", ".jsonl"):
                raise ValueError(f"--input {path}: expected a .parquet or .jsonl file")
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    return sorted(files)


def read_table(files: list[Path]):
    import pandas as pd

    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_json(f, lines=True) for f in files]
    table = pd.concat(frames, ignore_index=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"the input has no column(s) {missing} (found {list(table.columns)}); "
            f"DeepMath-103K rows have {list(REQUIRED_COLUMNS)}"
        )
    return table


def select_rows(num_rows: int, num_prompts: int, seed: int) -> list[int]:
    """Row positions of ``datasets.Dataset.shuffle(seed=seed).select(range(num_prompts))``."""
    import numpy as np

    if not 1 <= num_prompts <= num_rows:
        raise ValueError(f"--num-prompts {num_prompts}: must be in [1, {num_rows}] (rows in the input)")
    return [int(i) for i in np.random.default_rng(seed).permutation(num_rows)[:num_prompts]]


def _row(data_source: str, question: str, answer: str, index: int, split: str, prompt_style: str, extra: dict) -> dict:
    from repo_ext.data import make_row
    from repo_ext.evaluation.benchmarks import prompt_messages

    row = make_row(data_source, question, answer, index, split)
    row["prompt"] = list(prompt_messages(question, prompt_style))
    row["extra_info"].update(extra)
    return row


def deepmath_rows(table, positions: list[int], prompt_style: str) -> list[dict]:
    rows = []
    for position in positions:
        record = table.iloc[position]
        extra = {c: str(record[c]) for c in KEPT_COLUMNS if c in table.columns}
        rows.append(
            _row(DATA_SOURCE, str(record["question"]), str(record["final_answer"]), position, "train", prompt_style, extra)
        )
    return rows


def validation_rows(prompt_style: str) -> list[dict]:
    from repo_ext.data import load_rows

    return [
        _row(
            r["data_source"],
            r["extra_info"]["question"],
            r["reward_model"]["ground_truth"],
            r["extra_info"]["index"],
            "test",
            prompt_style,
            {},
        )
        for r in load_rows("math500")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="DeepMath-103K (local files) -> the paper's 1024 training prompts in verl's parquet schema",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input", type=Path, nargs="+", required=True, help="DeepMath-103K parquet/jsonl files or folders")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--num-prompts", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--prompt-style",
        choices=("raw", "instruction"),
        default="raw",
        help="raw: the question alone (the paper); instruction: + 'output the final answer within \\boxed{}'",
    )
    parser.add_argument("--skip-validation-file", action="store_true", help="do not write math500.parquet")
    args = parser.parse_args(argv)

    from repo_ext.data import write_parquet

    try:
        table = read_table(input_files(args.input))
        positions = select_rows(len(table), args.num_prompts, args.seed)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    train = write_parquet(deepmath_rows(table, positions, args.prompt_style), args.out_dir / f"deepmath_{args.num_prompts}.parquet")
    print(f"{len(positions)} of {len(table)} DeepMath rows (seed {args.seed}) -> {train}")
    if not args.skip_validation_file:
        validation = write_parquet(validation_rows(args.prompt_style), args.out_dir / VALIDATION_FILE)
        print(f"MATH-500 ({args.prompt_style} prompts) -> {validation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
