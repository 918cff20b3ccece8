"""The monitoring pack (deploy/monitoring/, the compose `monitoring` profile) against what chunkd
really exports: every metric a dashboard panel or an alert rule names is in a live daemon's
/metrics, the compose services wire the files together, and promtool accepts the rules and their
unit tests. Docker is not needed: the compose file is checked as YAML (its general rules, such
as loopback-only ports and declared volumes, are tests/unit/test_deploy.py's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chunkd.config import load_settings
from chunkd.daemon import Daemon, build_engine
from chunkd.s3.client import S3Target

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "monitoring"
DASHBOARD = PACK / "grafana" / "dashboards" / "chunkd.json"
# Series Prometheus makes itself: the scrape's `up` and the firing alerts.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
PROMQL_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers (and $variables in them)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", expr):
        if match.group(2) is None and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def test_metric_names_finds_selectors_only() -> None:
    expr = (
        'sum by (job, instance) (increase(chunkd_retries_total{reason=~"a|b"}[10m])) > 0 '
        "unless on (job) histogram_quantile(0.9, rate(x_bucket[$__rate_interval])) and up == bool 1"
    )
    assert metric_names(expr) == {"chunkd_retries_total", "x_bucket", "up"}


# --- what a running daemon exports --------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every sample and family name on a real Daemon's /metrics (store, queue, breaker, downloads wired)."""
    tmp = tmp_path_factory.mktemp("daemon")
    (tmp / "input").mkdir()
    settings = load_settings(env={}, overrides={
        "input_dir": str(tmp / "input"), "state_url": f"sqlite:///{tmp / 'state.db'}", "bucket": "chunkd",
        "http_addr": "",
    })
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    daemon = Daemon(build_engine(settings, S3Target(f"http://127.0.0.1:{port}", None, "key", "secret")))
    try:
        body, _ = daemon.engine.metrics.render()
    finally:
        daemon.events.close(timeout=1)
        daemon.engine.shutdown()
        daemon.engine.store.close()
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    yield names


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard, the template variables' included."""
    doc = json.loads(DASHBOARD.read_text())
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in doc["templating"]["list"]:
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        yield f"${variable['name']}", match.group(1)


def rule_exprs() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load((PACK / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def test_every_dashboard_query_names_metrics_chunkd_exports(exported: set[str]) -> None:
    named = [(title, metric_names(expr)) for title, expr in dashboard_exprs()]
    unknown = [(title, names - exported - PROMETHEUS_SERIES) for title, names in named]
    assert [(title, names) for title, names in unknown if names] == []
    assert all(names for _, names in named), "a query that selects no metric"
    used = set().union(*(names for _, names in named))
    assert {"chunkd_uploaded_bytes_total", "chunkd_build_info", "process_resident_memory_bytes"} <= used


def test_every_alert_names_metrics_chunkd_exports(exported: set[str]) -> None:
    unknown = {alert: metric_names(expr) - exported - {"up"} for alert, expr in rule_exprs()}
    assert {alert: names for alert, names in unknown.items() if names} == {}


def test_the_rules_cover_what_an_operator_must_hear_about() -> None:
    alerts = {alert for alert, _ in rule_exprs()}
    assert alerts == {
        "ChunkdDown", "ChunkdUploadsStuck", "ChunkdOldestUnfinishedFileOld", "ChunkdFileFailureRateHigh",
        "ChunkdQuarantineSpike", "ChunkdCircuitBreakerOpen", "ChunkdS3Unreachable", "ChunkdStoreUnreachable",
        "ChunkdDownloadsPausedLowDisk",
    }
    tests = yaml.safe_load((PACK / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == alerts
    for test in tests:  # each case group shows the alert firing and, at another time, not firing
        outcomes = {bool(case["exp_alerts"]) for case in test["alert_rule_test"]}
        assert outcomes == {True, False}, test["name"]


def test_dashboard_panels_are_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    datasource_uid = provisioned_datasource()["uid"]
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]


# --- the compose profile --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def provisioned_datasource() -> dict[str, Any]:
    doc = yaml.safe_load((PACK / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [datasource] = doc["datasources"]
    return dict(datasource)


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the service's bind mounts (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("./"):
            found[container] = ROOT / host
    return found


def test_prometheus_and_grafana_start_only_with_the_monitoring_profile() -> None:
    services = compose()["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert [name for name, service in services.items() if "profiles" not in service] == [
        "minio", "redis", "createbucket", "chunkd",
    ]
    assert set(compose()["volumes"]) >= {"prometheus-data", "grafana-data"}


def test_every_bind_mount_exists() -> None:
    for name, service in compose()["services"].items():
        for host in mounts(service).values():
            assert host.exists() or host == ROOT / "input", f"{name}: {host}"


def test_prometheus_scrapes_chunkd_and_loads_the_rules_it_is_given() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    files = mounts(prometheus)
    [config_flag] = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = config_flag.split("=", 1)[1]
    assert files[config_path] == PACK / "prometheus.yml"
    config = yaml.safe_load((PACK / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert files[str(Path(config_path).parent / rule_file)] == PACK / "alerts.yml"
    [job] = config["scrape_configs"]
    assert job["job_name"] == "chunkd"  # alerts.yml and the dashboard select job="chunkd"
    [target] = job["static_configs"][0]["targets"]
    port = services["chunkd"]["environment"]["CHUNKD_HTTP_ADDR"].rsplit(":", 1)[1]
    assert target == f"chunkd:{port}"
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_gets_the_datasource_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    files = mounts(grafana)
    assert files["/etc/grafana/provisioning"] == PACK / "grafana" / "provisioning"
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert "127.0.0.1:9090:9090" in compose()["services"]["prometheus"]["ports"]

    providers = yaml.safe_load((PACK / "grafana" / "provisioning" / "dashboards" / "chunkd.yml").read_text())
    [provider] = providers["providers"]
    dashboards = files[provider["options"]["path"]]
    assert (dashboards / "chunkd.json") == DASHBOARD
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert files[str(Path(home).parent)] / Path(home).name == DASHBOARD


# --- promtool ------------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CHUNKD_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not found, and CHUNKD_REQUIRE_PROMTOOL is set (.ci/run installs it)")
        pytest.skip("promtool not installed (Debian: apt-get install prometheus); .ci/run installs it")
    return found


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"], ["check", "config", "prometheus.yml"]],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_pack(args: list[str]) -> None:
    done = subprocess.run([promtool(), *args], check=False, cwd=PACK, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
