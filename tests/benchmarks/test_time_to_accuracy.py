"""benchmarks/time_to_accuracy.py (the pre-registered study's report) on two made-up pairs, by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "time_to_accuracy.py"


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _pair(folder: Path, seed: int, base: float, grpo: list[float], repo: list[float], finished: bool = True) -> None:
    def evals(acc):
        return {str(step): {"pass@1": a, "cumulative_train_s": 100.0 * step} for step, a in zip((8, 16, 24), acc)}

    arms = {"stock_grpo": {"evaluations": evals(grpo)}}
    if finished:
        arms["recent_k_skip"] = {"evaluations": evals(repo)}
    out = folder / f"seed_{seed}"
    out.mkdir(parents=True)
    (out / "bench_repo_vs_grpo.json").write_text(json.dumps(
        {"settings": {"seed": seed}, "base_heldout": {"pass@1": base}, "arms": arms, "estimates": {}}
    ))


def test_study_by_hand(tta, tmp_path):
    # pair 1: GRPO 0.2, 0.3, 0.3, 0.3 -> (0.25 x 8 + 0.3 x 8 + 0.3 x 8) / 24 = 0.283333;
    #         RePO 0.2, 0.3, 0.4, 0.4 -> (2 + 2.8 + 3.2) / 24 = 0.333333; difference 0.05
    # pair 2: GRPO 0.2, 0.2, 0.3, 0.3 -> (1.6 + 2.0 + 2.4) / 24 = 0.25; RePO as pair 1's GRPO; difference 0.033333
    _pair(tmp_path, 1, 0.2, [0.3, 0.3, 0.3], [0.3, 0.4, 0.4])
    _pair(tmp_path, 2, 0.2, [0.2, 0.3, 0.3], [0.3, 0.3, 0.3])
    _pair(tmp_path, 3, 0.2, [0.2, 0.3, 0.3], [], finished=False)  # still running: not counted
    s = tta.study(tmp_path)
    assert s["n_pairs"] == 2
    assert s["pairs"][0]["auc_difference"] == pytest.approx(0.05)
    assert s["pairs"][1]["auc_difference"] == pytest.approx(0.283333 - 0.25, abs=1e-6)
    # mean 0.0416667, sd |0.05 - 0.0333333| / sqrt 2 = 0.0117851, half-width 12.7062 x 0.0117851 / sqrt 2 = 0.105886
    d = s["auc_difference"]
    assert d["estimate"] == pytest.approx(0.0416667, abs=1e-6)
    assert (d["low"], d["high"]) == pytest.approx((0.0416667 - 0.105886, 0.0416667 + 0.105886), abs=2e-5)
    assert s["decision"].startswith("interim (2 of 4 pairs") and "no difference detected" in s["decision"]
    # secondary: first evaluated step with accuracy >= 0.30, and the training seconds there
    assert s["pairs"][1]["arms"]["stock_grpo"]["reached"] == {"step": 16, "train_seconds": 1600.0}
    assert s["pairs"][1]["arms"]["recent_k_skip"]["reached"] == {"step": 8, "train_seconds": 800.0}
    # planned MDD: (3.182446 + 0.978472) x 0.03 / 2
    assert s["mdd_planned"] == pytest.approx(0.0624138, abs=1e-6)
