"""The RePO trainer's run-long counters, saved with the replay store and restored on resume.

- ``total_injected``: replayed rows injected since the run started. ``replay_health`` diagnoses a
  stalled replay when it is still 0 after the gate step; a resumed run that started it from 0 again
  would warn "replay stalled" although replay has been working for the whole run.
- ``bad_rows``: on-policy rows not stored, by reason (``insert_on_policy_rows``), logged as
  ``repo/bad_rows_<reason>``; cumulative over the run, not over one process.
- ``store_start_step``: the step after which the store started empty (0; the resumed step after a
  warm start from a checkpoint without a store). The gate, and so the stall diagnosis, counts from it.

They travel in the ``extra`` dict of ``store_checkpoint.save_store_state`` (JSON), under
:data:`EXTRA_KEY`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

EXTRA_KEY = "repo_trainer_counters"


def counters_extra(total_injected: int, bad_rows: Mapping[str, int], store_start_step: int = 0) -> dict[str, Any]:
    """The ``extra`` dict for ``save_store_state``."""
    return {
        EXTRA_KEY: {
            "total_injected": int(total_injected),
            "bad_rows": {str(k): int(v) for k, v in bad_rows.items()},
            "store_start_step": int(store_start_step),
        }
    }


def restore_counters(extra: Mapping[str, Any]) -> tuple[int, defaultdict[str, int]]:
    """``(total_injected, bad_rows)`` from the ``extra`` dict ``load_store_state`` returned.

    A checkpoint written before the counters were saved gives ``(0, {})``: the counters restart,
    as they always did.
    """
    counters = extra.get(EXTRA_KEY) or {}
    bad_rows: defaultdict[str, int] = defaultdict(int)
    bad_rows.update({str(k): int(v) for k, v in (counters.get("bad_rows") or {}).items()})
    return int(counters.get("total_injected", 0)), bad_rows


def restore_store_start_step(extra: Mapping[str, Any]) -> int:
    """``store_start_step`` from the ``extra`` dict ``load_store_state`` returned (0 when not saved)."""
    return int((extra.get(EXTRA_KEY) or {}).get("store_start_step", 0))
