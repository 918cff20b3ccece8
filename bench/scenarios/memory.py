"""2. Peak memory: one large file, and one small file, per tool; peak RSS from wait4.

If memory is bounded by concurrency × part size, the large file's peak equals the small file's;
if a tool buffers by file size, the two differ. chunkd runs at its default settings (4 parts of
8 MiB in flight per file); the peers get the same 4 parts of 8 MiB.
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
from bench.units import MB, GiB, MiB

NAME = "memory"
TITLE = "2. Peak memory"
SMALL, LARGE = 256 * MiB, 4 * GiB
QUICK_SMALL, QUICK_LARGE = 16 * MiB, 64 * MiB
REPEATS = 2


def size_text(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def run(ctx: Context, endpoint: Endpoint) -> ScenarioResult:
    small, large = (QUICK_SMALL, QUICK_LARGE) if ctx.quick else (SMALL, LARGE)
    files = {
        "small": make_file(ctx.workdir / "data" / "memory" / "small.bin", small),
        "large": make_file(ctx.workdir / "data" / "memory" / "large.bin", large),
    }
    tuning = Tuning(files=1, parts=4)
    chunkd = ctx.chunkd(defaults=True)
    tools = [chunkd, *ctx.peers()] if ctx.wanted("chunkd") else ctx.peers()
    bound = tuning.parts * tuning.part_size
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="peak_rss_mb",
        columns=["peak_rss_mb", "peak_rss_small_mb", "mb_per_s"],
        setup={"small": small, "large": large, "file_size_text": size_text(large), "tuning": vars(tuning),
               "chunkd_buffer_bound_bytes": bound},
        notes=[
            (f"One {size_text(large)} file (and one {size_text(small)} file for comparison); chunkd at its default "
            f"settings, peers with {tuning.parts} parts of {tuning.part_size // MiB} MiB in flight."),
            (f"Part buffers in flight: {tuning.parts} × {tuning.part_size // MiB} MiB = {bound / MB:.0f} MB; the rest "
            "of a tool's RSS is its runtime (a Python interpreter with boto3, or a Go runtime)."),
            "MB/s is for the large file.",
        ],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {size_text(large)} vs {size_text(small)}", flush=True)
    for tool in tools:
        ctx.record(NAME, tool, tuning)
        result.rows.append(Row(tool.name, tool.peer, note="default settings" if tool is chunkd else ""))
    warm_up_tools(ctx, endpoint, tools)
    for repeat, tool in rotations(tools, ctx.repeats_for(REPEATS)):
        row = result.row(tool.name)
        assert row is not None
        peaks: dict[str, float] = {}
        speed = None
        for label, source in files.items():
            outcome = upload(ctx, tool, endpoint, source, prefix=f"{NAME}/{slug(tool.name)}/{label}/r{repeat}",
                             tuning=tuning)
            progress(f"{tool.name} {label}", repeat, describe(outcome, source.stat().st_size))
            m = outcome.measurement
            if not outcome.ok or m is None:
                row.failures.append(outcome.error or "failed")
                break
            peaks[label] = m.peak_rss_mb
            if label == "large":
                speed = source.stat().st_size / m.wall_s / MB
        else:
            row.add(peak_rss_mb=peaks["large"], peak_rss_small_mb=peaks["small"], mb_per_s=speed)
    return result
