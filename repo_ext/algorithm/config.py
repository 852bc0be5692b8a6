"""RePO's settings (``algorithm.repo.*``) as one typed, validated object.

The Hydra file ``repo_ext/config/algorithm/repo.yaml`` is the single source of the defaults; this
dataclass mirrors it (a test checks that they agree) and validates any mapping of the same keys,
e.g. the ``algorithm.repo`` DictConfig verl passes around::

    >>> cfg = RePOConfig.from_mapping({"strategy": "highest_k", "num_replays": 4})
    >>> (cfg.strategy, cfg.num_replays, cfg.max_cache_size)
    ('highest_k', 4, 16)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from repo_ext.algorithm.advantages import ADVANTAGE_MODES
from repo_ext.algorithm.loss import LOSS_WEIGHTINGS
from repo_ext.algorithm.retrieval import STRATEGIES
from repo_ext.algorithm.store import ReplayStore

_PREFIX = "algorithm.repo"
#: settings RePO once had, each with what replaces it (an old launch script gets this, not "unknown")
REMOVED_SETTINGS = {
    "norm_adv_by_std": (
        "verl's algorithm.norm_adv_by_std_in_grpo is the one switch for GRPO and RePO advantages "
        "(true: (r - mean) / (std + epsilon); false: r - mean, Dr. GRPO). Remove the "
        "algorithm.repo.norm_adv_by_std override and set algorithm.norm_adv_by_std_in_grpo instead."
    ),
}
#: what a resume does with a checkpoint that has no replay store (``missing_store_on_resume``)
MISSING_STORE_ON_RESUME = ("error", "empty")


@dataclass
class RePOConfig:
    """RePO's hyperparameters; field docs are in repo.yaml.

    Attributes:
        strategy: retrieval strategy, one of :data:`~repo_ext.algorithm.retrieval.STRATEGIES`.
        num_replays: G_off, responses retrieved per prompt per step (unused by ``all``/``none``).
        min_cache_to_replay: the gate: a prompt is replayed once its buffer holds this many entries.
        max_cache_size: per-prompt FIFO capacity.
        max_store_bytes: global payload cap in bytes (None: unbounded).
        advantage_mode: ``split`` or ``mixed``.
        epsilon: added to the group's std (whether advantages are divided by it is verl's
            ``algorithm.norm_adv_by_std_in_grpo``, not a RePO setting).
        loss_weighting: ``reference`` or ``paper``.
        off_policy_loss_coef: weight of the off-policy loss term.
        seed: seed of ``random_k``.
        skip_zero_advantage_rows: ``"auto"``, True or False: leave rows whose advantage is 0 on
            every token out of the actor update (``auto``: wherever the update stays exact; see
            ``repo_ext.integration.zero_adv_skip``).
        missing_store_on_resume: ``"error"`` (refuse to resume from a checkpoint without a replay
            store, e.g. a GRPO run's) or ``"empty"`` (resume it with an empty store: a warm start).
    """

    strategy: str = "recent_k"
    num_replays: int = 8
    min_cache_to_replay: int = 16
    max_cache_size: int = 16
    max_store_bytes: int | None = 4294967296
    advantage_mode: str = "split"
    epsilon: float = 1.0e-6
    loss_weighting: str = "reference"
    off_policy_loss_coef: float = 1.0
    seed: int = 42
    skip_zero_advantage_rows: str | bool = "auto"
    missing_store_on_resume: str = "error"

    @classmethod
    def from_mapping(cls, mapping: Any) -> RePOConfig:
        """Build and validate from a dict (or a DictConfig: anything with ``keys()`` and ``[]``).

        Missing keys keep their defaults; an unknown key is a ValueError listing the valid ones.
        """
        if mapping is None:
            return cls().validate()
        if not (isinstance(mapping, Mapping) or hasattr(mapping, "keys")):
            raise ValueError(f"{_PREFIX} must be a mapping of settings, got {type(mapping).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key, replacement in REMOVED_SETTINGS.items():
            if key in mapping.keys():
                raise ValueError(f"{_PREFIX}.{key}={mapping[key]!r} is no longer a setting: {replacement}")
        unknown = sorted(str(key) for key in mapping.keys() if key not in valid)
        if unknown:
            raise ValueError(
                f"unknown {_PREFIX} setting(s) {', '.join(unknown)}; valid settings are: {', '.join(valid)}"
            )
        return cls(**{key: mapping[key] for key in mapping.keys()}).validate()

    def validate(self) -> RePOConfig:
        """Check every setting; raise ValueError naming the setting, its value and the valid range."""
        _check(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {', '.join(STRATEGIES)}")
        _check(_is_int(self.num_replays) and self.num_replays >= 1, "num_replays", self.num_replays, "an integer >= 1")
        _check(
            _is_int(self.max_cache_size) and self.max_cache_size >= 1,
            "max_cache_size",
            self.max_cache_size,
            "an integer >= 1",
        )
        _check(
            _is_int(self.min_cache_to_replay) and 1 <= self.min_cache_to_replay <= self.max_cache_size,
            "min_cache_to_replay",
            self.min_cache_to_replay,
            f"an integer in [1, max_cache_size={self.max_cache_size}]",
        )
        if self.strategy not in ("all", "none"):
            _check(
                self.num_replays <= self.max_cache_size,
                "num_replays",
                self.num_replays,
                f"<= max_cache_size={self.max_cache_size} (a prompt never holds more entries to replay)",
            )
        _check(
            self.max_store_bytes is None or (_is_int(self.max_store_bytes) and self.max_store_bytes > 0),
            "max_store_bytes",
            self.max_store_bytes,
            "an integer > 0, or null for no cap",
        )
        _check(
            self.advantage_mode in ADVANTAGE_MODES,
            "advantage_mode",
            self.advantage_mode,
            f"one of {', '.join(ADVANTAGE_MODES)}",
        )
        _check(_is_real(self.epsilon) and self.epsilon > 0, "epsilon", self.epsilon, "a finite number > 0")
        _check(
            self.loss_weighting in LOSS_WEIGHTINGS,
            "loss_weighting",
            self.loss_weighting,
            f"one of {', '.join(LOSS_WEIGHTINGS)}",
        )
        _check(
            _is_real(self.off_policy_loss_coef) and self.off_policy_loss_coef >= 0,
            "off_policy_loss_coef",
            self.off_policy_loss_coef,
            "a finite number >= 0",
        )
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0 (numpy seeds are >= 0)")
        skip = self.skip_zero_advantage_rows
        if isinstance(skip, str) and skip.strip().lower() in ("auto", "true", "false"):
            # Hydra reads true/false as bools; the same words as strings (e.g. from a dict) mean the same
            skip = {"auto": "auto", "true": True, "false": False}[skip.strip().lower()]
        _check(isinstance(skip, bool) or skip == "auto", "skip_zero_advantage_rows", skip, "one of auto, true, false")
        self.skip_zero_advantage_rows = skip
        _check(
            self.missing_store_on_resume in MISSING_STORE_ON_RESUME,
            "missing_store_on_resume",
            self.missing_store_on_resume,
            f"one of {', '.join(MISSING_STORE_ON_RESUME)}",
        )
        return self

    def build_store(self) -> ReplayStore:
        """An empty :class:`~repo_ext.algorithm.store.ReplayStore` with these settings."""
        return ReplayStore(
            max_cache_size=self.max_cache_size,
            min_cache_to_replay=self.min_cache_to_replay,
            max_store_bytes=self.max_store_bytes,
            seed=self.seed,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, value: Any, valid: str) -> None:
    if not ok:
        raise ValueError(f"{_PREFIX}.{name}={value!r} is invalid; it must be {valid}")
