"""Test order for ``make test``'s two workers: the long end-to-end files first.

``make test`` runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder``: each file goes whole to one
worker, in collection order, and a worker takes the next file once it has at most 2 tests left.
pytest-xdist's default reorder (files with more tests first) would queue the end-to-end files, which
hold 1-6 tests of minutes each, last, and a worker could then hold two or three of them while the
other has nothing left to run. Longest first instead: files by the longest timeout their tests are
marked with (an unmarked e2e test counts the configured one), then every other file in its usual order.
"""

from __future__ import annotations

import pytest


def _expected_length(item: pytest.Item, default_timeout: float) -> float:
    """A test's own ``timeout`` mark (set where a test is known to be long); else the configured
    timeout for one marked ``e2e``; else 0."""
    timeout = item.get_closest_marker("timeout")
    if timeout is not None and timeout.args:
        return float(timeout.args[0])
    return default_timeout if item.get_closest_marker("e2e") is not None else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default_timeout = float(config.getini("timeout") or 0)
    first_index: dict = {}
    longest: dict = {}
    for index, item in enumerate(items):
        first_index.setdefault(item.path, index)
        longest[item.path] = max(longest.get(item.path, 0.0), _expected_length(item, default_timeout))
    # a stable sort keeps each file's tests together and in their order
    items.sort(key=lambda item: (-longest[item.path], first_index[item.path]))
