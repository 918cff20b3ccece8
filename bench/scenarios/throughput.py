"""1. Throughput, large files: a folder of large random files, uploaded by every tool in turn.

MB/s is the folder's bytes over the tool's wall time, spawn to exit (interpreter start-up
included: that is what a user waits for). chunkd runs as users run it: every part checkpointed
in SQLite, per-part and whole-file SHA-256 computed, a manifest written per file.
"""

from __future__ import annotations

from bench.peers import Tuning
from bench.report import Row, ScenarioResult
from bench.scenarios.common import (
    Context,
    describe,
    make_file,
    progress,
    rotations,
    slug,
    upload,
    warm_up_tools,
)
from bench.servers import Endpoint
from bench.units import MB, MiB

NAME = "throughput"
TITLE = "1. Throughput, large files"
FILES, FILE_SIZE = 4, 512 * MiB
QUICK_FILES, QUICK_FILE_SIZE = 4, 16 * MiB
REPEATS = 3


def run(ctx: Context, endpoint: Endpoint, *, files: int | None = None, file_size: int | None = None) -> ScenarioResult:
    files = files or (QUICK_FILES if ctx.quick else FILES)
    file_size = file_size or (QUICK_FILE_SIZE if ctx.quick else FILE_SIZE)
    folder = ctx.workdir / "data" / f"throughput-{files}x{file_size}"
    for index in range(files):
        make_file(folder / f"large-{index}.bin", file_size)
    total = files * file_size
    tuning = Tuning(files=min(files, 4), parts=4)
    tools = [ctx.chunkd(), *ctx.peers()] if ctx.wanted("chunkd") else ctx.peers()
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="mb_per_s",
        columns=["mb_per_s", "wall_s", "peak_rss_mb", "cpu_s", "server_cpu_s"],
        setup={"files": files, "file_size": file_size, "tuning": vars(tuning)},
        notes=[
            (f"{files} × {file_size / MiB:.0f} MiB random files, uploaded as one folder; "
            f"{tuning.files} files × {tuning.parts} parts of {tuning.part_size // MiB} MiB in flight for every tool."),
            ("chunkd with its normal checkpointing (SQLite, every part recorded) and per-part + whole-file "
            "SHA-256 on, and a manifest per file."),
        ],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {files} × {file_size / MiB:.0f} MiB", flush=True)
    for tool in tools:
        ctx.record(NAME, tool, tuning)
        result.rows.append(Row(tool.name, tool.peer, note="" if tool.peer else "checkpoints + SHA-256 on"))
    warm_up_tools(ctx, endpoint, tools)
    for repeat, tool in rotations(tools, ctx.repeats_for(REPEATS)):
        row = result.row(tool.name)
        assert row is not None
        outcome = upload(ctx, tool, endpoint, folder, prefix=f"{NAME}/{slug(tool.name)}/r{repeat}", tuning=tuning)
        progress(tool.name, repeat, describe(outcome, total))
        m = outcome.measurement
        if outcome.ok and m is not None:
            row.add(mb_per_s=total / m.wall_s / MB, wall_s=m.wall_s, peak_rss_mb=m.peak_rss_mb, cpu_s=m.cpu_s,
                    server_cpu_s=outcome.server_cpu_s)
        else:
            row.failures.append(outcome.error or "failed")
    return result
