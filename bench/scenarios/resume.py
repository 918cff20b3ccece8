"""3. Resume waste: SIGKILL each tool half-way through a large upload, run it again, count bytes.

Every tool talks to the server through a byte-counting proxy (`CountingProxy`), so "bytes sent"
is measured the same way for all: everything the client wrote on its sockets, the parts a killed
tool had in flight included. The kill lands when the proxy has counted half the file.

chunkd runs as the daemon (`chunkd run`) on a drop folder holding the file, with a SQLite state
file that survives the kill; it is started again on the same folder and state, and waited on
until the object's manifest is readable. Each peer's second run is the same command again: none
of them can resume a multipart upload, so they start from zero — that is the point.
"""

from __future__ import annotations

import os

from bench.daemon import Daemon, daemon_env
from bench.peers import Tuning
from bench.report import Row, ScenarioResult
from bench.scenarios.common import (
    MANIFEST_SUFFIX,
    Context,
    make_file,
    object_exists,
    progress,
    rotations,
    slug,
    upload,
    verify,
    wait_until,
)
from bench.servers import CountingProxy, Endpoint, delete_prefix, s3_client
from bench.units import GiB, MiB

NAME = "resume"
TITLE = "3. Resume waste after kill -9 at 50 %"
SIZE, QUICK_SIZE = 2 * GiB, 64 * MiB
REPEATS = 2
KILL_AT = 0.5


def run(ctx: Context, endpoint: Endpoint) -> ScenarioResult:
    size = QUICK_SIZE if ctx.quick else SIZE
    source = make_file(ctx.workdir / "data" / "resume" / "resume.bin", size)
    tuning = Tuning(files=1, parts=4)
    allowed = (tuning.parts + 1) * tuning.part_size
    chunkd = ctx.chunkd()
    tools = [chunkd, *ctx.peers()] if ctx.wanted("chunkd") else ctx.peers()
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="sent_ratio", columns=["sent_ratio", "waste_mib", "kill_at"],
        setup={"file_size": size, "tuning": vars(tuning), "allowed_waste_bytes": allowed, "kill_at": KILL_AT},
        notes=[
            (f"One {size / MiB:.0f} MiB file; each tool is SIGKILLed once a counting proxy in front of the server "
            f"has seen {KILL_AT:.0%} of the file's bytes, then run again to the end. \"sent / file size\" counts every "
            "byte both runs wrote to the server (headers, parts in flight at the kill)."),
            (f"{tuning.parts} parts of {tuning.part_size // MiB} MiB in flight for every tool; chunkd's allowance: "
            f"({tuning.parts} + 1) × {tuning.part_size // MiB} MiB = {allowed / MiB:.0f} MiB re-sent."),
            ("chunkd runs as `chunkd run` (daemon) on a drop folder, restarted on the same SQLite state; "
            "CHUNKD_IDLE_SECONDS=1 so it does not wait for a file the bench has just made."),
        ],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {size / MiB:.0f} MiB", flush=True)
    for tool in tools:
        ctx.record(NAME, tool, tuning)
        result.rows.append(Row(tool.name, tool.peer, note="daemon" if tool is chunkd else ""))
    with CountingProxy(endpoint.url) as proxy:
        counted = endpoint.via(proxy.url)
        for repeat, tool in rotations(tools, ctx.repeats_for(REPEATS)):
            row = result.row(tool.name)
            assert row is not None
            prefix = f"{NAME}/{slug(tool.name)}/r{repeat}"
            proxy.reset()
            if tool is chunkd:
                error, killed_at = _chunkd_daemon(ctx, counted, endpoint, proxy, source, prefix, tuning)
            else:
                error, killed_at = _peer(ctx, tool, counted, endpoint, proxy, source, prefix, tuning)
            sent = proxy.bytes_up
            delete_prefix(endpoint, prefix)
            if error is None:
                row.add(sent_ratio=sent / size, waste_mib=(sent - size) / MiB, kill_at=killed_at / size)
                progress(tool.name, repeat, f"sent {sent / size:.3f} × file (killed at {killed_at / size:.0%}), "
                                            f"{(sent - size) / MiB:.1f} MiB more than the file")
            else:
                row.failures.append(error)
                progress(tool.name, repeat, "FAILED: " + error.splitlines()[0])
            os.sync()
    return result


def _peer(ctx: Context, tool, counted: Endpoint, direct: Endpoint, proxy: CountingProxy, source, prefix: str,
          tuning: Tuning) -> tuple[str | None, int]:
    half = int(source.stat().st_size * KILL_AT)
    rundir = ctx.workdir / "runs" / direct.key / prefix
    first = upload(ctx, tool, counted, source, prefix=prefix, tuning=tuning, kill_when=lambda: proxy.bytes_up >= half,
                   keep=True, rundir=rundir, check_via=direct)
    killed_at = proxy.bytes_up
    if first.measurement is None or not first.measurement.killed:
        return (first.error or "the tool finished before it could be killed (file too small?)"), killed_at
    second = upload(ctx, tool, counted, source, prefix=prefix, tuning=tuning, keep=True, rundir=rundir,
                    check_via=direct)
    return second.error, killed_at


def _chunkd_daemon(ctx: Context, counted: Endpoint, direct: Endpoint, proxy: CountingProxy, source, prefix: str,
                   tuning: Tuning) -> tuple[str | None, int]:
    size = source.stat().st_size
    half = int(size * KILL_AT)
    rundir = ctx.workdir / "runs" / direct.key / prefix
    input_dir = rundir / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    os.link(source, input_dir / source.name)
    env = daemon_env(counted, input_dir=input_dir, state_db=rundir / "state.db", prefix=prefix,
                     settings={"CHUNKD_IDLE_SECONDS": "1", **ctx.chunkd_env,
                               "CHUNKD_FILE_CONCURRENCY": str(tuning.files),
                               "CHUNKD_PART_CONCURRENCY": str(tuning.parts),
                               "CHUNKD_PART_SIZE": str(tuning.part_size)})
    log = rundir / "daemon.log"
    timeout = ctx.timeout(size * 2)
    with Daemon(env, log, rundir) as first:
        reached = wait_until(lambda: proxy.bytes_up >= half or not first.running, timeout=timeout, interval=0.02)
        if not first.running:
            return f"the daemon exited ({first.process.returncode if first.process else '?'}) before the kill", 0
        first.kill()
    killed_at = proxy.bytes_up
    if not reached:
        return f"half the file was not sent within {timeout:.0f}s", killed_at
    manifest = f"{prefix}/{source.name}{MANIFEST_SUFFIX}"
    client = s3_client(direct)
    with Daemon(env, log, rundir) as second:
        done = wait_until(lambda: object_exists(client, manifest) or not second.running, timeout=ctx.timeout(size),
                          interval=0.1)
        if not second.running:
            return f"the restarted daemon exited ({second.process.returncode if second.process else '?'})", killed_at
        second.terminate()
    if not done:
        return "the manifest did not appear in time", killed_at
    problem = verify(direct, prefix, {source.name: size}, manifests=True)
    return problem, killed_at
