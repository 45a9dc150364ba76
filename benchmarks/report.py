"""Summary tables for BENCHMARKS.md from the JSON files ``bench.py --json`` writes.

    python benchmarks/report.py pg.json sqlite.json
"""

from __future__ import annotations

import json
import sys

from bench import label, table


def _cpu(phase: dict) -> str:
    db = phase.get("db_cpu_seconds")
    return f"{phase.get('cpu_seconds', 0):.1f} / {db:.1f}" if db is not None else f"{phase.get('cpu_seconds', 0):.1f} / -"


def summary(records: list[dict]) -> str:
    lines = [
        "| events/day | ETL s | ETL events/s | ETL CPU s ours / PG | ETL peak RSS MB | heatmaps (3 levels, checks) s "
        "| reference s | heatmaps vs reference | heatmaps peak RSS MB | reference peak RSS MB | tick ETL s | tick heatmaps s | load before ETL |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for rec in records:
        p = rec["phases"]
        etl, heat = p["etl"], p["heatmaps"]
        ref = p.get("reference")
        tick_etl, tick_heat = p.get("tick_etl"), p.get("tick_heatmaps")
        ref_s = f"{ref['seconds']:.1f}{' (extrapolated)' if ref.get('extrapolated_from') else ''}" if ref else "-"
        ratio = f"**{ref['seconds'] / heat['seconds']:.1f}x**" if ref else "-"
        ref_rss = f"{ref['peak_rss_mb']:.0f}" if ref and ref.get("peak_rss_mb") else "-"
        lines.append(
            f"| {label(rec['events'])} | {etl['seconds']:.2f} | {rec['events'] / etl['seconds']:,.0f} | {_cpu(etl)} "
            f"| {etl['peak_rss_mb']:.0f} | {heat['seconds']:.3f} | {ref_s} | {ratio} | {heat['peak_rss_mb']:.0f} | {ref_rss} "
            f"| {tick_etl['seconds']:.3f} | {tick_heat['seconds']:.3f} | {rec.get('load_before_etl', '?')} |"
            if tick_etl and tick_heat else
            f"| {label(rec['events'])} | {etl['seconds']:.2f} | {rec['events'] / etl['seconds']:,.0f} | {_cpu(etl)} "
            f"| {etl['peak_rss_mb']:.0f} | {heat['seconds']:.3f} | {ref_s} | {ratio} | {heat['peak_rss_mb']:.0f} | {ref_rss} "
            f"| - | - | {rec.get('load_before_etl', '?')} |"
        )
    return "\n".join(lines)


def splits(records: list[dict]) -> str:
    out = []
    for rec in records:
        out.append(f"{rec['database']} {label(rec['events'])}, ETL {rec['phases']['etl']['seconds']:.2f} s:")
        out.extend(f"  {seconds:7.3f}  {kind}" for kind, seconds in rec.get("etl_split", {}).items())
    return "\n".join(out)


def main(paths: list[str]) -> None:
    everything = []
    for path in paths:
        data = json.load(open(path))
        records = data["records"] if isinstance(data, dict) else data
        everything.extend(records)
        print(f"### {records[0]['database']} ({path})\n")
        print(summary(records) + "\n")
    print("### Every phase\n")
    print(table(everything))
    print("\n### Where the ETL's time goes\n\n```")
    print(splits(everything))
    print("```")


if __name__ == "__main__":
    main(sys.argv[1:])
