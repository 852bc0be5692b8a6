"""prepare_deepmath.py picks the same rows as the reference (datasets' shuffle(seed=42).select)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "recipe" / "repo" / "prepare_deepmath.py"
_spec = importlib.util.spec_from_file_location("prepare_deepmath", SCRIPT)
prepare_deepmath = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_deepmath)


def fake_deepmath(num_rows: int, start: int = 0) -> pd.DataFrame:
    """Rows shaped like DeepMath-103K's (question, final_answer, difficulty, topic, r1_solution_1)."""
    return pd.DataFrame(
        {
            "question": [f"Compute {i} + {i}." for i in range(start, start + num_rows)],
            "final_answer": [str(2 * i) for i in range(start, start + num_rows)],
            "difficulty": [float(i % 10) for i in range(start, start + num_rows)],
            "topic": ["Mathematics -> Algebra"] * num_rows,
            "r1_solution_1": ["..."] * num_rows,
        }
    )


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "DeepMath-103K" / "data"
    folder.mkdir(parents=True)
    # written out of name order: the shards are read in sorted path order, as load_dataset does
    fake_deepmath(23, start=30).to_parquet(folder / "train-00001-of-00002.parquet")
    fake_deepmath(30, start=0).to_parquet(folder / "train-00000-of-00002.parquet")
    return folder


def reference_selection(table: pd.DataFrame, num: int, seed: int) -> list[str]:
    """The reference's selection, by the datasets library itself."""
    from datasets import Dataset

    return Dataset.from_pandas(table).shuffle(seed=seed).select(range(num))["question"]


def test_same_rows_as_the_reference(shards, tmp_path):
    out = tmp_path / "out"
    assert prepare_deepmath.main(["--input", str(shards.parent), "--out-dir", str(out), "--num-prompts", "8", "--skip-validation-file"]) == 0
    rows = pd.read_parquet(out / "deepmath_8.parquet")
    full = pd.concat([fake_deepmath(30), fake_deepmath(23, start=30)], ignore_index=True)
    expected = reference_selection(full, 8, seed=42)
    assert [r["question"] for r in rows["extra_info"]] == expected
    assert not (out / "math500.parquet").exists()
    first = rows.iloc[0]
    question = expected[0]
    number = int(question.split()[1])
    assert first["data_source"] == "deepmath" and first["ability"] == "math"
    assert list(first["prompt"]) == [{"role": "user", "content": question}]  # the paper's raw prompt
    assert first["reward_model"]["ground_truth"] == str(2 * number)
    assert first["extra_info"]["index"] == number  # the row's position in the concatenated shards
    assert first["extra_info"]["split"] == "train" and first["extra_info"]["topic"] == "Mathematics -> Algebra"


def test_jsonl_input_instruction_prompts_and_validation_file(tmp_path):
    source = tmp_path / "deepmath.jsonl"
    table = fake_deepmath(12)
    source.write_text("".join(json.dumps(r) + "\n" for r in table.to_dict(orient="records")))
    out = tmp_path / "out"
    prepare_deepmath.main(["--input", str(source), "--out-dir", str(out), "--num-prompts", "5", "--seed", "7", "--prompt-style", "instruction"])
    rows = pd.read_parquet(out / "deepmath_5.parquet")
    expected = reference_selection(table, 5, seed=7)
    assert [p[0]["content"] for p in rows["prompt"]] == [
        f"{q} Let's think step by step and output the final answer within \\boxed{{}}." for q in expected
    ]
    validation = pd.read_parquet(out / "math500.parquet")
    assert len(validation) == 500 and set(validation["data_source"]) == {"math500"}
    assert validation.iloc[0]["prompt"][0]["content"].endswith("within \\boxed{}.")


def test_bad_input_is_explained(tmp_path, capsys):
    no_answer = tmp_path / "bad.parquet"
    pd.DataFrame({"question": ["q"], "answer": ["1"]}).to_parquet(no_answer)
    with pytest.raises(SystemExit):
        prepare_deepmath.main(["--input", str(no_answer), "--out-dir", str(tmp_path / "o")])
    assert "final_answer" in capsys.readouterr().err
    small = tmp_path / "small.parquet"
    fake_deepmath(3).to_parquet(small)
    with pytest.raises(SystemExit):
        prepare_deepmath.main(["--input", str(small), "--out-dir", str(tmp_path / "o")])
    assert "--num-prompts 1024: must be in [1, 3]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_deepmath.main(["--input", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")])
    assert "no such file or folder" in capsys.readouterr().err
