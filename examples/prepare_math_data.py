"""Write train/test parquet files in verl's RL schema from the math sources of repo_ext.data.

Examples::

    # the demo's easy arithmetic (SmolLM2-135M gets mixed rewards on it)
    python examples/prepare_math_data.py --train arithmetic --test arithmetic_test \\
        --train-size 256 --test-size 64 --out data/arith

    # GSM8K, and MATH with MATH-500 / Minerva / MATH Level 5 as test sets
    python examples/prepare_math_data.py --train gsm8k_train --test gsm8k_test --out data/gsm8k
    python examples/prepare_math_data.py --train math_train \\
        --test math500 minerva math_level5 --test-size 128 --out data/math

Writes ``<out>/train.parquet`` and ``<out>/test.parquet`` (rows of several sources are
concatenated; each keeps its own ``data_source``), for ``data.train_files`` / ``data.val_files``.
Sizes apply per source; without a size, a file source gives all its rows.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from repo_ext.data import SOURCES, load_rows, write_parquet


def build_split(sources: list[str], size: int | None, seed: int) -> list[dict]:
    rows: list[dict] = []
    for source in sources:
        rows.extend(load_rows(source, limit=size, seed=seed))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="+", default=[], choices=SOURCES, metavar="SOURCE",
                        help=f"sources of train.parquet, from: {', '.join(SOURCES)}")
    parser.add_argument("--test", nargs="+", default=[], choices=SOURCES, metavar="SOURCE",
                        help="sources of test.parquet (same choices)")
    parser.add_argument("--train-size", type=int, default=None, help="rows per train source (default: all)")
    parser.add_argument("--test-size", type=int, default=None, help="rows per test source (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="picks subsets / the arithmetic stream")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    if not args.train and not args.test:
        parser.error("give --train and/or --test sources")

    for name, sources, size in (("train", args.train, args.train_size), ("test", args.test, args.test_size)):
        if not sources:
            continue
        generated = [source for source in sources if source.startswith("arithmetic")]
        if generated and size is None:
            parser.error(f"--{name} {' '.join(generated)} is generated without end: give --{name}-size N")
        try:
            rows = build_split(sources, size, args.seed)
        except ValueError as error:
            parser.error(f"--{name}: {error}")
        path = write_parquet(rows, args.out / f"{name}.parquet")
        counts = ", ".join(f"{source} {count}" for source, count in Counter(r["data_source"] for r in rows).items())
        print(f"{path}: {len(rows)} rows ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
