"""Settings: precedence, size parsing, and errors that name the setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkd.config import (
    DEFAULT_INCLUDE,
    SETTING_NAMES,
    Settings,
    env_name,
    load_settings,
    parse_size,
    with_destination,
)
from chunkd.errors import ConfigError
from tests.support.sizes import MiB


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chunkd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_source() -> None:
    assert load_settings(env={}) == Settings()
    assert Settings().include == DEFAULT_INCLUDE


def test_every_setting_has_an_env_name() -> None:
    assert env_name("part_size") == "CHUNKD_PART_SIZE"
    assert set(SETTING_NAMES) == set(Settings.__dataclass_fields__)


# -- precedence ------------------------------------------------------------------------------


def test_precedence_env_then_toml_then_overrides(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'bucket = "from-toml"\npart_size = "16MiB"\n')
    env = {"CHUNKD_BUCKET": "from-env", "CHUNKD_PART_SIZE": "32MiB", "CHUNKD_FILE_CONCURRENCY": "7"}
    settings = load_settings(env=env, config_file=config, overrides={"bucket": "from-flag"})
    assert settings.bucket == "from-flag"  # flag beats TOML and env
    assert settings.part_size == 16 * MiB  # TOML beats env
    assert settings.file_concurrency == 7  # env beats default


def test_env_alone_overrides_defaults() -> None:
    settings = load_settings(env={"CHUNKD_BUCKET": "videos", "CHUNKD_IDLE_SECONDS": "2.5"})
    assert (settings.bucket, settings.idle_seconds) == ("videos", 2.5)


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'bucket = "from-toml"\n')
    settings = load_settings(env={}, config_file=config, overrides={"bucket": None, "part_size": None})
    assert settings.bucket == "from-toml"
    assert settings.part_size == 8 * MiB


def test_config_file_from_env_and_chunkd_table(tmp_path: Path) -> None:
    config = write_toml(tmp_path, '[chunkd]\nbucket = "tabled"\ninclude = ["*.mp4"]\n')
    settings = load_settings(env={"CHUNKD_CONFIG": str(config)})
    assert settings.bucket == "tabled"
    assert settings.include == ("*.mp4",)


def test_overrides_are_parsed_like_env_values() -> None:
    settings = load_settings(env={}, overrides={"part_size": "10MiB", "log_level": "debug"})
    assert settings.part_size == 10 * MiB
    assert settings.log_level == "DEBUG"


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8MiB", 8 * MiB),
        ("8mib", 8 * MiB),
        ("5MB", 5_000_000),
        ("5 MB", 5_000_000),
        ("1048576", 1_048_576),
        ("1.5GiB", 1536 * MiB),
        ("64KiB", 65_536),
        ("2k", 2000),
        ("0", 0),
        (" 7 b ", 7),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "eight", "5XB", "-5MiB", "1.5.5MB", "5 MiB extra", "0x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# -- errors name the setting -----------------------------------------------------------------


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("value", ["1MiB", "6GiB", "4999999"])
def test_part_size_outside_s3_limits_names_the_env_var(value: str) -> None:
    error = config_error(env={"CHUNKD_PART_SIZE": value})
    assert error.setting == "CHUNKD_PART_SIZE"
    assert str(error).startswith("CHUNKD_PART_SIZE:")
    assert "5MiB" in str(error)


def test_part_size_error_names_the_flag_when_it_came_from_a_flag() -> None:
    error = config_error(env={"CHUNKD_PART_SIZE": "8MiB"}, overrides={"part_size": "1MiB"})
    assert error.setting == "--part-size"


def test_part_size_error_names_the_toml_key(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "part_size = 1024\n")
    error = config_error(env={}, config_file=config)
    assert "part_size" in error.setting and str(config) in error.setting


def test_unparsable_value_names_the_setting() -> None:
    error = config_error(env={"CHUNKD_PART_SIZE": "lots"})
    assert error.setting == "CHUNKD_PART_SIZE"
    assert "lots" in str(error)


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab", "-leading", "x" * 64, "UPPER"])
def test_invalid_bucket_name(bucket: str) -> None:
    error = config_error(env={"CHUNKD_BUCKET": bucket})
    assert error.setting == "CHUNKD_BUCKET"
    assert bucket in str(error)


@pytest.mark.parametrize("url", ["postgres://db/x", "sqlite://relative.db", "state.db", "http://redis:6379"])
def test_bad_state_url_scheme(url: str) -> None:
    error = config_error(env={"CHUNKD_STATE_URL": url})
    assert error.setting == "CHUNKD_STATE_URL"
    assert "redis://" in str(error)


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:6380", "sqlite:///.chunkd/x.db"])
def test_good_state_urls(url: str) -> None:
    assert load_settings(env={"CHUNKD_STATE_URL": url}).state_url == url


def test_bad_endpoint_url() -> None:
    error = config_error(env={"CHUNKD_S3_ENDPOINT_URL": "minio:9000"})
    assert error.setting == "CHUNKD_S3_ENDPOINT_URL"


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'bucket = "ok-bucket"\npart_sise = "8MiB"\n')
    error = config_error(env={}, config_file=config)
    assert error.setting == "--config"
    assert "part_sise" in str(error)


def test_invalid_toml(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "bucket = \n")
    error = config_error(env={}, config_file=config)
    assert error.setting == "--config"
    assert "not valid TOML" in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    error = config_error(env={}, config_file=tmp_path / "absent.toml")
    assert error.setting == "--config"
    assert "absent.toml" in str(error)


@pytest.mark.parametrize(
    ("template", "hint"),
    [("{nope}", "unknown field"), ("{date}/{hostname}", "{relpath} or {stem}"), ("{stem:>10}", "format spec")],
)
def test_bad_key_template(template: str, hint: str) -> None:
    error = config_error(env={"CHUNKD_KEY_TEMPLATE": template})
    assert error.setting == "CHUNKD_KEY_TEMPLATE"
    assert hint in str(error)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHUNKD_FILE_CONCURRENCY", "0"),
        ("CHUNKD_PART_CONCURRENCY", "four"),
        ("CHUNKD_IDLE_SECONDS", "-1"),
        ("CHUNKD_PART_SCHEDULE", "random"),
        ("CHUNKD_LOG_LEVEL", "loud"),
        ("CHUNKD_LOG_FORMAT", "xml"),
        ("CHUNKD_MAX_ATTEMPTS", "1.5"),
        ("CHUNKD_BANDWIDTH_LIMIT", "fast"),
    ],
)
def test_every_bad_value_names_its_env_var(name: str, value: str) -> None:
    assert config_error(env={name: value}).setting == name


def test_wrong_type_in_toml_names_the_key(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'file_concurrency = "many"\n')
    error = config_error(env={}, config_file=config)
    assert error.setting.endswith("file_concurrency")


# -- lists -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*.mp4,*.mov", ("*.mp4", "*.mov")),
        ("*.mp4, *.mov", ("*.mp4", "*.mov")),
        ("*.mp4 *.mov\t*.mkv", ("*.mp4", "*.mov", "*.mkv")),
        (" ,*.mp4,, ", ("*.mp4",)),
    ],
)
def test_include_and_exclude_from_env_strings(text: str, expected: tuple[str, ...]) -> None:
    settings = load_settings(env={"CHUNKD_INCLUDE": text, "CHUNKD_EXCLUDE": text})
    assert settings.include == expected
    assert settings.exclude == expected


def test_bandwidth_limit_and_schedule_from_env() -> None:
    settings = load_settings(env={"CHUNKD_BANDWIDTH_LIMIT": "10MB", "CHUNKD_PART_SCHEDULE": "fixed"})
    assert settings.bandwidth_limit == 10_000_000
    assert settings.fixed_parts


def test_buffer_memory_is_a_size_of_zero_or_at_least_one_smallest_part() -> None:
    assert Settings().buffer_memory == 32 * 1024 * 1024
    assert load_settings(env={"CHUNKD_BUFFER_MEMORY": "64MiB"}).buffer_memory == 64 * 1024 * 1024
    assert load_settings(env={"CHUNKD_BUFFER_MEMORY": "0"}).buffer_memory == 0
    error = config_error(env={"CHUNKD_BUFFER_MEMORY": "1MiB"})
    assert (error.setting, "at least 5MiB" in str(error)) == ("CHUNKD_BUFFER_MEMORY", True)


def test_overwrite_is_off_unless_asked_for() -> None:
    assert Settings().overwrite is False
    assert load_settings(env={"CHUNKD_OVERWRITE": "true"}).overwrite is True
    assert load_settings(env={}, overrides={"overwrite": "true"}).overwrite is True
    with pytest.raises(ConfigError, match="CHUNKD_OVERWRITE"):
        load_settings(env={"CHUNKD_OVERWRITE": "maybe"})


@pytest.mark.parametrize(
    ("url", "bucket", "template"),
    [
        ("s3://other/pre/", "other", "pre/{relpath}"),
        ("s3://other/a//b", "other", "a/b/{relpath}"),
        ("s3://other", "other", "{relpath}"),
        ("s3://other/", "other", "{relpath}"),
        ("s3://other/{x}/", "other", "{{x}}/{relpath}"),
    ],
)
def test_destination_url_sets_bucket_and_key_prefix(url: str, bucket: str, template: str) -> None:
    settings = with_destination(Settings(key_template="{stem}"), url)
    assert (settings.bucket, settings.key_template) == (bucket, template)


@pytest.mark.parametrize("url", ["s3://", "s3:///pre/", "s3://Bad_Bucket/x", "s3://ab/x"])
def test_malformed_destination_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ConfigError, match="not an s3://BUCKET/PREFIX/ destination") as caught:
        with_destination(Settings(), url)
    assert url in str(caught.value)
