"""`chunkd doctor`: check, one line each, what `chunkd run` needs from this host and its endpoints."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chunkd.config import Settings
from chunkd.errors import StoreError, StoreFullError, TransferError, endpoint_error
from chunkd.observe.logs import redact
from chunkd.s3.client import S3Target, credential_method
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from chunkd.store import open_store

OK, WARN, FAIL = "OK", "WARN", "FAIL"
LOW_DISK_BYTES = 1024**3
WATCHES_SHARE = 0.8  # other programs of the same user need inotify watches too
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class Check:
    level: str  # OK | WARN | FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.name}: {self.detail}"


def run_checks(settings: Settings, target: S3Target, *, watches_file: Path = MAX_USER_WATCHES) -> Iterator[Check]:
    """Every check in order; each is independent, so one failure does not hide the others."""
    yield Check(OK, "config", f"loaded (bucket {settings.bucket}, input {settings.input_dir.resolve()})")
    yield check_store(settings.state_url)
    yield check_credentials(target)
    yield check_bucket(settings.bucket, target)
    yield check_ffprobe(thumbnail=settings.thumbnail)
    yield check_ffmpeg(thumbnail=settings.thumbnail)
    yield check_input(settings.input_dir, create=bool(settings.create_input_dir))
    if settings.require_mount:
        yield check_mount(settings.input_dir)
    yield check_watches(settings.input_dir, watches_file)
    yield check_disk("disk space (input)", settings.input_dir)
    yield check_state_disk(settings.state_url)


def check_store(state_url: str) -> Check:
    where = redact(state_url)
    try:
        store = open_store(state_url)
    except StoreError as exc:
        return Check(FAIL, "state store", f"cannot open {where}: {exc}")
    try:
        store.ping()
        # A write (Redis: SET NX of the data mark, as every start does): a Redis that refuses writes
        # (MISCONF on a full disk, OOM) still answers, and nothing would upload.
        store.data_mark()
        return Check(OK, "state store", f"{where} answers")
    except StoreFullError as exc:
        return Check(FAIL, "state store", f"{where} answers but refuses writes: {exc}")
    except StoreError as exc:
        return Check(FAIL, "state store", f"cannot reach {where}: {exc}")
    finally:
        try:
            store.close()
        except StoreError:
            pass


def check_credentials(target: S3Target) -> Check:
    if target.access_key:
        return Check(OK, "s3 credentials", "given explicitly")
    method = credential_method()
    if method is None:
        return Check(FAIL, "s3 credentials", "none found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, role)")
    return Check(OK, "s3 credentials", f"found ({method})")


def check_bucket(bucket: str, target: S3Target) -> Check:
    where = target.endpoint_url or "AWS S3"
    uploader = Uploader.connect(target, RetryPolicy.quick(max_attempts=2))
    try:
        uploader.head_bucket(bucket)
    except TransferError as exc:
        return Check(FAIL, "s3 bucket", str(endpoint_error(exc, bucket=bucket, where=where)))
    return Check(OK, "s3 bucket", f"{bucket!r} reachable at {where}")


def check_ffprobe(*, thumbnail: bool = False, which: Callable[[str], str | None] = shutil.which) -> Check:
    """The media check runs ffprobe; without it no file is known to be video, so none gets a poster."""
    path = which("ffprobe")
    if path is None:
        posters = ", and no video gets a poster frame" if thumbnail else ""
        return Check(WARN, "ffprobe", f"not on PATH: manifests get media: null and nothing is quarantined{posters}")
    return Check(OK, "ffprobe", path)


def check_ffmpeg(*, thumbnail: bool, which: Callable[[str], str | None] = shutil.which) -> Check:
    """Poster frames (CHUNKD_THUMBNAIL) are made by ffmpeg; uploads go on without them."""
    if not thumbnail:
        return Check(OK, "ffmpeg", "not needed (CHUNKD_THUMBNAIL=false)")
    path = which("ffmpeg")
    if path is None:
        return Check(WARN, "ffmpeg", "not on PATH: videos get no poster frame (CHUNKD_THUMBNAIL=false turns them off)")
    return Check(OK, "ffmpeg", path)


def check_input(folder: Path, *, create: bool = False) -> Check:
    folder = folder.resolve()
    if not folder.exists():
        if not create:
            return Check(FAIL, "input folder", f"{folder} does not exist (CHUNKD_CREATE_INPUT_DIR=true creates it)")
        parent = _existing_parent(folder)
        if os.access(parent, os.W_OK | os.X_OK):
            return Check(WARN, "input folder", f"{folder} does not exist yet; chunkd run will create it")
        return Check(FAIL, "input folder", f"{folder} does not exist and {parent} is not writable")
    if not folder.is_dir():
        return Check(FAIL, "input folder", f"{folder} is not a folder")
    needs = (("readable", os.R_OK | os.X_OK), ("writable", os.W_OK))
    missing = [name for name, mode in needs if not os.access(folder, mode)]
    if missing:
        return Check(FAIL, "input folder", f"{folder} is not {' or '.join(missing)} by this user")
    return Check(OK, "input folder", f"{folder} is readable and writable")


def check_mount(folder: Path) -> Check:
    """CHUNKD_REQUIRE_MOUNT: a share that is not mounted leaves its mount point an empty folder on the
    root filesystem, and uploads (or a created folder) would fill the local disk instead."""
    mount = mount_point(folder)
    if mount is None:
        return Check(FAIL, "input mount", f"{folder.resolve()} is on the root filesystem; CHUNKD_REQUIRE_MOUNT "
                     "expects a mounted share (mount it, or set CHUNKD_REQUIRE_MOUNT=false)")
    return Check(OK, "input mount", f"{folder.resolve()} is on the filesystem mounted at {mount}")


def mount_point(folder: Path) -> Path | None:
    """The mount point the folder (or its nearest existing ancestor) is on; None for the root filesystem."""
    for candidate in (folder.resolve(), *folder.resolve().parents):
        if candidate != Path("/") and candidate.exists() and os.path.ismount(candidate):
            return candidate
    return None


def check_watches(folder: Path, watches_file: Path = MAX_USER_WATCHES) -> Check:
    """The watcher holds one inotify watch per directory; past the limit, new folders go unseen."""
    try:
        limit = int(watches_file.read_text().strip())
    except (OSError, ValueError):
        return Check(OK, "inotify watches", f"no limit to check ({watches_file} unreadable; not Linux?)")
    folders = count_dirs(folder.resolve())
    detail = f"{folders} folder(s) to watch, max_user_watches {limit}"
    if folders > WATCHES_SHARE * limit:
        return Check(WARN, "inotify watches", f"{detail}: raise fs.inotify.max_user_watches (sysctl)")
    return Check(OK, "inotify watches", detail)


def count_dirs(root: Path) -> int:
    if not root.is_dir():
        return 0
    return 1 + sum(len(dirs) for _, dirs, _ in os.walk(root))


def check_disk(name: str, path: Path, *, low: int = LOW_DISK_BYTES) -> Check:
    where = _existing_parent(path.resolve())
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check(WARN, name, f"cannot stat {where}: {exc.strerror}")
    detail = f"{_gib(free)} free on {where}"
    return Check(WARN if free < low else OK, name, detail + (" (under 1 GiB)" if free < low else ""))


def check_state_disk(state_url: str) -> Check:
    if not state_url.startswith("sqlite:///"):
        return Check(OK, "disk space (state)", "state store is not a local file")
    return check_disk("disk space (state)", Path(state_url[len("sqlite:///") :]).resolve().parent)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"
