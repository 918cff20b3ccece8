"""The pure parts of the benchmark: summaries, ratios, target verdicts, Markdown, JSON, and how
each tool is told the same tuning. No process, no server."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import parse_args, plan
from bench.peers import (
    AwsCliTool,
    ChunkdTool,
    CurlPut,
    Job,
    PeersVenv,
    RcloneTool,
    S5cmdTool,
    Tuning,
)
from bench.report import Row, ScenarioResult, Summary, summarize
from bench.scenarios.growing import lag_parts
from bench.servers import Endpoint
from tests.support.sizes import MiB


def throughput(server: str = "rclone serve s3", **medians: list[float | None]) -> ScenarioResult:
    result = ScenarioResult("throughput", "1. Throughput", server, primary="mb_per_s", columns=["mb_per_s"])
    for tool, values in medians.items():
        name = {"chunkd": "chunkd", "aws": "aws s3 cp", "s5cmd": "s5cmd cp", "rclone": "rclone copy"}[tool]
        row = Row(name, peer=tool != "chunkd")
        for value in values:
            row.add(mb_per_s=value)
        result.rows.append(row)
    return result


# -- summaries ---------------------------------------------------------------------------------


def test_summary_is_median_and_range_of_the_runs_that_measured_something() -> None:
    assert summarize([3.0, 1.0, 2.0, None, 10.0]) == Summary(median=2.5, low=1.0, high=10.0, n=4)
    assert summarize([None, float("nan")]) is None
    assert summarize([]) is None


def test_summary_text_shows_the_range_only_when_runs_differ() -> None:
    assert Summary(2.5, 1.0, 10.0, 4).text() == "2.5 (1.0–10.0)"
    assert Summary(2.5, 2.5, 2.5, 3).text() == "2.5"
    assert Summary(0.5, 0.25, 0.75, 2).text("{:.0%}") == "50% (25%–75%)"


# -- ratios ------------------------------------------------------------------------------------


def test_best_peer_is_the_fastest_peer_and_never_chunkd() -> None:
    result = throughput(chunkd=[500.0], aws=[100.0, 120.0, 110.0], s5cmd=[150.0], rclone=[140.0])
    best = report.best_peer(result)
    assert best is not None and best.tool == "s5cmd cp"
    chunkd = result.row("chunkd")
    assert chunkd is not None
    assert report.ratio_to_best(result, chunkd) == pytest.approx(500 / 150)


def test_best_peer_for_a_lower_is_better_metric_is_the_smallest() -> None:
    result = ScenarioResult("memory", "2. Peak memory", "rclone serve s3", "peak_rss_mb", ["peak_rss_mb"])
    for tool, rss in (("chunkd", 90.0), ("aws s3 cp", 80.0), ("s5cmd cp", 20.0), ("rclone copy", 120.0)):
        row = Row(tool, peer=tool != "chunkd")
        row.add(peak_rss_mb=rss)
        result.rows.append(row)
    best = report.best_peer(result)
    assert best is not None and best.tool == "s5cmd cp"


def test_ratio_to_a_named_peer_ignores_faster_ones() -> None:
    result = throughput(chunkd=[60.0], s5cmd=[100.0], rclone=[300.0])
    result.ratio_to = "s5cmd"
    chunkd = result.row("chunkd")
    assert chunkd is not None
    assert report.ratio_to_best(result, chunkd) == pytest.approx(0.6)


def test_failed_peers_do_not_count_as_best_and_ratios_need_both_sides() -> None:
    result = throughput(chunkd=[None], aws=[None], s5cmd=[80.0])
    best = report.best_peer(result)
    assert best is not None and best.tool == "s5cmd cp"
    chunkd = result.row("chunkd")
    assert chunkd is not None and report.ratio_to_best(result, chunkd) is None
    assert report.ratio(1.0, 0.0) is None


def test_ceiling_is_the_best_of_curl_and_every_tool_on_the_same_server() -> None:
    ceiling = ScenarioResult("ceiling", "6. Ceiling", "rclone serve s3", "mb_per_s", ["mb_per_s"])
    curl = Row("curl -T (one PUT)", peer=False)
    curl.add(mb_per_s=180.0)
    ceiling.rows.append(curl)
    results = [throughput(chunkd=[100.0], s5cmd=[200.0]), ceiling, throughput("moto", s5cmd=[900.0])]
    assert report.ceiling(results, "rclone serve s3") == 200.0
    assert report.ceiling(results, "nowhere") is None


# -- targets -----------------------------------------------------------------------------------


def _scenario(name: str, primary: str, rows: dict[str, dict[str, list[float]]], **setup: object) -> ScenarioResult:
    result = ScenarioResult(name, name, "rclone serve s3", primary, [primary], setup=dict(setup))
    for tool, samples in rows.items():
        result.rows.append(Row(tool, peer=not tool.startswith("chunkd"), samples=dict(samples)))  # type: ignore[arg-type]
    if name == "small_files":
        result.ratio_to = "s5cmd"
    return result


def _marks(results: list[ScenarioResult]) -> dict[str, bool | None]:
    return {v.target.split(" (")[0].split(",")[0]: v.met for v in report.verdicts(results)}


def test_every_target_is_judged_met_when_chunkd_is_within_it() -> None:
    results = [
        throughput(chunkd=[210.0, 190.0, 200.0], s5cmd=[199.0]),
        _scenario("memory", "peak_rss_mb", {"chunkd": {"peak_rss_mb": [120.0, 149.0]}}, file_size_text="4 GiB"),
        _scenario("resume", "sent_ratio", {"chunkd": {"waste_mib": [39.0, 12.0]}}, allowed_waste_bytes=40 * MiB),
        _scenario("growing", "after_last_write_s",
                  {"chunkd": {"lag_max_parts": [1.0], "lag_median_parts": [0.0], "beyond_idle_s": [0.45]}}),
        _scenario("small_files", "files_per_s", {"chunkd": {"files_per_s": [50.0]}, "s5cmd cp": {"files_per_s": [100.0]}}),
    ]
    found = report.verdicts(results)
    assert len(found) == 6
    assert all(v.met is True for v in found), [(v.target, v.measured) for v in found]


def test_each_target_is_missed_by_a_hair_over_it() -> None:
    results = [
        throughput(chunkd=[99.0], s5cmd=[100.0], aws=[10.0]),
        _scenario("memory", "peak_rss_mb", {"chunkd": {"peak_rss_mb": [100.0, 151.0]}}),  # the worst run counts
        _scenario("resume", "sent_ratio", {"chunkd": {"waste_mib": [1.0, 40.5]}}, allowed_waste_bytes=40 * MiB),
        _scenario("growing", "after_last_write_s",
                  {"chunkd": {"lag_max_parts": [0.0, 1.5], "lag_median_parts": [0.0], "beyond_idle_s": [0.6]}}),
        _scenario("small_files", "files_per_s", {"chunkd": {"files_per_s": [49.0]}, "s5cmd cp": {"files_per_s": [100.0]}}),
    ]
    found = report.verdicts(results)
    assert [v.met for v in found] == [False] * 6
    assert found[0].measured == "0.99 × s5cmd cp"
    assert found[1].measured == "151 MB"


def test_a_scenario_chunkd_failed_in_is_not_measured_rather_than_met() -> None:
    results = [throughput(chunkd=[None], s5cmd=[100.0]),
               _scenario("resume", "sent_ratio", {"aws s3 cp": {"waste_mib": [1000.0]}}, allowed_waste_bytes=40 * MiB)]
    found = report.verdicts(results)
    assert [v.met for v in found] == [None, None]
    assert all(v.mark == "not measured" for v in found)


def test_throughput_is_judged_per_server() -> None:
    results = [throughput(chunkd=[150.0], s5cmd=[100.0]), throughput("moto", chunkd=[50.0], s5cmd=[100.0])]
    found = report.verdicts(results)
    assert [(v.target.endswith("(rclone serve s3)"), v.met) for v in found] == [(True, True), (False, False)]


# -- Markdown and JSON -------------------------------------------------------------------------


def test_table_shows_median_range_ratio_ceiling_and_failure() -> None:
    result = throughput(chunkd=[100.0, 90.0, 110.0], s5cmd=[200.0], aws=[])
    aws = result.row("aws s3 cp")
    assert aws is not None
    aws.failures.append("exit status 1; log ends:\nboom | bang")
    table = report.scenario_table(result, [result])
    lines = table.splitlines()
    assert lines[0] == "| tool | MB/s | × best peer | of ceiling | status |"
    assert lines[2] == "| chunkd | 100.0 (90.0–110.0) | 0.50× | 50% | ok |"
    assert lines[3] == "| s5cmd cp | 200.0 | 1.00× | 100% | ok |"
    assert lines[4] == "| aws s3 cp | – | – | – | FAILED: exit status 1; log ends: |"


def test_markdown_has_targets_every_scenario_the_chart_and_each_tools_settings() -> None:
    results = [throughput(chunkd=[100.0], s5cmd=[200.0]), throughput("moto", chunkd=[50.0], s5cmd=[40.0])]
    doc = {"date": "2026-01-02T03:04:05", "host": {"cpus": 2, "load_average_at_start": [1.0, 1.0, 1.0]},
           "tools": {"s5cmd cp": {"version": "v2", "settings": {"throughput": {"--numworkers": 4}}}}}
    text = report.render_markdown(doc, results, chart="2026-01-02.png")
    assert "![results](2026-01-02.png)" in text
    assert "| Throughput ≥ 1.0 × best peer (rclone serve s3) | 0.50 × s5cmd cp | MISSED |" in text
    assert "| Throughput ≥ 1.0 × best peer (moto) | 1.25 × s5cmd cp | met |" in text
    assert text.index("— rclone serve s3") < text.index("— moto")
    assert "`--numworkers=4`" in text


def test_json_keeps_every_sample_with_its_summary_and_reads_back(tmp_path: Path) -> None:
    result = throughput(chunkd=[100.0, 120.0], s5cmd=[200.0])
    path = tmp_path / "r.json"
    report.write_json(path, {"date": "d"}, [result])
    data = json.loads(path.read_text())
    row = data["scenarios"][0]["rows"][0]
    assert row["samples"]["mb_per_s"] == [100.0, 120.0]
    assert row["summary"]["mb_per_s"] == {"median": 110.0, "low": 100.0, "high": 120.0, "n": 2}
    assert row["ratio_to_best_peer"] == pytest.approx(0.55)
    assert data["scenarios"][0]["best_peer"] == "s5cmd cp"
    assert data["targets"][0]["verdict"] == "MISSED"
    back = report.result_from_json(data["scenarios"][0])
    assert back.row("chunkd") is not None and back.row("chunkd").median("mb_per_s") == 110.0  # type: ignore[union-attr]


def test_results_of_a_later_run_the_same_day_never_overwrite(tmp_path: Path) -> None:
    day = datetime.date(2026, 1, 2)
    first = report.results_stem(tmp_path, day)
    assert first.name == "2026-01-02"
    first.with_suffix(".json").write_text("{}")
    assert report.results_stem(tmp_path, day).name == "2026-01-02-2"


# -- what the tools are told -------------------------------------------------------------------


def test_lag_counts_whole_parts_written_and_not_yet_acknowledged() -> None:
    part = 8 * MiB
    assert lag_parts(written=part - 1, acknowledged=0, part_size=part) == 0  # no whole part yet
    assert lag_parts(written=3 * part + 5, acknowledged=2 * part, part_size=part) == 1
    assert lag_parts(written=2 * part, acknowledged=2 * part, part_size=part) == 0


SECRET = "Sk-b3nch-n0t-on-argv"


def _job(tmp_path: Path, source: Path, tuning: Tuning) -> Job:
    endpoint = Endpoint("rclone", "http://127.0.0.1:9", "AKBENCH", SECRET, None)
    return Job(endpoint, source, "pre/fix", tmp_path, tuning)


def test_every_tool_gets_the_same_concurrency_and_part_size(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    tuning = Tuning(files=4, parts=3, part_size=16 * MiB)
    venv = PeersVenv(tmp_path / "venv")
    aws_argv, aws_env = AwsCliTool(venv).command(_job(tmp_path, folder, tuning))
    config = Path(aws_env["AWS_CONFIG_FILE"]).read_text()
    assert "    max_concurrent_requests = 12" in config and "    multipart_chunksize = 16MB" in config
    assert config.index("request_checksum_calculation") < config.index("s3 =")
    assert "--recursive" in aws_argv
    s5_argv, _ = S5cmdTool(venv).command(_job(tmp_path, folder, tuning))
    assert s5_argv[s5_argv.index("--numworkers") + 1] == "4"
    assert s5_argv[s5_argv.index("--concurrency") + 1] == "3" and s5_argv[s5_argv.index("--part-size") + 1] == "16"
    assert s5_argv[-2] == f"{folder}/*"
    rc_argv, rc_env = RcloneTool(venv).command(_job(tmp_path, folder, tuning))
    assert rc_argv[1] == "copy"
    assert rc_argv[rc_argv.index("--transfers") + 1] == "4" and rc_argv[rc_argv.index("--multi-thread-streams") + 1] == "3"
    assert rc_env["RCLONE_CONFIG_BENCH_CHUNK_SIZE"] == "16Mi" and rc_env["RCLONE_CONFIG_BENCH_UPLOAD_CONCURRENCY"] == "3"
    chunkd_argv, chunkd_env = ChunkdTool().command(_job(tmp_path, folder, tuning))
    assert chunkd_argv[-2:] == ["upload", str(folder)]
    assert (chunkd_env["CHUNKD_FILE_CONCURRENCY"], chunkd_env["CHUNKD_PART_CONCURRENCY"]) == ("4", "3")
    assert chunkd_env["CHUNKD_PART_SIZE"] == str(16 * MiB) and chunkd_env["CHUNKD_DEDUP"] == "off"
    defaults_env = ChunkdTool(defaults=True).command(_job(tmp_path, folder, tuning))[1]
    assert "CHUNKD_FILE_CONCURRENCY" not in defaults_env and "CHUNKD_PART_SIZE" not in defaults_env


def test_no_secret_is_passed_on_a_command_line(tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    venv = PeersVenv(tmp_path / "venv")
    for tool in (AwsCliTool(venv), S5cmdTool(venv), RcloneTool(venv), ChunkdTool(), CurlPut()):
        argv, _ = tool.command(_job(tmp_path, source, Tuning(1, 4)))
        assert not any(SECRET in arg for arg in argv), tool.name


def test_quick_runs_moto_only_where_it_is_cheap_and_server_choice_overrides() -> None:
    assert plan(parse_args(["--quick"])) == {
        "rclone": ["throughput", "memory", "resume", "growing", "small_files", "ceiling"],
        "moto": ["throughput", "ceiling"],
    }
    assert plan(parse_args(["--scenario", "resume", "small_files", "throughput"])) == {
        "rclone": ["throughput", "resume", "small_files"], "moto": ["throughput"]}
    assert plan(parse_args(["--server", "moto", "--scenario", "memory"])) == {"moto": ["memory"]}


def test_the_old_upload_compare_command_is_the_throughput_scenario_on_one_file() -> None:
    from bench.upload_compare import translate

    assert translate([]) == ["--scenario", "throughput", "--throughput-files", "1", "--throughput-size", "1GiB",
                             "--server", "both"]
    quick = translate(["--quick", "--servers", "rclone", "--chunkd-env", "CHUNKD_PART_SIZE=16MiB"])
    assert quick[5:8] == ["64MiB", "--server", "rclone"]
    assert "--quick" in quick and quick[-2:] == ["--chunkd-env", "CHUNKD_PART_SIZE=16MiB"]
    args = parse_args(translate(["--size", "2GiB", "--repeats", "3"]))
    assert (args.throughput_files, args.throughput_size, args.repeats) == (1, 2 * 1024**3, 3)


def test_markdown_says_when_the_chunkd_sources_changed_during_the_run() -> None:
    same = {"sha256": "aaaa", "newest_file": "t0"}
    doc = {"host": {"chunkd_source": same}, "chunkd_source_at_end": dict(same)}
    assert "changed while the bench ran" not in report.render_markdown(doc, [])
    doc["chunkd_source_at_end"] = {"sha256": "bbbb", "newest_file": "t1"}
    assert "changed while the bench ran** (now bbbb" in report.render_markdown(doc, [])


def test_all_runs_every_chosen_scenario_on_each_server_and_quick_never_starts_rgw() -> None:
    assert plan(parse_args(["--server", "all", "--scenario", "throughput", "resume"])) == {
        "rclone": ["throughput", "resume"], "moto": ["throughput", "resume"], "rgw": ["throughput", "resume"]}
    assert plan(parse_args(["--server", "rgw", "--scenario", "memory"])) == {"rgw": ["memory"]}
    assert "rgw" not in plan(parse_args(["--quick"]))


def test_servers_table_puts_chunkd_ratio_per_server_side_by_side() -> None:
    results = [
        throughput("rclone serve s3", chunkd=[90.0], aws=[100.0], s5cmd=[80.0]),
        throughput("Ceph RGW", chunkd=[60.0], aws=[40.0], s5cmd=[50.0]),
    ]
    assert report.servers_table(results[:1]) is None  # one server: the scenario's own table says it all
    table = report.servers_table(results)
    assert table is not None
    assert table.splitlines()[0] == "| scenario | rclone serve s3 | Ceph RGW |"
    assert table.splitlines()[2] == "| 1. Throughput (MB/s) | 90.0 = 0.90× aws s3 cp | 60.0 = 1.20× s5cmd cp |"
    assert "## chunkd on each server" in report.render_markdown({}, results)
