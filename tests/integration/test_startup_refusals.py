"""verl features RePO's replayed rows cannot take part in are refused at start-up, on configs composed
by Hydra as a launch does, with a message naming the setting, its value and what would work:
MoE router replay, KL in the reward, vision-language models, verl's experimental async entry
points; and ``trainer.v1.repo_sync.*`` settings apply instead of being ignored."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import verl
from launch_config import SMALL_REPO_LAUNCH, compose_verl
from omegaconf import OmegaConf

from repo_ext.integration import estimators
from repo_ext.integration.config_checks import (
    RePOLaunchCheck,
    check_text_only_model,
    repo_sync_trainer_settings,
)
from repo_ext.integration.entry_points import FULLY_ASYNC, ONE_STEP_OFF, SUPPORTED_ENTRY_POINT, experimental_entry_point
from repo_ext.integration.estimators import repo_config_from_algorithm
from repo_ext.integration.trainer import validate_trainer_config

VERL_DIR = os.path.dirname(verl.__file__)

VALID = list(SMALL_REPO_LAUNCH)
_compose = compose_verl


def _refusal(cfg):
    """The start-up error of both checkpoints: the launch check (Hydra callback) and the trainer."""
    messages = []
    for check in (
        lambda: RePOLaunchCheck().on_job_start(config=cfg),
        lambda: validate_trainer_config(cfg, repo_config_from_algorithm(cfg.algorithm)),
    ):
        with pytest.raises(ValueError) as info:
            check()
        messages.append(str(info.value))
    return messages


# ---------------------------------------------------------------- finding 7: KL in the reward


def test_kl_in_reward_is_refused():
    for message in _refusal(_compose(VALID + ["algorithm.use_kl_in_reward=True"])):
        for fragment in ("algorithm.use_kl_in_reward=True", "algorithm.repo.strategy=recent_k", "use_kl_loss=True",
                         "algorithm.repo.strategy=none"):
            assert fragment in message, (fragment, message)


def test_kl_in_reward_without_replay_is_plain_grpo_and_allowed():
    cfg = _compose(VALID + ["algorithm.use_kl_in_reward=True", "algorithm.repo.strategy=none"])
    validate_trainer_config(cfg, repo_config_from_algorithm(cfg.algorithm))
    RePOLaunchCheck().on_job_start(config=cfg)


# ---------------------------------------------------------------- finding 4: MoE router replay


@pytest.mark.parametrize("mode", ["R2", "R3"])
def test_router_replay_is_refused(mode):
    # verl's Megatron config (ppo_megatron_trainer) is where router replay lives
    cfg = _compose(VALID + [f"actor_rollout_ref.actor.megatron.router_replay.mode={mode}"], name="ppo_megatron_trainer")
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    for message in _refusal(cfg):
        for fragment in (f"actor_rollout_ref.actor.megatron.router_replay.mode={mode}", "routed_experts",
                         "router_replay.mode=disabled", "algorithm.repo.strategy=none"):
            assert fragment in message, (fragment, message)


def test_router_replay_disabled_passes():
    cfg = _compose(VALID, name="ppo_megatron_trainer")
    validate_trainer_config(cfg, repo_config_from_algorithm(cfg.algorithm))


# ---------------------------------------------------------------- finding 11: trainer.v1.repo_sync.*


def test_repo_sync_settings_apply_as_verls_sync_settings():
    cfg = _compose(VALID + ["+trainer.v1.repo_sync.parameter_sync_step=1", "+trainer.v1.repo_sync.my_sampler_knob=3"])
    assert repo_sync_trainer_settings(cfg) == {"parameter_sync_step": 1, "my_sampler_knob": 3}
    # repo_sync is laid over sync: the value the user wrote under the mode they selected wins
    cfg = _compose(VALID + ["+trainer.v1.sync.my_sampler_knob=1", "+trainer.v1.repo_sync.my_sampler_knob=2"])
    assert repo_sync_trainer_settings(cfg) == {"my_sampler_knob": 2}


@pytest.mark.parametrize("section", ["repo_sync", "sync"])
def test_several_local_updates_per_step_are_refused(section):
    for message in _refusal(_compose(VALID + [f"+trainer.v1.{section}.parameter_sync_step=2"])):
        for fragment in (f"trainer.v1.{section}.parameter_sync_step=2", "parameter_sync_step=1"):
            assert fragment in message, (fragment, message)


def test_the_trainer_hands_repo_sync_settings_to_verl(monkeypatch):
    """RePOTrainer.__init__ (verl's own __init__ stubbed): trainer.v1.sync holds the repo_sync values."""
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from repo_ext.integration.trainer import RePOTrainer

    seen = {}
    monkeypatch.setattr(PPOTrainerSync, "__init__", lambda self, config: seen.update(config=config))
    monkeypatch.setattr(estimators, "_repo_trainer_running", estimators._repo_trainer_running)
    cfg = _compose(VALID + ["+trainer.v1.repo_sync.my_sampler_knob=5"])
    RePOTrainer(cfg)
    v1 = seen["config"].trainer.v1
    assert v1.trainer_mode == "sync" and OmegaConf.to_container(v1.sync) == {"my_sampler_knob": 5}


# ---------------------------------------------------------------- finding 6: vision-language models


class Qwen2VLProcessor:  # stand-in named like verl's M-RoPE processors
    def get_rope_index(self, *args, **kwargs):
        raise AssertionError("not called")


class Gemma3Processor:
    pass


@pytest.mark.parametrize(("processor", "rope"), [(Qwen2VLProcessor(), True), (Gemma3Processor(), False)])
def test_vision_language_models_are_refused(processor, rope):
    repo = repo_config_from_algorithm(OmegaConf.create({"repo": {"strategy": "recent_k"}}))
    with pytest.raises(ValueError) as info:
        check_text_only_model(processor, "Qwen/Qwen2-VL-2B", repo)
    message = str(info.value)
    for fragment in ("actor_rollout_ref.model.path=Qwen/Qwen2-VL-2B", type(processor).__name__,
                     "algorithm.repo.strategy=recent_k", "algorithm.repo.strategy=none"):
        assert fragment in message, (fragment, message)
    assert ("M-RoPE" in message) == rope


def test_text_models_and_no_replay_pass():
    repo = repo_config_from_algorithm(OmegaConf.create({"repo": {"strategy": "recent_k"}}))
    check_text_only_model(None, "tiny", repo)  # verl's processor is None for text-only models
    check_text_only_model(Qwen2VLProcessor(), "vl", repo_config_from_algorithm(OmegaConf.create({"repo": {"strategy": "none"}})))


def test_the_trainer_checks_the_model_when_verl_loads_its_tokenizer(monkeypatch):
    """The check runs in verl's ``_init_tokenizer``: the first step of ``init()``, before any worker."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from repo_ext.integration.trainer import RePOTrainer

    cfg = _compose(VALID + ["actor_rollout_ref.model.path=some/vl-model"])
    trainer = object.__new__(RePOTrainer)
    trainer.config, trainer.repo_config = cfg, repo_config_from_algorithm(cfg.algorithm)

    def fake_init_tokenizer(self):
        self.tokenizer, self.processor = object(), Qwen2VLProcessor()

    monkeypatch.setattr(PPOTrainer, "_init_tokenizer", fake_init_tokenizer)
    with pytest.raises(ValueError, match="some/vl-model is a vision-language model"):
        trainer._init_tokenizer()


# ---------------------------------------------------------------- finding 5: experimental entry points


def _experimental_config(name, monkeypatch):
    directory = {
        "fully_async_ppo_trainer": "fully_async_policy",
        "one_step_off_ppo_trainer": "one_step_off_policy",
    }[name]
    # one_step_off's yaml finds verl's config as file://verl/trainer/config: relative to the cwd
    monkeypatch.chdir(os.path.dirname(VERL_DIR))
    # their primary config is not verl's, so the RePO config group is appended (+algorithm=repo)
    overrides = ["+algorithm=repo"] + VALID[1:]
    return _compose(overrides, name=name, config_dir=os.path.join(VERL_DIR, "experimental", directory, "config"), hydra=True)


@pytest.mark.parametrize(
    ("config_name", "entry"),
    [("fully_async_ppo_trainer", FULLY_ASYNC), ("one_step_off_ppo_trainer", ONE_STEP_OFF)],
)
def test_experimental_entry_points_are_refused_at_launch(config_name, entry, monkeypatch):
    cfg = _experimental_config(config_name, monkeypatch)
    assert cfg.algorithm.adv_estimator == "repo_split" and "repo_launch_check" in cfg.hydra.callbacks
    assert experimental_entry_point(cfg) == entry
    with pytest.raises(ValueError) as info:
        RePOLaunchCheck().on_job_start(config=cfg)
    message = str(info.value)
    for fragment in (entry, SUPPORTED_ENTRY_POINT, "trainer.v1.trainer_mode=repo_sync", "plain GRPO",
                     "algorithm.repo.strategy=none"):
        assert fragment in message, (fragment, message)


def test_stock_entry_point_is_not_mistaken_for_an_experimental_one():
    cfg = _compose(VALID)
    assert experimental_entry_point(cfg, main_module=types.ModuleType("__main__"), loaded_modules={}) is None
    RePOLaunchCheck().on_job_start(config=cfg)


def test_entry_point_is_recognised_by_its_launching_module():
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="verl.experimental.one_step_off_policy.main_ppo")
    assert experimental_entry_point(None, main_module=main, loaded_modules={}) == ONE_STEP_OFF
    script = types.ModuleType("__main__")
    script.__spec__, script.__file__ = None, "/x/verl/experimental/fully_async_policy/fully_async_main.py"
    assert experimental_entry_point(None, main_module=script, loaded_modules={}) == FULLY_ASYNC


def test_repo_split_in_an_async_trainer_process_refuses_instead_of_training_grpo():
    """The estimator in verl's fully-async trainer process (a Ray worker, no Hydra callback there):
    a config built in Python bypasses the launch check, so the estimator refuses (it only warned)."""
    code = textwrap.dedent(
        """
        import numpy as np, torch
        from omegaconf import OmegaConf
        import verl.experimental.fully_async_policy.fully_async_trainer  # what that worker has imported
        from repo_ext.integration.estimators import compute_repo_split_advantage
        cfg = OmegaConf.create({"adv_estimator": "repo_split", "repo": {"strategy": "recent_k"}})
        try:
            compute_repo_split_advantage(torch.ones(2, 2), torch.ones(2, 2), config=cfg, index=np.array(["a", "a"]))
        except ValueError as exc:
            print("REFUSED:", exc)
        else:
            print("TRAINED")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "REFUSED:" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    assert "fully-async policy" in out.stdout and SUPPORTED_ENTRY_POINT in out.stdout
