"""5. Many small files: a folder of thousands of 10–500 KiB files, files/s per tool.

Every tool gets the same number of files in flight (16); chunkd also runs at its defaults
(4 files in flight). Each file is one PutObject for every tool; chunkd also records it in its
state store, hashes it, and writes a manifest beside it (a second PutObject).
"""

from __future__ import annotations

from bench.peers import Tuning
from bench.report import Row, ScenarioResult
from bench.scenarios.common import (
    Context,
    describe,
    make_small_files,
    progress,
    rotations,
    slug,
    upload,
    warm_up_tools,
)
from bench.servers import Endpoint

NAME = "small_files"
TITLE = "5. Many small files"
COUNT, LOW, HIGH = 5000, 10 * 1024, 500 * 1024
QUICK_COUNT = 60
REPEATS = 2
FILES_IN_FLIGHT = 16


def run(ctx: Context, endpoint: Endpoint) -> ScenarioResult:
    count = QUICK_COUNT if ctx.quick else COUNT
    folder = ctx.workdir / "data" / f"small-{count}"
    if not folder.is_dir():
        make_small_files(folder, count, LOW, HIGH)
    total = sum(p.stat().st_size for p in folder.iterdir())
    tuning = Tuning(files=FILES_IN_FLIGHT, parts=1)
    tools = ([ctx.chunkd(), ctx.chunkd("chunkd (defaults)", defaults=True)] if ctx.wanted("chunkd") else [])
    tools += ctx.peers()
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="files_per_s", columns=["files_per_s", "mb_per_s", "peak_rss_mb", "cpu_s"],
        setup={"count": count, "low": LOW, "high": HIGH, "bytes": total, "tuning": vars(tuning)},
        ratio_to="s5cmd",
        notes=[
            (f"{count} random files of {LOW // 1024}–{HIGH // 1024} KiB ({total / 1e6:.0f} MB), uploaded as one folder; "
            f"{FILES_IN_FLIGHT} files in flight for every tool (chunkd (defaults): 4)."),
            "chunkd also records each file in SQLite, hashes it and writes its manifest (a second PUT per file).",
        ],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {count} files", flush=True)
    for tool in tools:
        ctx.record(NAME, tool, tuning)
        result.rows.append(Row(tool.name, tool.peer))
    warm_up_tools(ctx, endpoint, tools)
    for repeat, tool in rotations(tools, ctx.repeats_for(REPEATS)):
        row = result.row(tool.name)
        assert row is not None
        outcome = upload(ctx, tool, endpoint, folder, prefix=f"{NAME}/{slug(tool.name)}/r{repeat}", tuning=tuning)
        m = outcome.measurement
        progress(tool.name, repeat, describe(outcome, total) + (f"  {count / m.wall_s:.0f} files/s" if m else ""))
        if outcome.ok and m is not None:
            row.add(files_per_s=count / m.wall_s, mb_per_s=total / m.wall_s / 1e6, peak_rss_mb=m.peak_rss_mb,
                    cpu_s=m.cpu_s)
        else:
            row.failures.append(outcome.error or "failed")
    return result
