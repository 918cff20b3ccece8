"""A full disk on a recording box, for real: a small tmpfs filled to its last block under a running
`chunkd run`. The state database on it (SQLite's file, or the snapshots of the Redis holding the
state) stops taking writes; the daemon stays up, says so once, goes unready, and carries on by
itself when space is back, without losing or re-sending a part.
A links download that runs out of space deletes its partial file and waits for room, then comes
back by itself."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.s3.devserver import free_port
from chunkd.store.redis import RedisStore
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, daemon_env, wait_for, wait_logged
from tests.support.files import sha256_file, write_random
from tests.support.http_client import http_get
from tests.support.media_server import MediaServer
from tests.support.redis_server import RedisServer
from tests.support.s3_servers import MotoServer
from tests.support.sizes import KiB, MiB
from tests.support.tmpfs import fill_up, tmpfs_mounts

STORE_FULL = "state store cannot write"
STORE_BACK = "state store writable again"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    with tmpfs_mounts(tmp_path) as make:
        yield make



def uploaded_as(client: Any, prefix: str) -> str | None:
    """The key of the object under `prefix` whose manifest is written, if there is one yet."""
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    return next((key for key in keys if f"{key}.manifest.json" in keys), None)


def acked(moto: MotoServer, key: str) -> Counter[int]:
    return Counter(number for _, number in moto.uploaded_parts(key=key, ok_only=True))


def test_state_db_on_a_full_disk_holds_uploads_and_loses_nothing(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    tiny_disk: Callable[[str, str], Path],
) -> None:
    state = tiny_disk("state", "2m")
    port = free_port()
    daemon = chunkd_daemon(moto, state_url=f"sqlite:///{state / 'state.db'}", part_size="5MiB",
                           bandwidth_limit="10MB", part_concurrency=2, http_addr=f"127.0.0.1:{port}")
    ready = f"http://127.0.0.1:{port}/readyz"
    wait_for(lambda: http_get(ready, timeout=5)[0] == 200, timeout=20, what="/readyz 200")
    big = write_random(tmp_path / "big.mp4", 40 * MiB)
    os.replace(big, input_dir / "big.mp4")
    big = input_dir / "big.mp4"
    wait_for(lambda: len(acked(moto, "big.mp4")) >= 2, timeout=20, what="2 acknowledged parts")

    filler = fill_up(state)
    wait_logged(daemon, STORE_FULL, timeout=20)
    _, body = wait_for(lambda: (r := http_get(ready, timeout=5))[0] == 503 and r, timeout=10, what="/readyz 503")
    assert json.loads(body)["store"] is False and json.loads(body)["s3"] is True
    assert "database or disk is full" in wait_logged(daemon, "readyz: failing")[-1]["event"]
    second = write_random(input_dir / "second.mp4", 6 * MiB)  # dropped during the outage
    held_until = time.monotonic() + 3  # several of the jobs' retries and the main loop's reads: unready throughout
    while time.monotonic() < held_until:
        assert http_get(ready, timeout=5)[0] == 503, "a read between two refused writes does not end the outage"
        time.sleep(0.1)
    status = run_chunkd("status", env=daemon.env, timeout=30)
    assert status.returncode == 0 and "big.mp4" in status.stdout, status.stderr
    assert daemon.running

    filler.unlink()
    client = moto.client()
    for source in (big, second):
        manifest = wait_for(lambda s=source: read_manifest(client, s.name), timeout=30, what=f"{source.name}'s manifest")
        assert manifest["sha256"] == sha256_file(source) == sha256_object(client, source.name)
    wait_for(lambda: http_get(ready, timeout=5)[0] == 200, timeout=10, what="/readyz 200 again")
    for key in ("big.mp4", "second.mp4"):
        sent = Counter(number for _, number in moto.uploaded_parts(key=key))
        assert [n for n, count in sent.items() if count > 1] == [], f"{key}: a part was sent twice"
    assert sorted(acked(moto, "big.mp4")) == list(range(1, 9))
    assert daemon.running
    assert len(daemon.events(STORE_FULL)) == 1, "the outage is logged once, not per part or retry"
    assert len(daemon.events(STORE_BACK)) == 1
    print(f"\nSQLite on a full disk: {daemon.events(STORE_BACK)[0]['event']}")


def checkpointed(store: RedisStore, relpath: str) -> int:
    record = store.find_by_relpath(relpath)
    return 0 if record is None else len(store.list_parts(record.id))


def snapshot(client: Any) -> str:
    """BGSAVE, and how it ended once it has: "ok", or "err" (then Redis refuses writes: MISCONF)."""
    client.bgsave()
    wait_for(lambda: not client.info("persistence")["rdb_bgsave_in_progress"], timeout=10, what="BGSAVE over")
    status: str = client.info("persistence")["rdb_last_bgsave_status"]
    return status


def test_redis_that_cannot_save_to_its_full_disk_holds_uploads_and_loses_nothing(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    tiny_disk: Callable[[str, str], Path],
) -> None:
    """Redis with snapshots on and `stop-writes-on-bgsave-error yes` (its default) whose BGSAVE finds
    its disk full: every write is refused (`MISCONF …`, PING too) while reads still work."""
    with RedisServer(data_dir=tiny_disk("redis", "2m")) as redis_server:
        admin = redis_server.client()
        admin.config_set("save", "3600 1")  # snapshots on, none due during the test: only our BGSAVEs
        store = RedisStore.from_url(redis_server.url)
        try:
            _redis_on_a_full_disk(chunkd_daemon, moto, input_dir, tmp_path, redis_server, admin, store)
        finally:
            store.close()
            admin.config_set("save", "")  # else its shutdown tries to save, and on a full disk it stays up
            admin.close()


def _redis_on_a_full_disk(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    redis_server: RedisServer, admin: Any, store: RedisStore,
) -> None:
    port = free_port()
    daemon = chunkd_daemon(moto, state_url=redis_server.url, part_size="5MiB", bandwidth_limit="10MB",
                           part_concurrency=2, http_addr=f"127.0.0.1:{port}")
    ready = f"http://127.0.0.1:{port}/readyz"
    wait_for(lambda: http_get(ready, timeout=5)[0] == 200, timeout=20, what="/readyz 200")
    big = write_random(tmp_path / "big.mp4", 40 * MiB)
    os.replace(big, input_dir / "big.mp4")
    big = input_dir / "big.mp4"
    wait_for(lambda: checkpointed(store, "big.mp4") >= 1, timeout=20, what="a part of big.mp4 checkpointed")

    filler = fill_up(Path(redis_server.data_dir))
    assert snapshot(admin) == "err"
    wait_logged(daemon, STORE_FULL, timeout=20)
    assert "MISCONF" in daemon.events(STORE_FULL)[0]["event"], "the log line says what Redis said"
    _, body = wait_for(lambda: (r := http_get(ready, timeout=5))[0] == 503 and r, timeout=10, what="/readyz 503")
    assert json.loads(body)["store"] is False and json.loads(body)["s3"] is True
    assert "unable to persist to disk" in wait_logged(daemon, "readyz: failing")[-1]["event"]
    held_until = time.monotonic() + 3  # the jobs' retries, the heartbeat and the main loop's reads: unready throughout
    while time.monotonic() < held_until:
        assert http_get(ready, timeout=5)[0] == 503, "a read between two refused writes does not end the outage"
        time.sleep(0.1)
    status = run_chunkd("status", env=daemon.env, timeout=30)
    assert status.returncode == 0 and "big.mp4" in status.stdout, status.stderr
    doctor = run_chunkd("doctor", env=daemon.env, timeout=60)
    store_line = next(line for line in doctor.stdout.splitlines() if "state store:" in line)
    assert doctor.returncode == 1 and store_line.startswith("FAIL") and "refuses writes" in store_line, doctor.stdout
    assert "MISCONF" in store_line
    assert daemon.running

    filler.unlink()
    assert snapshot(admin) == "ok"  # a successful save lifts MISCONF
    client = moto.client()
    manifest = wait_for(lambda: read_manifest(client, "big.mp4"), timeout=30, what="big.mp4's manifest")
    assert manifest["sha256"] == sha256_file(big) == sha256_object(client, "big.mp4")
    wait_for(lambda: http_get(ready, timeout=5)[0] == 200, timeout=10, what="/readyz 200 again")
    sent = Counter(number for _, number in moto.uploaded_parts(key="big.mp4"))
    assert [n for n, count in sent.items() if count > 1] == [], "a part was sent twice"
    assert sorted(acked(moto, "big.mp4")) == list(range(1, 9))
    assert daemon.running
    assert len(daemon.events(STORE_FULL)) == 1, "the outage is logged once, not per part or retry"
    assert len(daemon.events(STORE_BACK)) == 1
    assert not daemon.events("state store unreachable")
    print(f"\nRedis on a full disk: {daemon.events(STORE_BACK)[0]['event']}")


def test_a_download_that_fills_the_disk_gives_its_space_back_and_comes_back_by_itself(
    moto: MotoServer, tmp_path: Path, tiny_disk: Callable[[str, str], Path],
) -> None:
    """The input folder (and its `.staging`) on a 4 MiB tmpfs that someone else fills mid-download."""
    inbox = tiny_disk("inbox", "4m")
    big, small = os.urandom(3 * MiB), os.urandom(100 * KiB)
    with MediaServer({"/v/big.mp4": big, "/v/small.mp4": small}) as media:
        media.pace("/v/big.mp4", 1 * MiB)
        env = daemon_env(input_dir=inbox, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                         endpoint_url=moto.endpoint_url, access_key=moto.access_key, secret_key=moto.secret_key,
                         allow_private_urls="true", download_concurrency=1)
        daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
        try:
            (inbox / "batch.links.txt").write_text(f"{media.url}/v/big.mp4\n{media.url}/v/small.mp4\n")
            staging = inbox / ".staging"
            wait_for(lambda: any(p.stat().st_size > 256 * KiB for p in staging.glob("big*.part")), timeout=20,
                     what="the big download under way")
            filler = fill_up(inbox)  # a recording (say) takes the rest of the disk
            media.pace("/v/big.mp4", None)

            wait_logged(daemon, "no space left", timeout=20)
            assert not list(staging.glob("big*.part")), "the partial download gave its space back"
            table = run_chunkd("status", env=env, timeout=30).stdout
            row = next(line for line in table.splitlines() if "/v/big.mp4" in line)
            assert row.startswith("PENDING") and "no space left" in row, table
            client = moto.client()
            dropped = write_random(inbox / "dropped.mp4", 64 * KiB)  # written into the space it gave back
            wait_for(lambda: read_manifest(client, "dropped.mp4"), timeout=20, what="the dropped file uploaded")
            wait_for(lambda: any(r.path == "/v/small.mp4" and r.status == 200 for r in media.log), timeout=20,
                     what="the next download to go on")
            assert not (inbox / "batch.links.txt.report.json").exists(), "the batch is not over while it waits"
            assert daemon.running and sha256_object(client, "dropped.mp4") == sha256_file(dropped)

            filler.unlink()  # space comes back: no `chunkd retry` needed
            report = inbox / "batch.links.txt.report.json"
            wait_for(report.is_file, timeout=30, what="the batch done after space came back")
            lines = json.loads(report.read_text())["lines"]
            assert [line["state"] for line in lines] == ["COMPLETED", "COMPLETED"], lines
            assert sha256_object(client, lines[0]["key"]) == hashlib.sha256(big).hexdigest()
            assert sha256_object(client, lines[1]["key"]) == hashlib.sha256(small).hexdigest()
            assert daemon.running
        finally:
            daemon.stop()


def test_a_download_bigger_than_the_free_space_waits_without_fetching_and_one_bigger_than_the_disk_fails(
    moto: MotoServer, tmp_path: Path, tiny_disk: Callable[[str, str], Path],
) -> None:
    """Sizes announced up front: no byte is fetched for a file that cannot fit now (it waits), and
    one that can never fit (bigger than the whole filesystem) fails at once with the reason."""
    inbox = tiny_disk("inbox", "4m")
    filler = write_random(inbox / ".filler", 2 * MiB)  # about 2 MiB left
    files = {"/v/big.mp4": os.urandom(3 * MiB), "/v/huge.mp4": os.urandom(5 * MiB), "/v/small.mp4": os.urandom(KiB)}
    with MediaServer(files) as media:
        env = daemon_env(input_dir=inbox, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                         endpoint_url=moto.endpoint_url, access_key=moto.access_key, secret_key=moto.secret_key,
                         allow_private_urls="true", download_concurrency=1)
        daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
        try:
            (inbox / "batch.links.txt").write_text("".join(f"{media.url}{path}\n" for path in files))
            wait_logged(daemon, "it starts again by itself once 3145728 bytes are free", timeout=20)
            failed = wait_logged(daemon, "download failed for", timeout=20)
            assert "more than the staging filesystem holds" in failed[0]["event"] and len(failed) == 1
            wait_for(lambda: uploaded_as(moto.client(), "small-"), timeout=20, what="the small download uploaded meanwhile")
            assert media.bytes_served("/v/big.mp4") == 0 and media.bytes_served("/v/huge.mp4") == 0
            table = run_chunkd("status", env=env, timeout=30).stdout
            assert "no space left in the staging folder: the file is 3145728 bytes" in table, table
            assert "no space left: the file is 5242880 bytes" in table, table

            filler.unlink()
            report = inbox / "batch.links.txt.report.json"
            wait_for(report.is_file, timeout=30, what="the batch done once space came back")
            lines = json.loads(report.read_text())["lines"]
            assert [line["state"] for line in lines] == ["COMPLETED", "FAILED", "COMPLETED"], lines
            assert sha256_object(moto.client(), lines[0]["key"]) == hashlib.sha256(files["/v/big.mp4"]).hexdigest()
            assert media.bytes_served("/v/big.mp4") == 3 * MiB, "fetched once, when it could fit"
            assert daemon.running
        finally:
            daemon.stop()
