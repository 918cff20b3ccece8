"""Command line: `chunkd run`, `chunkd upload PATH…`, `chunkd status`, `chunkd verify KEY|PATH`, and the
operator commands `doctor`, `gc`, `retry`, `cancel`, `stats`, `nodes`.

One module per group of commands (run, inspect, ops); this one parses, loads the settings, and turns
chunkd's errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

from chunkd import __version__
from chunkd.cli import inspect, ops, run
from chunkd.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    SETTINGS_EPILOG,
    dev_hint,
    dev_s3,
    settings_parent,
    settings_reference,
)
from chunkd.config import SETTING_NAMES, Settings, load_settings
from chunkd.errors import ChunkdError, ConfigError, EndpointError, TransferError
from chunkd.observe.logs import setup_logging

Command = Callable[[Settings, argparse.Namespace], int]

COMMANDS: dict[str, Command] = {
    "run": run.cmd_run, "upload": run.cmd_upload, "status": inspect.cmd_status, "verify": inspect.cmd_verify,
    "doctor": ops.cmd_doctor, "gc": ops.cmd_gc, "retry": ops.cmd_retry, "cancel": ops.cmd_cancel,
    "stats": inspect.cmd_stats, "nodes": inspect.cmd_nodes,
}

# The commands that take an S3 handle; `--dev` gives them the dev endpoint (`run` starts and publishes it).
S3_COMMANDS = frozenset({"upload", "verify", "doctor", "gc", "cancel"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chunkd", description="Upload a drop folder to S3 in resumable parts.")
    parser.add_argument("--version", action="version", version=f"chunkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    parent = settings_parent()
    run.add_parsers(commands, parent)
    inspect.add_status_and_verify(commands, parent)
    ops.add_parsers(commands, parent)
    inspect.add_stats(commands, parent)
    for command in commands.choices.values():
        command.epilog = SETTINGS_EPILOG
    topics = commands.add_parser("help", help="`chunkd help settings`: every setting, its flag and default")
    topics.add_argument("topic", nargs="?", choices=["settings"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "help":  # a reference: it must print whatever the configuration says
        print(settings_reference() if args.topic == "settings" else parser.format_help())
        return EXIT_OK
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    try:
        settings = load_settings(config_file=args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"chunkd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dev and settings.create_input_dir is None:
        settings = dataclasses.replace(settings, create_input_dir=True)  # --dev: the quick start just works
    setup_logging(settings.log_level, settings.log_format)
    try:
        with dev_s3(settings, args.dev and args.command in S3_COMMANDS):
            return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"chunkd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ChunkdError as exc:
        code = getattr(exc, "exit_code", EXIT_FAILURE)
        hint = dev_hint(settings) if isinstance(exc, (EndpointError, TransferError)) and not args.dev else ""
        print(f"chunkd: error: {exc}{hint}", file=sys.stderr)
        return code
