"""math-verify in a helper process, so its timeouts work for callers on any thread.

math-verify bounds parsing and comparison with ``signal.alarm``, which only the main thread of a
process may use; verl calls reward functions from a thread pool. :class:`GradingProcess` keeps one
``python -m repo_ext.data.grading_process`` child whose main thread grades with math-verify's own
timeouts. The parent waits with a deadline on top; a child that misses it (a computation the alarm
cannot interrupt) or dies is killed and replaced, and that answer counts as wrong.

A plain subprocess with a line protocol (JSON in, JSON out) rather than ``multiprocessing``: a
spawned multiprocessing child re-imports the caller's ``__main__``, which loops forever when that
script is not guarded by ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

_logger = logging.getLogger(__name__)
_READY = "ready"
# a fresh child imports sympy; on a loaded 2-core machine that can take tens of seconds
STARTUP_DEADLINE_SECONDS = 120.0


class GradingProcess:
    """One child process grading ``(answer, ground_truth)`` pairs; thread-safe, started lazily.

    Example::

        grader = GradingProcess()
        grader.grade("\\\\frac{1}{2}", "0.5", timeout_seconds=5)  # True
        grader.close()
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def grade(self, answer: str, ground_truth: str, timeout_seconds: int) -> bool:
        """``answers.answers_match(answer, ground_truth, timeout_seconds)`` run in the child.

        Waits at most ``3 * timeout_seconds + 5`` seconds once the child is up (math-verify bounds
        each of two parses and the comparison by ``timeout_seconds``); returns False on a miss.
        """
        request = json.dumps({"answer": answer, "ground_truth": ground_truth, "timeout": timeout_seconds})
        with self._lock:
            try:
                process = self._running_process()
                process.stdin.write(request + "\n")
                process.stdin.flush()
                reply = self._read_line(process, deadline=3 * timeout_seconds + 5.0)
            except (OSError, TimeoutError) as error:
                _logger.warning("grading %r against %r failed (%s); restarting the grader, scoring 0",
                                answer, ground_truth, error)
                self._kill()
                return False
        return bool(json.loads(reply)["match"])

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process's end of the pipe closes)."""
        with self._lock:
            self._kill()

    def _running_process(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-m", "repo_ext.data.grading_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._process = process
        if self._read_line(process, deadline=STARTUP_DEADLINE_SECONDS) != _READY:
            raise OSError("the grading process did not start")
        return process

    @staticmethod
    def _read_line(process: subprocess.Popen, deadline: float) -> str:
        ready, _, _ = select.select([process.stdout], [], [], deadline)
        if not ready:
            raise TimeoutError(f"no answer from the grading process within {deadline:.0f} s")
        line = process.stdout.readline()
        if not line:
            raise OSError(f"the grading process exited (code {process.poll()})")
        return line.strip()

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
            self._process = None


def serve() -> None:
    """Child side: grade one JSON request per stdin line until stdin closes."""
    from repo_ext.data.answers import answers_match

    replies = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not end up in the protocol
    answers_match("1", "1", 5)  # import sympy and math-verify before saying ready
    print(_READY, file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            match = answers_match(request["answer"], request["ground_truth"], request["timeout"])
        except Exception:  # noqa: BLE001 - a model's answer must never stop the grader
            _logger.exception("math-verify failed on %r; scoring 0", request["answer"])
            match = False
        print(json.dumps({"match": bool(match)}), file=replies, flush=True)


if __name__ == "__main__":
    serve()
