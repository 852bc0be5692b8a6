"""recipe/repo/gpu_tiny_check.sh, rehearsed on CPU (``+preset=cpu``): both runs and every check pass.

The GPU smoke check's own steps (3 steps, checkpoint, resume for step 4) and its PASS/FAIL reader run
for real here, so a change that breaks the script is caught without a GPU. Its first rehearsal found
that the resumed run truncated the metrics file of steps 1-3 (verl's file logger opens it with
``wb``), so the check could never have passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repo_ext.process_group import kill_process_group

SCRIPT = Path(__file__).resolve().parents[2] / "recipe" / "repo" / "gpu_tiny_check.sh"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(700)]


def test_the_tiny_check_passes_on_cpu_with_the_cpu_preset(tmp_path):
    out = tmp_path / "tiny"
    env = {**os.environ, "OUT_DIR": str(out), "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    # its own process group: on a timeout the script, verl and Ray's daemons are all killed
    proc = subprocess.Popen(["bash", str(SCRIPT), "+preset=cpu"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)
        stdout, _ = proc.communicate()
        pytest.fail(f"gpu_tiny_check.sh +preset=cpu did not finish in 600 s; output tail:\n{stdout[-4000:]}")
    lines = stdout.splitlines()
    checks = [line for line in lines if line.startswith(("PASS ", "FAIL ", "n/a "))]
    assert proc.returncode == 0, "\n".join(checks) or stdout[-4000:] + stderr[-4000:]
    assert not [line for line in checks if line.startswith("FAIL ")]
    # 1 (steps logged) + 1 (step 1) + 3 replay steps x 4 + 1 (rollout dumps); a replay step whose replayed
    # groups all had equal rewards prints "n/a" for its ratio instead of PASS (zero-advantage skipping)
    assert len(checks) == 15, checks
    assert sum(line.startswith("PASS ") for line in checks) >= 12, checks
    # each run kept its own metrics file; steps 1-3 and the resumed step 4
    first = [json.loads(line)["step"] for line in (out / "metrics_steps_1_3.jsonl").read_text().splitlines()]
    resumed = [json.loads(line)["step"] for line in (out / "metrics_step_4.jsonl").read_text().splitlines()]
    assert first == [1, 2, 3] and resumed == [4]
