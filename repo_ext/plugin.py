"""verl plugin entry point (group ``verl.plugins``).

``import verl`` imports this module in every process (driver and Ray workers). It registers:

- the RePO advantage estimator ``repo_split`` and policy loss ``repo`` (``repo_ext.integration``);
- the RePO trainer and the CPU platform / HF rollout (``repo_ext.cpu``), the latter only changing
  behaviour in a process that opted in with ``VERL_PLATFORM=cpu`` (``+preset=cpu`` sets it).

verl 0.9.1 (verl/__init__.py) catches every exception a plugin raises and logs it at DEBUG level,
so a broken plugin would vanish silently and a run would fail much later with "unknown advantage
estimator". We therefore print the full traceback at ERROR level before re-raising.
"""

from __future__ import annotations

import logging
import sys
import traceback

_logger = logging.getLogger("repo_ext")


def _register_all() -> None:
    from repo_ext.cpu import register as register_cpu
    from repo_ext.integration.registration import register as register_repo

    register_cpu()
    register_repo()


try:
    _register_all()
except Exception:  # noqa: BLE001 - made loud on purpose, see the module docstring
    _msg = "repo_ext: registering RePO into verl FAILED; RePO will not be available:\n" + traceback.format_exc()
    _logger.error(_msg)
    print(_msg, file=sys.stderr, flush=True)
    raise
