"""The usage examples in the algorithm modules' docstrings run and print what they claim."""

from __future__ import annotations

import doctest

import pytest

from repo_ext.algorithm import config, retrieval, store


@pytest.mark.parametrize("module", [retrieval, store, config], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
