"""RePOConfig: defaults equal the Hydra yaml; every bad value names its setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import repo_ext
from repo_ext.algorithm.config import RePOConfig

REPO_YAML = Path(repo_ext.__file__).parent / "config" / "algorithm" / "repo.yaml"


def test_defaults_equal_the_yaml():
    from_yaml = yaml.safe_load(REPO_YAML.read_text())["algorithm"]["repo"]
    defaults = dataclasses.asdict(RePOConfig())
    assert defaults == from_yaml
    for key, value in from_yaml.items():  # same types too (1.0e-6 must stay a float, 42 an int)
        assert type(defaults[key]) is type(value), key


def test_from_mapping_fills_defaults_and_validates():
    cfg = RePOConfig.from_mapping({"strategy": "max_variance_k", "num_replays": 4, "max_store_bytes": None})
    assert (cfg.strategy, cfg.num_replays, cfg.max_store_bytes) == ("max_variance_k", 4, None)
    assert cfg.min_cache_to_replay == 16
    assert RePOConfig.from_mapping(None) == RePOConfig()


def test_from_mapping_accepts_a_dictconfig():
    from omegaconf import OmegaConf

    cfg = RePOConfig.from_mapping(OmegaConf.create({"loss_weighting": "paper", "off_policy_loss_coef": 0.5}))
    assert (cfg.loss_weighting, cfg.off_policy_loss_coef) == ("paper", 0.5)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        RePOConfig.from_mapping({"strategy": "recent_k", "num_replay": 8})
    message = str(info.value)
    assert "num_replay" in message
    for field in dataclasses.fields(RePOConfig):
        assert field.name in message


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("strategy", "random"),
        ("num_replays", 0),
        ("num_replays", 2.5),
        ("num_replays", 17),  # > max_cache_size 16
        ("max_cache_size", 0),
        ("min_cache_to_replay", 0),
        ("min_cache_to_replay", 17),  # > max_cache_size 16
        ("max_store_bytes", 0),
        ("max_store_bytes", -5),
        ("max_store_bytes", "4GB"),
        ("advantage_mode", "joint"),
        ("epsilon", 0.0),
        ("epsilon", -1e-6),
        ("epsilon", float("nan")),
        ("loss_weighting", "mean"),
        ("off_policy_loss_coef", -0.1),
        ("off_policy_loss_coef", float("inf")),
        ("seed", 1.5),
        ("seed", -1),
        ("seed", True),
    ],
)
def test_invalid_values_name_the_setting(setting, value):
    with pytest.raises(ValueError, match=rf"algorithm\.repo\.{setting}=") as info:
        RePOConfig.from_mapping({setting: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_the_removed_norm_adv_by_std_points_to_verls_switch(value):
    """Issue #23 finding 3: verl's algorithm.norm_adv_by_std_in_grpo is the one switch; RePO's own
    (which verl's Dr. GRPO setting never reached) is refused, whatever its value, with the replacement."""
    with pytest.raises(ValueError, match=r"algorithm\.repo\.norm_adv_by_std=(True|False) is no longer a setting") as info:
        RePOConfig.from_mapping({"norm_adv_by_std": value})
    assert "algorithm.norm_adv_by_std_in_grpo" in str(info.value)
    assert not hasattr(RePOConfig(), "norm_adv_by_std")


def test_num_replays_above_the_capacity_is_fine_for_all_and_none():
    for strategy in ("all", "none"):
        assert RePOConfig.from_mapping({"strategy": strategy, "num_replays": 64}).num_replays == 64


def test_build_store_uses_the_settings():
    cfg = RePOConfig.from_mapping({"max_cache_size": 8, "min_cache_to_replay": 4, "max_store_bytes": 1000})
    store = cfg.build_store()
    assert (store.max_cache_size, store.min_cache_to_replay, store.max_store_bytes, store.seed) == (8, 4, 1000, 42)
