"""Peak memory of a whole process tree (a ``make demo`` run, a verl run, anything): PSS summed.

Runs a command, and every ``--interval`` seconds reads ``/proc/<pid>/smaps_rollup`` of every
process that belongs to the run: the command's descendants plus every process in a session that
one of them started (verl's driver starts Ray in a new session, and Ray's daemons and workers
are re-parented when their parent exits). PSS (proportional set size) divides each shared page
among the processes that map it, so summing PSS over processes counts every page once; summed RSS
counts shared pages (torch's libraries, Ray's shared-memory object store) once per process.

Reported: the peak of the PSS sum (and the RSS sum at that moment), the number of processes, and
the processes at the peak, largest first, grouped by name (``ray::WorkerDict``, ``raylet``,
``dashboard``, ``python -m repo_ext.demo`` ...). The load average is recorded at the start and the
end: on a shared machine timings mean little without it.

    .venv/bin/python benchmarks/bench_memory.py --json runs/mem.json -- \\
        .venv/bin/python -m repo_ext.demo --preset quick --skip-eval

The command's exit code is returned; ``--json`` keeps every sample's total and the peak's process
table. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROC = Path("/proc")
GIB = 1024**3


@dataclass(frozen=True)
class ProcessMemory:
    """One process at one moment; sizes in bytes."""

    pid: int
    name: str
    pss: int
    rss: int


@dataclass
class Sample:
    seconds: float
    pss: int
    rss: int
    processes: list[ProcessMemory] = field(default_factory=list)


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` fields in bytes, e.g. ``{"Rss": ..., "Pss": ..., "Pss_Anon": ...}``.

    The kernel writes ``Name:   <number> kB`` lines after a header line; other lines are skipped.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB" and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) * 1024
    return fields


def process_name(cmdline: bytes, comm: str) -> str:
    """A readable name: Ray's process titles as they are (``ray::WorkerDict``), ``python -m mod``
    for module runs, the script's file name for scripts, the executable's name otherwise."""
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if not args:
        return comm or "?"
    first = args[0]
    if first.startswith("ray::") or " " in first and not os.path.exists(first):
        return first.split(" (")[0].strip()  # a process title set by Ray (setproctitle)
    exe = os.path.basename(first)
    if exe.startswith("python"):
        rest = args[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m" and rest[0] != "-c":
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            return f"python -m {rest[1]}"
        if rest and rest[0] == "-c":
            return "python -c"
        if rest:
            return os.path.basename(rest[0])
    return exe


def _read_proc(pid: int) -> tuple[int, int, int] | None:
    """(pid, parent pid, session id) from ``/proc/PID/stat``; None when the process is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    rest = stat[stat.rindex(")") + 2 :].split()
    return pid, int(rest[1]), int(rest[3])  # ppid, session


def run_processes(root: int, sessions: set[int] | None = None) -> set[int]:
    """Every live process of the run: ``root``'s descendants and every process in their sessions.

    ``sessions`` (updated in place) remembers the sessions seen in earlier calls, so a daemon
    whose parent has exited (re-parented to init) is still found by its session.
    """
    sessions = set() if sessions is None else sessions
    table = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = _read_proc(int(entry.name))
            if info:
                table[info[0]] = (info[1], info[2])
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    members = set()
    stack = [root] if root in table else []
    while stack:
        pid = stack.pop()
        if pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, []))
    if root in table:
        # the root's own session is the caller's terminal (this script, the shell): not the run's
        sessions |= {table[pid][1] for pid in members} - {table[root][1]}
    members |= {pid for pid, (_, sid) in table.items() if sid in sessions}
    return members


def measure(pid: int) -> ProcessMemory | None:
    base = PROC / str(pid)
    try:
        fields = parse_smaps_rollup((base / "smaps_rollup").read_text())
        cmdline = (base / "cmdline").read_bytes()
        comm = (base / "comm").read_text().strip()
    except OSError:  # gone, or a kernel thread without smaps
        return None
    if "Pss" not in fields:
        return None
    return ProcessMemory(pid=pid, name=process_name(cmdline, comm), pss=fields["Pss"], rss=fields.get("Rss", 0))


def take_sample(root: int, started: float, sessions: set[int] | None = None) -> Sample:
    processes = [m for pid in sorted(run_processes(root, sessions)) if (m := measure(pid)) is not None]
    return Sample(
        seconds=time.monotonic() - started,
        pss=sum(p.pss for p in processes),
        rss=sum(p.rss for p in processes),
        processes=processes,
    )


def group_by_name(processes: list[ProcessMemory]) -> list[tuple[str, int, int, int]]:
    """(name, count, PSS sum, RSS sum) per process name, largest PSS first."""
    groups: dict[str, list[ProcessMemory]] = {}
    for p in processes:
        groups.setdefault(p.name, []).append(p)
    rows = [(name, len(ps), sum(p.pss for p in ps), sum(p.rss for p in ps)) for name, ps in groups.items()]
    return sorted(rows, key=lambda row: -row[2])


def loadavg() -> str:
    try:
        return " ".join((PROC / "loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class TreeSampler:
    """Samples the run rooted at ``pid`` in a thread until :meth:`stop`; keeps the peak sample."""

    def __init__(self, pid: int, interval: float):
        if interval <= 0:
            raise ValueError(f"--interval must be > 0 seconds, got {interval}")
        self.pid = pid
        self.interval = interval
        self.started = time.monotonic()
        self.totals: list[tuple[float, int, int]] = []
        self.peak: Sample | None = None
        self.cpu_seconds = 0.0  # CPU time the sampling itself used (reading /proc costs the run CPU)
        self._sessions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            cpu_start = time.thread_time()
            sample = take_sample(self.pid, self.started, self._sessions)
            self.cpu_seconds += time.thread_time() - cpu_start
            if sample.processes:
                self.totals.append((round(sample.seconds, 1), sample.pss, sample.rss))
                if self.peak is None or sample.pss > self.peak.pss:
                    self.peak = sample
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def report(peak: Sample | None, top: int) -> str:
    if peak is None:
        return "no process of the run was sampled"
    lines = [
        f"peak PSS {peak.pss / GIB:.2f} GiB (RSS {peak.rss / GIB:.2f} GiB) summed over {len(peak.processes)} "
        f"processes, {peak.seconds:.0f} s into the run",
        f"{'process':<44} {'count':>5} {'PSS GiB':>8} {'RSS GiB':>8}",
    ]
    for name, count, pss, rss in group_by_name(peak.processes)[:top]:
        lines.append(f"{name[:44]:<44} {count:>5} {pss / GIB:>8.2f} {rss / GIB:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--interval", type=float, default=2.0,
        help="seconds between samples (each reads smaps_rollup of every process of the run, which holds each "
        "process's memory-map lock while the kernel walks its page tables: 0.5 s took up to ~80%% of a core "
        "during a demo run on 2 cores and slowed it)",
    )
    parser.add_argument("--top", type=int, default=15, help="process names listed at the peak")
    parser.add_argument("--json", default=None, help="write the peak, its processes and every sample's totals here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run and measure")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- .venv/bin/python -m repo_ext.demo --preset quick")
    load_start = loadavg()
    wall = time.monotonic()
    proc = subprocess.Popen(command)
    sampler = TreeSampler(proc.pid, args.interval).start()
    try:
        returncode = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait()
    finally:
        sampler.stop()
    seconds = time.monotonic() - wall
    load_end = loadavg()
    print(f"\n[bench_memory] {' '.join(command)}", file=sys.stderr)
    print(f"[bench_memory] exit {returncode}, {seconds:.0f} s wall, {len(sampler.totals)} samples, "
          f"load average at start {load_start}, at end {load_end}; sampling used {sampler.cpu_seconds:.0f} CPU s "
          f"({100 * sampler.cpu_seconds / max(seconds, 1e-9):.1f}% of one core)", file=sys.stderr)
    print(report(sampler.peak, args.top), file=sys.stderr)
    if args.json:
        peak = sampler.peak
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": command,
            "returncode": returncode,
            "seconds": round(seconds, 1),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "interval_s": args.interval,
            "sampler_cpu_s": round(sampler.cpu_seconds, 1),
            "peak_pss_gib": round(peak.pss / GIB, 3) if peak else None,
            "peak_rss_gib": round(peak.rss / GIB, 3) if peak else None,
            "peak_seconds": round(peak.seconds, 1) if peak else None,
            "peak_processes": len(peak.processes) if peak else 0,
            "peak_by_name": [
                {"name": n, "count": c, "pss_gib": round(p / GIB, 3), "rss_gib": round(r / GIB, 3)}
                for n, c, p, r in group_by_name(peak.processes)
            ] if peak else [],
            "peak_by_process": [asdict(p) for p in sorted(peak.processes, key=lambda p: -p.pss)] if peak else [],
            "samples": [{"s": s, "pss_gib": round(p / GIB, 3), "rss_gib": round(r / GIB, 3)} for s, p, r in sampler.totals],
        }, indent=1))
    return returncode


if __name__ == "__main__":
    sys.exit(main())
