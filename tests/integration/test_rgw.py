"""Ceph RGW's own answers for a multipart upload that is gone, and how chunkd reads them.

RGW differs from S3 in two answers chunkd relies on: ListParts of a completed or aborted upload is
404 NoSuchKey (S3: NoSuchUpload), and CompleteMultipartUpload after an abort is 500 InternalError
(S3: NoSuchUpload). Read literally, the first would fail a resumed file for good and the second
would be retried as an outage. Both must mean "the upload is gone", as NoSuchUpload does.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from chunkd.errors import UploadGoneError
from chunkd.model.states import PartRecord
from chunkd.pipeline.job import Outcome
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.ceph_rgw import CephRGW
from tests.support.daemon import wait_for
from tests.support.engine import close_test_engine, make_test_engine, recorded_parts, run_in_thread, run_job
from tests.support.files import sha256_file, write_random
from tests.support.sizes import MiB


def counting_uploader(rgw: CephRGW, counts: Counter[str], *, max_attempts: int = 3) -> Uploader:
    client = make_client(S3Target(rgw.endpoint_url, None, rgw.access_key, rgw.secret_key))
    return Uploader(client, RetryPolicy(max_attempts=max_attempts, initial=0.01, maximum=0.05),
                    on_request=lambda op: counts.update([op]))


def one_part_upload(rgw: CephRGW, key: str) -> tuple[str, PartRecord]:
    client = rgw.client()
    upload_id = str(client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"])
    etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1,
                              Body=os.urandom(5 * MiB))["ETag"]
    return upload_id, PartRecord(number=1, offset=0, size=5 * MiB, etag=str(etag), sha256="")


@pytest.mark.parametrize("ending", ["completed", "aborted"])
def test_rgw_list_parts_of_a_finished_upload_means_the_upload_is_gone(rgw: CephRGW, ending: str) -> None:
    upload_id, part = one_part_upload(rgw, "clip.mp4")
    client = rgw.client()
    if ending == "completed":
        client.complete_multipart_upload(Bucket=BUCKET, Key="clip.mp4", UploadId=upload_id,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part.etag}]})
    else:
        client.abort_multipart_upload(Bucket=BUCKET, Key="clip.mp4", UploadId=upload_id)
    with pytest.raises(client.exceptions.NoSuchKey):  # RGW's answer, where S3 says NoSuchUpload
        client.list_parts(Bucket=BUCKET, Key="clip.mp4", UploadId=upload_id)

    counts: Counter[str] = Counter()
    with pytest.raises(UploadGoneError):
        counting_uploader(rgw, counts).list_parts(BUCKET, "clip.mp4", upload_id)
    assert counts["ListParts"] == 1


def test_rgw_complete_after_an_abort_means_the_upload_is_gone_not_an_outage(rgw: CephRGW) -> None:
    upload_id, part = one_part_upload(rgw, "clip.mp4")
    rgw.client().abort_multipart_upload(Bucket=BUCKET, Key="clip.mp4", UploadId=upload_id)

    counts: Counter[str] = Counter()
    with pytest.raises(UploadGoneError):
        counting_uploader(rgw, counts, max_attempts=5).complete(BUCKET, "clip.mp4", upload_id, [part])
    assert counts["CompleteMultipartUpload"] == 1, "a 500 for a gone upload must not be retried"


def test_rgw_complete_sent_twice_still_succeeds(rgw: CephRGW) -> None:
    """RGW answers a repeated Complete (a retry after a lost response) with 200 again: no
    InternalError path is taken when the upload ended in our favour."""
    upload_id, part = one_part_upload(rgw, "clip.mp4")
    counts: Counter[str] = Counter()
    uploader = counting_uploader(rgw, counts)
    uploader.complete(BUCKET, "clip.mp4", upload_id, [part])
    uploader.complete(BUCKET, "clip.mp4", upload_id, [part])
    assert counts["CompleteMultipartUpload"] == 2
    info = uploader.head(BUCKET, "clip.mp4")
    assert info is not None and info.size == 5 * MiB


def test_rgw_upload_aborted_between_runs_starts_fresh(rgw: CephRGW, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    first = make_test_engine(rgw, tmp_path, idle_seconds=30)
    try:
        source = write_random(first.input_dir / "clip.mp4", 12 * MiB)
        thread, _ = run_in_thread(first, "clip.mp4")
        wait_for(lambda: len(recorded_parts(first, "clip.mp4")) >= 2, timeout=60, what="2 checkpointed parts")
    finally:
        close_test_engine(first)  # as on SIGTERM: the record keeps its upload id and parts
    thread.join(timeout=60)
    client = rgw.client()
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert len(uploads) == 1
    client.abort_multipart_upload(Bucket=BUCKET, Key="clip.mp4", UploadId=uploads[0]["UploadId"])

    second = make_test_engine(rgw, tmp_path)
    try:
        assert run_job(second, "clip.mp4") is Outcome.COMPLETED
        requests: Counter[str] = second.requests  # type: ignore[attr-defined]
    finally:
        close_test_engine(second)
    assert requests["CreateMultipartUpload"] == 1  # a fresh upload
    assert requests["UploadPart"] == 3  # every part, sent again
    assert sha256_object(client, "clip.mp4") == sha256_file(source)
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and manifest["sha256"] == sha256_file(source)
