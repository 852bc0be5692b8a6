"""Math sources in verl's parquet schema: rows, ground truths and errors, checked by hand."""

import functools
import re

import pandas as pd
import pytest

from repo_ext.data import INSTRUCTION, SOURCES, load_rows, write_parquet
from repo_ext.data.sources import is_held_out_arithmetic

FILE_SOURCES = ("gsm8k_train", "gsm8k_test", "math_train", "math500", "minerva", "math_level5")


@functools.cache
def by_index(source: str) -> dict[int, dict]:
    return {row["extra_info"]["index"]: row for row in load_rows(source)}


def test_sources_are_the_documented_ones():
    assert SOURCES == (*FILE_SOURCES, "arithmetic", "arithmetic_test", "arithmetic_2terms")


@pytest.mark.parametrize(
    ("source", "data_source", "split"),
    [
        ("gsm8k_train", "gsm8k", "train"),
        ("gsm8k_test", "gsm8k", "test"),
        ("math_train", "math", "train"),
        ("math500", "math500", "test"),
        ("minerva", "minerva", "test"),
        ("math_level5", "math_level5", "test"),
        ("arithmetic", "arithmetic", "train"),
        ("arithmetic_test", "arithmetic", "test"),
        ("arithmetic_2terms", "arithmetic", "train"),
    ],
)
def test_rows_follow_verls_schema(source, data_source, split):
    rows = load_rows(source, limit=3)
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        assert row["data_source"] == data_source
        assert row["ability"] == "math"
        assert set(row["reward_model"]) == {"style", "ground_truth"}
        assert row["reward_model"]["style"] == "rule"
        assert isinstance(row["reward_model"]["ground_truth"], str) and row["reward_model"]["ground_truth"]
        assert set(row["extra_info"]) == {"index", "split", "question"}
        assert isinstance(row["extra_info"]["index"], int)
        assert row["extra_info"]["split"] == split
        question = row["extra_info"]["question"]
        assert row["prompt"] == [{"role": "user", "content": question + " " + INSTRUCTION}]
        assert "\\boxed{}" in row["prompt"][0]["content"]


@pytest.mark.parametrize(
    ("source", "size"),
    [
        ("gsm8k_train", 7473),
        ("gsm8k_test", 1319),
        ("math_train", 7498),
        ("math500", 500),
        ("minerva", 272),
        ("math_level5", 1324),
    ],
)
def test_full_sizes(source, size):
    assert len(load_rows(source)) == size


def test_gsm8k_ground_truth_strips_thousands_commas():
    test = by_index("gsm8k_test")
    assert test[146]["reward_model"]["ground_truth"] == "2125"  # reference ends '#### 2,125'
    assert test[201]["reward_model"]["ground_truth"] == "114200"  # '#### 114,200'
    assert test[0]["reward_model"]["ground_truth"] == "18"
    assert test[0]["extra_info"]["question"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert by_index("gsm8k_train")[0]["reward_model"]["ground_truth"] == "72"


def test_math_ground_truth_is_the_last_box_with_nested_braces():
    train = by_index("math_train")
    assert train[0]["reward_model"]["ground_truth"] == "0"
    assert train[11]["reward_model"]["ground_truth"] == r"k = \frac{-33}{2}"
    assert train[16]["reward_model"]["ground_truth"] == r"10\frac{1}{12}"
    assert train[888]["reward_model"]["ground_truth"] == "2"  # solution ends '$\boxed 2$'
    assert train[1011]["reward_model"]["ground_truth"] == "9"  # '\boxed 9$'
    assert 5341 not in train and 5343 not in train  # their solutions end in an empty \boxed{}


def test_math500_uses_its_answer_field():
    math500 = by_index("math500")
    assert math500[0]["reward_model"]["ground_truth"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert math500[0]["extra_info"]["question"].startswith("Convert the point $(0,3)$")


def test_minerva_ground_truth():
    minerva = by_index("minerva")
    assert minerva[0]["reward_model"]["ground_truth"] == "1.6"
    assert minerva[1]["reward_model"]["ground_truth"] == "4.5e33"


def test_math_level5_is_level_5_of_math_test():
    level5 = by_index("math_level5")
    assert min(level5) == 3  # rows 0-2 of math/test.jsonl are levels 3, 1 and 4
    assert level5[3]["extra_info"]["question"] == "Evaluate $i^5+i^{-25}+i^{45}$."
    assert level5[3]["reward_model"]["ground_truth"] == "i"
    assert level5[9]["reward_model"]["ground_truth"] == r"-\frac{1}{8}"


def chain_sum_value(question: str) -> int:
    expression = re.fullmatch(r"State the final answer to the following arithmetic problem: (.*) =", question).group(1)
    tokens = expression.split()
    total = int(tokens[0])
    for operator, number in zip(tokens[1::2], tokens[2::2]):
        total = total + int(number) if operator == "+" else total - int(number)
    return total


def test_arithmetic_ground_truth_is_the_value_of_the_expression():
    rows = load_rows("arithmetic", limit=64) + load_rows("arithmetic_test", limit=64)
    for row in rows:
        question = row["extra_info"]["question"]
        terms = re.findall(r"\d+", question)
        assert 2 <= len(terms) <= 3 and all(len(term) == 1 for term in terms)
        assert row["reward_model"]["ground_truth"] == str(chain_sum_value(question))


def test_arithmetic_train_and_test_are_disjoint_and_distinct():
    train = load_rows("arithmetic", limit=300)
    test = load_rows("arithmetic_test", limit=100, seed=5)
    train_questions = {row["extra_info"]["question"] for row in train}
    test_questions = {row["extra_info"]["question"] for row in test}
    assert len(train_questions) == 300 and len(test_questions) == 100
    assert not train_questions & test_questions
    assert len({row["extra_info"]["index"] for row in train}) == 300


def test_two_term_arithmetic_is_every_two_term_train_question_and_none_held_out():
    # one-digit operands 0-9, + or -: 10 x 2 x 10 = 200 questions; the hash split keeps about 3/4 as train
    everything = [f"State the final answer to the following arithmetic problem: {a} {op} {b} =" for a in range(10)
                  for op in "+-" for b in range(10)]
    train_side = {q for q in everything if not is_held_out_arithmetic(q)}
    rows = load_rows("arithmetic_2terms", limit=len(train_side))
    questions = {row["extra_info"]["question"] for row in rows}
    assert questions == train_side and 120 < len(train_side) < 170
    for row in rows:
        assert row["reward_model"]["ground_truth"] == str(chain_sum_value(row["extra_info"]["question"]))
        assert row["data_source"] == "arithmetic"  # graded as arithmetic: last number when there is no box
    held_out = {row["extra_info"]["question"] for row in load_rows("arithmetic_test", limit=300)}
    assert not questions & held_out
    with pytest.raises(ValueError, match=f"limit={len(train_side) + 1} is more distinct"):
        load_rows("arithmetic_2terms", limit=len(train_side) + 1)


def test_arithmetic_index_is_stable_across_seeds():
    # item k of the stream seeded s is made from random.Random(s + k): the same question keeps its index
    seed0 = {r["extra_info"]["index"]: r["extra_info"]["question"] for r in load_rows("arithmetic", limit=20)}
    seed3 = {r["extra_info"]["index"]: r["extra_info"]["question"] for r in load_rows("arithmetic", limit=20, seed=3)}
    shared = set(seed0) & set(seed3)
    assert shared
    assert all(seed0[index] == seed3[index] for index in shared)
    assert min(seed3) >= 3


def test_limit_gives_nested_seeded_subsets_in_file_order():
    small = [row["extra_info"]["index"] for row in load_rows("gsm8k_test", limit=5, seed=1)]
    large = [row["extra_info"]["index"] for row in load_rows("gsm8k_test", limit=20, seed=1)]
    assert small == sorted(small) and large == sorted(large)
    assert set(small) <= set(large)
    assert [row["extra_info"]["index"] for row in load_rows("gsm8k_test", limit=5, seed=1)] == small
    assert [row["extra_info"]["index"] for row in load_rows("gsm8k_test", limit=5, seed=2)] != small
    assert len(load_rows("minerva", limit=10_000)) == 272  # a limit above the size gives every row


def test_split_tag_overrides_the_split():
    assert {row["extra_info"]["split"] for row in load_rows("math500", limit=4, split_tag="val")} == {"val"}


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="gsm8k_train.*arithmetic_test"):
        load_rows("gsm8k")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        load_rows("math500", limit=limit)


def test_arithmetic_needs_a_limit():
    with pytest.raises(ValueError, match="limit"):
        load_rows("arithmetic")


def test_write_parquet_round_trip(tmp_path):
    rows = load_rows("math500", limit=2) + load_rows("arithmetic", limit=2)
    path = write_parquet(rows, tmp_path / "nested" / "train.parquet")
    table = pd.read_parquet(path)
    assert list(table["data_source"]) == ["math500", "math500", "arithmetic", "arithmetic"]
    ground_truths = [row["reward_model"]["ground_truth"] for row in rows]
    assert list(table["reward_model"].map(lambda r: r["ground_truth"])) == ground_truths
    assert [list(p) for p in table["prompt"]] == [r["prompt"] for r in rows]
    assert list(table["extra_info"].map(lambda e: int(e["index"]))) == [r["extra_info"]["index"] for r in rows]


def test_write_parquet_refuses_no_rows(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_parquet([], tmp_path / "empty.parquet")
