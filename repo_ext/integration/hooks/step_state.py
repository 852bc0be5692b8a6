"""What one RePO training step knows about its rows, shared by the hooks of that step (driver)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class StepState:
    """What one training step knows about its rows; a fresh one per ``_step_once``.

    Attributes:
        on_keys, off_keys: TransferQueue keys of the on-policy rows and of the replayed rows.
        prompt_key_of: TQ key (either side) -> the store's prompt key.
        off_behaviour: replayed TQ key -> its stored behaviour log-probs (L,).
        mini_batch_rows: rows of one optimizer mini-batch (all ranks) when replay enlarged it, else None.
        metrics: the step's ``repo/*`` metrics gathered by the hooks.
        injected: whether the replayed rows were added already (``_balance_batch`` may run twice).
        store_seconds: time spent on the store this step (``timing_s/repo_store``).
    """

    on_keys: list[str] = field(default_factory=list)
    off_keys: list[str] = field(default_factory=list)
    prompt_key_of: dict[str, str] = field(default_factory=dict)
    off_behaviour: dict[str, torch.Tensor] = field(default_factory=dict)
    mini_batch_rows: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    injected: bool = False
    store_seconds: float = 0.0


def column_strings(values: Any) -> list[str]:
    """A TQ non-tensor column (NonTensorStack, or tensordict's LinkedList when read back) as strings."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    return [str(v) for v in values]


def is_bypass_mode(config: DictConfig) -> bool:
    """verl's rollout-correction bypass mode: old log-probs are the rollout's, no forward pass
    (the test verl's V1 trainer makes in ``_compute_old_log_prob`` and ``_compute_advantage``)."""
    algorithm = config.get("algorithm", None)
    rollout_corr = None if algorithm is None else algorithm.get("rollout_correction", None)
    return bool(rollout_corr is not None and rollout_corr.get("bypass_mode", False))
