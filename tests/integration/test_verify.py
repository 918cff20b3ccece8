"""`chunkd verify KEY|PATH` as a real process against each S3 server: objects uploaded by
`chunkd upload`, then changed on the server, in their manifest or on the local disk."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chunkd.s3.devserver import LocalS3Server, free_port
from tests.support.bucket import BUCKET, read_manifest
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import daemon_env
from tests.support.files import write_random
from tests.support.s3_servers import MotoServer, make_client
from tests.support.sizes import MiB


def upload(path: Path, env: dict[str, str]) -> None:
    result = run_chunkd("upload", "--part-size", "5MiB", str(path), env=env)
    assert result.returncode == 0, result.stderr


def verify_json(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run_chunkd("verify", *args, "--json", env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def failed_checks(report: dict[str, Any]) -> set[str]:
    return {check["name"] for check in report["checks"] if not check["ok"]}


def final_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_fresh_multipart_upload_verifies_deep_in_text_and_json(server_env: dict[str, str], tmp_path: Path,
                                                              server: Any, client: Any) -> None:
    env = server_env
    upload(write_random(tmp_path / "clip.mp4", 7 * MiB), env)
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and [p["size"] for p in manifest["parts"]] == [5 * MiB, 2 * MiB]

    if isinstance(server, MotoServer):
        server.reset_counts()
    result = run_chunkd("verify", "clip.mp4", "--deep", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert final_line(result) == "OK: s3://chunkd/clip.mp4 verified"
    assert "PASS  object_sha256" in result.stdout
    assert "FAIL" not in result.stdout
    if isinstance(server, MotoServer):  # only moto counts requests
        assert server.counts()["GetObject"] == 2  # the manifest, then the object streamed for --deep

    code, report = verify_json("clip.mp4", "--deep", env=env)
    assert code == 0
    assert (report["key"], report["bucket"], report["ok"]) == ("clip.mp4", BUCKET, True)
    names = [check["name"] for check in report["checks"]]
    assert names == ["manifest", "object", "size", "etag", "parts", "object_sha256"]
    assert all(check["ok"] for check in report["checks"])


def test_shallow_verify_does_not_read_the_object(env: dict[str, str], tmp_path: Path, moto: MotoServer) -> None:
    """On moto only: what it proves is a request count."""
    upload(write_random(tmp_path / "clip.mp4", 7 * MiB), env)
    moto.reset_counts()
    code, report = verify_json("clip.mp4", env=env)
    assert code == 0 and report["ok"]
    assert "object_sha256" not in [check["name"] for check in report["checks"]]
    assert moto.counts()["GetObject"] == 1  # the manifest only


def test_one_changed_byte_on_the_server_fails_etag_and_sha256(server_env: dict[str, str], tmp_path: Path,
                                                              client: Any) -> None:
    env = server_env
    upload(write_random(tmp_path / "clip.mp4", 7 * MiB), env)
    original = client.get_object(Bucket=BUCKET, Key="clip.mp4")["Body"].read()
    client.put_object(Bucket=BUCKET, Key="clip.mp4", Body=flip_byte(original, 6 * MiB + 17))

    result = run_chunkd("verify", "clip.mp4", "--deep", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert final_line(result) == "FAILED: 2 check(s) failed (etag, object_sha256)"
    assert "FAIL  etag" in result.stdout and "FAIL  object_sha256" in result.stdout
    assert "PASS  size" in result.stdout

    code, report = verify_json("clip.mp4", "--deep", env=env)
    assert code == 1 and report["ok"] is False
    assert failed_checks(report) == {"etag", "object_sha256"}


def test_local_path_finds_its_key_in_the_store_and_a_modified_file_fails(server_env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    env = server_env
    clip = write_random(tmp_path / "input" / "clip.mp4", 7 * MiB)
    # Uploaded under another template: only the checkpoint store knows the key is archive/clip.mp4.
    upload(clip, {**env, "CHUNKD_KEY_TEMPLATE": "archive/{relpath}"})

    code, report = verify_json(str(clip), env=env)
    assert code == 0, report
    assert report["key"] == "archive/clip.mp4"
    assert report["local_path"] == str(clip.resolve())
    assert {"local_size", "local_sha256"} <= {check["name"] for check in report["checks"]}

    clip.write_bytes(flip_byte(clip.read_bytes(), 123))
    result = run_chunkd("verify", str(clip), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert final_line(result) == "FAILED: 1 check(s) failed (local_sha256)"
    assert "PASS  local_size" in result.stdout

    # By key, the local file is found through the manifest's source.relpath under the input folder.
    code, report = verify_json("archive/clip.mp4", env=env)
    assert code == 1 and failed_checks(report) == {"local_sha256"}


def test_missing_manifest_fails_naming_where_it_looked(server_env: dict[str, str], tmp_path: Path) -> None:
    env = server_env
    result = run_chunkd("verify", "nope.mp4", env=env)
    assert result.returncode == 1
    assert "no manifest at s3://chunkd/nope.mp4.manifest.json" in result.stdout
    assert final_line(result).startswith("FAILED:")

    # A local file nobody uploaded: its key comes from the key template.
    (tmp_path / "input" / "day1").mkdir()
    never = write_random(tmp_path / "input" / "day1" / "x.mp4", 1000)
    result = run_chunkd("verify", str(never), env={**env, "CHUNKD_KEY_TEMPLATE": "videos/{relpath}"})
    assert result.returncode == 1
    assert "no manifest at s3://chunkd/videos/day1/x.mp4.manifest.json" in result.stdout


@pytest.mark.parametrize(
    ("field", "change", "detail"),
    [
        ("offset", 1, "part 2 starts at"),
        ("size", -1, "cover 7340031 bytes"),
        ("number", 1, "part #2 is numbered 3"),
    ],
)
def test_manifest_whose_parts_do_not_tile_the_object_fails_the_parts_check(
    env: dict[str, str], tmp_path: Path, moto: MotoServer, field: str, change: int, detail: str
) -> None:
    upload(write_random(tmp_path / "clip.mp4", 7 * MiB), env)
    client = moto.client()
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None
    manifest["parts"][1][field] += change
    client.put_object(Bucket=BUCKET, Key="clip.mp4.manifest.json", Body=json.dumps(manifest).encode())

    code, report = verify_json("clip.mp4", env=env)
    assert code == 1 and failed_checks(report) == {"parts"}
    assert detail in next(check["detail"] for check in report["checks"] if check["name"] == "parts")


def test_unreachable_endpoint_is_one_clear_line(env: dict[str, str]) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = run_chunkd("verify", "clip.mp4", env={**env, "CHUNKD_S3_ENDPOINT_URL": unreachable})
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "cannot reach S3 endpoint" in lines[0], result.stderr
    assert result.stdout == ""


def test_missing_bucket_is_a_config_error(server_env: dict[str, str]) -> None:
    env = server_env
    result = run_chunkd("verify", "clip.mp4", env={**env, "CHUNKD_BUCKET": "no-such-bucket"})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "'no-such-bucket' does not exist" in lines[0], result.stderr


def test_a_multipart_upload_to_rclone_verifies(rclone_s3: LocalS3Server, tmp_path: Path) -> None:
    """`rclone serve s3` reports the whole object's MD5 on HeadObject; the manifest records that
    ETag (the server checks only Content-MD5, so chunkd sends it and verifies with HeadObject)."""
    env = daemon_env(
        input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
        endpoint_url=rclone_s3.endpoint_url, access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key,
    )
    source = write_random(tmp_path / "clip.mp4", 7 * MiB)
    upload(source, env)

    code, report = verify_json("clip.mp4", "--deep", env=env)

    assert code == 0, report
    etag = next(check for check in report["checks"] if check["name"] == "etag")
    assert etag["detail"] == '"' + hashlib.md5(source.read_bytes()).hexdigest() + '"'
    assert all(check["ok"] for check in report["checks"])


def test_rclone_manifest_keeps_the_complete_etag_and_verify_reads_the_whole_md5(
    rclone_s3: LocalS3Server, tmp_path: Path
) -> None:
    """No HeadObject after Complete on `rclone serve s3` (it would read the whole object to answer
    its MD5): the manifest holds the Complete's MD5 of part MD5s; verify compares the whole-object
    MD5 HeadObject answers with the bytes when it reads them, and catches a changed byte."""
    env = daemon_env(
        input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
        endpoint_url=rclone_s3.endpoint_url, access_key=rclone_s3.access_key, secret_key=rclone_s3.secret_key,
    )
    source = write_random(tmp_path / "clip.mp4", 12 * MiB)
    upload(source, env)
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, rclone_s3.secret_key)
    manifest = read_manifest(client, "clip.mp4")
    part_md5s = b"".join(bytes.fromhex(part["etag"].strip('"')) for part in manifest["parts"])
    assert manifest["etag"].strip('"') == f"{hashlib.md5(part_md5s).hexdigest()}-3"

    code, report = verify_json("clip.mp4", env=env)
    assert code == 0 and report["ok"], report
    code, report = verify_json("clip.mp4", "--deep", env=env)
    assert code == 0 and report["ok"], report

    original = client.get_object(Bucket=BUCKET, Key="clip.mp4")["Body"].read()
    client.put_object(Bucket=BUCKET, Key="clip.mp4", Body=flip_byte(original, 6 * MiB + 17))
    code, report = verify_json("clip.mp4", "--deep", env=env)
    assert code == 1 and failed_checks(report) == {"etag", "object_sha256"}
