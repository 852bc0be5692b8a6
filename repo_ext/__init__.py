"""RePO (Replay-Enhanced Policy Optimization) for verl.

Layout:
- ``repo_ext.algorithm``: the algorithm as pure torch/numpy code (replay store, retrieval,
  advantages, loss, config). No verl, Ray or Hydra import.
- ``repo_ext.integration``: the one place where RePO touches verl (registries, trainer hook,
  checkpointing of the store).
- ``repo_ext.cpu``: running verl on a machine without an accelerator; independent of RePO.
- ``repo_ext.plugin``: the ``verl.plugins`` entry point.
"""

__version__ = "0.1.0"
