"""The rule reward on known right and wrong answers (expected scores written by hand)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from repo_ext.data import reward
from repo_ext.data.reward import compute_score


@pytest.mark.parametrize(
    ("data_source", "response", "ground_truth", "expected"),
    [
        # equal values in other forms
        ("math", r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}", 1.0),
        ("math", r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        ("math500", r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        ("math500", r"\boxed{\dfrac{9}{7}}", r"\frac{9}{7}", 1.0),
        ("math500", r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        ("gsm8k", r"She makes \boxed{18} dollars.", "18", 1.0),
        ("gsm8k", r"\boxed{1,234}", "1234", 1.0),
        ("gsm8k", r"\boxed 5", "5", 1.0),
        ("minerva", r"\boxed{4.5e33}", "4.5e33", 1.0),
        ("math_level5", r"\boxed{i}", "i", 1.0),
        # wrong values
        ("math", r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
        ("gsm8k", r"\boxed{17}", "18", 0.0),
        ("math500", r"\boxed{\left( 3, \frac{\pi}{3} \right)}", r"\left( 3, \frac{\pi}{2} \right)", 0.0),
        # the last box counts
        ("math", r"maybe \boxed{1}, no: \boxed{2}", "2", 1.0),
        ("math", r"maybe \boxed{1}, no: \boxed{2}", "1", 0.0),
        # math sources require a box
        ("gsm8k", "The answer is 18.", "18", 0.0),
        ("math", "x = 0.5", r"\frac{1}{2}", 0.0),
        ("math", r"the answer is \boxed{12", "12", 0.0),  # truncated
        ("math", r"\boxed{}", "0", 0.0),
        ("math", "", "0", 0.0),
        # any other data_source (a user's benchmark) is graded like the math sources
        ("aime24", r"\boxed{204}", "204", 1.0),
        ("aime24", "204", "204", 0.0),
        # arithmetic: the box if there is one, else the last number
        ("arithmetic", "4 + 5 = 9", "9", 1.0),
        ("arithmetic", "0 - 4 - 8 = -12.", "-12", 1.0),
        ("arithmetic", "0 - 4 - 8 = 12.", "-12", 0.0),
        ("arithmetic", r"\boxed{9}, check: 4 + 6 = 10", "9", 1.0),
        ("arithmetic", r"\boxed{8}, check: 4 + 5 = 9", "9", 0.0),
        ("arithmetic", "no idea", "9", 0.0),
    ],
)
def test_compute_score(data_source, response, ground_truth, expected):
    score = compute_score(data_source, response, ground_truth)
    assert type(score) is float
    assert score == expected


def test_accepts_verls_keyword_call():
    # verl 0.9.1's naive reward manager passes these keywords, plus reward_kwargs from the config
    score = compute_score(
        data_source="gsm8k",
        solution_str=r"\boxed{72}",
        ground_truth="72",
        extra_info={"index": 0, "split": "train", "num_turns": None, "rollout_reward_scores": {}},
        reward_router_address=None,
    )
    assert score == 1.0


@pytest.mark.parametrize("timeout_seconds", [0, 1.5, None])
def test_bad_timeout(timeout_seconds):
    with pytest.raises(ValueError, match="timeout_seconds"):
        compute_score("math", r"\boxed{1}", "1", timeout_seconds=timeout_seconds)


def test_off_the_main_thread_grades_in_a_helper_process_that_restarts():
    cases = [("math", r"\boxed{\frac{1}{2}}", "0.5"), ("math", r"\boxed{3}", "2"), ("arithmetic", "4 + 5 = 9", "9")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(lambda case: compute_score(*case), cases)) == [1.0, 0.0, 1.0]
        helper = reward._grading_process._process
        assert helper is not None and helper.pid != os.getpid()
        helper.kill()  # a dead helper is replaced on the next call
        helper.wait()
        assert list(pool.map(lambda case: compute_score(*case), cases)) == [1.0, 0.0, 1.0]
        assert reward._grading_process._process.pid != helper.pid
    reward._grading_process.close()
