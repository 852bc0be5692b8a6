"""Hydra plugins that make ``python -m verl.trainer.main_ppo algorithm=repo`` work on verl's stock config.

Two pieces, both discovered by Hydra through the ``hydra_plugins`` namespace package:

- :class:`RePOSearchPathPlugin` appends this project's configs (``pkg://repo_ext.config``: the
  ``algorithm/repo.yaml``, ``algorithm/grpo.yaml``, ``preset/cpu.yaml`` and ``repo_trainer.yaml``)
  to the search path, and, when Hydra's primary config directory is verl's own, puts an
  :class:`AlgorithmSlotConfigSource` right in front of it.
- :class:`AlgorithmSlotConfigSource` answers for the one config ``ppo_trainer``: it reads verl's
  installed ``ppo_trainer.yaml`` when Hydra composes and returns it with one more defaults entry,
  ``- algorithm: null``. That empty slot is what a plain override ``algorithm=repo`` replaces
  (verl's list has only ``algorithm@algorithm.rollout_correction``, so without the slot Hydra says
  "Could not override 'algorithm'"). With the slot left empty the composed config is verl's own.
  Every other lookup falls through to verl's directory.

Left alone: a primary config directory that is not verl's (a user's ``--config-path`` with a
``ppo_trainer.yaml`` of its own), and a verl whose ``ppo_trainer.yaml`` already has an entry for
the ``algorithm`` group.

The cost of the slot: ``+algorithm=repo`` (append) now meets the slot and Hydra refuses it with
"Multiple values for algorithm"; ``repo_trainer.yaml`` says ``- override algorithm: repo``.

This module is imported by every Hydra application in the environment, so it imports neither verl
nor repo_ext: it finds verl's directory with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, ListConfig, OmegaConf

SLOT_SCHEME = "repo-ext-algorithm-slot"
SLOT_GROUP = "algorithm"
PATCHED_CONFIG = "ppo_trainer.yaml"
# how Hydra names verl's config directory when the primary config comes from the package
# (`python -m verl.trainer.main_ppo`, `initialize_config_module("verl.trainer.config")`)
VERL_CONFIG_MODULE = "verl.trainer.config"


def verl_config_dir() -> Optional[str]:
    """Real path of the installed verl's ``trainer/config`` directory, or None without verl."""
    try:
        spec = importlib.util.find_spec("verl")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, "trainer", "config")
        if os.path.isfile(os.path.join(candidate, PATCHED_CONFIG)):
            return os.path.realpath(candidate)
    return None


def is_verl_config_dir(search_path_entry: str, verl_dir: str) -> bool:
    """Whether a search-path entry (``pkg://...``, ``file://...`` or a plain path) is ``verl_dir``."""
    if search_path_entry.startswith("pkg://"):
        module = search_path_entry[len("pkg://"):].replace("/", ".").strip(".")
        return module == VERL_CONFIG_MODULE
    if search_path_entry.startswith("file://"):
        search_path_entry = search_path_entry[len("file://"):]
    elif "://" in search_path_entry:
        return False
    return os.path.realpath(search_path_entry) == verl_dir


def defaults_select_group(defaults: ListConfig, group: str) -> bool:
    """Whether a defaults list has an entry for ``group`` at its own package (``group: x``,
    ``optional group: x``, ``override group: x``); ``group@other.package: x`` does not count."""
    for entry in defaults:
        if not isinstance(entry, DictConfig):
            continue
        for key in entry.keys():
            words = str(key).split()
            if words and words[-1] == group:
                return True
    return False


class AlgorithmSlotConfigSource(ConfigSource):
    """verl's ``ppo_trainer.yaml`` with an empty ``algorithm`` slot; nothing else.

    Its path is verl's config directory on the file system: ``repo-ext-algorithm-slot:///.../verl/trainer/config``.
    """

    @staticmethod
    def scheme() -> str:
        return SLOT_SCHEME

    def _file(self) -> str:
        return os.path.join(self.path, PATCHED_CONFIG)

    def is_config(self, config_path: str) -> bool:
        return self._normalize_file_name(config_path) == PATCHED_CONFIG and os.path.isfile(self._file())

    def is_group(self, config_path: str) -> bool:
        return False

    def available(self) -> bool:
        return os.path.isfile(self._file())

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        return []

    def load_config(self, config_path: str) -> ConfigResult:
        if not self.is_config(config_path):
            raise ConfigLoadError(f"{self.full_path()} only provides {PATCHED_CONFIG}, not {config_path!r}")
        with open(self._file(), encoding="utf-8") as f:
            text = f.read()
        config = OmegaConf.load(io.StringIO(text))
        defaults = config.get("defaults") if isinstance(config, DictConfig) else None
        # a later verl that declares the group itself is used as it ships
        if isinstance(defaults, ListConfig) and not defaults_select_group(defaults, SLOT_GROUP):
            # last, where Hydra puts `+algorithm=...`: the chosen option overrides ppo_trainer's own values
            defaults.append({SLOT_GROUP: None})
        return ConfigResult(
            config=config,
            path=self.full_path(),
            provider=self.provider,
            header=self._get_header_dict(text),
        )


class RePOSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="repo_ext", path="pkg://repo_ext.config")
        verl_dir = verl_config_dir()
        main = [e for e in search_path.get_path() if e.provider == "main"]
        if verl_dir is None or len(main) != 1 or not is_verl_config_dir(main[0].path, verl_dir):
            return
        search_path.prepend(
            provider="repo_ext",
            path=f"{SLOT_SCHEME}://{verl_dir}",
            anchor=SearchPathQuery(provider="main", path=None),
        )
