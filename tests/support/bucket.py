"""What landed in the test bucket: objects read back, and the manifests chunkd writes next to them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.support.sizes import MiB

BUCKET = "chunkd"


def sha256_object(client: Any, key: str, *, bucket: str = BUCKET) -> str:
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def read_manifest(client: Any, key: str, *, bucket: str = BUCKET) -> dict[str, Any] | None:
    """The manifest of `key`, or None while it is not there (chunkd writes it last)."""
    try:
        body = client.get_object(Bucket=bucket, Key=f"{key}.manifest.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    manifest: dict[str, Any] = json.loads(body)
    return manifest


def open_uploads(client: Any, key: str, *, bucket: str = BUCKET) -> list[str]:
    """Ids of the unfinished multipart uploads for exactly `key` (a listing's prefix matches more)."""
    return [upload["UploadId"] for upload in _uploads(client, key, bucket) if upload["Key"] == key]


def open_uploads_under(client: Any, prefix: str, *, bucket: str = BUCKET) -> list[str]:
    """Keys of the unfinished multipart uploads under `prefix`."""
    return [upload["Key"] for upload in _uploads(client, prefix, bucket)]


def empty_bucket(client: Any, name: str) -> None:
    """A server kept for the session may hold `name` from an earlier test: delete every object and
    abort every multipart upload in it, or create it."""
    try:
        client.head_bucket(Bucket=name)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=name)
        return
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    for upload in _uploads(client, "", name):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])


def _uploads(client: Any, prefix: str, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            uploads.extend(page.get("Uploads", []))
    except client.exceptions.ClientError as exc:  # `rclone serve s3`: NoSuchUpload when there are none
        if exc.response["Error"]["Code"] == "NoSuchUpload":
            return []
        raise
    return uploads


def parts_on_server(client: Any, key: str, *, bucket: str = BUCKET) -> set[int]:
    """Part numbers the server holds in the key's one open multipart upload (ListParts), none
    before it is created: what a server that keeps no request log can say about what was sent."""
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except client.exceptions.NoSuchUpload:  # `rclone serve s3`'s answer when there are none
        return set()
    if not uploads:
        return set()
    assert [upload["Key"] for upload in uploads] == [key]
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"])
    return {part["PartNumber"] for part in listed.get("Parts", [])}
