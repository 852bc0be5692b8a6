"""Final-answer extraction: expected values written by hand."""

import doctest

import pytest

from repo_ext.data import answers, reward
from repo_ext.data.answers import gsm8k_answer, last_boxed, last_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $x = \boxed{5}$.", "5"),
        (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),  # two levels of nesting
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}.", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"first \boxed{1}, finally \boxed{2}", "2"),  # the last box counts
        (r"\fbox{7} is the answer", "7"),
        (r"\boxed{3} then \fbox{4}", "4"),
        (r"our answer is $\boxed 2$.", "2"),  # no braces: up to the next $ or space
        (r"length $\boxed {17}.$", "17"),  # space before the brace
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{ 12 }", "12"),
        (r"\boxed{2 \text{ euros}}", r"2 \text{ euros}"),
    ],
)
def test_last_boxed_reads_the_last_box(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",  # no box at all
        r"the answer is \boxed{12",  # truncated response: box never closed
        r"there are $\boxed{}$ primes",  # empty box
        r"\boxed",  # command at the very end
        r"\boxeddots{3}",  # another command that merely starts with 'boxed'
    ],
)
def test_last_boxed_none_without_a_complete_box(text):
    assert last_boxed(text) is None


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("so the total is 2,125 pieces\n#### 2,125", "2125"),  # thousands separator removed
        ("#### 1,234,567", "1234567"),
        ("a #### b\n#### -3", "-3"),  # the last '####' counts
    ],
)
def test_gsm8k_answer_after_hashes_without_commas(reference, expected):
    assert gsm8k_answer(reference) == expected


def test_gsm8k_answer_without_hashes_is_an_error():
    with pytest.raises(ValueError, match="####"):
        gsm8k_answer("The answer is 7.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8 - 3 = 5", "5"),
        ("0 - 4 - 8 = -12.", "-12"),
        ("8-7", "7"),  # a minus between digits is the operator, not a sign
        ("The total is 1,234 apples", "1234"),
        ("about 3.5 hours", "3.5"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize("module", [answers, reward], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
