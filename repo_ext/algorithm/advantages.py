"""RePO group advantages: GRPO's per-prompt normalisation, with replayed rows in their own group.

A batch row is one response with one scalar score. Rows of the same prompt share a group key (a
stable prompt id, not verl's per-step uid). ``off_policy`` marks rows replayed from the store.

- ``split`` (the paper's choice): the on-policy rows of a prompt form one group and its off-policy
  rows another; each is normalised on its own.
- ``mixed`` (the paper's ablation): all rows of a prompt form one group.

Within a group of size >= 2: ``A = (r - mean) / (std + epsilon)`` with the unbiased std, or
``A = r - mean`` when ``norm_by_std`` is off.

Groups of size 1: a group without an off-policy row follows verl's GRPO exactly (mean 0, std 1,
so ``A = r / (1 + epsilon)`` or ``A = r``): with no replayed rows this module IS verl's
``compute_grpo_outcome_advantage``. A singleton group that holds an off-policy row gets ``A = 0``:
one stale response has no baseline to be compared with, and verl's rule would push it up or down
by its raw reward, i.e. reinforce an old sample just for being right. The store's gate
(``min_cache_to_replay``) normally keeps replay groups larger than one anyway.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

ADVANTAGE_MODES = ("split", "mixed")


def group_advantages(
    scores: torch.Tensor,
    group_keys: Sequence[Hashable],
    off_policy: torch.Tensor,
    *,
    mode: str,
    norm_by_std: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """Per-row advantages of a batch of on- and off-policy rows.

    Args:
        scores: (B,) float scalar reward per row.
        group_keys: B hashable prompt keys; rows with equal keys belong to the same prompt.
        off_policy: (B,) bool, True for rows replayed from the store.
        mode: ``"split"`` or ``"mixed"`` (see the module docstring).
        norm_by_std: divide by the group's unbiased std + epsilon.
        epsilon: added to the std before dividing (verl's GRPO default 1e-6; the reference uses 1e-4).

    Returns:
        (B,) advantages, same dtype as ``scores``, no gradient.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"advantage mode {mode!r} is invalid; valid modes are: {', '.join(ADVANTAGE_MODES)}")
    scores, off_policy = _check_rows(scores, group_keys, off_policy)
    off_list = off_policy.tolist()
    groups: dict[Hashable, list[int]] = {}
    for row, key in enumerate(group_keys):
        group = (key, off_list[row]) if mode == "split" else key
        groups.setdefault(group, []).append(row)

    with torch.no_grad():
        advantages = scores.detach().clone()
        for rows in groups.values():
            index = torch.tensor(rows, dtype=torch.long)
            values = advantages[index]
            if len(rows) == 1:
                if off_list[rows[0]]:
                    advantages[index] = 0.0
                    continue
                # verl's GRPO singleton rule, kept so that on-policy rows match verl bit for bit
                mean = torch.tensor(0.0)
                std = torch.tensor(1.0)
            else:
                mean = torch.mean(values)
                std = torch.std(values)
            if norm_by_std:
                advantages[index] = (values - mean) / (std + epsilon)
            else:
                advantages[index] = values - mean
    return advantages


def broadcast_to_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) row advantages -> (B, T) token advantages, zero on masked tokens (as verl's GRPO)."""
    if advantages.dim() != 1 or response_mask.dim() != 2 or advantages.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"expected advantages (B,) and response_mask (B, T), got {tuple(advantages.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    return advantages.unsqueeze(-1) * response_mask


def nonzero_advantage_group_fraction(
    advantages: torch.Tensor,
    group_keys: Sequence[Hashable],
    off_policy: torch.Tensor,
) -> dict[str, float]:
    """Fraction of groups in which at least one row has a non-zero advantage.

    Groups are counted per prompt key: ``on`` over the on-policy rows of each prompt, ``off`` over
    its off-policy rows, ``all`` over all its rows (a prompt counts when any of its rows, on or off,
    has a non-zero advantage). This is the "effective prompt" rate: GRPO learns nothing from a
    prompt whose advantages are all zero.

    Args:
        advantages: (B,) row advantages (e.g. from :func:`group_advantages`).
        group_keys: B prompt keys.
        off_policy: (B,) bool.

    Returns:
        ``{"on": f_on, "off": f_off, "all": f_all}``, each in [0, 1]; 0.0 where there is no
        group of that kind (e.g. ``off`` in a step without replay).
    """
    advantages, off_policy = _check_rows(advantages, group_keys, off_policy)
    nonzero = (advantages != 0).tolist()
    off_list = off_policy.tolist()
    by_kind: dict[str, dict[Hashable, bool]] = {"on": {}, "off": {}, "all": {}}
    for row, key in enumerate(group_keys):
        for kind in ("off" if off_list[row] else "on", "all"):
            by_kind[kind][key] = by_kind[kind].get(key, False) or nonzero[row]
    return {kind: (sum(flags.values()) / len(flags) if flags else 0.0) for kind, flags in by_kind.items()}


def _check_rows(
    values: torch.Tensor, group_keys: Sequence[Hashable], off_policy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"expected a (B,) tensor of per-row values, got {getattr(values, 'shape', type(values))}")
    off_policy = torch.as_tensor(off_policy)
    if off_policy.dtype != torch.bool or off_policy.shape != values.shape:
        raise ValueError(
            f"off_policy must be a bool tensor of shape {tuple(values.shape)}, "
            f"got dtype {off_policy.dtype} and shape {tuple(off_policy.shape)}"
        )
    if len(group_keys) != values.shape[0]:
        raise ValueError(f"group_keys has {len(group_keys)} entries but there are {values.shape[0]} rows")
    return values, off_policy
