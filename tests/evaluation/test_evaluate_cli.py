"""``python -m repo_ext.evaluation`` end to end: a tiny random model, a scripted generator with known
answers (so the reported numbers can be checked by hand), verl checkpoints, and bad input."""

from __future__ import annotations

import json
import re

import pytest

import repo_ext.evaluation.cli as evaluate
from repo_ext.evaluation.generation import Completion


def test_tiny_model_end_to_end(tiny_model_dir, tmp_path, capsys):
    toy = tmp_path / "toy.jsonl"
    toy.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    out = tmp_path / "results.json"
    code = evaluate.main(
        [
            "--model", str(tiny_model_dir),
            "--benchmarks", "math500",
            "--benchmark-file", f"toy={toy}",
            "--limit", "2", "--n", "2", "--max-new-tokens", "4",
            "--out", str(out), "--save-responses",
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert list(results["benchmarks"]) == ["math500", "toy"]
    assert results["sampling"] == {"n": 2, "temperature": 0.2, "top_p": 0.95, "top_k": 50, "max_new_tokens": 4, "seed": 0}
    for name in ("math500", "toy"):
        summary = results["benchmarks"][name]
        assert summary["problems"] == 2 and summary["samples_per_problem"] == 2
        assert set(summary["pass@k"]) == {"1", "2"}
        responses = results["responses"][name]
        assert len(responses) == 2 and all(len(r["samples"]) == 2 for r in responses)
        assert all(1 <= s["num_tokens"] <= 4 for r in responses for s in r["samples"])
        # the reported accuracy is the mean of the saved scores
        scores = [s["score"] for r in responses for s in r["samples"]]
        assert summary["pass@1"] == pytest.approx(sum(scores) / len(scores))
    table = capsys.readouterr().out
    assert "| Benchmark | Problems | n | pass@1 (avg@n) | pass@2 | Answered | Mean tokens | Truncated |" in table
    assert "| math500 | 2 | 2 |" in table and "| toy | 2 | 2 |" in table and "| Average |" in table


class ScriptedGenerator:
    """Answers problem i's sample j correctly when pattern[i][j] is True (prompts come in file order)."""

    def __init__(self, answers: list[str], pattern: list[list[bool]]):
        self.answers, self.pattern = answers, pattern

    @staticmethod
    def text(answer: str, ok: bool, j: int) -> str:
        if ok:
            return f"so the answer is $\\boxed{{{answer}}}$"
        return "I cannot tell, maybe 3." if j == 3 else "so the answer is $\\boxed{x+1}$"

    def generate(self, prompts, settings):
        assert len(prompts) == len(self.answers) and settings.n == len(self.pattern[0])
        return [
            [
                Completion(text=self.text(answer, ok, j), num_tokens=10 + j, truncated=j == 0)
                for j, ok in enumerate(row)
            ]
            for answer, row in zip(self.answers, self.pattern)
        ]


def test_reported_numbers_from_known_answers(tiny_model_dir, tmp_path, monkeypatch):
    answers = ["\\frac{1}{2}", "72", "3\\sqrt{2}"]
    toy = tmp_path / "known.jsonl"
    toy.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    pattern = [[True, False, False, False], [True, True, True, False], [False, False, False, False]]
    monkeypatch.setattr(evaluate, "_make_generator", lambda args, model_dir: ScriptedGenerator(answers, pattern))
    out = tmp_path / "known.json"
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", "none", "--benchmark-file", f"known={toy}", "--n", "4", "--out", str(out)])
    summary = json.loads(out.read_text())["benchmarks"]["known"]
    # c = 1, 3, 0 correct of n = 4
    assert summary["pass@1"] == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
    # pass@2 = 1 - C(n-c,2)/C(4,2): c=1 -> 1 - 3/6, c=3 -> 1 - 0, c=0 -> 0
    assert summary["pass@k"]["2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["pass@k"]["4"] == pytest.approx(2 / 3)
    assert summary["mean_response_tokens"] == pytest.approx((10 + 11 + 12 + 13) / 4)
    assert summary["truncated_fraction"] == pytest.approx(1 / 4)
    # the three wrong 4th samples have no \boxed{}: the grader cannot read an answer there
    assert summary["answered_fraction"] == pytest.approx(9 / 12)


def test_verl_checkpoint_end_to_end(verl_checkpoints, tmp_path):
    sharded, _ = verl_checkpoints
    out = tmp_path / "ckpt.json"
    evaluate.main(["--model", str(sharded / "global_step_1"), "--benchmarks", "gsm8k_test", "--limit", "1", "--max-new-tokens", "2", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["model_kind"] == "verl-merged"
    assert results["model_dir"] == str(sharded / "global_step_1" / "actor" / "huggingface_merged")
    assert results["benchmarks"]["gsm8k_test"]["problems"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n", "2", "--pass-k", "1,3"], "every k must be in \\[1, --n=2\\]"),
        (["--n", "2", "--temperature", "0"], "identical samples"),
        (["--benchmarks", "aime24"], "not a built-in benchmark"),
        (["--benchmarks", "none"], "no benchmark selected"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--top-p", "0"], "--top-p must be in"),
        (["--benchmark-file", "aime24"], "NAME=path.jsonl"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(extra, message, tmp_path, capsys):
    # the model path does not exist: every one of these must be caught before the model is touched
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--model", str(tmp_path / "no-model"), *extra])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
