"""What every scenario shares: the run context, test data, and one verified, measured upload."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.measure import Budget, Measurement, process_cpu_s, run_measured, tail
from bench.peers import ChunkdTool, Job, PeersVenv, Tool, Tuning, peer_tools
from bench.servers import BUCKET, Endpoint, delete_prefix, list_objects
from bench.units import MB, MiB

MANIFEST_SUFFIX = ".manifest.json"
MIN_TOOL_RATE = 5 * MB  # a run slower than this is taken as hung


@dataclasses.dataclass
class Context:
    workdir: Path
    venv: PeersVenv
    quick: bool
    budget: Budget
    repeats: int | None = None  # --repeats: overrides every scenario's own default
    chunkd_env: dict[str, str] = dataclasses.field(default_factory=dict)
    tool_filter: set[str] | None = None  # --tools
    tools_info: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    warmed: set[str] = dataclasses.field(default_factory=set)

    def repeats_for(self, default: int) -> int:
        return 1 if self.quick else (self.repeats or default)

    def wanted(self, name: str) -> bool:
        if not self.tool_filter:
            return True
        return bool(self.tool_filter & {name, name.split()[0], slug(name)})

    def peers(self) -> list[Tool]:
        return [tool for tool in peer_tools(self.venv) if self.wanted(tool.name)]

    def chunkd(self, name: str = "chunkd", *, defaults: bool = False) -> ChunkdTool:
        return ChunkdTool(name, defaults=defaults, extra_env=self.chunkd_env)

    def record(self, scenario: str, tool: Tool, tuning: Tuning) -> None:
        """Keep each tool's version and exact settings per scenario, for the printout and the JSON."""
        info = self.tools_info.setdefault(tool.name, {"version": tool.version(), "settings": {}})
        if scenario not in info["settings"]:
            settings = tool.settings(tuning)
            info["settings"][scenario] = settings
            print(f"  {tool.name}: " + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)

    def timeout(self, nbytes: int) -> float:
        return self.budget.cap(60 + nbytes / MIN_TOOL_RATE)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def rotations(tools: Sequence[Tool], repeats: int) -> Iterator[tuple[int, Tool]]:
    """Each repeat starts with the next tool, so no tool always runs first (cold) or last."""
    for repeat in range(1, repeats + 1):
        shift = (repeat - 1) % max(1, len(tools))
        for tool in [*tools[shift:], *tools[:shift]]:
            yield repeat, tool


# -- test data --------------------------------------------------------------------------------


def make_file(path: Path, size: int, *, seed: int = 0) -> Path:
    """Random (incompressible) bytes, flushed to disk so write-back does not overlap a run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size == size:
        return path
    block = 8 * MiB
    with open(path, "wb") as out:
        remaining = size
        while remaining > 0:
            out.write(os.urandom(min(block, remaining)))
            remaining -= block
        out.flush()
        os.fsync(out.fileno())
    return path


def make_small_files(folder: Path, count: int, low: int, high: int, *, seed: int = 1) -> dict[str, int]:
    """`count` random files with sizes uniform in [low, high], the same sizes for every seed."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = random.Random(seed).choices(range(low, high + 1), k=count)
    expected: dict[str, int] = {}
    pool = os.urandom(high * 4)
    picker = random.Random(seed + 1)
    for index, size in enumerate(sizes):
        name = f"f{index:05d}.bin"
        start = picker.randrange(0, len(pool) - size)
        # A random window of a random pool and a unique header: no two files share content.
        body = index.to_bytes(8, "big") + pool[start : start + size - 8]
        (folder / name).write_bytes(body)
        expected[name] = size
    os.sync()
    return expected


def expected_of(source: Path) -> dict[str, int]:
    if source.is_dir():
        return {p.name: p.stat().st_size for p in source.iterdir() if p.is_file()}
    return {source.name: source.stat().st_size}


# -- one upload -------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    measurement: Measurement | None
    error: str | None
    server_cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def verify(endpoint: Endpoint, prefix: str, expected: dict[str, int], *, manifests: bool) -> str | None:
    """Every file must be an object of its size under prefix (and, for chunkd, have a manifest)."""
    try:
        found = list_objects(endpoint, prefix + "/")
    except Exception as exc:  # noqa: BLE001 - any failure to list is the finding to report
        return f"listing {prefix}/ failed: {exc}"
    objects = {key.rsplit("/", 1)[-1]: size for key, size in found.items() if not key.endswith(MANIFEST_SUFFIX)}
    missing = sorted(set(expected) - set(objects))
    wrong = sorted(name for name in expected if name in objects and objects[name] != expected[name])
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} object(s) missing (e.g. {missing[0]})")
    if wrong:
        name = wrong[0]
        problems.append(f"{len(wrong)} object(s) of the wrong size (e.g. {name}: {objects[name]} != {expected[name]})")
    if manifests:
        count = sum(1 for key in found if key.endswith(MANIFEST_SUFFIX))
        if count != len(expected):
            problems.append(f"{count} manifest(s) for {len(expected)} file(s)")
    return "; ".join(problems) or None


def upload(
    ctx: Context,
    tool: Tool,
    endpoint: Endpoint,
    source: Path,
    *,
    prefix: str,
    tuning: Tuning,
    kill_when: Callable[[], bool] | None = None,
    keep: bool = False,
    rundir: Path | None = None,
    check: bool = True,
    check_via: Endpoint | None = None,
) -> Outcome:
    """Run `tool` once on `source`, measured; then check the bucket and clean up (unless `keep`).

    A run killed on purpose (`kill_when`) is not checked: it is expected to be incomplete.
    `check_via` is the server's own address when the tool goes through the counting proxy, so
    the checks are not counted as sent by the tool.
    """
    direct = check_via or endpoint
    expected = expected_of(source)
    nbytes = sum(expected.values())
    timeout = ctx.timeout(nbytes)
    if timeout <= 1:
        return Outcome(None, "skipped: time budget used up")
    rundir = rundir or ctx.workdir / "runs" / endpoint.key / prefix
    rundir.mkdir(parents=True, exist_ok=True)
    job = Job(endpoint, source, prefix, rundir, tuning)
    argv, env = tool.command(job)
    log = rundir / "tool.log"
    before = server_cpu_s(endpoint)
    measured = run_measured(argv, env=env, cwd=rundir, timeout=timeout, log=log, kill_when=kill_when)
    after = server_cpu_s(endpoint)
    server_cpu = None if before is None or after is None else after - before
    error = None
    if measured.timed_out:
        error = f"timed out after {timeout:.0f}s; log ends:\n{tail(log)}"
    elif measured.killed:
        pass
    elif measured.exit_code != 0:
        error = f"exit status {measured.exit_code}; log ends:\n{tail(log)}"
    if error is None and check and not measured.killed:
        error = verify(direct, prefix, expected, manifests=not tool.peer and tool.name.startswith("chunkd"))
    if not keep:
        delete_prefix(direct, prefix)
        os.sync()  # the server's writes of this run must not slow the next one
    return Outcome(measured, error, server_cpu)


def server_cpu_s(endpoint: Endpoint) -> float | None:
    """CPU seconds used so far by every process of the server (RGW: gateway, OSD and monitor)."""
    used = [process_cpu_s(pid) for pid in endpoint.pids]
    return None if not used or None in used else sum(u for u in used if u is not None)


def warm_up_tools(ctx: Context, endpoint: Endpoint, tools: Sequence[Tool]) -> None:
    """One untimed small multipart upload per tool and server: interpreters compile their
    bytecode, binaries and the server's code are paged in, before anything is timed."""
    if ctx.quick:
        return
    source = make_file(ctx.workdir / "data" / "warm-up" / "warm-up.bin", 9 * MiB)
    for tool in tools:
        key = f"{endpoint.key}|{tool.name}"
        if key in ctx.warmed:
            continue
        ctx.warmed.add(key)
        outcome = upload(ctx, tool, endpoint, source, prefix=f"warm-up/{slug(tool.name)}", tuning=Tuning(1, 2))
        if not outcome.ok:
            print(f"  warm-up of {tool.name} failed: {outcome.error}", flush=True)


def progress(tool: str, repeat: int, text: str) -> None:
    print(f"  {tool:<20} r{repeat}: {text}", flush=True)


def describe(outcome: Outcome, nbytes: int | None = None) -> str:
    m = outcome.measurement
    if m is None:
        return outcome.error or "?"
    parts = [f"{m.wall_s:7.2f} s"]
    if nbytes:
        parts.append(f"{nbytes / m.wall_s / MB:7.1f} MB/s")
    parts += [f"RSS {m.peak_rss_mb:6.1f} MB", f"CPU {m.cpu_s:6.2f} s"]
    parts.append("ok" if outcome.ok else "FAILED: " + (outcome.error or "").splitlines()[0])
    return "  ".join(parts)


def object_exists(client: Any, key: str) -> bool:
    try:
        client.head_object(Bucket=BUCKET, Key=key)
        return True
    except Exception:  # noqa: BLE001 - not there (yet), whatever the server says
        return False


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
