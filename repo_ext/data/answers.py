"""Final-answer extraction from reference solutions and model responses.

- GSM8K references end with ``#### 1,234``: the answer is the text after the last ``####`` with the
  thousands separators removed.
- MATH and Minerva references put the answer in the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) of
  the solution. The content may hold nested braces (``\\boxed{\\frac{1}{2}}``), so it is read by
  matching braces, not with a regular expression. A few MATH solutions write ``\\boxed 2`` or
  ``\\boxed {17}``; both are read too.

Model responses go through the same :func:`last_boxed`, so references and predictions are read
alike. :func:`answers_match` compares an extracted answer with the reference (math-verify).
"""

from __future__ import annotations

import logging
import re

#: math-verify's bound on each parse and on the comparison, seconds
DEFAULT_TIMEOUT_SECONDS = 5

_logger = logging.getLogger(__name__)

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# a number as written in a response: optional sign, digits with optional thousands commas, decimals
# (a minus right after a digit or a bracket is the operator of "8-7", not a sign)
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed``/``\\fbox`` in ``text``, or None.

    ``\\boxed{...}`` is read up to its matching closing brace (escaped ``\\{`` ``\\}`` do not
    count); ``\\boxed 5`` (no braces) is read up to the next space or ``$``. Returns None when
    there is no box, the last box is not closed (a truncated response), or it is empty.

    >>> last_boxed(r"so $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{1} then \\boxed 7$")
    '7'
    >>> last_boxed(r"cut off: \\boxed{12") is None
    True
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    while start < len(text) and text[start].isspace():
        start += 1
    if start == len(text):
        return None
    if text[start] != "{":
        end = start
        while end < len(text) and not text[end].isspace() and text[end] != "$":
            end += 1
        return text[start:end] or None
    depth = 0
    position = start
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2  # an escaped character, e.g. \{ or \}, never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                content = text[start + 1 : position].strip()
                return content or None
        position += 1
    return None


def gsm8k_answer(reference: str) -> str:
    """The number after the last ``####`` of a GSM8K reference, commas removed ("1,234" -> "1234").

    Raises:
        ValueError: the reference has no ``####`` line.
    """
    if "####" not in reference:
        raise ValueError(f"GSM8K reference has no '####' final-answer line: {reference[-120:]!r}")
    return reference.rsplit("####", 1)[1].strip().replace(",", "")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands commas removed), or None.

    >>> last_number("8 + 7 = 15, so the answer is -1,204.5 apples")
    '-1204.5'
    """
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def answers_match(answer: str, ground_truth: str, timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """math-verify equivalence of an extracted answer and the ground truth (both LaTeX or plain).

    Both are wrapped in ``\\boxed{}`` so math-verify reads exactly them. Uses ``signal.alarm``
    when ``timeout_seconds`` is set: call it on a main thread (``reward.compute_score`` does, or
    grades in ``grading_process`` off the main thread).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold = parse(f"\\boxed{{{ground_truth}}}", [LatexExtractionConfig()], parsing_timeout=timeout_seconds)
    if not gold:
        _logger.warning("math-verify cannot parse the ground truth %r; scoring 0", ground_truth)
        return False
    predicted = parse(
        f"\\boxed{{{answer}}}",
        [LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=timeout_seconds,
    )
    return bool(predicted) and verify(gold, predicted, timeout_seconds=timeout_seconds)

