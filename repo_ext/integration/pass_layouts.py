"""The data-parallel layout of every pass over a RePO batch, each from its own worker group.

A RePO batch (on-policy + replayed + padding rows) goes through up to three passes, each split by
verl over the data-parallel ranks of the worker group and mesh that runs it
(verl/workers/engine_workers.py: the ``@register(...mesh_name=...)`` of each method):

- ``update``: ``actor_rollout_wg.update_actor``, mesh ``actor``;
- ``old_log_prob``: ``actor_rollout_wg.compute_log_prob``, mesh ``actor``;
- ``ref``: ``ref_policy_wg.compute_ref_log_prob``, mesh ``ref`` (or the actor's
  ``compute_log_prob``, mesh ``actor``, when the reference is the actor without its LoRA adapter).

The data-parallel size of a mesh is ``world size / (Ulysses x other model-parallel sizes)`` of
that worker group, so a reference model with another Ulysses size than the actor splits the same
batch over a different number of ranks. Every pass needs its per-rank rows to be a whole number of
its micro-batches (``batch_layout``), so a batch must be a multiple of ``dp x micro-batch size`` of
every pass, each with its own dp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from repo_ext.integration.batch_layout import row_multiple


@dataclass(frozen=True)
class PassLayout:
    """One pass over the batch: its name, data-parallel size and per-rank micro-batch size
    (None: dynamic batch size, no multiple imposed beyond dp)."""

    name: str
    dp_size: int
    micro_batch_size: int | None


def worker_group_dp_size(worker_group: Any, mesh: str) -> int:
    """Data-parallel size of ``worker_group`` on ``mesh``, looked up as verl's dispatch does
    (verl/single_controller/base/decorator.py ``dispatch_lazy_compute_data_proto``: the dp rank of
    every worker, cached in ``_dispatch_info``)."""
    if mesh not in worker_group._dispatch_info:
        worker_group._dispatch_info[mesh] = worker_group._query_dispatch_info(mesh)
    return max(worker_group._dispatch_info[mesh]) + 1


def pass_layouts(
    *,
    actor_wg: Any,
    ref_wg: Any | None,
    ref_in_actor: bool,
    micro_batch_sizes: Mapping[str, int | None],
) -> list[PassLayout]:
    """The layout of each pass (``update``, ``old_log_prob`` and, with a reference model, ``ref``).

    Args:
        actor_wg: the actor (rollout/ref) worker group.
        ref_wg: the reference worker group; None when no reference model runs.
        ref_in_actor: the reference is the actor without its LoRA adapter (runs on mesh ``actor``).
        micro_batch_sizes: per-rank micro-batch size of each pass by name (None: dynamic).
    """
    actor_dp = worker_group_dp_size(actor_wg, "actor")
    layouts = [
        PassLayout("update", actor_dp, micro_batch_sizes.get("update")),
        PassLayout("old_log_prob", actor_dp, micro_batch_sizes.get("old_log_prob")),
    ]
    if ref_wg is not None:
        ref_dp = actor_dp if ref_in_actor else worker_group_dp_size(ref_wg, "ref")
        layouts.append(PassLayout("ref", ref_dp, micro_batch_sizes.get("ref")))
    return layouts


def rows_multiple(layouts: Iterable[PassLayout]) -> int:
    """Rows a batch (and each padded mini-batch) must be a multiple of for every pass in ``layouts``:
    the lcm over passes of ``dp_size x micro_batch_size``."""
    multiples = [row_multiple(layout.dp_size, [layout.micro_batch_size]) for layout in layouts]
    if not multiples:
        raise ValueError("rows_multiple needs at least one pass layout")
    return math.lcm(*multiples)
