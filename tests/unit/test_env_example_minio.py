"""docker-compose.yml is the truth for the local MinIO login: `.env.example` (copied to `.env`, which
compose reads) and the README state the same user and password, and the region line says what the
code does (CHUNKD_S3_REGION, else boto3's chain)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose_default(name: str) -> str:
    (value,) = set(re.findall(rf"\${{{name}:-([^}}]+)}}", (ROOT / "docker-compose.yml").read_text()))
    return value


def env_example(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(.*)$", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    return value


def test_minio_login_is_the_same_everywhere() -> None:
    user, password = compose_default("MINIO_ROOT_USER"), compose_default("MINIO_ROOT_PASSWORD")
    assert (env_example("MINIO_ROOT_USER"), env_example("MINIO_ROOT_PASSWORD")) == (user, password)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"default `{user}` / `{password}`" in readme


def test_region_line_says_what_the_code_does() -> None:
    text = (ROOT / ".env.example").read_text()
    (comment,) = re.findall(r"^# (Region.*?)\n# CHUNKD_S3_REGION=", text, flags=re.MULTILINE | re.DOTALL)
    assert "AWS_REGION" in comment and "AWS_DEFAULT_REGION" in comment and "us-east-1" in comment
    assert "boto3" in comment
