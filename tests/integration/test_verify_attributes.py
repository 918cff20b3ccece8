"""`chunkd verify` compares what HeadObject says of an object (Content-Type, Cache-Control,
Content-Disposition, user metadata, storage class, tag count) with the attributes its manifest
recorded, on each S3 server, and names the field that changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import BUCKET
from tests.support.cli import run_chunkd
from tests.support.files import write_random
from tests.support.s3_servers import LocalS3Server
from tests.support.sizes import MiB

SIZES = {"clip.mp4": 7 * MiB, "small.mp4": 1000}  # a multipart upload and a single PUT


def attributes_env(env: dict[str, str], server: Any) -> dict[str, str]:
    settings = {
        "CHUNKD_CONTENT_TYPE": "video/mp4", "CHUNKD_CACHE_CONTROL": "max-age=60",
        "CHUNKD_CONTENT_DISPOSITION": 'inline; filename="{name}"', "CHUNKD_METADATA": "source=host&path={relpath}",
        "CHUNKD_STORAGE_CLASS": "STANDARD",
    }
    if not isinstance(server, LocalS3Server):  # rclone serve s3 stores PutObjectTagging's body as the object
        settings["CHUNKD_TAGS"] = "team=video"
    return {**env, **settings}


def upload_all(tmp_path: Path, env: dict[str, str]) -> None:
    for name, size in SIZES.items():
        result = run_chunkd("upload", "--part-size", "5MiB", str(write_random(tmp_path / name, size)), env=env)
        assert result.returncode == 0, result.stderr


def verify_json(key: str, env: dict[str, str], *flags: str) -> tuple[int, dict[str, Any]]:
    result = run_chunkd("verify", key, "--json", *flags, env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def test_fresh_uploads_with_attributes_verify(server_env: dict[str, str], server: Any, tmp_path: Path) -> None:
    env = attributes_env(server_env, server)
    upload_all(tmp_path, env)
    for key in SIZES:
        for flags in ((), ("--deep",)):
            code, report = verify_json(key, env, *flags)
            assert code == 0 and report["ok"], report
            assert "attributes as in the manifest (content_type, cache_control, content_disposition, metadata" in (
                check(report, "object")["detail"])


def test_metadata_replaced_in_place_fails_naming_each_field(server_env: dict[str, str], server: Any,
                                                            tmp_path: Path, client: Any) -> None:
    env = attributes_env(server_env, server)
    upload_all(tmp_path, env)
    for key in SIZES:
        client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key},
                           MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"source": "elsewhere"})
        for flags in ((), ("--deep",)):
            code, report = verify_json(key, env, *flags)
            assert code == 1, report
            assert {c["name"] for c in report["checks"] if not c["ok"]} == {"attributes"}
            detail = check(report, "attributes")["detail"]
            assert "content_type: manifest 'video/mp4', object 'text/plain'" in detail
            assert "cache_control: manifest 'max-age=60', object none" in detail
            assert "metadata source: manifest 'host', object 'elsewhere'" in detail
            assert f"metadata path: manifest '{key}', object none" in detail

    result = run_chunkd("verify", "small.mp4", env=env)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "FAILED: 1 check(s) failed (attributes)"
    assert "FAIL  attributes  content_type: manifest 'video/mp4', object 'text/plain'" in result.stdout


def test_changed_tags_fail_by_count(server_env: dict[str, str], server: Any, tmp_path: Path, client: Any) -> None:
    """Where HeadObject reports TagCount (moto, Ceph RGW); rclone serve s3 keeps no tags."""
    if isinstance(server, LocalS3Server):
        pytest.skip("rclone serve s3 keeps no tags")
    env = attributes_env(server_env, server)
    upload_all(tmp_path, env)
    tags = {"TagSet": [{"Key": "team", "Value": "video"}, {"Key": "extra", "Value": "1"}]}
    client.put_object_tagging(Bucket=BUCKET, Key="clip.mp4", Tagging=tags)
    code, report = verify_json("clip.mp4", env)
    assert code == 1
    assert check(report, "attributes")["detail"] == "tags: manifest 1 tag(s), object 2"
