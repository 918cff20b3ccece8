"""Operator commands as users run them (subprocess): status filters and rates, doctor, gc, retry,
cancel and stats, against a SQLite store (status also on Redis) and a real S3 server: moto, and each
S3 server in turn where the command's work is on S3 (doctor's bucket check, gc, cancel)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.ops.gc import Collector, orphans
from chunkd.s3.client import S3Target
from chunkd.s3.devserver import LocalS3Server, free_port
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import MultipartUpload, Uploader
from chunkd.store import CheckpointStore, open_store
from tests.support.cli import run_chunkd
from tests.support.daemon import daemon_env
from tests.support.s3_servers import MotoServer, make_client
from tests.support.sizes import MiB

HOUR, DAY = 3600.0, 86400.0


def make_env(tmp_path: Path, s3: MotoServer | LocalS3Server, state_url: str | None = None) -> dict[str, str]:
    (tmp_path / "input").mkdir(exist_ok=True)
    return daemon_env(
        input_dir=tmp_path / "input", state_url=state_url or f"sqlite:///{tmp_path / 'state.db'}",
        endpoint_url=s3.endpoint_url, access_key=s3.access_key, secret_key=s3.secret_key,
    )


def stream(stream_id: str, state: StreamState, **fields: Any) -> StreamRecord:
    values: dict[str, Any] = {
        "id": stream_id, "relpath": f"{stream_id}.mp4", "source_path": f"/in/{stream_id}.mp4", "bucket": "chunkd",
        "key": f"{stream_id}.mp4", "schedule": {"kind": "growing", "base": 8 * MiB, "group": 1089}, "state": state,
    }
    values.update(fields)
    return StreamRecord(**values)


def seed(env: dict[str, str], *records: StreamRecord, parts: dict[str, int] | None = None) -> None:
    """Save records as given (timestamps included); `parts`: stream id -> MiB recorded as 1 MiB parts."""
    store = open_store(env["CHUNKD_STATE_URL"])
    try:
        for record in records:
            store.save_stream(record)
        for stream_id, mib in (parts or {}).items():
            for n in range(1, mib + 1):
                store.record_part(stream_id, PartRecord(n, (n - 1) * MiB, MiB, f'"e{n}"', "0" * 64))
    finally:
        store.close()


def load(env: dict[str, str], stream_id: str) -> StreamRecord | None:
    store: CheckpointStore = open_store(env["CHUNKD_STATE_URL"])
    try:
        return store.get_stream(stream_id)
    finally:
        store.close()


def ok(*args: str, env: dict[str, str]) -> str:
    result = run_chunkd(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- status ------------------------------------------------------------------------------------


def status_records(now: float) -> list[StreamRecord]:
    return [
        # 100 MiB of 400 sent in 100 s: 1 MiB/s, 300 s to go
        stream("up", StreamState.UPLOADING, size=400 * MiB, first_byte_at=now - 100, updated_at=now - 60),
        # 50 MiB in 10 s: 5 MiB/s
        stream("done", StreamState.COMPLETED, size=50 * MiB, first_byte_at=now - 3 * HOUR - 10,
               completed_at=now - 3 * HOUR, updated_at=now - 3 * HOUR),
        stream("old", StreamState.FAILED, size=10, updated_at=now - 10 * DAY, last_error="permission denied"),
        stream("new", StreamState.PENDING, size=0, updated_at=now),
    ]


def check_status(env: dict[str, str]) -> None:
    now = time.time()
    seed(env, *status_records(now), parts={"up": 100})

    table = ok("status", env=env).splitlines()
    assert table[0].split() == ["STATE", "ID", "FILE", "KEY", "DONE", "%", "SIZE", "SPEED", "ETA", "ERROR"]
    line = {row.split()[2]: row for row in table[1:]}
    assert set(line) == {"up.mp4", "done.mp4", "old.mp4", "new.mp4"}
    # about 1 MiB/s and 5 minutes; a little less by the time the subprocess has started
    speed, eta = r"(1\.0 MiB|9\d\d\.\d KiB|10\d\d\.\d KiB)/s", r"(4m5\ds|5m[0-2]\ds)"
    assert re.search(rf"UPLOADING\s+up\s+up\.mp4\s+up\.mp4\s+25\.0%\s+400\.0 MiB\s+{speed}\s+{eta}", line["up.mp4"]), line["up.mp4"]
    assert re.search(r"COMPLETED\s+done\s+done\.mp4\s+done\.mp4\s+100\.0%\s+50\.0 MiB\s+5\.0 MiB/s\s+-", line["done.mp4"]), line["done.mp4"]
    assert "permission denied" in line["old.mp4"]

    rows = {row["id"]: row for row in json.loads(ok("status", "--json", env=env))}
    assert rows["up"]["speed"] == pytest.approx(MiB, rel=0.05)
    assert rows["up"]["eta"] == pytest.approx(300, rel=0.05)
    assert rows["done"]["speed"] == pytest.approx(5 * MiB)
    assert rows["done"]["eta"] is None
    assert (rows["new"]["speed"], rows["new"]["eta"]) == (None, None)

    def ids(*args: str) -> list[str]:
        return sorted(row["id"] for row in json.loads(ok("status", "--json", *args, env=env)))

    assert ids("--since", "2h") == ["new", "up"]
    assert ids("--since", "7d") == ["done", "new", "up"]
    assert ids("--since", "30m", "--state", "uploading") == ["up"]
    assert ids("--state", "failed", "--state", "completed") == ["done", "old"]
    assert ids("--state", "failed", "--since", "1d") == []


def test_status_columns_rates_and_filters(env: dict[str, str]) -> None:
    check_status(env)


def test_status_works_against_redis(tmp_path: Path, moto: MotoServer, redis_url: str) -> None:
    check_status(make_env(tmp_path, moto, redis_url))


def test_status_rejects_a_bad_since(env: dict[str, str]) -> None:
    result = run_chunkd("status", "--since", "yesterday", env=env)
    assert result.returncode == 2 and "not a duration" in result.stderr


# -- doctor ------------------------------------------------------------------------------------


def doctor_lines(output: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in output.splitlines():
        match = re.fullmatch(r"(OK|WARN|FAIL) +([^:]+): (.*)", line)
        assert match, f"not a check line: {line!r}"
        found[match.group(2)] = (match.group(1), match.group(3))
    return found


def test_doctor_with_a_good_config_exits_0(server_env: dict[str, str]) -> None:
    result = run_chunkd("doctor", env=server_env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = doctor_lines(result.stdout)
    assert {"config", "state store", "s3 credentials", "s3 bucket", "ffprobe", "ffmpeg", "input folder", "inotify watches",
            "disk space (input)", "disk space (state)"} == checks.keys()
    assert checks["s3 bucket"][0] == "OK" and checks["state store"][0] == "OK" and checks["input folder"][0] == "OK"
    assert all(level != "FAIL" for level, _ in checks.values())


def test_doctor_names_the_wrong_bucket_and_exits_1(server_env: dict[str, str]) -> None:
    result = run_chunkd("doctor", env={**server_env, "CHUNKD_BUCKET": "no-such-bucket"})
    assert result.returncode == 1
    level, detail = doctor_lines(result.stdout)["s3 bucket"]
    assert level == "FAIL" and "'no-such-bucket' does not exist" in detail
    assert doctor_lines(result.stdout)["state store"][0] == "OK"  # the other checks still ran


def test_doctor_reports_unreachable_redis_without_password(env: dict[str, str], tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = run_chunkd("doctor", env={**env, "CHUNKD_STATE_URL": url, "CHUNKD_INPUT_DIR": str(tmp_path / "nope")})
    assert result.returncode == 1
    checks = doctor_lines(result.stdout)
    assert checks["state store"][0] == "FAIL"
    assert checks["input folder"][0] == "WARN"  # chunkd run would create it
    assert "hunter2" not in result.stdout + result.stderr


# -- gc ----------------------------------------------------------------------------------------


def uploads(client: Any) -> dict[str, str]:
    return {u["Key"]: u["UploadId"] for u in client.list_multipart_uploads(Bucket="chunkd").get("Uploads", [])}


def test_gc_aborts_orphans_and_keeps_live_uploads(server_env: dict[str, str], client: Any) -> None:
    env = server_env
    orphan = client.create_multipart_upload(Bucket="chunkd", Key="orphan.mp4")["UploadId"]
    live = client.create_multipart_upload(Bucket="chunkd", Key="live.mp4")["UploadId"]
    seed(env, stream("live", StreamState.UPLOADING, upload_id=live))

    # moto answers ListMultipartUploads with a fixed Initiated (2010-11-10): every upload looks old
    # there, so the age threshold is tested on `orphans` below (and --hours 0 here).
    dry = ok("gc", "--dry-run", "--hours", "0", env=env)
    assert re.search(rf"would abort\s+orphan\.mp4\s+upload {re.escape(orphan)}\s+age \d+\.\dh", dry), dry
    assert "live.mp4" not in dry
    assert uploads(client) == {"orphan.mp4": orphan, "live.mp4": live}

    real = ok("gc", "--hours", "0", env=env)
    assert re.search(rf"aborted\s+orphan\.mp4\s+upload {re.escape(orphan)}", real), real
    assert "aborted 1 orphaned multipart upload(s)" in real
    assert uploads(client) == {"live.mp4": live}
    assert "aborted 0 orphaned" in ok("gc", "--hours", "0", env=env)


def test_gc_on_rclone_with_no_uploads(tmp_path: Path, rclone_s3: LocalS3Server) -> None:
    # rclone serve s3 answers ListMultipartUploads with 404 NoSuchUpload when there are none.
    env = make_env(tmp_path, rclone_s3)
    assert "aborted 0 orphaned" in ok("gc", "--hours", "0", env=env)
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, rclone_s3.secret_key)
    upload_id = client.create_multipart_upload(Bucket="chunkd", Key="o.mp4")["UploadId"]
    assert f"aborted  o.mp4  upload {upload_id}" in ok("gc", "--hours", "0", env=env)


def test_gc_without_a_state_store_cleans_the_bucket_and_creates_no_store(server_env: dict[str, str], client: Any,
                                                                         tmp_path: Path) -> None:
    """Run from a folder with no store (the default sqlite:///.chunkd/state.db): the bucket's
    orphans are aborted, record expiry is skipped, and no empty store is left behind."""
    env = {name: value for name, value in server_env.items() if name != "CHUNKD_STATE_URL"}
    orphan = client.create_multipart_upload(Bucket="chunkd", Key="orphan.mp4")["UploadId"]
    empty = tmp_path / "elsewhere"
    empty.mkdir()

    result = run_chunkd("gc", "--hours", "0", env=env, cwd=empty)

    assert result.returncode == 0, result.stderr
    assert f"aborted  orphan.mp4  upload {orphan}" in result.stdout
    no_store = f"gc: no state store at {empty / '.chunkd' / 'state.db'}: finished records not expired"
    assert no_store in result.stdout.splitlines()
    assert uploads(client) == {}
    assert list(empty.iterdir()) == []


def test_gc_age_threshold_and_ownership() -> None:
    now = 1_700_000_000.0
    found = orphans(
        [
            MultipartUpload("old.mp4", "u-old", now - 25 * HOUR),
            MultipartUpload("young.mp4", "u-young", now - 23 * HOUR),
            MultipartUpload("owned.mp4", "u-owned", now - 99 * HOUR),
            MultipartUpload("future.mp4", "u-future", now + 60),  # server clock ahead of ours
        ],
        {"u-owned"},
        hours=24,
        now=now,
    )
    assert [(u.key, age) for u, age in found] == [("old.mp4", 25 * HOUR)]
    assert [u.key for u, _ in orphans([MultipartUpload("future.mp4", "u", now + 60)], set(), hours=0, now=now)] == [
        "future.mp4"
    ]


def test_gc_expires_old_finished_records(env: dict[str, str], moto: MotoServer) -> None:
    now = time.time()
    seed(
        env,
        stream("ancient", StreamState.COMPLETED, updated_at=now - 40 * DAY),
        stream("oldfail", StreamState.FAILED, updated_at=now - 31 * DAY),
        stream("recent", StreamState.COMPLETED, updated_at=now - 29 * DAY),
        stream("stuck", StreamState.UPLOADING, updated_at=now - 90 * DAY),  # unfinished: never expired
        parts={"ancient": 2},
    )
    dry = ok("gc", "--dry-run", env=env)
    assert "would expire  ancient  COMPLETED  ancient.mp4" in dry and "would expire  oldfail" in dry
    assert "would expire 2 finished record(s) older than 30 days" in dry
    assert load(env, "ancient") is not None

    assert "expired 2 finished record(s)" in ok("gc", env=env)
    assert [load(env, i) is None for i in ("ancient", "oldfail", "recent", "stuck")] == [True, True, False, False]
    assert "expired 1 finished" in ok("gc", env={**env, "CHUNKD_RETENTION_DAYS": "10"})


def test_gc_removes_the_probe_objects_and_uploads_a_killed_daemon_left(server_env: dict[str, str], server: Any,
                                                                       client: Any) -> None:
    env = {**server_env, "CHUNKD_KEY_TEMPLATE": "cams/{relpath}"}
    left = "cams/.chunkd-probe-0123abcd"
    for key in (left, "cams/clip.mp4"):
        client.put_object(Bucket="chunkd", Key=key, Body=b"chunkd probe")
    probe_upload = client.create_multipart_upload(Bucket="chunkd", Key="cams/.chunkd-probe-4567")["UploadId"]

    # A probe seconds old may be a starting daemon's: left by the default age (10 min).
    out = ok("gc", "--hours", "0", env=env)
    assert f"aborted  cams/.chunkd-probe-4567  upload {probe_upload}" in out
    assert "gc: removed 0 start-up probe object(s) older than 10 min" in out
    assert objects(client) == ["cams/.chunkd-probe-0123abcd", "cams/clip.mp4"]

    # No server can backdate LastModified: the same pass with the age threshold at 0.
    target = S3Target(server.endpoint_url, None, server.access_key, server.secret_key)
    uploader = Uploader.connect(target, RetryPolicy())
    store = open_store(env["CHUNKD_STATE_URL"])
    lines: list[str] = []
    try:
        for dry_run in (True, False):
            collector = Collector(store, uploader, "chunkd", echo=lines.append, dry_run=dry_run, probe_age=0)
            assert collector.remove_probes(key_template="cams/{relpath}") == 1
    finally:
        store.close()
    assert re.match(rf"would remove  {re.escape(left)}  age \d+\.\d min", lines[0]), lines
    assert lines[1:] == [
        "gc: would remove 1 start-up probe object(s) older than 0 min", lines[2],
        "gc: removed 1 start-up probe object(s) older than 0 min",
    ]
    assert lines[2].startswith(f"removed  {left}  age ")
    assert objects(client) == ["cams/clip.mp4"]


def objects(client: Any) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket="chunkd").get("Contents", []))


def test_gc_with_an_unreachable_endpoint_is_one_line(env: dict[str, str]) -> None:
    result = run_chunkd("gc", env={**env, "CHUNKD_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 1
    assert "cannot reach S3 endpoint" in result.stderr


# -- retry and cancel --------------------------------------------------------------------------


def test_retry_one_and_all_failed(env: dict[str, str]) -> None:
    seed(
        env,
        stream("f1", StreamState.FAILED, last_error="permission denied", discovered_at=1.0),
        stream("f2", StreamState.FAILED, last_error="boom", discovered_at=2.0),
        stream("f3", StreamState.FAILED, last_error="boom", discovered_at=3.0),
        stream("gone", StreamState.FAILED, relpath="same.mp4", discovered_at=4.0),  # replaced by `newer`
        stream("newer", StreamState.COMPLETED, relpath="same.mp4", discovered_at=5.0),
    )
    out = ok("retry", "f1", env=env)
    assert "f1" in out and "FAILED -> PENDING" in out and "next rescan" in out
    f1 = load(env, "f1")
    assert f1 is not None and f1.state is StreamState.PENDING and f1.last_error is None

    out = ok("retry", "--failed", env=env)
    assert "2 stream(s) and 0 download(s) set to PENDING" in out and "gone" not in out
    assert [load(env, i).state for i in ("f2", "f3", "gone")] == [  # type: ignore[union-attr]
        StreamState.PENDING, StreamState.PENDING, StreamState.FAILED,
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "no stream with id 'nope'"),
        (("done",), "is COMPLETED; only FAILED can be retried"),
        (("failed", "nope"), "no stream with id 'nope'"),
    ],
)
def test_retry_refuses_and_changes_nothing(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    seed(env, stream("done", StreamState.COMPLETED), stream("failed", StreamState.FAILED))
    result = run_chunkd("retry", *args, env=env)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("chunkd:")] == [
        line for line in result.stderr.splitlines() if message in line
    ]
    assert load(env, "failed").state is StreamState.FAILED  # type: ignore[union-attr]


def test_retry_needs_ids_or_failed(env: dict[str, str]) -> None:
    assert run_chunkd("retry", env=env).returncode == 2


def test_retry_without_arguments_says_what_it_needs(env: dict[str, str]) -> None:
    result = run_chunkd("retry", env=env)
    assert result.returncode == 2
    assert "retry needs the ID of each stream to retry" in result.stderr and "not both" not in result.stderr


def test_status_filtered_to_nothing_names_the_filter(env: dict[str, str]) -> None:
    seed(env, stream("done", StreamState.COMPLETED))
    assert ok("status", "--state", "failed", env=env).strip() == "no stream in state FAILED"


def test_cancel_aborts_the_upload_and_fails_the_stream(server_env: dict[str, str], client: Any) -> None:
    env = server_env
    upload_id = client.create_multipart_upload(Bucket="chunkd", Key="up.mp4")["UploadId"]
    seed(env, stream("up", StreamState.UPLOADING, upload_id=upload_id), parts={"up": 2})

    out = ok("cancel", "up", env=env)
    assert "-> FAILED (cancelled by operator)" in out and f"multipart upload {upload_id}" in out
    assert uploads(client) == {}
    record = load(env, "up")
    assert record is not None
    assert (record.state, record.last_error, record.upload_id) == (StreamState.FAILED, "cancelled by operator", None)

    again = run_chunkd("cancel", "up", env=env)
    assert again.returncode == 1 and "already FAILED" in again.stderr
    ok("retry", "up", env=env)  # a cancelled stream can be retried: a fresh upload
    assert load(env, "up").state is StreamState.PENDING  # type: ignore[union-attr]


def test_cancel_keeps_an_upload_it_could_not_abort_and_forgets_one_already_gone(env: dict[str, str]) -> None:
    seed(env, stream("stuck", StreamState.UPLOADING, upload_id="upl-stuck"),
         stream("gone", StreamState.FINALIZING, upload_id="upl-gone"), parts={"stuck": 1, "gone": 1})

    unreachable = {**env, "CHUNKD_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = run_chunkd("cancel", "stuck", env=unreachable)
    assert result.returncode == 0, result.stderr
    assert "-> FAILED (cancelled by operator)" in result.stdout
    assert "could not abort multipart upload upl-stuck" in result.stderr and "(chunkd gc will)" in result.stderr
    stuck = load(env, "stuck")
    assert stuck is not None and (stuck.state, stuck.upload_id) == (StreamState.FAILED, "upl-stuck")

    assert "multipart upload upl-gone was already gone" in ok("cancel", "gone", env=env)
    gone = load(env, "gone")
    assert gone is not None and (gone.state, gone.upload_id) == (StreamState.FAILED, None)
    store = open_store(env["CHUNKD_STATE_URL"])
    try:
        assert (len(store.list_parts("stuck")), len(store.list_parts("gone"))) == (1, 0)
    finally:
        store.close()


def test_cancel_a_pending_stream_and_an_unknown_id(env: dict[str, str]) -> None:
    seed(env, stream("p", StreamState.PENDING))
    assert "cancelled by operator" in ok("cancel", "p", env=env)
    assert load(env, "p").state is StreamState.FAILED  # type: ignore[union-attr]
    unknown = run_chunkd("cancel", "nope", env=env)
    assert unknown.returncode == 1 and "no stream with id 'nope'" in unknown.stderr


# -- stats -------------------------------------------------------------------------------------


def test_stats_table_json_csv(env: dict[str, str]) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    day1, day2 = midnight - 2 * DAY + HOUR, midnight - DAY + HOUR
    seed(
        env,
        stream("a", StreamState.COMPLETED, size=100 * MiB, first_byte_at=day1 - 10, completed_at=day1, updated_at=day1),
        stream("b", StreamState.FAILED, updated_at=day1 + 60),
        stream("c", StreamState.COMPLETED, size=20 * MiB, first_byte_at=day2 - 10, completed_at=day2, updated_at=day2),
        stream("d", StreamState.QUARANTINED, updated_at=day2 + 60),
        stream("e", StreamState.COMPLETED, size=1, completed_at=midnight - 30 * DAY, updated_at=midnight - 30 * DAY),
        stream("u", StreamState.UPLOADING, size=5, updated_at=day2),
    )
    names = [datetime.fromtimestamp(t, UTC).date().isoformat() for t in (day1, day2)]

    rows = json.loads(ok("stats", "--format", "json", env=env))
    assert [r["day"] for r in rows] == [*names, "total"]
    assert rows[0] | {"mean_throughput": 0} == {
        "day": names[0], "completed": 1, "failed": 1, "quarantined": 0, "bytes": 100 * MiB, "mean_throughput": 0,
    }
    assert rows[0]["mean_throughput"] == pytest.approx(10 * MiB)
    assert (rows[2]["completed"], rows[2]["failed"], rows[2]["quarantined"], rows[2]["bytes"]) == (2, 1, 1, 120 * MiB)
    assert rows[2]["mean_throughput"] == pytest.approx(6 * MiB)

    everything = json.loads(ok("stats", "--since", "60d", "--format", "json", env=env))
    assert everything[-1]["completed"] == 3

    table = ok("stats", env=env).splitlines()
    assert table[0].split()[:3] == ["DAY", "COMPLETED", "FAILED"]
    assert table[1].startswith(names[0]) and "100.0 MiB" in table[1] and "10.0 MiB/s" in table[1]
    assert table[-1].startswith("total")

    parsed = list(csv.DictReader(io.StringIO(ok("stats", "--format", "csv", env=env))))
    assert [(r["day"], r["completed"], r["quarantined"]) for r in parsed] == [
        (names[0], "1", "0"), (names[1], "1", "1"), ("total", "2", "1"),
    ]
