"""What every command shares: exit codes, the settings options, the state store and S3 handles."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from chunkd.config import SETTING_NAMES, Settings, env_name
from chunkd.errors import ChunkdError, ConfigError, StoreError, TransferError
from chunkd.observe.logs import redact
from chunkd.s3.client import S3Target
from chunkd.store import CheckpointStore

if TYPE_CHECKING:
    from chunkd.s3.uploader import Uploader

logger = logging.getLogger("chunkd.cli")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEV_ROOT = Path(".chunkd")
SWITCHES = frozenset({"overwrite"})  # settings given as `--name` alone, meaning true


def settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also CHUNKD_<NAME> in the environment or <name> in --config)")
    group.add_argument("--config", metavar="FILE", help="TOML file with settings (env CHUNKD_CONFIG)")
    for name in SETTING_NAMES:
        if name in SWITCHES:  # a bare flag: a value after it would be taken for a PATH
            group.add_argument(f"--{name}", dest=name, action="store_const", const="true", help=f"env {env_name(name)}")
            continue
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"env {env_name(name)}")
    return parent


def prepare_input_dir(settings: Settings) -> None:
    """A missing drop folder is a mistake (a NAS share not mounted) unless creating it was asked for."""
    folder = settings.input_dir.resolve()
    if folder.is_dir():
        return
    if folder.exists():
        raise ConfigError("CHUNKD_INPUT_DIR", f"{folder} is not a folder")
    if not settings.create_input_dir:
        raise ConfigError("CHUNKD_INPUT_DIR", f"{folder} does not exist (CHUNKD_CREATE_INPUT_DIR=true creates it)")
    folder.mkdir(parents=True, exist_ok=True)


def duration(text: str) -> float:
    from chunkd.observe.overview import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


class DevEndpoint:
    """`--dev`: a local S3 endpoint on disk under ./.chunkd/s3, started and stopped with us."""

    def __init__(self, settings: Settings) -> None:
        from chunkd.s3.devserver import LocalS3Server

        self.root = DEV_ROOT.resolve() / "s3"
        self.server = LocalS3Server(self.root, buckets=(settings.bucket,), log_file=DEV_ROOT / "rclone.log")

    def __enter__(self) -> S3Target:
        self.server.start()
        return S3Target(
            self.server.endpoint_url, None, self.server.access_key, self.server.secret_key,
            name=f"dev:{self.root}",  # its port changes with every start; its folder does not
        )

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def target(settings: Settings) -> S3Target:
    from chunkd.config import read_sse_c_key

    return S3Target(
        endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        ca_bundle=str(settings.s3_ca_bundle) if settings.s3_ca_bundle else None,
        verify_tls=settings.s3_verify_tls,
        sse_c_key=read_sse_c_key(settings.sse_c_key_file) if settings.sse_c_key_file else None,
    )


@contextmanager
def open_store(settings: Settings, *, existing: bool = True) -> Iterator[CheckpointStore]:
    """The daemon's store. An operator command that only looks at (or edits) what a daemon recorded
    wants it `existing`: opening SQLite creates the file, so run from the wrong folder it would
    report an empty, freshly made store ("no streams recorded yet") instead of the mistake."""
    from chunkd.store import open_store

    url = settings.state_url
    if existing and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        path = Path(url[len("sqlite:///"):]).resolve()
        raise ConfigError("CHUNKD_STATE_URL", f"no state store at {path} (run from the daemon's folder or set it)")
    store = open_store(url)
    try:
        try:
            store.ping()
        except StoreError as exc:
            raise ConfigError("CHUNKD_STATE_URL", f"no state store answers at {redact(url)}: {exc}") from None
        yield store
    finally:
        store.close()


def quick_s3(settings: Settings) -> Uploader:
    """The S3 gateway under a short retry policy: an operator command should fail in seconds."""
    from chunkd.s3.retry import RetryPolicy
    from chunkd.s3.uploader import Uploader

    return Uploader.connect(target(settings), RetryPolicy.quick())


def s3_error(settings: Settings, exc: TransferError) -> ChunkdError:
    from chunkd.errors import endpoint_error

    return endpoint_error(exc, bucket=settings.bucket, where=settings.s3_endpoint_url or "AWS S3")

