"""Hydra plugins that make ``python -m verl.trainer.main_ppo algorithm=repo`` work on verl's stock config,
and do nothing in any other Hydra application.

Two pieces, both discovered by Hydra through the ``hydra_plugins`` namespace package:

- :class:`RePOSearchPathPlugin` acts only in a *verl application*: one whose primary config
  directory is inside the installed verl package (``python -m verl.trainer.main_ppo``, verl's
  experimental entry points, ``initialize_config_module("verl.trainer.config")``), or one whose
  running ``__main__`` module is verl's (``python -m verl.trainer.main_ppo --config-path=<yours>``,
  the recipe pattern). There it appends this project's configs (``pkg://repo_ext.config``: the
  ``algorithm/repo.yaml``, ``algorithm/grpo.yaml``, ``preset/cpu.yaml`` and ``repo_trainer.yaml``)
  to the search path, and, when the primary config directory is verl's ``trainer/config``, puts an
  :class:`AlgorithmSlotConfigSource` right in front of it. Any other application's search path is
  left exactly as Hydra built it, so an app with an ``algorithm`` or ``preset`` group of its own
  never sees ours.
- :class:`AlgorithmSlotConfigSource` answers for the one config ``ppo_trainer``: it reads verl's
  installed ``ppo_trainer.yaml`` when Hydra composes and returns it with one more defaults entry,
  ``- algorithm: null``. That empty slot is what a plain override ``algorithm=repo`` replaces
  (verl's list has only ``algorithm@algorithm.rollout_correction``, so without the slot Hydra says
  "Could not override 'algorithm'"). With the slot left empty the composed config is verl's own.
  Every other lookup falls through to verl's directory.

Where the slot would change a composition that does not ask for RePO, it is not added:

- a verl whose ``ppo_trainer.yaml`` already has an entry for the ``algorithm`` group;
- a config directory given with ``--config-dir``: the primary config may then be the user's, and
  Hydra refuses two values for one group ("Multiple values for algorithm") when that config selects
  an ``algorithm`` of its own. A ConfigSource cannot see which config is the primary, so the slot
  is left out whenever another config directory is on the command line;
- a primary config directory that is not verl's (``--config-path``, the recipe pattern): verl's
  ``ppo_trainer`` is then loaded through the user's ``hydra.searchpath`` as it ships.

Where there is no slot, RePO is appended the way Hydra appends any group: ``+algorithm=repo``
(README, "Using RePO in your own verl runs"). Where there is one, ``+algorithm=repo`` meets it and
Hydra refuses it with "Multiple values for algorithm"; ``repo_trainer.yaml`` says
``- override algorithm: repo``.

This module is imported by every Hydra application in the environment, so it imports neither verl
nor repo_ext: it finds verl's directory with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
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
# Hydra's provider name for a directory added with --config-dir (hydra/_internal/utils.py, run_hydra)
COMMAND_LINE_PROVIDER = "command-line"


def verl_package_dir() -> Optional[str]:
    """Real path of the installed verl package directory, or None without verl."""
    try:
        spec = importlib.util.find_spec("verl")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if os.path.isdir(location):
            return os.path.realpath(location)
    return None


def verl_config_dir() -> Optional[str]:
    """Real path of the installed verl's ``trainer/config`` directory, or None without verl."""
    package = verl_package_dir()
    if package is None:
        return None
    candidate = os.path.join(package, "trainer", "config")
    return candidate if os.path.isfile(os.path.join(candidate, PATCHED_CONFIG)) else None


def _module_of(search_path_entry: str) -> str:
    return search_path_entry[len("pkg://"):].replace("/", ".").strip(".")


def _file_path_of(search_path_entry: str) -> Optional[str]:
    """The directory a ``file://`` or plain search-path entry names; None for other schemes."""
    if search_path_entry.startswith("file://"):
        return os.path.realpath(search_path_entry[len("file://"):])
    if "://" in search_path_entry:
        return None
    return os.path.realpath(search_path_entry)


def is_verl_config_dir(search_path_entry: str, verl_dir: str) -> bool:
    """Whether a search-path entry (``pkg://...``, ``file://...`` or a plain path) is ``verl_dir``."""
    if search_path_entry.startswith("pkg://"):
        return _module_of(search_path_entry) == VERL_CONFIG_MODULE
    return _file_path_of(search_path_entry) == verl_dir


def is_inside_verl(search_path_entry: str, verl_package: str) -> bool:
    """Whether a search-path entry names a directory of the installed verl package
    (``verl/trainer/config``, ``verl/experimental/*/config``, ...)."""
    if search_path_entry.startswith("pkg://"):
        module = _module_of(search_path_entry)
        return module == "verl" or module.startswith("verl.")
    path = _file_path_of(search_path_entry)
    return path is not None and (path == verl_package or path.startswith(verl_package + os.sep))


def running_verl_entry_point(verl_package: str, main_module=None) -> bool:
    """Whether the program's ``__main__`` is a module of verl (``python -m verl.trainer.main_ppo``,
    also when ``--config-path`` makes a user's directory the primary one). ``main_module``: for tests."""
    main = sys.modules.get("__main__") if main_module is None else main_module
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and (name == "verl" or name.startswith("verl.")):
        return True
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and os.path.realpath(path).startswith(verl_package + os.sep)


def config_dir_on_command_line() -> bool:
    """Whether Hydra was given ``--config-dir``: run_hydra adds it to the search path after the
    search-path plugins ran, so only the initialized Hydra's search path shows it."""
    if not GlobalHydra.instance().is_initialized():
        return False
    search_path = GlobalHydra.instance().config_loader().get_search_path()
    return any(entry.provider == COMMAND_LINE_PROVIDER for entry in search_path.get_path())


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
    It answers nothing while a ``--config-dir`` is on Hydra's command line (see the module docstring).
    """

    @staticmethod
    def scheme() -> str:
        return SLOT_SCHEME

    def _file(self) -> str:
        return os.path.join(self.path, PATCHED_CONFIG)

    def available(self) -> bool:
        return os.path.isfile(self._file())

    def is_config(self, config_path: str) -> bool:
        return (
            self._normalize_file_name(config_path) == PATCHED_CONFIG
            and self.available()
            and not config_dir_on_command_line()
        )

    def is_group(self, config_path: str) -> bool:
        return False

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
        verl_package = verl_package_dir()
        if verl_package is None:
            return
        main = [e.path for e in search_path.get_path() if e.provider == "main"]
        main_path = main[0] if len(main) == 1 else None
        main_is_verls = main_path is not None and is_inside_verl(main_path, verl_package)
        if not (main_is_verls or running_verl_entry_point(verl_package)):
            return  # not a verl application: its search path stays Hydra's own
        search_path.append(provider="repo_ext", path="pkg://repo_ext.config")
        verl_dir = verl_config_dir()
        if verl_dir is None or main_path is None or not is_verl_config_dir(main_path, verl_dir):
            return
        search_path.prepend(
            provider="repo_ext",
            path=f"{SLOT_SCHEME}://{verl_dir}",
            anchor=SearchPathQuery(provider="main", path=None),
        )
