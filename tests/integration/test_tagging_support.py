"""CHUNKD_TAGS on each server: tags are set again after Complete (Ceph RGW drops a create's), and
`rclone serve s3` takes that PutObjectTagging for a PutObject, storing the tagging XML as the object.
chunkd asks once at start and refuses, with one line naming CHUNKD_TAGS, where tags cannot be kept;
elsewhere the object keeps its bytes and gets its tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.bucket import BUCKET
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import daemon_env
from tests.support.files import write_random
from tests.support.s3_servers import RcloneS3Server, make_client
from tests.support.sizes import MiB


def test_tags_are_kept_with_the_bytes_or_refused_at_start(server: Any, tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    write_random(source, 7 * MiB)  # two parts of 5 MiB: a multipart upload, tagged after Complete
    data = source.read_bytes()
    env = daemon_env(input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
                     endpoint_url=server.endpoint_url, access_key=server.access_key, secret_key=server.secret_key)
    env.update(CHUNKD_TAGS="team=video", CHUNKD_PART_SIZE="5MiB")
    result = run_chunkd("upload", str(source), env=env, timeout=120)
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    if isinstance(server, RcloneS3Server):
        assert result.returncode == 2, result.stderr
        assert any("CHUNKD_TAGS" in line and "cannot tag objects" in line for line in error_lines(result)), result.stderr
        assert keys == []  # nothing uploaded, and the probe deleted its object
        return
    assert result.returncode == 0, result.stderr
    body = client.get_object(Bucket=BUCKET, Key="clip.mp4")["Body"].read()
    assert body == data
    tags = client.get_object_tagging(Bucket=BUCKET, Key="clip.mp4")["TagSet"]
    assert {tag["Key"]: tag["Value"] for tag in tags} == {"team": "video"}
