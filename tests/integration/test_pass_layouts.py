"""Row multiples from each worker group's own data-parallel layout (fake worker groups that answer
verl's dispatch-info query like verl's workers: the dp rank of each worker, per mesh)."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from repo_ext.integration.pass_layouts import PassLayout, pass_layouts, rows_multiple, worker_group_dp_size


class FakeWorkerGroup:
    """``world_size`` workers; ``sp`` consecutive workers share a dp rank (Ulysses groups)."""

    def __init__(self, world_size: int, sp: dict[str, int]):
        self.world_size, self.sp, self._dispatch_info, self.queries = world_size, sp, {}, []

    def _query_dispatch_info(self, mesh: str) -> list[int]:
        self.queries.append(mesh)
        return [rank // self.sp[mesh] for rank in range(self.world_size)]


def test_dp_size_from_the_dispatch_info_query_and_cached():
    wg = FakeWorkerGroup(8, {"actor": 2, "ref": 4})
    assert worker_group_dp_size(wg, "actor") == 4 and worker_group_dp_size(wg, "ref") == 2
    assert worker_group_dp_size(wg, "actor") == 4 and wg.queries == ["actor", "ref"]  # asked once per mesh


def test_reference_with_another_ulysses_size_sets_its_own_multiple():
    # 4 workers; actor Ulysses 2 -> dp 2, reference Ulysses 1 -> dp 4; every micro-batch 1 row
    actor, ref = FakeWorkerGroup(4, {"actor": 2}), FakeWorkerGroup(4, {"ref": 1})
    layouts = pass_layouts(
        actor_wg=actor, ref_wg=ref, ref_in_actor=False, micro_batch_sizes={"update": 1, "old_log_prob": 1, "ref": 1}
    )
    assert layouts == [PassLayout("update", 2, 1), PassLayout("old_log_prob", 2, 1), PassLayout("ref", 4, 1)]
    # by hand: lcm(2 x 1, 2 x 1, 4 x 1) = 4. The actor's dp alone (2) allows e.g. 6-row batches,
    # which verl cannot split over the reference's 4 ranks.
    assert rows_multiple(layouts) == 4


def test_multiple_is_the_lcm_of_every_pass():
    layouts = [PassLayout("update", 2, 3), PassLayout("old_log_prob", 2, 4), PassLayout("ref", 3, 2)]
    assert rows_multiple(layouts) == math.lcm(6, 8, 6) == 24
    # dynamic batch size (None): only the dp split remains
    assert rows_multiple([PassLayout("update", 2, None), PassLayout("ref", 3, None)]) == 6
    with pytest.raises(ValueError):
        rows_multiple([])


def test_reference_inside_the_actor_uses_the_actor_mesh_and_no_reference_adds_no_pass():
    actor = FakeWorkerGroup(4, {"actor": 1})
    layouts = pass_layouts(actor_wg=actor, ref_wg=actor, ref_in_actor=True, micro_batch_sizes={"ref": 2})
    assert layouts[-1] == PassLayout("ref", 4, 2) and actor.queries == ["actor"]
    assert [layout.name for layout in pass_layouts(actor_wg=actor, ref_wg=None, ref_in_actor=False,
                                                   micro_batch_sizes={})] == ["update", "old_log_prob"]


def test_the_trainer_pads_replay_batches_for_the_reference_layout():
    """RePOTrainer._get_required_batch_multiple with the layout above: 8 on-policy + 5 replayed rows in
    one mini-batch. The actor's dp alone (2) would pad to 14 rows, which the reference's 4 ranks
    cannot split; each pass's own dp pads to 16."""
    from repo_ext.integration.hooks.step_state import StepState as _StepState
    from repo_ext.integration.trainer import RePOTrainer

    trainer = object.__new__(RePOTrainer)
    trainer.config = OmegaConf.create(
        {
            "trainer": {"critic_warmup": 0},
            "critic": {"enable": False},
            "actor_rollout_ref": {
                "actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 1, "use_dynamic_bsz": False},
                "rollout": {"n": 2, "log_prob_micro_batch_size_per_gpu": 1, "log_prob_use_dynamic_bsz": False},
                "ref": {"log_prob_micro_batch_size_per_gpu": 1, "log_prob_use_dynamic_bsz": False},
            },
        }
    )
    trainer.use_critic, trainer.use_reference_policy, trainer.ref_in_actor, trainer.global_steps = False, True, False, 5
    trainer.actor_rollout_wg, trainer.ref_policy_wg = FakeWorkerGroup(4, {"actor": 2}), FakeWorkerGroup(4, {"ref": 1})
    trainer._step_state = _StepState(on_keys=[f"on{i}" for i in range(8)], off_keys=[f"off{i}" for i in range(5)])
    multiple = trainer._get_required_batch_multiple(dp_size=2)
    # one mini-batch (8 on-policy rows = ppo_mini_batch_size 4 x n 2) of ceil(13 / 4) * 4 = 16 rows
    assert multiple == 16 and trainer._step_state.mini_batch_rows == 16
