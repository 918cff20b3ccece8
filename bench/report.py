"""What a benchmark run found, as data: summaries (median, min–max), ratios to the best peer,
verdicts against the targets, and the Markdown/JSON that carry them. Pure: no process, no server.

The PNG chart is drawn from the JSON by `bench/chart.py` in the peers' venv (matplotlib lives
there, not in the project's venv).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.units import MiB

CHUNKD = "chunkd"

GROWING_SLACK_S = 0.5  # the target: last write → manifest at most this much past idle_seconds


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    higher_is_better: bool
    fmt: str = "{:.1f}"


METRICS: dict[str, Metric] = {
    "mb_per_s": Metric("MB/s", True),
    "wall_s": Metric("wall s", False, "{:.2f}"),
    "peak_rss_mb": Metric("peak RSS MB", False, "{:.0f}"),
    "peak_rss_small_mb": Metric("peak RSS MB (small file)", False, "{:.0f}"),
    "cpu_s": Metric("tool CPU s", False),
    "server_cpu_s": Metric("server CPU s", False),
    "sent_ratio": Metric("sent / file size", False, "{:.3f}"),
    "waste_mib": Metric("re-sent MiB", False, "{:.0f}"),
    "kill_at": Metric("killed at", False, "{:.0%}"),
    "lag_median_parts": Metric("lag median (parts)", False, "{:.2f}"),
    "lag_max_parts": Metric("lag max (parts)", False, "{:.2f}"),
    "after_last_write_s": Metric("last write → object s", False, "{:.2f}"),
    "beyond_idle_s": Metric("… minus idle_seconds", False, "{:.2f}"),
    "files_per_s": Metric("files/s", True),
}


@dataclasses.dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def text(self, fmt: str = "{:.1f}") -> str:
        middle = fmt.format(self.median)
        if self.n < 2 or math.isclose(self.low, self.high):
            return middle
        return f"{middle} ({fmt.format(self.low)}–{fmt.format(self.high)})"


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Median and range of the measured values; None (a failed run) is left out."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return None
    return Summary(statistics.median(kept), min(kept), max(kept), len(kept))


@dataclasses.dataclass
class Row:
    """One tool in one scenario on one server: a list of values per metric, one per repeat."""

    tool: str
    peer: bool
    samples: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    note: str = ""

    def add(self, **values: float | None) -> None:
        for name, value in values.items():
            self.samples.setdefault(name, []).append(value)

    def summary(self, metric: str) -> Summary | None:
        return summarize(self.samples.get(metric, []))

    def median(self, metric: str) -> float | None:
        found = self.summary(metric)
        return None if found is None else found.median

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclasses.dataclass
class ScenarioResult:
    name: str  # throughput, memory, resume, growing, small_files, ceiling
    title: str
    server: str
    primary: str  # the metric the ratio and the chart are about
    columns: list[str]  # metrics shown in the table, in order
    rows: list[Row] = dataclasses.field(default_factory=list)
    setup: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    ratio_to: str | None = None  # a named peer instead of the best one (small files: s5cmd)

    def row(self, tool: str) -> Row | None:
        return next((r for r in self.rows if r.tool == tool), None)

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.rows)


def best_peer(result: ScenarioResult, metric: str | None = None) -> Row | None:
    """The peer with the best median (highest or lowest, as the metric wants); `ratio_to` if set."""
    metric = metric or result.primary
    candidates = [r for r in result.rows if r.peer and r.median(metric) is not None]
    if result.ratio_to is not None:
        candidates = [r for r in candidates if r.tool.startswith(result.ratio_to)]
    if not candidates:
        return None
    better = max if METRICS[metric].higher_is_better else min
    return better(candidates, key=lambda r: r.median(metric))  # type: ignore[arg-type, return-value]


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def ratio_to_best(result: ScenarioResult, row: Row, metric: str | None = None) -> float | None:
    metric = metric or result.primary
    reference = best_peer(result, metric)
    return None if reference is None else ratio(row.median(metric), reference.median(metric))


def ceiling(results: Sequence[ScenarioResult], server: str) -> float | None:
    """The server's ingest ceiling: the best of one `curl -T` PUT and any tool's throughput."""
    found = [
        row.median("mb_per_s")
        for result in results
        if result.server == server and result.name in ("ceiling", "throughput")
        for row in result.rows
    ]
    kept = [v for v in found if v is not None]
    return max(kept) if kept else None


# -- targets ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def mark(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def _chunkd_row(result: ScenarioResult) -> Row | None:
    return result.row(CHUNKD)


def verdicts(results: Sequence[ScenarioResult]) -> list[Verdict]:
    """Where chunkd stands against each target, per server for the ratios."""
    found: list[Verdict] = []
    by_name: dict[str, list[ScenarioResult]] = {}
    for result in results:
        by_name.setdefault(result.name, []).append(result)
    for result in by_name.get("throughput", []):
        row = _chunkd_row(result)
        value = None if row is None else ratio_to_best(result, row)
        peer = best_peer(result)
        found.append(Verdict(
            f"Throughput ≥ 1.0 × best peer ({result.server})",
            _ratio_text(value, peer.tool if peer else None),
            None if value is None else value >= 1.0,
        ))
    for result in by_name.get("memory", []):
        row = result.row(CHUNKD + " (defaults)") or _chunkd_row(result)
        peak = None if row is None else summarize(row.samples.get("peak_rss_mb", []))
        file_size = result.setup.get("file_size_text", "the large file")
        found.append(Verdict(
            f"Peak RSS ≤ 150 MB for {file_size}, default settings ({result.server})",
            "–" if peak is None else f"{peak.high:.0f} MB",
            None if peak is None else peak.high <= 150,
        ))
    for result in by_name.get("resume", []):
        row = _chunkd_row(result)
        allowed = result.setup.get("allowed_waste_bytes")
        waste = None if row is None else summarize(row.samples.get("waste_mib", []))
        limit_mib = None if allowed is None else allowed / MiB
        found.append(Verdict(
            f"Resume waste ≤ (parts in flight + 1) × part size = {_num(limit_mib, '{:.0f}')} MiB ({result.server})",
            "–" if waste is None else f"{waste.high:.1f} MiB re-sent (worst of {waste.n})",
            None if waste is None or limit_mib is None else waste.high <= limit_mib,
        ))
    for result in by_name.get("growing", []):
        row = _chunkd_row(result)
        lag = None if row is None else summarize(row.samples.get("lag_max_parts", []))
        found.append(Verdict(
            f"Growing file: lag ≤ 1 part, worst sample ({result.server})",
            "–" if lag is None else f"{lag.high:.2f} parts (median of samples {_num(row.median('lag_median_parts'), '{:.2f}') if row else '–'})",
            None if lag is None else lag.high <= 1.0,
        ))
        beyond = None if row is None else summarize(row.samples.get("beyond_idle_s", []))
        found.append(Verdict(
            f"Growing file: last write → manifest ≤ idle_seconds + {GROWING_SLACK_S:g} s ({result.server})",
            "–" if beyond is None else f"idle_seconds + {beyond.high:.2f} s (worst of {beyond.n})",
            None if beyond is None else beyond.high <= GROWING_SLACK_S,
        ))
    for result in by_name.get("small_files", []):
        row = _chunkd_row(result)
        value = None if row is None else ratio_to_best(result, row)
        found.append(Verdict(
            f"Small files ≥ 0.5 × s5cmd's files/s ({result.server})",
            _ratio_text(value, "s5cmd cp"),
            None if value is None else value >= 0.5,
        ))
    return found


def _ratio_text(value: float | None, peer: str | None) -> str:
    return "–" if value is None else f"{value:.2f} × {peer}"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


# -- Markdown ---------------------------------------------------------------------------------


def scenario_table(result: ScenarioResult, results: Sequence[ScenarioResult] = ()) -> str:
    """One scenario as a Markdown table: median (min–max) per metric, ratio to the best peer."""
    reference = best_peer(result)
    ratio_label = f"× {result.ratio_to}" if result.ratio_to else "× best peer"
    top = ceiling(results, result.server) if result.name == "throughput" else None
    header = ["tool", *(METRICS[m].label for m in result.columns), ratio_label]
    if top is not None:
        header.append("of ceiling")
    header.append("status")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for row in result.rows:
        cells = [row.tool + (f" ({row.note})" if row.note else "")]
        for metric in result.columns:
            found = row.summary(metric)
            cells.append("–" if found is None else found.text(METRICS[metric].fmt))
        value = ratio(row.median(result.primary), reference.median(result.primary)) if reference else None
        cells.append("–" if value is None else f"{value:.2f}×")
        if top is not None:
            mbps = row.median("mb_per_s")
            cells.append("–" if mbps is None else f"{mbps / top:.0%}")
        cells.append("ok" if row.ok else "FAILED: " + _first_line(row.failures[0]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].replace("|", "/")[:120]


def verdict_table(found: Sequence[Verdict]) -> str:
    lines = ["| target | chunkd | verdict |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.measured} | {v.mark} |" for v in found]
    return "\n".join(lines)


def servers_table(results: Sequence[ScenarioResult]) -> str | None:
    """chunkd (or the scenario's own tool, curl for the ceiling) side by side on every server: its
    median and its ratio to the best peer on that server. None when only one server ran."""
    servers = list(dict.fromkeys(result.server for result in results))
    if len(servers) < 2:
        return None
    lines = ["| scenario | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    titles = list(dict.fromkeys(result.title for result in results))
    for title in titles:
        cells = []
        for server in servers:
            result = next((r for r in results if r.title == title and r.server == server), None)
            cells.append("–" if result is None else _server_cell(result))
        metric = next(r.primary for r in results if r.title == title)
        lines.append(f"| {title} ({METRICS[metric].label}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _server_cell(result: ScenarioResult) -> str:
    row = _chunkd_row(result) or next((r for r in result.rows if not r.peer), None)
    value = None if row is None else row.median(result.primary)
    if row is None or value is None:
        return "–" if row is None or row.ok else "FAILED"
    text = METRICS[result.primary].fmt.format(value)
    if row.tool != CHUNKD:
        return f"{text} ({row.tool})"
    found, peer = ratio_to_best(result, row), best_peer(result)
    return text if found is None or peer is None else f"{text} = {found:.2f}× {peer.tool}"


def render_markdown(doc: dict[str, Any], results: Sequence[ScenarioResult], chart: str | None = None) -> str:
    host = doc.get("host", {})
    out = [
        f"# chunkd vs aws s3 cp, s5cmd, rclone — {doc.get('date', '')}",
        "",
        (f"{host.get('cpus', '?')} CPUs, load average {host.get('load_average_at_start', '?')} at start and "
        f"{doc.get('load_average_at_end', '?')} at end (the machine is shared; timings move with it). "
        f"Repeats: {doc.get('repeats_text', '?')}; median with (min–max). MB = 10^6 bytes."),
        "",
    ]
    if doc.get("complete") is False:
        out += ["**Partial results: the run was stopped before its last scenario.**", ""]
    source, at_end = host.get("chunkd_source"), doc.get("chunkd_source_at_end")
    if source:
        out += [f"chunkd sources: {source.get('sha256')} (newest file {source.get('newest_file')}).", ""]
        if at_end and at_end != source:
            out += [(f"**The chunkd sources changed while the bench ran** (now {at_end.get('sha256')}, newest file "
                    f"{at_end.get('newest_file')}): each chunkd run measured the code of its moment."), ""]
    if chart:
        out += [f"![results]({chart})", ""]
    out += ["## Targets", "", verdict_table(verdicts(results)), ""]
    side_by_side = servers_table(results)
    if side_by_side:
        out += ["## chunkd on each server (× the best peer on the same server and files)", "", side_by_side, ""]
    for result in results:
        out += [f"## {result.title} — {result.server}", ""]
        out += [f"- {note}" for note in result.notes]
        if result.notes:
            out.append("")
        out += [scenario_table(result, results), ""]
    tools = doc.get("tools", {})
    if tools:
        out += ["## Tools and settings", ""]
        for name, info in tools.items():
            out.append(f"- **{name}** ({info.get('version', '?')})")
            for scenario, settings in info.get("settings", {}).items():
                shown = ", ".join(f"`{k}={v}`" for k, v in settings.items())
                out.append(f"  - {scenario}: {shown}")
        out.append("")
    return "\n".join(out)


# -- JSON -------------------------------------------------------------------------------------


def result_to_json(result: ScenarioResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    for row, raw in zip(result.rows, data["rows"], strict=True):
        raw["summary"] = {m: dataclasses.asdict(s) for m in row.samples if (s := row.summary(m)) is not None}
        raw["ratio_to_best_peer"] = ratio_to_best(result, row)
    best = best_peer(result)
    data["best_peer"] = None if best is None else best.tool
    data["higher_is_better"] = METRICS[result.primary].higher_is_better
    data["primary_label"] = METRICS[result.primary].label
    return data


def result_from_json(data: dict[str, Any]) -> ScenarioResult:
    rows = [Row(r["tool"], r["peer"], r["samples"], r["failures"], r.get("note", "")) for r in data["rows"]]
    fields = {f.name for f in dataclasses.fields(ScenarioResult)} - {"rows"}
    return ScenarioResult(rows=rows, **{k: v for k, v in data.items() if k in fields})


def results_stem(directory: Path, today: datetime.date | None = None) -> Path:
    """`<dir>/<date>`, or `<date>-2`, `-3`… : a later run of the same day never overwrites one."""
    stem = (today or datetime.date.today()).isoformat()
    path, n = directory / stem, 1
    while path.with_suffix(".json").exists():
        n += 1
        path = directory / f"{stem}-{n}"
    return path


def write_json(path: Path, doc: dict[str, Any], results: Sequence[ScenarioResult]) -> None:
    payload = {**doc, "scenarios": [result_to_json(r) for r in results],
               "targets": [{**dataclasses.asdict(v), "verdict": v.mark} for v in verdicts(results)]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
