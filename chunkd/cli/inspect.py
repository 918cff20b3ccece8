"""`chunkd status`, `chunkd stats` and `chunkd verify`: read what the store and the bucket say."""

from __future__ import annotations

import argparse
import time
from typing import Any

from chunkd.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    duration,
    open_store,
    target,
)
from chunkd.config import Settings
from chunkd.model.node import Scope
from chunkd.model.states import StreamState

# How many streams `chunkd status` shows (and every active one): a box keeps tens of thousands.
STATUS_LIMIT = 50


def add_status_and_verify(commands: Any, parent: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status", parents=[parent], help="show the streams the state store knows: the newest, and every active one"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output: every stream, unless --limit")
    shown = status.add_mutually_exclusive_group()
    shown.add_argument(
        "--limit", type=positive_int, metavar="N",
        help=f"the newest N streams, and every active one (default {STATUS_LIMIT}; --json: all)",
    )
    shown.add_argument("--all", action="store_true", help="every stream, however old")
    status.add_argument(
        "--state", action="append", choices=[s.value.lower() for s in StreamState], help="only this state (repeatable)"
    )
    status.add_argument(
        "--since", type=duration, metavar="AGE", help="only streams updated in the last AGE (30m, 2h, 7d)"
    )
    add_node_options(status, "streams")
    verify = commands.add_parser(
        "verify", parents=[parent], help="check an uploaded object against its manifest",
        description="Compare an object with its manifest: HeadObject size and ETag, and the manifest's parts "
        "tiling the object. The local file (PATH, or the manifest's source.relpath under the input folder) "
        "is always hashed and compared when it exists. Exit 0 only if every check passed.",
    )
    verify.add_argument("target", metavar="KEY|PATH", help="object key, or a local file whose key is looked up")
    verify.add_argument(
        "--deep", action="store_true", help="also stream the whole object (GetObject) and compare its SHA-256"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")


def positive_int(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def add_stats(commands: Any, parent: argparse.ArgumentParser) -> None:
    stats = commands.add_parser("stats", parents=[parent], help="finished files and bytes per UTC day")
    stats.add_argument("--since", type=duration, default="7d", metavar="AGE", help="look back this far (default 7d)")
    stats.add_argument("--format", choices=("table", "json", "csv"), default="table")
    add_node_options(stats, "files")
    nodes = commands.add_parser(
        "nodes", parents=[parent], help="the daemons sharing this state store, seen in the last few minutes",
        description="Every daemon beats in the state store every 10 s; a beat is kept 2 minutes. Shows each "
        "node's version, uptime, queue depth and last error.",
    )
    nodes.add_argument("--json", action="store_true", help="machine-readable output")


def add_node_options(command: argparse.ArgumentParser, what: str) -> None:
    """A fleet shares one state store; a command shows one node's records: this one's (CHUNKD_NODE,
    so `--node NAME` for another's), or with --all-nodes every node's."""
    command.add_argument(
        "--all-nodes", action="store_true",
        help=f"{what} of every node sharing the state store (default: this node's; --node NAME for another's)",
    )


def node_scope(settings: Settings, args: argparse.Namespace) -> Scope | None:
    """Which records a command shows: None for every node's. A caller's Namespace without the
    option (a script driving the command functions) means this node's, as the command line does."""
    return None if getattr(args, "all_nodes", False) else settings.scope


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.observe.overview import (
        Listing,
        collect,
        nothing_matches,
        recent,
        render_downloads,
        render_json,
        render_table,
    )

    states = [StreamState(s.upper()) for s in args.state] if args.state else None
    since = None if args.since is None else time.time() - args.since
    scope = node_scope(settings, args)
    limit = status_limit(args)
    with open_store(settings) as store:
        if limit is None:
            listing = Listing(collect(store, states, since=since, scope=scope))
        else:
            listing = recent(store, states, limit=limit, since=since, scope=scope)
        downloads = [] if args.json or args.state else store.list_urls()
        others = not listing.statuses and scope is not None and scope.node is not None and store.count_streams(states) > 0
    filtered = args.state is not None or args.since is not None
    empty = nothing_matches(states, args.since) if filtered else "no streams recorded yet"
    if others and scope is not None:  # run from a host that is no node of the fleet (an operator's), or a typo in --node
        empty += f" for node {scope.node} (other nodes have some: chunkd status --all-nodes)"
    if args.json:
        print(render_json(listing.statuses))
    else:
        note = listing.note()
        print(render_table(listing.statuses, empty=empty, nodes=scope is None) + ("" if note is None else "\n" + note))
    if downloads:
        print("\n" + render_downloads(downloads))
    return EXIT_OK


def status_limit(args: argparse.Namespace) -> int | None:
    """--limit N, or none for --all; else the table shows STATUS_LIMIT, and --json every stream (a
    script reads what matches, whole). A caller's Namespace without the options means the default."""
    if getattr(args, "all", False):
        return None
    limit: int | None = getattr(args, "limit", None)
    return limit if limit is not None or args.json else STATUS_LIMIT


def cmd_nodes(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.observe.heartbeat import render_nodes, render_nodes_json

    with open_store(settings) as store:
        nodes = store.list_nodes()
    print(render_nodes_json(nodes) if args.json else render_nodes(nodes))
    return EXIT_OK


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.ops.verify import verify

    report = verify(settings, target(settings), args.target, deep=args.deep)  # --dev: the dev endpoint
    print(report.render_json() if args.json else report.render_text())
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.observe import daily as stats

    finished = [StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED]
    scope = node_scope(settings, args)
    with open_store(settings) as store:
        records = [r for r in store.list_streams(finished) if scope is None or scope.holds(r)]
    rows = stats.aggregate(records, since=time.time() - args.since)
    render = {"table": stats.render_table, "json": stats.render_json, "csv": stats.render_csv}[args.format]
    print(render(rows))
    return EXIT_OK
