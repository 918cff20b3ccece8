"""Object attributes: the type a key gets, the settings' parsing and S3's limits, templates, and
the request arguments and records they become (chunkd.model.attributes)."""

from __future__ import annotations

import pytest

from chunkd.config import load_settings
from chunkd.errors import ConfigError
from chunkd.model.attributes import AttributeSettings, ObjectAttributes, content_type_for, parse_pairs
from chunkd.model.states import StreamRecord


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/clip.mp4", "video/mp4"), ("clip.MOV", "video/quicktime"), ("x.mkv", "video/x-matroska"),
        ("x.webm", "video/webm"), ("x.m4v", "video/x-m4v"), ("cam/x.ts", "video/mp2t"), ("x.avi", "video/x-msvideo"),
        ("notes.json", "application/json"), ("photo.JPG", "image/jpeg"), ("README", "application/octet-stream"),
        ("x.nosuchext", "application/octet-stream"),
    ],
)
def test_content_type_from_the_extension_video_first(key: str, expected: str) -> None:
    assert content_type_for(key) == expected


def test_settings_render_templates_for_each_file() -> None:
    settings = load_settings(env={
        "CHUNKD_CONTENT_DISPOSITION": 'attachment; filename="{name}"', "CHUNKD_CACHE_CONTROL": "max-age=60",
        "CHUNKD_METADATA": "Source={hostname}&path={relpath}&day={date}", "CHUNKD_TAGS": "team=video&dir={dir}",
        "CHUNKD_STORAGE_CLASS": "standard_ia", "CHUNKD_SSE": "aws:kms", "CHUNKD_SSE_KMS_KEY_ID": "alias/v",
        "CHUNKD_SSE_BUCKET_KEY": "true", "CHUNKD_ACL": "bucket-owner-full-control",
    })
    rendered = settings.attributes.render(key="k/été.mov", relpath="cam 1/été.mov", hostname="edge", now=0)
    assert rendered.request_fields() == {
        "ContentType": "video/quicktime", "CacheControl": "max-age=60",
        "ContentDisposition": 'attachment; filename="%C3%A9t%C3%A9.mov"',  # headers are ASCII
        "StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/v",
        "BucketKeyEnabled": True, "ACL": "bucket-owner-full-control",
        "Metadata": {"source": "edge", "path": "cam 1/%C3%A9t%C3%A9.mov", "day": "1970-01-01"},
        "Tagging": "team=video&dir=cam+1",
    }
    assert rendered.encryption().request_fields() == {
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/v", "BucketKeyEnabled": True,
    }


def test_defaults_send_only_the_type_and_a_fixed_type_overrides() -> None:
    assert load_settings(env={}).attributes.render(key="a.mp4", relpath="a.mp4", hostname="h", now=0).request_fields() \
        == {"ContentType": "video/mp4"}
    fixed = load_settings(env={"CHUNKD_CONTENT_TYPE": "application/x-raw"}).attributes
    assert fixed.render(key="a.mp4", relpath="a.mp4", hostname="h", now=0).content_type == "application/x-raw"


def test_a_kms_key_alone_means_kms_and_a_bucket_key_goes_only_with_kms() -> None:
    assert load_settings(env={"CHUNKD_SSE_KMS_KEY_ID": "k"}).attributes.sse == "aws:kms"
    assert load_settings(env={"CHUNKD_SSE_BUCKET_KEY": "true"}).attributes.sse_bucket_key is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CHUNKD_STORAGE_CLASS": "FAST"}, "CHUNKD_STORAGE_CLASS"),
        ({"CHUNKD_TAGS": "&".join(f"k{i}=v" for i in range(11))}, "CHUNKD_TAGS"),
        ({"CHUNKD_TAGS": f"{'k' * 129}=v"}, "CHUNKD_TAGS"),
        ({"CHUNKD_TAGS": f"k={'v' * 257}"}, "CHUNKD_TAGS"),
        ({"CHUNKD_TAGS": "a=1&a=2"}, "CHUNKD_TAGS"),
        ({"CHUNKD_TAGS": "site={nope}"}, "CHUNKD_TAGS"),
        ({"CHUNKD_METADATA": "bad key=v"}, "CHUNKD_METADATA"),
        ({"CHUNKD_METADATA": f"k={'v' * 3000}"}, "CHUNKD_METADATA"),
        ({"CHUNKD_CONTENT_DISPOSITION": "inline; filename={file}"}, "CHUNKD_CONTENT_DISPOSITION"),
        ({"CHUNKD_CONTENT_TYPE": "video"}, "CHUNKD_CONTENT_TYPE"),
        ({"CHUNKD_SSE": "aws:nope"}, "CHUNKD_SSE"),
        ({"CHUNKD_ACL": "everyone"}, "CHUNKD_ACL"),
        ({"CHUNKD_SSE": "AES256", "CHUNKD_SSE_KMS_KEY_ID": "k"}, "CHUNKD_SSE_KMS_KEY_ID"),
        ({"CHUNKD_SSE": "AES256", "CHUNKD_SSE_BUCKET_KEY": "yes"}, "CHUNKD_SSE_BUCKET_KEY"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert caught.value.setting == named


def test_ten_tags_of_the_longest_sizes_are_accepted_and_toml_tables_work() -> None:
    tags = "&".join(f"{i}{'k' * 127}={'v' * 256}" for i in range(10))
    assert len(load_settings(env={"CHUNKD_TAGS": tags}).tags) == 10
    assert parse_pairs({"team": "video"}) == (("team", "video"),)
    assert parse_pairs("a=x%26y&b=") == (("a", "x&y"), ("b", ""))


def test_a_tag_value_too_long_for_one_file_says_which_setting() -> None:
    settings = AttributeSettings(tags=(("path", "{relpath}"),))
    with pytest.raises(ValueError, match="CHUNKD_TAGS"):
        settings.render(key="k", relpath="d/" * 200 + "x.mp4", hostname="h", now=0)


def test_records_keep_attributes_and_older_records_load_without_them() -> None:
    record = StreamRecord(id="s", relpath="a.mp4", source_path="/a.mp4", bucket="b", key="a.mp4", schedule={})
    old = record.to_dict()
    del old["attributes"]
    assert StreamRecord.from_dict(old).attributes is None
    applied = ObjectAttributes(content_type="video/mp4", tags={"t": "v"}, sse="AES256")
    record.attributes = applied.to_dict()
    assert ObjectAttributes.from_dict(StreamRecord.from_dict(record.to_dict()).attributes or {}) == applied
    assert ObjectAttributes.from_dict({**applied.to_dict(), "from_the_future": 1}) == applied
