"""Evaluation on math benchmarks; the command line is ``python -m repo_ext.evaluation`` (:mod:`repo_ext.evaluation.cli`).

- :mod:`repo_ext.evaluation.metrics`: avg@n and the unbiased pass@k estimator.
- :mod:`repo_ext.evaluation.benchmarks`: built-in benchmarks and users' jsonl files as problems.
- :mod:`repo_ext.evaluation.checkpoint`: an HF folder or a verl checkpoint -> an HF folder.
- :mod:`repo_ext.evaluation.generation`: sampling with transformers (CPU) or vLLM (GPUs).
"""
