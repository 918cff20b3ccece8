"""What every command shares: exit codes, the settings options, the state store and S3 handles."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
DEV_FILE = DEV_ROOT / "dev.json"  # a running `chunkd run --dev`'s endpoint and keys, mode 0600
SWITCHES = frozenset({"overwrite"})  # settings given as `--name` alone, meaning true


SETTINGS_EPILOG = (
    "Settings: every CHUNKD_<NAME> environment variable is also the flag --<name> on any command and the key "
    "<name> in --config; `chunkd help settings` lists them with their defaults (the README explains each)."
)


def settings_parent() -> argparse.ArgumentParser:
    """Options every command takes. The settings flags parse everywhere but stay out of each command's
    help (47 of them would bury its own options); `chunkd help settings` is their reference."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--dev", action="store_true",
        help="the dev setup under ./.chunkd/: its state, and the S3 server of `chunkd run --dev` (started "
        "for this command when no daemon runs)",
    )
    parent.add_argument("--config", metavar="FILE", help="TOML file with settings (env CHUNKD_CONFIG)")
    for name in SETTING_NAMES:
        if name in SWITCHES:  # a bare flag: a value after it would be taken for a PATH
            parent.add_argument(f"--{name}", dest=name, action="store_const", const="true", help=argparse.SUPPRESS)
            continue
        parent.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=argparse.SUPPRESS)
    return parent


def settings_reference() -> str:
    """`chunkd help settings`: each setting's variable, flag and default, one line each."""
    defaults = Settings()
    rows = [("environment", "flag", "default")]
    for name in SETTING_NAMES:
        flag = f"--{name}" if name in SWITCHES else f"--{name.replace('_', '-')} VALUE"
        rows.append((env_name(name), flag, _shown(getattr(defaults, name))))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{env:<{width[0]}}  {flag:<{width[1]}}  {default}".rstrip() for env, flag, default in rows]
    return "\n".join([*lines, "", "Precedence: defaults < environment < --config FILE < flags. Meanings: README, Settings."])


def _shown(value: object) -> str:
    if value is None or value == ():
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join("=".join(map(str, item)) if isinstance(item, tuple) else str(item) for item in value)
    return str(value)


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
    """`--dev`: a local S3 endpoint on disk under ./.chunkd/s3.

    `chunkd run --dev` (`publish`) starts it, writes its endpoint and keys to ./.chunkd/dev.json
    (mode 0600) and removes the file when it stops. Any other command uses that server while its
    daemon runs (rclone keeps open multipart uploads in memory: `cancel` must reach the daemon's),
    and otherwise starts one of its own on the same folder for as long as the command runs."""

    def __init__(self, settings: Settings, *, publish: bool = False) -> None:
        from chunkd.s3.devserver import LocalS3Server

        self.publish = publish
        self.root = DEV_ROOT.resolve() / "s3"
        self.server = LocalS3Server(self.root, buckets=(settings.bucket,), log_file=DEV_ROOT / "rclone.log")
        self._started = False

    def __enter__(self) -> S3Target:
        if not self.publish:
            running = running_dev_endpoint(self.root)
            if running is not None:
                return running
        self.server.start()
        self._started = True
        s3 = S3Target(
            self.server.endpoint_url, None, self.server.access_key, self.server.secret_key,
            name=f"dev:{self.root}",  # its port changes with every start; its folder does not
        )
        if self.publish:
            _write_private(DEV_FILE, {"pid": os.getpid(), "endpoint_url": s3.endpoint_url,
                                      "access_key": s3.access_key, "secret_key": s3.secret_key})
        return s3

    def __exit__(self, *exc: object) -> None:
        if self.publish and _read_dev_file().get("pid") == os.getpid():
            DEV_FILE.unlink(missing_ok=True)
        if self._started:
            self.server.stop()


def running_dev_endpoint(root: Path) -> S3Target | None:
    """The S3 server of a `chunkd run --dev` still running in this folder, if it answers."""
    data = _read_dev_file()
    try:
        pid, url = int(data["pid"]), str(data["endpoint_url"])
        access_key, secret_key = str(data["access_key"]), str(data["secret_key"])
        os.kill(pid, 0)
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1.0):
            pass
    except (KeyError, ValueError, TypeError, OSError):  # no file, a dead daemon or a closed port
        return None
    return S3Target(url, None, access_key, secret_key, name=f"dev:{root}")


def _read_dev_file() -> dict[str, Any]:
    try:
        data = json.loads(DEV_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Owner-only from the first byte (the secret key is in it), replaced in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


class DevTarget:
    """The S3 handle `--dev` chose for this command; `target()` answers with it while set."""

    current: S3Target | None = None


@contextmanager
def dev_s3(settings: Settings, wanted: bool) -> Iterator[None]:
    """Around a command given `--dev`: every S3 handle it takes is the dev endpoint."""
    if not wanted:
        yield
        return
    with DevEndpoint(settings) as s3:
        DevTarget.current = s3
        try:
            yield
        finally:
            DevTarget.current = None


def dev_hint(settings: Settings) -> str:
    """Next to ./.chunkd/ with no S3 settings, a failing S3 command most likely wanted --dev."""
    if settings.s3_endpoint_url is None and DEV_ROOT.is_dir():
        return f" ({DEV_ROOT}/ is here: add --dev to use the dev S3 server and state)"
    return ""


def target(settings: Settings) -> S3Target:
    from chunkd.config import read_sse_c_key

    if DevTarget.current is not None:
        return DevTarget.current
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

