"""Hostile and odd input dropped into the folder of a real, running `chunkd run`.

Every test drops its case together with an ordinary file and checks three things: the case's
defined outcome (uploaded under the right key, ignored with one log line, or FAILED / QUARANTINED
with a reason `chunkd status --json` shows), the log line, and that the ordinary file still
uploads. Servers are real: moto, `rclone serve s3` and Ceph RGW over HTTP (each in turn where
S3 is involved: odd keys, resume, quarantine), redis-server, a local media server; a full disk is a real tmpfs; a file root cannot read is read by a daemon without
CAP_DAC_OVERRIDE.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from chunkd.s3.devserver import LocalS3Server, free_port
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.daemon import (
    SCAN_LINE,
    DaemonProcess,
    daemon_env,
    wait_for,
    wait_logged,
    wait_scans,
)
from tests.support.files import sha256_file, write_random
from tests.support.media import make_mp4, require_ffmpeg
from tests.support.media_server import MediaServer
from tests.support.s3_servers import MotoServer
from tests.support.sizes import KiB, MiB
from tests.support.tmpfs import fill_up, tmpfs_mounts

# -- helpers -------------------------------------------------------------------------------------


def objects(client: Any) -> dict[str, int]:
    """Every object in the bucket with its size."""
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return found


def status_json(daemon: DaemonProcess) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "chunkd", "status", "--json"], env=daemon.env, capture_output=True, text=True,
        timeout=60, check=True,
    )
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def stream_for(daemon: DaemonProcess, relpath: str) -> dict[str, Any] | None:
    return next((entry for entry in status_json(daemon) if entry["relpath"] == relpath), None)


def uploaded(client: Any, key: str, source: Path) -> bool:
    """The object and its manifest are there, and the object holds the file's bytes."""
    manifest = read_manifest(client, key)
    return manifest is not None and sha256_object(client, key) == sha256_file(source)


def drop_good_file(input_dir: Path, tmp_path: Path, name: str = "good.mp4", size: int = 64 * KiB) -> Path:
    """An ordinary file moved in whole: the control that must upload whatever else is going on."""
    staged = write_random(tmp_path / f"staged-{name}", size)
    target = input_dir / name
    os.replace(staged, target)
    return target


def wait_uploaded(client: Any, key: str, source: Path, *, timeout: float = 60) -> None:
    wait_for(lambda: uploaded(client, key, source), timeout=timeout, what=f"{key} to be uploaded")


def peak_memory_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def start(chunkd_daemon: Callable[..., DaemonProcess], request: pytest.FixtureRequest) -> Callable[..., DaemonProcess]:
    """A daemon that logs rescans (DEBUG) and rescans every second, on the test's `server` (each S3
    server in turn) when it takes one, else on moto (cases where S3 plays no part)."""
    s3 = request.getfixturevalue("server" if "server" in request.fixturenames else "moto")

    def run(**settings: Any) -> DaemonProcess:
        daemon = chunkd_daemon(s3, **{"log_level": "DEBUG", "rescan_seconds": 1, **settings})
        wait_for(lambda: daemon.logged("watching"), timeout=60, what="the daemon to start watching")
        return daemon
    return run


# -- symlinks and special files --------------------------------------------------------------------


def test_symlinks_out_of_the_folder_and_loops_are_ignored_with_one_log_line_each(
    start: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_random(outside / "secret.mp4", 32 * KiB)
    (input_dir / "evil.mp4").symlink_to(secret)
    (input_dir / "loop-a.mp4").symlink_to(input_dir / "loop-b.mp4")
    (input_dir / "loop-b.mp4").symlink_to(input_dir / "loop-a.mp4")
    (input_dir / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (input_dir / "outdir").symlink_to(outside, target_is_directory=True)
    inside = drop_good_file(input_dir, tmp_path, "real.mp4")
    (input_dir / "alias.mp4").symlink_to("real.mp4")  # stays inside: uploaded under its own name
    daemon = start()
    good = drop_good_file(input_dir, tmp_path)
    client = moto.client()

    wait_uploaded(client, "good.mp4", good)
    wait_uploaded(client, "alias.mp4", inside)
    wait_scans(daemon, 3)  # the refusals must not be logged again on every rescan

    ignored = {line["relpath"]: line["event"] for line in daemon.events("ignoring ")}
    assert ignored == {
        "evil.mp4": f"ignoring evil.mp4: symlink points outside the input folder ({secret})",
        "loop-a.mp4": "ignoring loop-a.mp4: symlink loop",
        "loop-b.mp4": "ignoring loop-b.mp4: symlink loop",
        "dangling.mp4": f"ignoring dangling.mp4: symlink to nothing ({tmp_path / 'nowhere.mp4'})",
    }
    assert len(daemon.events("ignoring ")) == 4, "each refusal is logged once"
    keys = objects(client)
    assert not any(key.startswith(("evil", "loop", "dangling", "outdir")) for key in keys)
    assert not [r for r in moto.requests() if r.key and r.key.startswith(("evil", "outdir"))]
    assert {entry["relpath"] for entry in status_json(daemon)} == {"good.mp4", "real.mp4", "alias.mp4"}


def test_fifo_and_device_named_like_videos_are_ignored_and_never_opened(
    start: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    daemon = start()
    os.mkfifo(input_dir / "pipe.mp4")  # opening it for reading would block until a writer came
    try:
        os.mknod(input_dir / "zero.mp4", 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: endless
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    good = drop_good_file(input_dir, tmp_path)
    client = moto.client()
    wait_uploaded(client, "good.mp4", good)
    wait_scans(daemon, 2)
    assert sorted(line["event"] for line in daemon.events("ignoring ")) == [
        "ignoring pipe.mp4: not a regular file (FIFO)",
        "ignoring zero.mp4: not a regular file (character device)",
    ]
    assert set(objects(client)) == {"good.mp4", "good.mp4.manifest.json"}
    assert [entry["relpath"] for entry in status_json(daemon)] == ["good.mp4"]
    # Never opened: no process of ours holds either of them.
    held = {os.readlink(fd) for fd in Path(f"/proc/{daemon.pid}/fd").iterdir() if fd.is_symlink()}
    assert str(input_dir / "pipe.mp4") not in held and str(input_dir / "zero.mp4") not in held


# -- names -----------------------------------------------------------------------------------------

# file name bytes -> expected key: unchanged, except control characters, undecodable bytes and a
# '%' that reads as an escape, which are percent-encoded (unquote_to_bytes(key) == the name).
ODD_NAMES: dict[bytes, str] = {
    b"with  two spaces .mp4": "with  two spaces .mp4",
    b"new\nline.mp4": "new%0Aline.mp4",
    b"tab\tand\rcr.mp4": "tab%09and%0Dcr.mp4",
    b"quotes \"double\" 'single' `back`.mp4": "quotes \"double\" 'single' `back`.mp4",
    b"back\\slash.mp4": "back\\slash.mp4",
    b"a..b...mp4": "a..b...mp4",
    b"-rf --help.mp4": "-rf --help.mp4",
    b"caf\xe9 latin-1.mp4": "caf%E9 latin-1.mp4",
    b"\xff\xfe broken utf-8.mp4": "%FF%FE broken utf-8.mp4",
    "café NFC.mp4".encode(): "café NFC.mp4",
    "cafe\u0301 NFD.mp4".encode(): "cafe\u0301 NFD.mp4",
    "emoji 🎬.mp4".encode(): "emoji 🎬.mp4",
    b"fifty %20 percent.mp4": "fifty %2520 percent.mp4",
    b"100% done.mp4": "100% done.mp4",
    b"del\x7f and c1 \xc2\x85.mp4": "del%7F and c1 %C2%85.mp4",
    b"odd\ndir../in..side.mp4": "odd%0Adir../in..side.mp4",
    b"x" * 251 + b".mp4": "x" * 251 + ".mp4",
}


def storable_names(server: Any) -> dict[bytes, str]:
    """ODD_NAMES, less those `rclone serve s3` cannot hold: it keeps each object as a file, so a
    key whose last segment, with ".manifest.json" added, is over 255 bytes (NAME_MAX) fails with
    500 InternalError, a retryable answer chunkd keeps retrying. S3 and RGW allow 1024 bytes."""
    if not isinstance(server, LocalS3Server):
        return ODD_NAMES
    return {name: key for name, key in ODD_NAMES.items()
            if len(f"{key.rsplit('/', 1)[-1]}.manifest.json".encode()) <= 255}


@pytest.mark.parametrize(
    ("store", "server"),
    [("sqlite", "moto"), ("redis", "moto"), ("sqlite", "rclone"), ("sqlite", "rgw")],
    indirect=["server"],  # every server once; the store's part does not depend on the server
)
def test_odd_names_get_safe_reversible_keys(
    store: str, server: Any, start: Callable[..., DaemonProcess], client: Any, input_dir: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    state = {"state_url": request.getfixturevalue("redis_url")} if store == "redis" else {}
    names = storable_names(server)
    daemon = start(**state)
    staged = tmp_path / "staged"
    staged.mkdir()
    sources: dict[str, Path] = {}
    for index, (name, key) in enumerate(names.items()):
        source = write_random(staged / f"{index}.bin", 1000 + index)
        target = os.path.join(os.fsencode(input_dir), name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        sources[key] = Path(os.fsdecode(target))
    empty = input_dir / "empty.bin.mp4"
    empty.write_bytes(b"")  # 0 bytes (media checks off for this daemon: invalid_media=upload)
    good = drop_good_file(input_dir, tmp_path)
    wait_uploaded(client, "good.mp4", good)
    for key, source in sources.items():
        wait_uploaded(client, key, source)
    wait_for(lambda: read_manifest(client, "empty.bin.mp4"), timeout=60, what="the empty file's manifest")

    keys = objects(client)
    assert keys["empty.bin.mp4"] == 0
    for name, key in names.items():
        assert unquote_to_bytes(key) == name, "the key gives back the file name's bytes"
        manifest = read_manifest(client, key)
        assert manifest is not None and manifest["source"]["relpath"] == key
        assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in key)
        assert ".." not in key.split("/")
    states = {entry["relpath"]: entry["state"] for entry in status_json(daemon)}
    assert states == {key: "COMPLETED" for key in [*names.values(), "good.mp4", "empty.bin.mp4"]}
    table = subprocess.run(
        [sys.executable, "-m", "chunkd", "status"], env=daemon.env, capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(table) == 1 + len(states), "one line per file: a newline in a name does not break the table"


def test_an_escaped_name_resumes_after_a_crash(
    start: Callable[..., DaemonProcess], client: Any, input_dir: Path, tmp_path: Path
) -> None:
    daemon = start(part_size="5MiB", bandwidth_limit="4MB")
    raw = os.path.join(os.fsencode(input_dir), b"caf\xe9 50%25 big.mp4")
    source = Path(os.fsdecode(raw))
    os.replace(write_random(tmp_path / "big.bin", 30 * MiB), raw)
    wait_for(lambda: daemon.logged("multipart upload created"), timeout=60, what="the upload to start")
    daemon.kill()
    again = start(part_size="5MiB")
    key = "caf%E9 50%2525 big.mp4"
    wait_for(lambda: uploaded(client, key, source) or again.events("failed: "), timeout=90,
             what="the upload to finish or fail")
    assert not again.events("failed: ") and uploaded(client, key, source)


# -- empty, unreadable -----------------------------------------------------------------------------


def test_zero_byte_video_is_quarantined_with_its_reason(
    start: Callable[..., DaemonProcess], client: Any, input_dir: Path, tmp_path: Path
) -> None:
    require_ffmpeg()
    daemon = start(invalid_media="quarantine")
    (input_dir / "empty.mp4").write_bytes(b"")
    good = make_mp4(tmp_path / "good.mp4", 1.0)
    os.replace(good, input_dir / "good.mp4")
    wait_for(lambda: read_manifest(client, "good.mp4"), timeout=60, what="the good file's manifest")
    entry = wait_for(
        lambda: (found := stream_for(daemon, "empty.mp4")) and found["state"] == "QUARANTINED" and found,
        timeout=60, what="empty.mp4 to be quarantined",
    )
    assert entry["last_error"].startswith("not readable as media: ")
    assert (input_dir / ".quarantine" / "empty.mp4").exists()
    assert "empty.mp4" not in objects(client)
    assert daemon.events("quarantined: not readable as media")


class UnprivilegedDaemon(DaemonProcess):
    """`chunkd run` as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: file modes bind it
    as they bind any user, so `chmod 000` really makes a file unreadable to it."""

    def start(self) -> UnprivilegedDaemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        drop = "-dac_override,-dac_read_search"
        self.process = subprocess.Popen(
            ["setpriv", "--bounding-set", drop, "--inh-caps", drop, "--",
             sys.executable, "-m", "chunkd", "run", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
        )
        log.close()
        return self


@pytest.fixture
def unprivileged(moto: MotoServer, input_dir: Path, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a daemon that file modes apply to")
    started: list[DaemonProcess] = []

    def run(**settings: Any) -> DaemonProcess:
        env = daemon_env(
            input_dir=input_dir, state_url=f"sqlite:///{tmp_path / 'state.db'}", endpoint_url=moto.endpoint_url,
            access_key=moto.access_key, secret_key=moto.secret_key,
            **{"log_level": "DEBUG", "rescan_seconds": 1, **settings},
        )
        daemon = UnprivilegedDaemon(env, tmp_path / "daemon.log").start()
        started.append(daemon)
        wait_for(lambda: daemon.logged("watching"), timeout=60, what="the daemon to start watching")
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


def test_unreadable_file_fails_with_a_reason_and_retry_uploads_it_once_readable(
    unprivileged: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    locked = write_random(tmp_path / "locked.mp4", 200 * KiB)
    locked.chmod(0)
    daemon = unprivileged()
    os.replace(locked, input_dir / "locked.mp4")
    locked = input_dir / "locked.mp4"
    good = drop_good_file(input_dir, tmp_path)
    client = moto.client()
    wait_uploaded(client, "good.mp4", good)
    entry = wait_for(
        lambda: (found := stream_for(daemon, "locked.mp4")) and found["state"] == "FAILED" and found,
        timeout=60, what="locked.mp4 to fail",
    )
    assert entry["last_error"] == f"permission denied reading {locked}"
    assert daemon.events(f"failed: permission denied reading {locked}")
    assert "locked.mp4" not in objects(client)
    wait_scans(daemon, 2)
    assert len(daemon.events("failed: permission denied")) == 1, "an unchanged failed file is not tried again"

    locked.chmod(0o644)
    subprocess.run([sys.executable, "-m", "chunkd", "retry", "--failed"], env=daemon.env, check=True,
                   capture_output=True, timeout=60)
    wait_uploaded(client, "locked.mp4", locked, timeout=90)


# -- deep trees, many files ------------------------------------------------------------------------


def test_a_tree_120_folders_deep_uploads_the_file_at_the_bottom(
    start: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    daemon = start(rescan_seconds=3600)  # found through inotify watches on each new folder
    depth = 120
    bottom = input_dir.joinpath(*["d"] * depth)
    bottom.mkdir(parents=True)
    deep = write_random(bottom / "deep.mp4", 16 * KiB)
    good = drop_good_file(input_dir, tmp_path)
    client = moto.client()
    wait_uploaded(client, "good.mp4", good)
    wait_uploaded(client, "d/" * depth + "deep.mp4", deep)
    assert not daemon.events("Recursion") and not daemon.events("cannot watch")


# -- the input folder itself -------------------------------------------------------------------------


def test_input_folder_deleted_and_recreated_while_running(
    start: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    daemon = start(rescan_seconds=3600, http_addr=f"127.0.0.1:{port}")  # events only: no rescans to lean on
    health = f"http://127.0.0.1:{port}/healthz"
    client = moto.client()
    first = drop_good_file(input_dir, tmp_path, "first.mp4")
    wait_uploaded(client, "first.mp4", first)

    for round_ in range(2):
        shutil.rmtree(input_dir)
        # Counted, not just found: round 1 must not take round 0's line for its own and re-create
        # the folder before the watcher noticed it gone (it would then be "replaced", not "back").
        wait_logged(daemon, f"input folder {input_dir} disappeared; waiting for it", more_than=round_, timeout=30)
        assert daemon.running
        with urllib.request.urlopen(health, timeout=10) as response:
            assert response.status == 200
        scans = len(daemon.events(SCAN_LINE))
        input_dir.mkdir()
        wait_logged(daemon, "is back; watching it again", more_than=round_, timeout=30)
        wait_logged(daemon, SCAN_LINE, more_than=scans, timeout=30)  # the scan of the new folder
        late = drop_good_file(input_dir, tmp_path, f"after-{round_}.mp4")
        wait_uploaded(client, f"after-{round_}.mp4", late)  # seen through the new inotify watch
    assert len(daemon.events("disappeared; waiting for it")) == 2
    assert daemon.running


# -- a links file of 100,000 lines -----------------------------------------------------------------


def hundred_thousand_lines(base: str, good: list[str], missing: int) -> tuple[str, dict[str, int]]:
    """100,000 lines: a few good URLs, each repeated (also spelled differently), `missing` URLs
    that answer 404, comments, blanks and lines that are rejected; and how many of each."""
    lines: list[str] = []
    kinds = {"good": 0, "duplicate": 0, "missing": 0, "rejected": 0, "skipped": 0}
    for index in range(100_000):
        slot = index % 10
        if index < len(good):
            lines.append(f"{base}{good[index]}")
            kinds["good"] += 1
        elif slot == 0 and kinds["missing"] < missing:
            lines.append(f"{base}/missing/{index}.mp4")
            kinds["missing"] += 1
        elif slot in (0, 1):
            lines.append(f"{base}{good[index % len(good)]}")
            kinds["duplicate"] += 1
        elif slot == 2:
            lines.append(f"{base.upper()}{good[index % len(good)]}#t={index}")  # the same URL, normalized
            kinds["duplicate"] += 1
        elif slot == 3:
            lines.append(f"ftp://files.example/{index}.mp4")
            kinds["rejected"] += 1
        elif slot == 4:
            lines.append(f"not a url at all {index}")
            kinds["rejected"] += 1
        elif slot == 5:
            lines.append(f"javascript:alert({index})")
            kinds["rejected"] += 1
        elif slot in (6, 7):
            lines.append(f"# comment {index}")
            kinds["skipped"] += 1
        else:
            lines.append("   ")
            kinds["skipped"] += 1
    return "\n".join(lines) + "\n", kinds


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def test_a_links_file_of_100000_lines_is_settled_line_by_line(
    store: str, start: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Every line gets a report entry, each good URL is fetched once, the log stays short, and
    neither time nor memory grows with the square of the file."""
    if request.node.get_closest_marker("slow") and not _slow_selected(request.config):
        pytest.skip("slow: the same with Redis; run with -m slow or CHUNKD_SLOW_TESTS=1")
    require_ffmpeg()
    clip = make_mp4(tmp_path / "clip.mp4", 1.0).read_bytes()
    good = ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"]
    files = {path: clip[:-index] if index else clip for index, path in enumerate(good)}  # three different files
    files["/v/warmup.mp4"] = clip + b"\0"
    with MediaServer(files) as server:
        state = {"state_url": request.getfixturevalue("redis_url")} if store == "redis" else {}
        daemon = start(allow_private_urls="true", rescan_seconds=600, log_level="INFO",
                       download_host_requests=1000, **state)
        # A one-line file first, so the baseline includes yt-dlp and everything a download loads.
        (input_dir / "warmup.links.txt").write_text(f"{server.url}/v/warmup.mp4\n")
        wait_for((input_dir / "warmup.links.txt.report.json").is_file, timeout=120, what="the warm-up report")
        baseline = peak_memory_kib(daemon.pid)

        text, kinds = hundred_thousand_lines(server.url, good, missing=20)
        staged = tmp_path / "big.links.txt"
        staged.write_text(text)
        good_file = drop_good_file(input_dir, tmp_path)
        began = time.monotonic()
        os.replace(staged, input_dir / "big.links.txt")
        report_path = input_dir / "big.links.txt.report.json"
        wait_for(report_path.is_file, timeout=240, what="the report of the 100,000-line links file")
        took = time.monotonic() - began
        served = {path: len(server.requests_for(path, "GET")) for path in good}

    report = json.loads(report_path.read_text())["lines"]
    by_state: dict[str, int] = {}
    for entry in report:
        by_state[entry["state"]] = by_state.get(entry["state"], 0) + 1
    assert by_state == {
        "COMPLETED": kinds["good"], "DUPLICATE": kinds["duplicate"], "FAILED": kinds["missing"],
        "REJECTED": kinds["rejected"],
    }
    assert len(report) == 100_000 - kinds["skipped"], "every line that is not blank or a comment has an entry"
    assert all(count == 1 for count in served.values()), f"each good URL fetched once: {served}"
    client = moto.client()
    wait_uploaded(client, "good.mp4", good_file)
    assert {key.split("-")[0] for key in objects(client) if not key.endswith(".manifest.json")} >= {"a", "b", "c"}
    individually = daemon.events("links file line")
    assert 0 < len(individually) <= 10, "the first rejected lines are logged one by one, once"
    summaries = daemon.events("more line(s) rejected or refused")
    assert summaries and sum(int(line["event"].split()[2]) for line in summaries) == kinds["rejected"] - len(individually)
    grown = peak_memory_kib(daemon.pid) - baseline
    print(f"\n100,000-line links file ({store}): settled in {took:.1f}s, daemon peak RSS +{grown / 1024:.0f} MiB")
    assert grown < 100 * 1024, f"peak memory grew by {grown} KiB"
    assert took < 120


# -- the disk filling up -----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """`make(name, size)`: a real tmpfs of `size` (e.g. "4m") mounted at tmp_path/name."""
    with tmpfs_mounts(tmp_path) as make:
        yield make


def test_state_disk_full_holds_uploads_back_without_losing_them(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    tiny_disk: Callable[[str, str], Path],
) -> None:
    state = tiny_disk("state", "16m")  # above SQLite's 4 MiB WAL auto-checkpoint size
    daemon = chunkd_daemon(moto, state_url=f"sqlite:///{state / 'state.db'}", rescan_seconds=2)
    wait_for(lambda: daemon.logged("watching"), timeout=60, what="the daemon to start watching")
    client = moto.client()
    first = drop_good_file(input_dir, tmp_path, "first.mp4")
    wait_uploaded(client, "first.mp4", first)

    filler = fill_up(state)
    later = [drop_good_file(input_dir, tmp_path, f"later-{index:02d}.mp4", size=8 * KiB) for index in range(20)]
    wait_for(lambda: daemon.events("database or disk is full"), timeout=60, what="the full state disk to be logged")
    assert daemon.running
    filler.unlink()
    for source in later:
        wait_uploaded(client, source.name, source, timeout=120)
    assert daemon.running


# -- many files at once ------------------------------------------------------------------------------


def _slow_selected(config: pytest.Config) -> bool:
    """Slow tests run when asked for: `-m slow` (or an expression naming it) or CHUNKD_SLOW_TESTS=1."""
    expression = str(config.getoption("markexpr") or "")
    return ("slow" in expression and "not slow" not in expression) or os.environ.get("CHUNKD_SLOW_TESTS") == "1"


def drop_many(input_dir: Path, count: int, *, per_folder: int) -> list[str]:
    """`count` tiny files written straight into the drop folder, as fast as Python can: every one
    is a create, a modify and a close event (more than inotify queues by default past ~5,000).
    `per_folder` files to a folder: `rclone serve s3` answers ever slower as one folder of its
    bucket grows past tens of thousands of objects, which is not what is measured here."""
    names = []
    for index in range(count):
        folder = input_dir / "burst" / f"d{index // per_folder:03d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"f{index:06d}.bin").write_bytes(b"%d\n" % index)
        names.append(f"burst/{folder.name}/f{index:06d}.bin")
    return names


def run_burst(daemon: DaemonProcess, bucket_dir: Path, input_dir: Path, count: int, *, per_folder: int,
              timeout: float) -> dict[str, float]:
    """Drop `count` files, wait until every object and manifest is in the bucket (on rclone's
    disk), and measure: seconds, files/s and the daemon's peak RSS before and after."""
    before = peak_memory_kib(daemon.pid)
    began = time.monotonic()
    names = drop_many(input_dir, count, per_folder=per_folder)
    dropped = time.monotonic() - began

    def manifests() -> int:
        top = bucket_dir / "burst"
        folders = [entry.path for entry in os.scandir(top) if entry.is_dir()] if top.is_dir() else []
        return sum(1 for folder in folders for entry in os.scandir(folder) if entry.name.endswith(".manifest.json"))

    wait_for(lambda: manifests() >= count, timeout=timeout, interval=1.0, what=f"{count} manifests")
    took = time.monotonic() - began
    missing = [name for name in names if not (bucket_dir / name).is_file()]
    assert not missing, f"{len(missing)} objects missing, e.g. {missing[:3]}"
    after = peak_memory_kib(daemon.pid)
    return {"dropped_s": round(dropped, 1), "took_s": round(took, 1), "files_per_s": round(count / took, 1),
            "peak_before_mib": round(before / 1024, 1), "peak_after_mib": round(after / 1024, 1)}


def burst_daemon(chunkd_daemon: Callable[..., DaemonProcess], rclone_s3: Any, **settings: Any) -> DaemonProcess:
    daemon = chunkd_daemon(rclone_s3, **{"include": "*.bin", "dedup": "off", "invalid_media": "upload",
                                         "rescan_seconds": 5, "log_level": "DEBUG", **settings})
    wait_for(lambda: daemon.logged("watching"), timeout=60, what="the daemon to start watching")
    return daemon


def test_a_burst_of_600_files_drains_and_later_rescans_offer_nothing(
    chunkd_daemon: Callable[..., DaemonProcess], rclone_s3: Any, input_dir: Path, tmp_path: Path
) -> None:
    daemon = burst_daemon(chunkd_daemon, rclone_s3, rescan_seconds=2)
    numbers = run_burst(daemon, tmp_path / "s3" / BUCKET, input_dir, 600, per_folder=600, timeout=240)
    print(f"\n600 files: {numbers}")
    # Finished files are not handed to the scheduler again by the periodic rescans.
    wait_scans(daemon, 3, timeout=60)
    assert [line["event"] for line in daemon.events("scan offered")[-3:]] == ["scan offered 0 files"] * 3
    assert numbers["peak_after_mib"] - numbers["peak_before_mib"] < 64
    good = drop_good_file(input_dir, tmp_path, "after.bin")
    wait_for(lambda: (tmp_path / "s3" / BUCKET / "after.bin.manifest.json").is_file(), timeout=60,
             what="a file dropped after the burst")
    assert sha256_file(tmp_path / "s3" / BUCKET / "after.bin") == sha256_file(good)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_burst_of_50000_files_drains_with_bounded_memory(
    chunkd_daemon: Callable[..., DaemonProcess], rclone_s3: Any, input_dir: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if not _slow_selected(request.config):
        pytest.skip("slow (about 15 minutes): run with -m slow or CHUNKD_SLOW_TESTS=1")
    daemon = burst_daemon(chunkd_daemon, rclone_s3)
    numbers = run_burst(daemon, tmp_path / "s3" / BUCKET, input_dir, 50_000, per_folder=1000, timeout=3000)
    print(f"\n50,000 files: {numbers}")
    overflowed = daemon.events("overflow")
    print(f"inotify overflows logged: {len(overflowed)}")
    assert numbers["peak_after_mib"] - numbers["peak_before_mib"] < 200

