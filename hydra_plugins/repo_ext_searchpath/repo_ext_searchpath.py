"""Hydra search-path plugin: makes this package's configs visible to verl's stock entry point.

With it, ``python -m verl.trainer.main_ppo`` (whose primary config is verl's ppo_trainer.yaml)
can use ``+algorithm=repo`` and ``--config-name=repo_trainer`` without copying verl's config.
Hydra discovers it through the ``hydra_plugins`` namespace package.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class RePOSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="repo_ext", path="pkg://repo_ext.config")
