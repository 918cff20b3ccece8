"""Kept for old command lines; folded into `python -m bench` (the throughput scenario).

    python -m bench.upload_compare [--size 1GiB] [--repeats N] [--quick] [--servers moto,rclone]
        [--tools chunkd,aws,...] [--chunkd-env NAME=VALUE ...]

runs `python -m bench --scenario throughput --throughput-files 1 --throughput-size SIZE`: one
random file, every tool in turn, on both servers, with the same measurements (wall time, MB/s,
peak RSS, tool and server CPU) and the same verification as before; results go where
`python -m bench` writes them (bench/results/<date>.json, .md, .png).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.__main__ import main as bench_main

QUICK_SIZE = "64MiB"


def translate(argv: Sequence[str] | None) -> list[str]:
    """This command's options as `python -m bench` options."""
    parser = argparse.ArgumentParser(prog="python -m bench.upload_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=None, help="test file size (default 1GiB; --quick 64MiB)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--servers", default="moto,rclone", help="comma list of: moto, rclone")
    parser.add_argument("--tools", default=None)
    parser.add_argument("--chunkd-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    servers = {s.strip() for s in args.servers.split(",") if s.strip()}
    if not servers <= {"moto", "rclone"} or not servers:
        parser.error("--servers takes moto, rclone or both")
    size = args.size or (QUICK_SIZE if args.quick else "1GiB")
    out = ["--scenario", "throughput", "--throughput-files", "1", "--throughput-size", size,
           "--server", "both" if len(servers) == 2 else servers.pop()]
    if args.quick:
        out.append("--quick")
    if args.repeats:
        out += ["--repeats", str(args.repeats)]
    if args.tools:
        out += ["--tools", args.tools]
    for item in args.chunkd_env:
        out += ["--chunkd-env", item]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(translate(argv))


if __name__ == "__main__":
    raise SystemExit(main())
