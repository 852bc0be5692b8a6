"""Rule reward for the math sources: math-verify on the response's final ``\\boxed{}`` answer.

verl calls a custom reward function as ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=..., **reward_kwargs)`` (verl 0.9.1,
experimental/reward_loop/reward_manager/naive.py), with ``solution_str`` the decoded response
and the keyword arguments of ``reward.custom_reward_function.reward_kwargs`` merged in. Point
verl at it with::

    reward.custom_reward_function.path=pkg://repo_ext.data.reward
    reward.custom_reward_function.name=compute_score

The score is 1.0 when the answer is mathematically equal to the ground truth (math-verify: exact
string, numeric within rounding, or symbolic equality, so ``\\boxed{0.5}`` matches ``\\frac{1}{2}``),
else 0.0. Unreadable answers score 0.0; nothing raises on a model's output.

Which answer counts, per data source:

- every math benchmark (gsm8k, math, math500, minerva, math_level5, and any other name, e.g. a
  user's AIME file): only the LAST ``\\boxed{}`` of the response. A response without one scores 0:
  the prompt asks for ``\\boxed{}``, and math-verify's own fallback (the last number anywhere)
  would reward stray numbers in long, unfinished derivations.
- ``arithmetic``: the last ``\\boxed{}``; when there is none, the last number of the response.
  Chain sums are answered in one line ("4 + 5 = 9"), where the last number is the answer, and
  SmolLM2-135M-Instruct almost never writes the box (0 of 64 sampled answers at temperature 1.0):
  with the box required, every demo group would score all zeros.

Timeouts: math-verify bounds each parse and comparison with ``signal.alarm``, which works only on
a process's main thread, and verl calls the reward from a thread pool (``run_in_executor``). On
the main thread we grade in place; on any other thread the grading runs in one helper process
(:class:`repo_ext.data.grading_process.GradingProcess`, started on first use), whose main thread
can use the alarm, with an overall deadline as a backstop.
"""

from __future__ import annotations

import threading

from repo_ext.data.answers import DEFAULT_TIMEOUT_SECONDS, answers_match, last_boxed, last_number
from repo_ext.data.grading_process import GradingProcess

LAST_NUMBER_SOURCES = frozenset({"arithmetic"})

_grading_process = GradingProcess()  # starts a child only when called off the main thread


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    **kwargs,
) -> float:
    """1.0 if the response's final answer equals ``ground_truth``, else 0.0.

    Args:
        data_source: the row's ``data_source``; decides whether a response without ``\\boxed{}``
            can still score (only for :data:`LAST_NUMBER_SOURCES`).
        solution_str: the decoded model response.
        ground_truth: the reference answer (LaTeX or a number), as in ``reward_model.ground_truth``.
        extra_info: the row's ``extra_info`` (unused; part of verl's calling convention).
        timeout_seconds: limit for each math-verify parse and comparison (whole seconds >= 1).
        **kwargs: other keywords verl passes (e.g. ``reward_router_address``); ignored.

    >>> compute_score("math", "So $x=\\\\boxed{0.5}$.", "\\\\frac{1}{2}")
    1.0
    >>> compute_score("math", "x = 0.5", "\\\\frac{1}{2}"), compute_score("arithmetic", "4 + 5 = 9", "9")
    (0.0, 1.0)
    """
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int) or timeout_seconds < 1:
        raise ValueError(
            f"timeout_seconds={timeout_seconds!r}: math-verify's alarm takes whole seconds; use an int >= 1."
        )
    answer = final_answer(data_source, solution_str)
    if answer is None:
        return 0.0
    if threading.current_thread() is threading.main_thread():
        return 1.0 if answers_match(answer, ground_truth, timeout_seconds) else 0.0
    return 1.0 if _grading_process.grade(answer, ground_truth, timeout_seconds) else 0.0


def final_answer(data_source: str, solution_str: str) -> str | None:
    """The answer a response gives for ``data_source`` (see the module docstring), or None."""
    answer = last_boxed(solution_str)
    if answer is None and data_source in LAST_NUMBER_SOURCES:
        answer = last_number(solution_str)
    return answer
