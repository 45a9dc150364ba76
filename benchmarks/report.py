"""Summary tables for BENCHMARKS.md from the JSON files ``bench.py --json`` writes.

    python benchmarks/report.py pg.json sqlite.json
"""

from __future__ import annotations

import json
import sys

from bench import label, table


def summary(records: list[dict]) -> str:
    lines = [
        "| events/day | ETL s | ETL events/s | ETL peak RSS MB | heatmaps (3 levels) s | reference s "
        "| heatmaps vs reference | heatmaps / floor_read | no-Dagster / floor_read | heatmaps peak RSS MB | reference peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in records:
        p = rec["phases"]
        etl, heat, bare, floor, ref = (p[k] for k in ("etl", "heatmaps", "heatmaps_no_dagster", "floor_read", "reference"))
        extrapolated = " (extrapolated)" if ref.get("extrapolated_from") else ""
        ref_rss = f"{ref['peak_rss_mb']:.0f}" if ref.get("peak_rss_mb") else "-"
        lines.append(
            f"| {label(rec['events'])} | {etl['seconds']:.2f} | {rec['events'] / etl['seconds']:,.0f} | {etl['peak_rss_mb']:.0f} "
            f"| {heat['seconds']:.3f} | {ref['seconds']:.1f}{extrapolated} | **{ref['seconds'] / heat['seconds']:.1f}x** "
            f"| {heat['seconds'] / floor['seconds']:.2f}x | {bare['seconds'] / floor['seconds']:.2f}x "
            f"| {heat['peak_rss_mb']:.0f} | {ref_rss} |"
        )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    everything = []
    for path in paths:
        data = json.load(open(path))
        records = data["records"] if isinstance(data, dict) else data
        everything.extend(records)
        print(f"### {records[0]['database']}\n")
        print(summary(records) + "\n")
    print("### Every phase\n")
    print(table(everything))


if __name__ == "__main__":
    main(sys.argv[1:])
