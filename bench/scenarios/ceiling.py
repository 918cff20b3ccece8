"""6. Physical ceiling: what the server ingests from one large `curl -T` PutObject.

curl is a C client with no hashing and no part bookkeeping: what it reaches over one stream,
or the best any tool reached in the throughput scenario (whichever is higher), is the ceiling
every other figure on the same server can be read against.
"""

from __future__ import annotations

from bench.peers import CurlPut, Tuning
from bench.report import Row, ScenarioResult
from bench.scenarios.common import (
    Context,
    describe,
    make_file,
    progress,
    upload,
)
from bench.units import MB, MiB

NAME = "ceiling"
TITLE = "6. Server ceiling: one large PUT"
SIZE, QUICK_SIZE = 1024 * MiB, 64 * MiB
REPEATS = 3


def run(ctx: Context, endpoint) -> ScenarioResult:
    size = QUICK_SIZE if ctx.quick else SIZE
    source = make_file(ctx.workdir / "data" / "ceiling" / "one-put.bin", size)
    tool = CurlPut()
    tuning = Tuning(files=1, parts=1)
    result = ScenarioResult(
        NAME, TITLE, endpoint.name, primary="mb_per_s", columns=["mb_per_s", "wall_s", "cpu_s", "server_cpu_s"],
        setup={"file_size": size},
        notes=[(f"One {size / MiB:.0f} MiB PutObject with `curl -T` (SigV4 signed, unsigned payload); the ceiling "
               "used for \"of ceiling\" is the best of this and every tool's throughput on the same server.")],
    )
    print(f"\n## {TITLE} on {endpoint.name}: {size / MiB:.0f} MiB", flush=True)
    ctx.record(NAME, tool, tuning)
    row = Row(tool.name, peer=False)
    result.rows.append(row)
    for repeat in range(1, ctx.repeats_for(REPEATS) + 1):
        outcome = upload(ctx, tool, endpoint, source, prefix=f"{NAME}/r{repeat}", tuning=tuning)
        progress(tool.name, repeat, describe(outcome, size))
        m = outcome.measurement
        if outcome.ok and m is not None:
            row.add(mb_per_s=size / m.wall_s / MB, wall_s=m.wall_s, cpu_s=m.cpu_s, server_cpu_s=outcome.server_cpu_s)
        else:
            row.failures.append(outcome.error or "failed")
    return result
