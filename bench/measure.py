"""Running one tool as a measured child process: wall time, peak RSS, CPU time, and a kill switch.

How peak RSS is measured
------------------------
Each tool is the child of a tiny launcher (see LAUNCHER) that reaps it with `os.wait4()`, which returns the
kernel's resource usage for exactly that child. Its `ru_maxrss` is the child's peak resident set,
or that of a descendant it reaped, whichever is larger (Linux takes the max of the process's own
maxrss and its children's). It is the number `/usr/bin/time -v` prints as "Maximum resident set
size" (GNU time calls wait4 too), without an extra process between the bench and the tool.
Rejected: `getrusage(RUSAGE_CHILDREN)` deltas (a high-water mark over every child ever reaped, so
once a big tool has run every smaller one after it reads the same number) and polling
`/proc/<pid>/status` VmHWM (growth after the last poll of an exiting process is lost). Every tool
here is one process (aws cli and chunkd one Python interpreter each, s5cmd and rclone one Go
binary), so the largest single process is the tool's footprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

KILL_POLL_SECONDS = 0.02


@dataclasses.dataclass(frozen=True)
class Measurement:
    exit_code: int
    wall_s: float
    max_rss_kib: int
    cpu_s: float  # user + system of the process (and of children it reaped)
    timed_out: bool
    killed: bool  # `kill_when` fired and the tool was SIGKILLed on purpose

    @property
    def peak_rss_mb(self) -> float:
        return self.max_rss_kib * 1024 / 1e6


# The tool is forked from this small launcher, never from the bench itself: Linux carries a
# process's peak RSS across fork and exec (the child's RSS right after fork counts every page it
# shares with its parent), so a tool forked straight from a bench holding test data would report
# the bench's footprint. `python -S` with only the stdlib is a floor of a few MB.
LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as handle:
    json.dump({"status": status, "wall_s": wall, "max_rss_kib": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime}, handle)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    log: Path,
    kill_when: Callable[[], bool] | None = None,
) -> Measurement:
    """Run argv to completion under the launcher, which reaps it with wait4 for its rusage.

    The whole process group is SIGKILLed after `timeout`, or as soon as `kill_when()` turns true
    (polled every 20 ms): a crash in the middle of an upload, exactly as `kill -9` makes one.
    """
    expired, fired, done = threading.Event(), threading.Event(), threading.Event()
    usage_file = log.with_name(log.name + ".rusage.json")
    usage_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(usage_file), *argv],
            env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we end the whole group, never more
        )

    def watch() -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while not done.wait(KILL_POLL_SECONDS):
            if time.monotonic() >= deadline:
                expired.set()
            elif kill_when is not None and kill_when():
                fired.set()
            else:
                continue
            kill_group(process.pid)
            return

    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    watcher.start()
    try:
        code = _wait(process)
    except BaseException:
        done.set()
        kill_group(process.pid)
        process.wait()
        raise
    done.set()
    watcher.join()
    wall = time.perf_counter() - started
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):  # killed: the launcher died with its tool
        usage = {"wall_s": wall, "max_rss_kib": 0, "cpu_s": 0.0}
    return Measurement(
        exit_code=code,
        wall_s=usage["wall_s"],
        max_rss_kib=usage["max_rss_kib"],
        cpu_s=usage["cpu_s"],
        timed_out=expired.is_set(),
        killed=fired.is_set(),
    )


def _wait(process: subprocess.Popen[bytes]) -> int:
    """Wait in short slices: a SIGTERM delivered to another thread of the bench would not wake a
    plain blocking wait, and Ctrl-C or SIGTERM must stop the bench at once."""
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a live process has used so far, from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Budget:
    """Seconds left for tool runs (unlimited unless given): --quick must end even if a tool hangs."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def cap(self, timeout: float) -> float:
        return timeout if self.deadline is None else min(timeout, self.deadline - time.monotonic())

    @property
    def exhausted(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline - 1
