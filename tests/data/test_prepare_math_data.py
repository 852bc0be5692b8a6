"""examples/prepare_math_data.py on a few rows."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "prepare_math_data.py"


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("prepare_math_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_writes_arithmetic_train_and_test(prepare, tmp_path):
    out = tmp_path / "arith"
    assert prepare(["--train", "arithmetic", "--test", "arithmetic_test",
                    "--train-size", "8", "--test-size", "4", "--out", str(out)]) == 0
    train = pd.read_parquet(out / "train.parquet")
    test = pd.read_parquet(out / "test.parquet")
    assert len(train) == 8 and len(test) == 4
    assert set(train["data_source"]) == {"arithmetic"}
    assert set(train["extra_info"].map(lambda e: e["split"])) == {"train"}
    assert set(test["extra_info"].map(lambda e: e["split"])) == {"test"}
    questions = [set(table["extra_info"].map(lambda e: e["question"])) for table in (train, test)]
    assert not questions[0] & questions[1]


def test_several_sources_per_split(prepare, tmp_path):
    out = tmp_path / "math"
    assert prepare(["--test", "gsm8k_test", "math500", "minerva", "--test-size", "3", "--out", str(out)]) == 0
    test = pd.read_parquet(out / "test.parquet")
    assert list(test["data_source"]) == ["gsm8k"] * 3 + ["math500"] * 3 + ["minerva"] * 3
    assert not (out / "train.parquet").exists()


def test_generated_source_needs_a_size(prepare, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare(["--train", "arithmetic", "--out", str(tmp_path)])
    assert "--train-size" in capsys.readouterr().err


def test_unknown_source_is_refused(prepare, tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare(["--train", "gsm8k", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
