"""The launch forms compose with Hydra on verl's stock config, without copying or editing it.

``hydra_plugins/repo_ext_searchpath`` gives verl's ``ppo_trainer`` an empty ``algorithm`` slot so
that the literal ``python -m verl.trainer.main_ppo algorithm=repo`` works. The references here
are compositions with that plugin absent (Hydra's own ``hydra.searchpath`` then makes
``pkg://repo_ext.config`` visible, which is how ``+algorithm=repo`` composed before the slot).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import verl
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
OUR_PLUGIN_PACKAGE = "hydra_plugins.repo_ext_searchpath"
# Hydra's own way to add a config directory, used for the references without our plugin
REPO_EXT_SEARCHPATH = "hydra.searchpath=[pkg://repo_ext.config]"


@contextmanager
def _initialized(how: str, config_dir: str = VERL_CONFIG_DIR):
    if how == "dir":
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            yield
    else:
        with initialize_config_module(config_module="verl.trainer.config", version_base=None):
            yield


def _compose(name: str, overrides: list[str], how: str = "dir"):
    with _initialized(how):
        return compose(config_name=name, overrides=overrides)


def _compose_without_our_plugin(name: str, overrides: list[str], monkeypatch, how: str = "dir"):
    discover = Plugins.discover

    def discover_all_but_ours(self, plugin_type=None):
        return [c for c in discover(self, plugin_type) if not c.__module__.startswith(OUR_PLUGIN_PACKAGE)]

    with monkeypatch.context() as patch:
        patch.setattr(Plugins, "discover", discover_all_but_ours)
        return _compose(name, [*overrides, REPO_EXT_SEARCHPATH], how)


def _leaves(config) -> dict:
    """Every leaf of a config as dotted key -> value, interpolations left as written."""
    out = {}

    def walk(node, prefix):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None or not node:
            out[prefix] = node
            return
        for key, child in items:
            walk(child, f"{prefix}.{key}" if prefix else str(key))

    walk(OmegaConf.to_container(config, resolve=False), "")
    return out


def _assert_same_fields(ours, reference):
    a, b = _leaves(ours), _leaves(reference)
    differing = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    assert not differing, [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in differing[:20]]


# "dir": initialize_config_dir(verl's directory); "module": initialize_config_module("verl.trainer.config")
TYPICAL = [
    ("dir", "ppo_trainer", []),
    ("module", "ppo_trainer", []),
    ("dir", "ppo_trainer", ["actor_rollout_ref.rollout.n=4", "data.train_batch_size=32"]),
    ("dir", "ppo_trainer", ["algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=false"]),
    ("dir", "ppo_trainer", ["model_engine=megatron"]),
    ("dir", "ppo_trainer", ["+preset=cpu", "actor_rollout_ref.rollout.n=2"]),
    ("dir", "ppo_megatron_trainer", []),
    ("module", "ppo_megatron_trainer", ["actor_rollout_ref.rollout.n=4", "trainer.total_epochs=3"]),
]


@pytest.mark.parametrize(("how", "name", "overrides"), TYPICAL)
def test_without_algorithm_override_the_config_is_verls_own(name, overrides, how, monkeypatch):
    ours = _compose(name, overrides, how)
    reference = _compose_without_our_plugin(name, overrides, monkeypatch, how)
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(reference)
    assert ours.algorithm.adv_estimator != "repo_split" and "repo" not in ours.algorithm


@pytest.mark.parametrize(
    ("how", "name", "overrides"),
    [
        ("dir", "ppo_trainer", []),
        ("module", "ppo_trainer", ["algorithm.repo.strategy=highest_k", "actor_rollout_ref.rollout.n=4", "+preset=cpu"]),
        ("dir", "ppo_trainer", ["model_engine=megatron", "algorithm.repo.num_replays=2"]),
        ("dir", "ppo_megatron_trainer", ["algorithm.repo.advantage_mode=mixed"]),
    ],
)
def test_literal_algorithm_repo_is_the_appended_repo_config_field_by_field(name, overrides, how, monkeypatch):
    # the literal form's reference: `+algorithm=repo` as it composed before the slot existed
    ours = _compose(name, ["algorithm=repo", *overrides], how)
    reference = _compose_without_our_plugin(name, ["+algorithm=repo", *overrides], monkeypatch, how)
    _assert_same_fields(ours, reference)
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(reference)


def test_literal_algorithm_repo_selects_repo_parts():
    cfg = _compose("ppo_trainer", ["algorithm=repo", "algorithm.repo.strategy=highest_k"])
    assert cfg.algorithm.adv_estimator == "repo_split"
    assert cfg.algorithm.repo.strategy == "highest_k"
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo"
    assert cfg.trainer.v1.trainer_mode == "repo_sync"
    # verl's own algorithm sub-config is untouched, and its other values are stock
    assert "rollout_correction" in cfg.algorithm
    assert cfg.data.train_batch_size == 1024


def test_literal_algorithm_grpo_is_verls_grpo(monkeypatch):
    # algorithm/grpo.yaml only names what stock GRPO is: adv_estimator grpo, vanilla loss, sync trainer
    ours = _compose("ppo_trainer", ["algorithm=grpo"])
    reference = _compose_without_our_plugin("ppo_trainer", ["algorithm.adv_estimator=grpo"], monkeypatch)
    _assert_same_fields(ours, reference)


def test_plus_algorithm_repo_is_refused_by_hydra():
    # Hydra's message (README, "Launching"): the slot and the appended option are two values
    with pytest.raises(ConfigCompositionException, match="Multiple values for algorithm"):
        _compose("ppo_trainer", ["+algorithm=repo"])


def test_a_users_own_config_directory_is_left_alone(tmp_path):
    (tmp_path / "ppo_trainer.yaml").write_text("defaults:\n  - _self_\nmine: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        assert OmegaConf.to_container(compose(config_name="ppo_trainer")) == {"mine": 1}
        # no slot was added to the user's file, so the literal form has nothing to override
        with pytest.raises(ConfigCompositionException, match="Could not override 'algorithm'"):
            compose(config_name="ppo_trainer", overrides=["algorithm=repo"])


def _slot_source(config_dir):
    from hydra_plugins.repo_ext_searchpath.repo_ext_searchpath import SLOT_SCHEME, AlgorithmSlotConfigSource

    return AlgorithmSlotConfigSource(provider="test", path=f"{SLOT_SCHEME}://{config_dir}")


def test_slot_source_adds_one_last_entry_to_verls_file_and_answers_nothing_else():
    source = _slot_source(os.path.realpath(VERL_CONFIG_DIR))
    loaded = source.load_config("ppo_trainer")
    stock = OmegaConf.load(os.path.join(VERL_CONFIG_DIR, "ppo_trainer.yaml"))
    stock_defaults = OmegaConf.to_container(stock.defaults)
    assert OmegaConf.to_container(loaded.config.defaults) == [*stock_defaults, {"algorithm": None}]
    del loaded.config["defaults"], stock["defaults"]
    assert loaded.config == stock
    for other in ("ppo_megatron_trainer", "algorithm/rollout_correction", "actor/dp_actor"):
        assert not source.is_config(other)
    assert not source.is_group("algorithm") and source.list("", None) == []


def test_slot_source_leaves_a_verl_with_its_own_algorithm_entry_alone(tmp_path):
    text = "defaults:\n  - algorithm@algorithm.rollout_correction: rc\n  - override algorithm: x\n  - _self_\na: 1\n"
    (tmp_path / "ppo_trainer.yaml").write_text(text)
    loaded = _slot_source(tmp_path).load_config("ppo_trainer")
    assert OmegaConf.to_container(loaded.config) == OmegaConf.to_container(OmegaConf.create(text))


def test_slot_stands_in_front_of_verls_directory_only_when_it_is_the_primary(tmp_path):
    from hydra_plugins.repo_ext_searchpath.repo_ext_searchpath import is_verl_config_dir, verl_config_dir

    verl_dir = verl_config_dir()
    assert verl_dir == os.path.realpath(VERL_CONFIG_DIR)
    for entry in ("pkg://verl.trainer/config", "pkg://verl.trainer.config", f"file://{VERL_CONFIG_DIR}", VERL_CONFIG_DIR):
        assert is_verl_config_dir(entry, verl_dir), entry
    for entry in ("pkg://my_project.config", f"file://{tmp_path}", str(tmp_path), "structured://"):
        assert not is_verl_config_dir(entry, verl_dir), entry


@pytest.mark.timeout(180)
def test_main_ppo_literal_algorithm_repo_cfg_job(tmp_path, monkeypatch):
    """The command users type, through verl's own `main_ppo` (no Ray: --cfg only composes)."""
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", "algorithm=repo", "--cfg", "job"]
    try:
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish within 150 s")
    assert run.returncode == 0, run.stderr[-3000:]
    printed = OmegaConf.create(run.stdout)
    assert printed.algorithm.adv_estimator == "repo_split"
    reference = _compose_without_our_plugin("ppo_trainer", ["+algorithm=repo"], monkeypatch)
    _assert_same_fields(printed, reference)


def test_repo_trainer_holds_paper_defaults():
    # values from the paper's reference scripts (shared/docs/repo-algorithm.md), written out here
    cfg = _compose("repo_trainer", [])
    repo = cfg.algorithm.repo
    assert cfg.algorithm.adv_estimator == "repo_split" and cfg.trainer.v1.trainer_mode == "repo_sync"
    assert (repo.strategy, repo.num_replays, repo.min_cache_to_replay, repo.max_cache_size) == ("recent_k", 8, 16, 16)
    assert repo.advantage_mode == "split" and repo.off_policy_loss_coef == 1.0 and repo.epsilon == 1e-4
    actor = cfg.actor_rollout_ref.actor
    assert actor.optim.lr == 1e-6 and actor.optim.lr_scheduler_type == "cosine"
    assert actor.optim.lr_warmup_steps_ratio == 0.1 and actor.grad_clip == 1.0
    assert actor.clip_ratio_low == 0.2 and actor.clip_ratio_high == 0.2 and actor.use_kl_loss is False
    assert cfg.data.train_batch_size == 4 and actor.ppo_mini_batch_size == 4 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.data.max_prompt_length == 512 and cfg.data.max_response_length == 1024
    rollout = cfg.actor_rollout_ref.rollout
    assert (rollout.temperature, rollout.top_k, rollout.top_p) == (1.0, 50, 1.0)
    assert cfg.trainer.total_epochs == 3
    assert _compose("repo_trainer", ["algorithm=repo"]) == cfg


def test_grpo_baseline_shares_the_settings():
    repo = _compose("repo_trainer", [])
    grpo = _compose("repo_trainer", ["algorithm=grpo"])
    assert grpo.algorithm.adv_estimator == "grpo"
    assert grpo.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"
    assert grpo.trainer.v1.trainer_mode == "sync"
    assert grpo.data == repo.data
    assert grpo.actor_rollout_ref.rollout.n == repo.actor_rollout_ref.rollout.n


def test_a_program_of_ones_own_composing_a_recipe_dir_appends_repo(tmp_path):
    # README: a program that composes with Hydra's API (not verl's entry point) lists
    # pkg://repo_ext.config in its hydra.searchpath and appends +algorithm=repo
    (tmp_path / "my_trainer.yaml").write_text(
        "hydra:\n  searchpath:\n    - pkg://verl.trainer.config\n    - pkg://repo_ext.config\n"
        "defaults:\n  - ppo_trainer\n  - _self_\ndata:\n  train_batch_size: 64\n"
    )
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="my_trainer", overrides=["+algorithm=repo", "algorithm.repo.num_replays=2"])
        assert cfg.algorithm.adv_estimator == "repo_split" and cfg.algorithm.repo.num_replays == 2
        assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "repo" and cfg.data.train_batch_size == 64
        # verl's ppo_trainer came as it ships (no slot): the literal form has nothing to override
        with pytest.raises(ConfigCompositionException, match="Could not override 'algorithm'"):
            compose(config_name="my_trainer", overrides=["algorithm=repo"])


def test_an_app_that_is_not_verls_has_hydras_own_search_path_in_process(tmp_path, monkeypatch):
    # an app with its own `algorithm` group, whose `grpo` option sits in a hydra.searchpath dir (after
    # every plugin's entries): composed in this process with and without our plugin discovered
    conf, extra = tmp_path / "conf", tmp_path / "extra"
    (conf / "algorithm").mkdir(parents=True)
    (extra / "algorithm").mkdir(parents=True)
    (conf / "app.yaml").write_text(f"hydra:\n  searchpath:\n    - file://{extra}\ndefaults:\n  - algorithm: ppo\n  - _self_\n")
    (conf / "algorithm" / "ppo.yaml").write_text("name: their_ppo\n")
    (extra / "algorithm" / "grpo.yaml").write_text("name: their_grpo\n")

    def app(overrides):
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose(config_name="app", overrides=overrides, return_hydra_config=True)
            return cfg, [(s.provider, s.path) for s in cfg.hydra.runtime.config_sources]

    discover = Plugins.discover
    for overrides in ([], ["algorithm=grpo"]):
        ours, our_sources = app(overrides)
        with monkeypatch.context() as patch:
            patch.setattr(Plugins, "discover", lambda self, plugin_type=None: [
                c for c in discover(self, plugin_type) if not c.__module__.startswith(OUR_PLUGIN_PACKAGE)])
            reference, reference_sources = app(overrides)
        assert our_sources == reference_sources
        assert ours.algorithm.name == ("their_grpo" if overrides else "their_ppo")
        assert OmegaConf.to_container(ours)["algorithm"] == OmegaConf.to_container(reference)["algorithm"]
        assert ours.hydra.runtime.choices == reference.hydra.runtime.choices
