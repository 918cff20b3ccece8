"""4. Growing file: a writer appends at a fixed rate while `chunkd run` uploads it.

Sampled every 0.2 s while the writer runs: the bytes written, and the bytes S3 has acknowledged
(`chunkd_uploaded_bytes_total` on the daemon's /metrics). The lag, in parts, is the number of
parts the writer has completed that S3 has not acknowledged yet: floor(written / part size) −
acknowledged / part size (only whole parts are sent while the file grows, the tail at finalize).
A streamer that sends each part the moment it is complete has a lag of 0, or 1 while that part
is on the wire.

After the last write: the time until the manifest is readable (HeadObject), and the same minus
CHUNKD_IDLE_SECONDS, the quiet time chunkd waits by design before it finalizes.

The peers cannot follow a growing file: the best they can do is start when the writer is done.
Their "last write → object" is their upload time of the finished file.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from pathlib import Path

from bench.daemon import Daemon, daemon_env, get, uploaded_bytes
from bench.peers import Tuning
from bench.report import Row, ScenarioResult
from bench.scenarios.common import (
    MANIFEST_SUFFIX,
    Context,
    describe,
    make_file,
    object_exists,
    progress,
    rotations,
    slug,
    upload,
    verify,
    wait_until,
)
from bench.servers import Endpoint, delete_prefix, s3_client
from bench.units import MB, MiB
from chunkd.config import Settings
from chunkd.s3.devserver import free_port

NAME = "growing"
TITLE = "4. Growing file"
RATE, DURATION = 20 * MB, 60.0
QUICK_RATE, QUICK_DURATION, QUICK_IDLE = 10 * MB, 6.0, 2.0
REPEATS = 2
SAMPLE_SECONDS = 0.2
WRITE_BLOCK = 1 * MB


class Writer(threading.Thread):
    """Appends random bytes to `path` at `rate` bytes/s for `duration` seconds, paced per block."""

    def __init__(self, path: Path, rate: int, duration: float) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.path, self.rate, self.duration = path, rate, duration
        self.written = 0
        self.last_write: float | None = None
        self.error: BaseException | None = None
        self._pool = os.urandom(64 * MiB)

    def run(self) -> None:
        try:
            total = int(self.rate * self.duration)
            started = time.monotonic()
            with open(self.path, "wb", buffering=0) as out:
                while self.written < total:
                    due = started + self.written / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    n = min(WRITE_BLOCK, total - self.written)
                    start = self.written % (len(self._pool) - WRITE_BLOCK)
                    out.write(self._pool[start : start + n])
                    self.written += n
            self.last_write = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - handed to the scenario's thread
            self.error = exc


def lag_parts(written: int, acknowledged: int, part_size: int) -> float:
    """Whole parts written that S3 has not acknowledged yet."""
    return max(0.0, math.floor(written / part_size) - acknowledged / part_size)


def run(ctx: Context, endpoint: Endpoint) -> ScenarioResult:
    rate, duration = (QUICK_RATE, QUICK_DURATION) if ctx.quick else (RATE, DURATION)
    idle = QUICK_IDLE if ctx.quick else Settings().idle_seconds
    defaults = Settings()
    tuning = Tuning(files=1, parts=defaults.part_concurrency, part_size=defaults.part_size)
    chunkd = ctx.chunkd(defaults=True)
    tools = [chunkd, *ctx.peers()] if ctx.wanted("chunkd") else ctx.peers()
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="after_last_write_s",
        columns=["lag_median_parts", "lag_max_parts", "after_last_write_s", "beyond_idle_s"],
        setup={"rate": rate, "duration": duration, "idle_seconds": idle, "part_size": tuning.part_size},
        notes=[
            (f"A writer appends at {rate / MB:.0f} MB/s for {duration:.0f} s ({rate * duration / MB:.0f} MB); "
            f"`chunkd run` at default settings (CHUNKD_IDLE_SECONDS={idle:g}, CHUNKD_POLL_SECONDS="
            f"{defaults.poll_seconds:g}, {defaults.part_concurrency} parts of {defaults.part_size // MiB} MiB in flight)."),
            ("Lag: parts the writer has completed that S3 has not acknowledged, sampled every 0.2 s "
            "(0 is ideal; 1 while a part is on the wire)."),
            ("Peers cannot follow a growing file: they start after the last write, so their "
            "\"last write → object\" is the upload time of the finished file (same 4 × 8 MiB parts in flight)."),
        ],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {rate / MB:.0f} MB/s for {duration:.0f} s", flush=True)
    for tool in tools:
        ctx.record(NAME, tool, tuning)
        note = "daemon, default settings" if tool is chunkd else "starts after the last write"
        result.rows.append(Row(tool.name, tool.peer, note=note))
    for repeat, tool in rotations(tools, ctx.repeats_for(REPEATS)):
        row = result.row(tool.name)
        assert row is not None
        prefix = f"{NAME}/{slug(tool.name)}/r{repeat}"
        rundir = ctx.workdir / "runs" / endpoint.key / prefix
        rundir.mkdir(parents=True, exist_ok=True)
        if tool is chunkd:
            error = _chunkd(ctx, endpoint, rundir, prefix, rate, duration, idle, tuning.part_size, row)
        else:
            source = _finished_file(ctx, rate, duration)
            outcome = upload(ctx, tool, endpoint, source, prefix=prefix, tuning=tuning)
            progress(tool.name, repeat, describe(outcome, source.stat().st_size))
            error = outcome.error
            if error is None and outcome.measurement is not None:
                row.add(after_last_write_s=outcome.measurement.wall_s)
        if error is not None:
            row.failures.append(error)
            progress(tool.name, repeat, "FAILED: " + error.splitlines()[0])
        delete_prefix(endpoint, prefix)
    return result


def _finished_file(ctx: Context, rate: int, duration: float) -> Path:
    """A file of the size the writer leaves, for the peers (they only ever see the finished file)."""
    return make_file(ctx.workdir / "data" / "growing" / "grown.bin", int(rate * duration))


def _chunkd(ctx: Context, endpoint: Endpoint, rundir: Path, prefix: str, rate: int, duration: float, idle: float,
            part_size: int, row: Row) -> str | None:
    input_dir = rundir / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    addr = f"127.0.0.1:{free_port()}"
    env = daemon_env(endpoint, input_dir=input_dir, state_db=rundir / "state.db", prefix=prefix, http_addr=addr,
                     settings={"CHUNKD_IDLE_SECONDS": f"{idle:g}", **ctx.chunkd_env})
    path = input_dir / "growing.bin"
    manifest = f"{prefix}/{path.name}{MANIFEST_SUFFIX}"
    client = s3_client(endpoint)
    with Daemon(env, rundir / "daemon.log", rundir) as daemon:
        if not wait_until(lambda: (get(addr, "/healthz") or (0, ""))[0] == 200 or not daemon.running, timeout=60):
            return "the daemon did not answer /healthz within 60 s"
        if not daemon.running:
            return "the daemon exited at start-up"
        writer = Writer(path, rate, duration)
        writer.start()
        lags: list[float] = []
        while writer.is_alive():
            acknowledged = uploaded_bytes(addr)
            written = writer.written
            if acknowledged is not None and written >= part_size:
                lags.append(lag_parts(written, acknowledged, part_size))
            time.sleep(SAMPLE_SECONDS)
        writer.join()
        if writer.error is not None or writer.last_write is None:
            return f"the writer failed: {writer.error}"
        found = wait_until(lambda: object_exists(client, manifest) or not daemon.running,
                           timeout=idle + ctx.timeout(writer.written), interval=0.05)
        arrived = time.monotonic()
        if not found or not daemon.running:
            return "the manifest did not appear (daemon log: " + str(rundir / "daemon.log") + ")"
        daemon.terminate()
    problem = verify(endpoint, prefix, {path.name: writer.written}, manifests=True)
    if problem:
        return problem
    after = arrived - writer.last_write
    row.add(lag_median_parts=statistics.median(lags) if lags else None, lag_max_parts=max(lags, default=None),
            after_last_write_s=after, beyond_idle_s=after - idle)
    progress("chunkd", len(row.samples.get("after_last_write_s", [])),
             f"lag median {statistics.median(lags) if lags else float('nan'):.2f} max {max(lags, default=float('nan')):.2f} parts "
             f"({len(lags)} samples); manifest {after:.2f} s after the last write (idle {idle:g} s)")
    return None
