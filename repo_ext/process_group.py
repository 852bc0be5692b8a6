"""Stopping a child that runs in its own process group (``start_new_session=True``), Ray included.

Kept free of verl and torch imports: ``repo_ext.demo`` waits on verl's training process for the whole
run, and every module it imports stays in its memory all that time.
"""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["kill_process_group"]


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group of ``proc`` (its pid), wait up to 15 s, then SIGKILL; returns once it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
