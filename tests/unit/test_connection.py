"""How chunkd connects to S3: the region chain, addressing style, TLS, the SSE-C key on every
object call, presigned URLs, and boto3's credential chain failing as one line (exit 2)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from chunkd.config import load_settings
from chunkd.errors import ConfigError
from chunkd.model.planner import Part
from chunkd.s3 import client as client_module
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from tests.support.cli import error_lines, run_chunkd

KEYS = {"access_key": "testing", "secret_key": "testing"}


def settings_error(tmp_path: Path, **env: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env, config_file=None)
    return str(raised.value)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 31, 33])
def test_an_sse_c_key_file_of_other_than_32_bytes_names_the_setting(tmp_path: Path, size: int) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * size)
    message = settings_error(tmp_path, CHUNKD_SSE_C_KEY_FILE=str(key_file))
    assert message.startswith("CHUNKD_SSE_C_KEY_FILE:") and f"holds {size} bytes" in message
    assert "kkkk" not in message


def test_a_missing_key_file_or_ca_bundle_names_the_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "nosuch")
    assert settings_error(tmp_path, CHUNKD_SSE_C_KEY_FILE=missing).startswith("CHUNKD_SSE_C_KEY_FILE:")
    assert settings_error(tmp_path, CHUNKD_S3_CA_BUNDLE=missing).startswith("CHUNKD_S3_CA_BUNDLE:")


@pytest.mark.parametrize("sse", [{"CHUNKD_SSE": "AES256"}, {"CHUNKD_SSE_KMS_KEY_ID": "alias/video"}])
def test_sse_c_and_server_side_encryption_together_name_the_setting(tmp_path: Path, sse: dict[str, str]) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    message = settings_error(tmp_path, CHUNKD_SSE_C_KEY_FILE=str(key_file), **sse)
    assert message.startswith("CHUNKD_SSE_C_KEY_FILE:") and "not both" in message


@pytest.mark.parametrize(("name", "value"), [
    ("CHUNKD_S3_ADDRESSING_STYLE", "dns"), ("CHUNKD_S3_VERIFY_TLS", "maybe"),
    ("CHUNKD_PRESIGN_SECONDS", "-1"), ("CHUNKD_PRESIGN_SECONDS", "604801"), ("CHUNKD_PRESIGN_SECONDS", "soon"),
])
def test_bad_connection_values_name_the_setting(tmp_path: Path, name: str, value: str) -> None:
    assert settings_error(tmp_path, **{name: value}).startswith(f"{name}:")


def test_the_sse_c_key_is_in_no_repr(tmp_path: Path) -> None:
    key = os.urandom(32)
    target = S3Target(sse_c_key=key, **KEYS)
    assert repr(key) not in repr(target) and key.hex() not in repr(target)


# -- the client ----------------------------------------------------------------------------------


def test_region_from_boto3s_chain_unless_chunkd_s3_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert make_client(S3Target(**KEYS)).meta.region_name == "eu-west-2"
    assert make_client(S3Target(region="ap-south-1", **KEYS)).meta.region_name == "ap-south-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    assert make_client(S3Target(**KEYS)).meta.region_name == "sa-east-1"


@pytest.mark.parametrize(("style", "endpoint", "expected"), [
    ("auto", "http://127.0.0.1:9000", "path"), ("auto", None, "auto"),
    ("virtual", "https://minio.example", "virtual"), ("path", None, "path"),
])
def test_addressing_style(style: str, endpoint: str | None, expected: str) -> None:
    client = make_client(S3Target(endpoint_url=endpoint, region="us-east-1", addressing_style=style, **KEYS))
    assert client.meta.config.s3["addressing_style"] == expected


def test_tls_verification_off_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(client_module, "_TLS_WARNED", type(client_module._TLS_WARNED)())
    with caplog.at_level(logging.WARNING, logger="chunkd.s3"):
        first = make_client(S3Target(endpoint_url="https://s3.example", verify_tls=False, **KEYS))
        make_client(S3Target(endpoint_url="https://s3.example", verify_tls=False, **KEYS))
    assert first._endpoint.http_session._verify is False
    assert caplog.text.count("NOT verified") == 1


def test_a_ca_bundle_is_what_the_client_verifies_with(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    client = make_client(S3Target(endpoint_url="https://s3.example", ca_bundle=str(bundle), **KEYS))
    assert client._endpoint.http_session._verify == str(bundle)


def _capture(client: Any, **headers: str) -> list[Any]:
    """Requests `client` would send, answered 200 (with `headers`) without a network."""
    sent: list[Any] = []
    answered = {"ETag": '"e"', "Content-Length": "0", **headers}

    def answer(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        body = b'<CopyObjectResult><ETag>"e"</ETag></CopyObjectResult>' if "x-amz-copy-source" in request.headers else b""
        raw = type("Raw", (), {"stream": lambda self, **kw: iter([body]), "read": lambda self, *a: body})()
        return AWSResponse(request.url, 200, answered, raw)

    client.meta.events.register("before-send.s3", answer)
    return sent


def test_every_object_call_carries_the_customer_key() -> None:
    key = os.urandom(32)
    uploader = Uploader.connect(S3Target(endpoint_url="http://127.0.0.1:9", sse_c_key=key, **KEYS), RetryPolicy.quick())
    sent = _capture(uploader._client)
    client = uploader._client
    client.put_object(Bucket="b", Key="k", Body=b"x")
    client.upload_part(Bucket="b", Key="k", UploadId="u", PartNumber=1, Body=b"x")
    client.head_object(Bucket="b", Key="k")
    client.copy_object(Bucket="b", Key="k2", CopySource={"Bucket": "b", "Key": "k"})
    encoded, md5 = base64.b64encode(key).decode(), base64.b64encode(hashlib.md5(key).digest()).decode()
    for request in sent:
        assert request.headers["x-amz-server-side-encryption-customer-algorithm"] == b"AES256"
        assert request.headers["x-amz-server-side-encryption-customer-key"] == encoded.encode()
        assert request.headers["x-amz-server-side-encryption-customer-key-MD5"] == md5.encode()
    copy = sent[-1]
    assert copy.headers["x-amz-copy-source-server-side-encryption-customer-key"] == encoded.encode()
    assert len(sent) == 4


def test_a_part_stored_with_a_customer_key_is_not_checked_against_its_md5(tmp_path: Path) -> None:
    """S3 answers an SSE-C object's ETag that is not the MD5 of the bytes: not a BadDigest."""
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x" * 1024)
    target = S3Target(endpoint_url="http://127.0.0.1:9", **KEYS)
    uploader = Uploader(make_client(target), RetryPolicy.quick(max_attempts=1), content_md5=True)
    _capture(uploader._client, **{"ETag": '"' + "f" * 32 + '"', "x-amz-server-side-encryption-customer-algorithm": "AES256"})
    record = uploader.upload_part("b", "k", "u", source, Part(number=1, offset=0, size=1024), None)
    assert record.etag == '"' + "f" * 32 + '"'
    _, etag = uploader.put_object("b", "k", source, 1024, None)
    assert etag == record.etag


def test_a_presigned_get_expires_as_configured() -> None:
    uploader = Uploader.connect(S3Target(endpoint_url="http://127.0.0.1:9", region="us-east-1", **KEYS),
                                RetryPolicy.quick())
    url = uploader.presigned_get("b", "dir/clip.mp4", seconds=600)
    assert url.startswith("http://127.0.0.1:9/b/dir/clip.mp4?") and "X-Amz-Expires=600" in url


# -- boto3's credential chain failing ------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKD_", "AWS_"))}
    (tmp_path / "input").mkdir(exist_ok=True)
    env.update(
        HOME=str(tmp_path), CHUNKD_INPUT_DIR=str(tmp_path / "input"), CHUNKD_HTTP_ADDR="",
        CHUNKD_STATE_URL=f"sqlite:///{tmp_path / 'state.db'}", AWS_EC2_METADATA_DISABLED="true",
        CHUNKD_S3_ENDPOINT_URL="http://127.0.0.1:9",
    )
    env.update(extra)
    return env


COMMANDS = [("run",), ("upload", "/etc/hostname"), ("verify", "clip.mp4"), ("gc",), ("doctor",)]


def _one_line_exit_2(result: Any) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = error_lines(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return line


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_missing_profile_is_one_line_and_exit_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = run_chunkd(*command, env=_env(tmp_path, AWS_PROFILE="nosuch"))
    assert "'nosuch' not found" in _one_line_exit_2(result)


def test_no_credentials_at_all_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_chunkd("run", env=_env(tmp_path))
    assert "no S3 credentials found" in _one_line_exit_2(result)


def test_an_expired_sso_login_is_one_line_and_exit_2(tmp_path: Path) -> None:
    start_url = "https://example.awsapps.com/start"
    (tmp_path / ".aws" / "sso" / "cache").mkdir(parents=True)
    (tmp_path / ".aws" / "config").write_text(
        f"[profile sso]\nsso_start_url = {start_url}\nsso_region = us-east-1\n"
        "sso_account_id = 123456789012\nsso_role_name = Uploader\nregion = eu-west-1\n"
    )
    cache = tmp_path / ".aws" / "sso" / "cache" / f"{hashlib.sha1(start_url.encode()).hexdigest()}.json"
    cache.write_text(json.dumps({"startUrl": start_url, "region": "us-east-1", "accessToken": "t",
                                 "expiresAt": "2020-01-01T00:00:00Z"}))
    result = run_chunkd("run", env=_env(tmp_path, AWS_PROFILE="sso"))
    assert "SSO" in _one_line_exit_2(result)
