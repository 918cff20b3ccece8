"""Deployment files, parsed and cross-checked: no Docker engine or systemd runs here.

docker-compose.yml, deploy/Dockerfile, .env.example, deploy/chunkd.env.example, deploy/chunkd.service
and deploy/install.sh each name settings, paths and ports another one relies on; these tests hold
them to chunkd.config and to each other, so a renamed setting or a moved path fails here first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chunkd.config import SETTING_NAMES, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Environment variables chunkd reads that are not settings (config.load_settings).
NON_SETTING_NAMES = {"CHUNKD_CONFIG"}


def is_setting(env_var: str) -> bool:
    return env_var.removeprefix("CHUNKD_").lower() in SETTING_NAMES or env_var in NON_SETTING_NAMES


def chunkd_names(names: Any) -> list[str]:
    return [name for name in names if name.startswith("CHUNKD_")]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def http_port(addr: str) -> str:
    return addr.rpartition(":")[2]


# -- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def test_compose_services(compose: dict[str, Any]) -> None:
    assert {"minio", "redis", "createbucket", "chunkd"} <= set(compose["services"])
    assert "version" not in compose  # obsolete in the Compose specification


def test_chunkd_waits_for_healthy_dependencies_and_the_bucket(compose: dict[str, Any]) -> None:
    depends = service(compose, "chunkd")["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["minio"]["condition"] == "service_healthy"
    assert depends["createbucket"]["condition"] == "service_completed_successfully"
    assert service(compose, "createbucket")["depends_on"]["minio"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["minio", "redis"])
def test_dependencies_have_healthchecks(compose: dict[str, Any], name: str) -> None:
    test = service(compose, name)["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


def test_redis_persists_with_append_only_file(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"


def test_minio_serves_with_console(compose: dict[str, Any]) -> None:
    minio = service(compose, "minio")
    assert minio["image"].startswith("minio/minio")
    assert minio["command"][:2] == ["server", "/data"]
    assert "--console-address" in minio["command"]


def test_createbucket_is_a_one_shot_idempotent_mb(compose: dict[str, Any]) -> None:
    createbucket = service(compose, "createbucket")
    assert createbucket["image"].startswith("minio/mc")
    assert createbucket["restart"] == "no"
    script = " ".join(createbucket["command"])
    assert "mc alias set" in script and "http://minio:9000" in script
    assert "mc mb --ignore-existing" in script
    # The bucket it creates is the one chunkd uploads to.
    assert createbucket["environment"]["BUCKET"] == service(compose, "chunkd")["environment"]["CHUNKD_BUCKET"]


def test_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "~")):  # not a bind mount
                used.add(source)
    assert used == declared
    assert {"minio-data", "redis-data"} <= declared


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    ports = [(name, port) for name, svc in compose["services"].items() for port in svc.get("ports", [])]
    assert ports
    for name, port in ports:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port!r}"


def test_chunkd_service_wiring(compose: dict[str, Any]) -> None:
    chunkd = service(compose, "chunkd")
    build = chunkd["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert chunkd["env_file"] == [{"path": ".env", "required": False}]
    env = chunkd["environment"]
    assert env["CHUNKD_STATE_URL"].startswith("redis://redis:6379/")
    assert env["CHUNKD_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert f"./input:{env['CHUNKD_INPUT_DIR']}" in chunkd["volumes"]
    assert chunkd["ports"] == [f"127.0.0.1:{http_port(env['CHUNKD_HTTP_ADDR'])}:{http_port(env['CHUNKD_HTTP_ADDR'])}"]
    assert chunkd["restart"] == "unless-stopped"


def test_chunkd_uses_minio_credentials(compose: dict[str, Any]) -> None:
    minio = service(compose, "minio")["environment"]
    chunkd = service(compose, "chunkd")["environment"]
    assert chunkd["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert chunkd["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_compose_secrets_come_from_variables(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|ROOT_USER", key):
                assert str(value).startswith("${"), f"{name}: {key} is hard-coded"


def test_compose_environment_names_real_settings(compose: dict[str, Any]) -> None:
    env = service(compose, "chunkd")["environment"]
    names = chunkd_names(env)
    assert names
    assert [n for n in names if not is_setting(n)] == []
    settings = load_settings(env={name: interpolate(str(env[name])) for name in names})
    assert settings.state_url.startswith("redis://")


def test_warm_stop_fits_in_the_grace_period(compose: dict[str, Any]) -> None:
    grace = service(compose, "chunkd")["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings().shutdown_timeout


# -- deploy/Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def instruction_args(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction_args("ENV"):
        env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args)))
    return env


def test_dockerfile_base_is_python_slim() -> None:
    [base] = instruction_args("FROM")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base


def test_dockerfile_installs_ffmpeg_lean() -> None:
    [install] = [args for args in instruction_args("RUN") if "ffmpeg" in args]
    assert "apt-get install" in install and "--no-install-recommends" in install
    assert "rm -rf /var/lib/apt/lists" in install


def test_dockerfile_copies_only_the_package_sources() -> None:
    sources = [src for args in instruction_args("COPY") for src in args.split()[:-1]]
    assert set(sources) == {"pyproject.toml", "README.md", "chunkd/"}
    for src in sources:
        assert (ROOT / src).exists(), src
    assert any(re.search(r"pip install (--no-deps )?\.", args) for args in instruction_args("RUN"))


def test_dockerfile_runs_as_non_root() -> None:
    users = instruction_args("USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    assert any("useradd" in args and users[-1] in args for args in instruction_args("RUN"))


def test_dockerfile_settings_and_volumes() -> None:
    env = dockerfile_env()
    names = chunkd_names(env)
    assert [n for n in names if not is_setting(n)] == []
    settings = load_settings(env={name: env[name] for name in names})
    assert str(settings.input_dir) == "/data/input"
    assert settings.state_url == "sqlite:////data/state/state.db"
    assert settings.http_addr == "0.0.0.0:8765"
    [volumes] = instruction_args("VOLUME")
    assert set(json.loads(volumes)) == {"/data/input", "/data/state"}
    assert instruction_args("WORKDIR") == ["/app"]


def test_dockerfile_healthcheck_hits_healthz_with_urllib() -> None:
    [healthcheck] = instruction_args("HEALTHCHECK")
    assert "CMD" in healthcheck and "urllib.request" in healthcheck
    assert "http://127.0.0.1:" in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    port = http_port(dockerfile_env()["CHUNKD_HTTP_ADDR"])
    assert instruction_args("EXPOSE") == [port]


def test_dockerfile_entrypoint_is_chunkd_run() -> None:
    assert [json.loads(args) for args in instruction_args("ENTRYPOINT")] == [["chunkd"]]
    assert [json.loads(args) for args in instruction_args("CMD")] == [["run"]]


def test_compose_and_image_agree_on_the_container_layout(compose: dict[str, Any]) -> None:
    image, stack = dockerfile_env(), service(compose, "chunkd")["environment"]
    assert stack["CHUNKD_INPUT_DIR"] == image["CHUNKD_INPUT_DIR"]
    assert stack["CHUNKD_HTTP_ADDR"] == image["CHUNKD_HTTP_ADDR"]
    args = service(compose, "chunkd")["build"]["args"]
    declared = {args_.split("=")[0] for args_ in instruction_args("ARG")}
    assert set(args) <= declared


# -- .env.example and deploy/chunkd.env.example ---------------------------------------------

ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def entry(line: str) -> tuple[bool, str, str] | None:
    """(commented out, name, value) when the line sets a variable; `# NAME=…` counts for our prefixes only."""
    match = ASSIGNMENT.match(line)
    if not match or (match.group(1) and not match.group(2).startswith(("CHUNKD_", "AWS_"))):
        return None
    return bool(match.group(1)), match.group(2), match.group(3)


def env_file(path: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(set, commented-out, lines): `NAME=value` and `# NAME=value` entries of an env file."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        found = entry(line)
        if found:
            is_commented, name, value = found
            (commented if is_commented else active)[name] = value
    return active, commented, lines


def test_env_example_lists_every_setting() -> None:
    active, commented, _ = env_file(ROOT / ".env.example")
    names = chunkd_names([*active, *commented])
    assert [n for n in names if not is_setting(n)] == []
    listed = {n.removeprefix("CHUNKD_").lower() for n in names}
    assert [name for name in SETTING_NAMES if name not in listed] == []
    assert len(names) == len(set(names)), "a setting is listed twice"


def test_env_example_values_are_the_defaults() -> None:
    active, commented, _ = env_file(ROOT / ".env.example")
    settings = {name: value for name, value in active.items() if name.startswith("CHUNKD_")}
    assert load_settings(env=settings) == Settings()
    # A setting is commented out only when it has no default, and its example value is valid.
    defaults = Settings()
    for name, value in commented.items():
        if not is_setting(name) or name in NON_SETTING_NAMES:
            continue
        attribute = name.removeprefix("CHUNKD_").lower()
        assert getattr(defaults, attribute) in (None, (), ""), f"{name} has a default: set it, do not comment it"
        load_settings(env={name: value})


def test_env_example_comments_every_setting() -> None:
    _, _, lines = env_file(ROOT / ".env.example")
    for index, line in enumerate(lines):
        found = entry(line)
        if found and found[1].startswith("CHUNKD_"):
            above = lines[index - 1]
            assert above.startswith("#") and not entry(above), f"no comment above {found[1]}"


def test_env_example_has_credential_placeholders() -> None:
    active, commented, _ = env_file(ROOT / ".env.example")
    names = {*active, *commented}
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    assert len(active["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter root passwords


def test_systemd_env_example_is_valid() -> None:
    active, commented, _ = env_file(DEPLOY / "chunkd.env.example")
    names = chunkd_names([*active, *commented])
    assert [n for n in names if not is_setting(n)] == []
    settings = load_settings(env={n: v for n, v in active.items() if n.startswith("CHUNKD_")})
    assert settings.state_url.startswith("redis://")
    assert settings.s3_endpoint_url
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(active)
    for name, value in commented.items():
        if name.startswith("CHUNKD_"):
            load_settings(env={name: value})


# -- deploy/chunkd.service -------------------------------------------------------------------


def unit_file(path: Path = DEPLOY / "chunkd.service") -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: keys may repeat, so every key maps to the list of its values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    [value] = section[key]
    return value


def install_sh_constants() -> dict[str, str]:
    text = (DEPLOY / "install.sh").read_text(encoding="utf-8")
    return dict(re.findall(r"^readonly ([A-Z_]+)=(\S+)$", text, flags=re.MULTILINE))


def test_unit_is_a_notify_service_with_watchdog() -> None:
    service_ = unit_file()["Service"]
    assert one(service_, "Type") == "notify"
    assert one(service_, "NotifyAccess") == "main"
    assert int(one(service_, "WatchdogSec")) > 0
    assert one(service_, "Restart") == "on-failure"
    assert one(service_, "RestartSec") == "5"
    assert one(service_, "ExecStart") == "/opt/chunkd/venv/bin/chunkd run"
    assert one(service_, "EnvironmentFile") == "/etc/chunkd/chunkd.env"
    assert one(service_, "User") == one(service_, "Group") == "chunkd"
    assert one(unit_file()["Install"], "WantedBy") == "multi-user.target"


def test_unit_stop_leaves_time_for_the_warm_stop() -> None:
    service_ = unit_file()["Service"]
    assert one(service_, "KillSignal") == "SIGTERM"
    assert float(one(service_, "TimeoutStopSec")) > Settings().shutdown_timeout


def test_unit_hardening() -> None:
    service_ = unit_file()["Service"]
    assert one(service_, "NoNewPrivileges") == "yes"
    assert one(service_, "ProtectSystem") == "strict"
    assert one(service_, "ProtectHome") == "yes"
    assert one(service_, "PrivateTmp") == "yes"
    assert one(service_, "StateDirectory") == "chunkd"
    writable = one(service_, "ReadWritePaths").split()
    assert {"/srv/chunkd/input", "/var/lib/chunkd"} <= set(writable)


def test_unit_install_script_and_env_example_agree() -> None:
    service_ = unit_file()["Service"]
    constants = install_sh_constants()
    assert one(service_, "ExecStart").split()[0] == f"{constants['VENV']}/bin/chunkd"
    assert one(service_, "EnvironmentFile") == constants["ENV_FILE"]
    assert one(service_, "User") == constants["USER_NAME"]
    writable = {path.lstrip("-") for path in one(service_, "ReadWritePaths").split()}
    assert {constants["INPUT_DIR"], constants["STATE_DIR"], constants["DONE_DIR"]} <= writable
    active, _, _ = env_file(DEPLOY / "chunkd.env.example")
    assert active["CHUNKD_INPUT_DIR"] == constants["INPUT_DIR"]
    assert constants["UNIT_FILE"].endswith("/chunkd.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """ExecStart must exist for verify; everything else is checked as shipped."""
    text = (DEPLOY / "chunkd.service").read_text(encoding="utf-8")
    unit = tmp_path / "chunkd.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", text), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and unparsable values are only warnings ("…, ignoring"): fail on them too.
    assert [line for line in output.splitlines() if str(unit) in line] == []


# -- deploy/install.sh -----------------------------------------------------------------------


def test_install_script_parses() -> None:
    script = DEPLOY / "install.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_install_script_enables_only_when_asked() -> None:
    text = (DEPLOY / "install.sh").read_text(encoding="utf-8")
    enables = [line for line in text.splitlines() if "systemctl enable" in line and not line.lstrip().startswith("#")]
    assert enables and all("--now" in line for line in enables)
    block = text[text.index('if [ "$enable" -eq 1 ]') :]
    assert block.index("systemctl enable --now") < block.index("else")
    # The env file is only ever created, with credentials' permissions.
    assert re.search(r'if \[ ! -e "\$ENV_FILE" \]; then\n\s+install -m 0600', text)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
