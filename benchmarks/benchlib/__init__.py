"""The RePO-vs-GRPO benchmark harness behind ``benchmarks/bench_repo_vs_grpo.py``, one job per module:

- ``settings``: arms, presets, command line;
- ``runs``: one arm's verl run (with an RSS/load sampler) and the held-out evaluation of its checkpoints;
- ``records``: per prompt-step, per step and per arm records, and the point ratios between arms;
- ``estimates``: 95% intervals (prompt-cluster and block bootstraps, paired held-out tests, AUC);
- ``reports``: Markdown, JSON and the console summary; ``plots``: the PNG; ``plan``: ``--dry-run``.

Statistics primitives are in ``benchmarks/confidence.py`` (imported as ``confidence``: the entry point
puts ``benchmarks/`` on ``sys.path``).
"""
