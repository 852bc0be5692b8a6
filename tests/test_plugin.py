"""The verl.plugins entry point: registration in a fresh process, and a loud failure."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("repo") == "repo_ext.plugin"


def test_failed_registration_is_loud():
    # verl swallows plugin errors at DEBUG level; ours must still reach stderr with the cause
    code = (
        "import repo_ext.integration.registration as r\n"
        "def broken():\n"
        "    raise RuntimeError('simulated registry clash')\n"
        "r.register = broken\n"
        "import verl\n"
        "from verl.trainer.ppo import core_algos\n"
        "print('registered' if 'repo_split' in core_algos.ADV_ESTIMATOR_REGISTRY else 'missing')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "missing" in out.stdout
    assert "registering RePO into verl FAILED" in out.stderr
    assert "simulated registry clash" in out.stderr
