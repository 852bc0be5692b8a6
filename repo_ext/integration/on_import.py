"""Run a function right after a module has been imported, wherever that import happens.

The plugin runs in every process that imports verl (Ray's helper actors too). Registering the RePO
trainer needs ``verl.trainer.ppo.v1.trainer_base``, whose import pulls in verl's engines, agent loop
and PEFT: 1.4 s and tens of MiB in each process, although only the process that builds the
trainer (verl's ``TaskRunner``) ever looks the trainer up. :func:`call_after_import` registers it
when verl itself imports that module instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Callable

__all__ = ["call_after_import"]


class _CallAfterExec(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[object], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name):  # get_source, is_package, ... of the wrapped loader
        return getattr(self._loader, name)


class _Watcher(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[object], None]):
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the finders below must not find this one again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find else None
                if spec is not None:
                    break
        if spec is not None and spec.loader is not None:
            spec.loader = _CallAfterExec(spec.loader, self.callback)
        return spec


def call_after_import(name: str, callback: Callable[[object], None]) -> None:
    """Call ``callback(module)`` once module ``name`` has been executed: now if it already has,
    else right after its first import in this process (before that import statement returns)."""
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        callback(module)
        return
    if any(isinstance(f, _Watcher) and f.name == name and f.callback is callback for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Watcher(name, callback))
