"""Draw a results JSON as one PNG: a panel per scenario, a bar per tool and server (median, with
the min–max range as an error bar), the server's ceiling as a dashed line on the throughput panel.

    <peers venv>/bin/python bench/chart.py RESULTS.json OUT.png

Runs as a plain script in the peers' venv, where matplotlib is: it imports nothing from the
project.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SERVER_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]


def panels(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for scenario in doc["scenarios"]:
        if scenario["name"] == "ceiling":
            continue  # drawn as a line on the throughput panel
        grouped.setdefault(scenario["name"], []).append(scenario)
    return grouped


def ceilings(doc: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    for scenario in doc["scenarios"]:
        if scenario["name"] not in ("ceiling", "throughput"):
            continue
        for row in scenario["rows"]:
            summary = row["summary"].get("mb_per_s")
            if summary:
                found[scenario["server"]] = max(found.get(scenario["server"], 0.0), summary["median"])
    return found


def draw(doc: dict[str, Any], out: Path) -> None:
    grouped = panels(doc)
    count = max(1, len(grouped))
    columns = 2 if count > 1 else 1
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.8 * rows), squeeze=False)
    tops = ceilings(doc)
    for axis, (name, scenarios) in zip(axes.flat, grouped.items(), strict=False):
        tools: list[str] = []
        for scenario in scenarios:
            tools += [row["tool"] for row in scenario["rows"] if row["tool"] not in tools]
        width = 0.8 / len(scenarios)
        for index, scenario in enumerate(scenarios):
            metric = scenario["primary"]
            colour = SERVER_COLOURS[index % len(SERVER_COLOURS)]
            label: str | None = scenario["server"]
            for position, tool in enumerate(tools):
                row = next((r for r in scenario["rows"] if r["tool"] == tool), None)
                summary = row["summary"].get(metric) if row else None
                if not summary:
                    continue
                x = position + (index - (len(scenarios) - 1) / 2) * width
                error = [[summary["median"] - summary["low"]], [summary["high"] - summary["median"]]]
                axis.bar(x, summary["median"], width, yerr=error, capsize=3, color=colour,
                         edgecolor="black" if not row["peer"] else colour, linewidth=1.5 if not row["peer"] else 0,
                         label=label)
                label = None  # one legend entry per server
            if name == "throughput" and scenario["server"] in tops:
                axis.axhline(tops[scenario["server"]], color=colour, linestyle="--", linewidth=1)
        first = scenarios[0]
        better = "higher" if first.get("higher_is_better") else "lower"
        axis.set_title(f"{first['title']}\n{first.get('primary_label', first['primary'])} ({better} is better)",
                       fontsize=10)
        axis.set_xticks(range(len(tools)))
        axis.set_xticklabels(tools, rotation=15, fontsize=8)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    figure.suptitle(f"chunkd vs peers, {doc.get('date', '')} (bars: median; whiskers: min–max; "
                    "dashed: server ceiling)", fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: chart.py RESULTS.json OUT.png", file=sys.stderr)
        return 2
    draw(json.loads(Path(argv[0]).read_text(encoding="utf-8")), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
