"""Settings the RePO trainer cannot run with, left over from a copied verl script, stop the launch
itself: ``python -m verl.trainer.main_ppo algorithm=repo <override>`` exits non-zero with a message
naming the override to remove, in seconds, before Ray starts (the Hydra callback ``RePOLaunchCheck``).

Before, these were refused by the RePO trainer only, after Ray, the TaskRunner and the workers had
come up. The in-process cases are fast; the subprocess cases go through verl's real entry point
(about 10-20 s each, mostly imports).
"""

from __future__ import annotations

import pytest
from launch_config import SMALL_REPO_LAUNCH, compose_verl

from repo_ext.integration.config_checks import RePOLaunchCheck
from repo_ext.integration.trainer import validate_trainer_config
from repo_ext.integration.estimators import repo_config_from_algorithm

#: (override a copied script leaves, what the message must say)
LEFTOVERS = [
    ("algorithm.adv_estimator=grpo", "Remove the override algorithm.adv_estimator=grpo"),
    ("actor_rollout_ref.actor.policy_loss.loss_mode=gspo",  # verl's GSPO example
     "Remove the override actor_rollout_ref.actor.policy_loss.loss_mode=gspo"),
    ("algorithm.filter_groups.enable=true", "Remove the override algorithm.filter_groups.enable=True"),
    ("critic.enable=true", "Remove the override critic.enable=True"),
    ("distillation.enabled=true", "Remove the override distillation.enabled=True"),
    ("actor_rollout_ref.rollout.n=1", "actor_rollout_ref.rollout.n=1: RePO needs at least 2"),
    # verl's V1 trainer ignores loss_type (only its legacy trainer reads it): the run would be PPO-clip
    ("algorithm.rollout_correction.bypass_mode=true algorithm.rollout_correction.loss_type=reinforce",
     "Remove the override algorithm.rollout_correction.loss_type=reinforce"),
]


@pytest.mark.parametrize(("override", "message"), LEFTOVERS)
def test_the_launch_check_and_the_trainer_refuse_the_same(override, message):
    cfg = compose_verl(list(SMALL_REPO_LAUNCH) + override.split())
    for check in (
        lambda: RePOLaunchCheck().on_job_start(config=cfg),
        lambda: validate_trainer_config(cfg, repo_config_from_algorithm(cfg.algorithm)),
    ):
        with pytest.raises(ValueError) as info:
            check()
        assert message in str(info.value), (message, str(info.value))


def test_a_refusal_stops_hydra_which_swallows_callback_exceptions():
    """Hydra 1.3 turns an Exception raised by a callback into a warning and runs the job anyway
    (hydra/_internal/callbacks.py); the launch check therefore leaves Hydra as SystemExit."""
    from hydra._internal.callbacks import Callbacks

    cfg = compose_verl(list(SMALL_REPO_LAUNCH) + ["algorithm.adv_estimator=grpo"], hydra=True)
    assert "repo_launch_check" in cfg.hydra.callbacks  # registered by algorithm/repo.yaml
    with pytest.raises(SystemExit) as info:
        Callbacks(cfg).on_job_start(config=cfg, task_function=lambda job: None)
    assert "Remove the override algorithm.adv_estimator=grpo" in str(info.value.code)
    valid = compose_verl(list(SMALL_REPO_LAUNCH), hydra=True)
    Callbacks(valid).on_job_start(config=valid, task_function=lambda job: None)  # a valid launch goes on


def _launch(tmp_path, overrides):
    from repo_ext.cpu.tiny_run import run_main_ppo

    return run_main_ppo(
        [*SMALL_REPO_LAUNCH, *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],  # valid but for overrides
        timeout_s=180, log_path=tmp_path / "launch.log", check=False,
    )


def _assert_refused_before_ray(result, message):
    log = result.log()
    assert result.returncode != 0, log[-3000:]
    assert message in log, (message, log[-3000:])
    assert "ray init kwargs" not in log and "Started a local Ray instance" not in log, log[-3000:]
    assert result.seconds < 60, f"the refusal took {result.seconds:.0f} s: {log[-2000:]}"


# the three most common leftovers of verl's example scripts, through verl's real entry point
@pytest.mark.parametrize(("override", "message"), [LEFTOVERS[0], LEFTOVERS[1], LEFTOVERS[2]])
def test_leftover_overrides_stop_main_ppo_before_ray(tmp_path, override, message):
    _assert_refused_before_ray(_launch(tmp_path, [override]), message)


def test_resume_from_a_checkpoint_without_a_store_stops_main_ppo_before_ray(tmp_path):
    step = tmp_path / "ckpt" / "global_step_2"
    (step / "actor").mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("2")
    result = _launch(tmp_path, [f"trainer.default_local_dir={tmp_path / 'ckpt'}"])
    _assert_refused_before_ray(result, "algorithm.repo.missing_store_on_resume=empty")
