"""Markdown tables from a pytest-benchmark JSON file: one table per comparison group, each case as a ratio to
its group's baseline (the minimum over rounds of both; the median beside it). Groups whose benchmarks record
``extra_info["mean_test_loss"]`` (mixing quality) get that column too. A benchmark that times its work
itself (in worker processes) puts that time in ``extra_info["inner_s"]``; it is then the time reported.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/tables.py bench.json                 # prints the tables
    python benchmarks/tables.py bench.json --out tables.md
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections import defaultdict
from typing import Any


def _seconds(v: float) -> str:
    if v >= 1.0:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} µs"


def _time(bench: dict[str, Any]) -> tuple[float, str]:
    """(seconds used for ratios, the time cell): the worker-measured time if any, else min (median) over rounds."""
    inner = bench.get("extra_info", {}).get("inner_s")
    if inner is not None:
        return float(inner), f"{_seconds(float(inner))} (in the workers)"
    s = bench["stats"]
    return s["min"], f"{_seconds(s['min'])} ({_seconds(s['median'])})"


def _label(bench: dict[str, Any]) -> str:
    info = bench.get("extra_info", {})
    for key in ("method", "phase", "backend", "setup"):
        if key in info:
            return str(info[key])
    return bench["name"]


def tables(report: dict[str, Any]) -> str:
    """The Markdown for one pytest-benchmark report (``--benchmark-json`` / ``--benchmark-autosave`` output)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in report.get("benchmarks", []):
        groups[bench.get("group") or bench["name"]].append(bench)
    if not groups:
        raise ValueError("the report holds no benchmarks (was the run made with --benchmark-disable?)")
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", "?"))
    out = [f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} CPUs, Python "
           f"{machine.get('python_version', '?')}; run {report.get('datetime', '?')}. Time: min (median) over rounds."]
    for group, benches in groups.items():
        baselines = [b for b in benches if b.get("extra_info", {}).get("role") == "baseline"]
        if len(baselines) > 1:
            raise ValueError(f"group {group!r} has {len(baselines)} baselines; expected at most one")
        base = _time(baselines[0])[0] if baselines else None
        base_name = _label(baselines[0]) if baselines else None
        out += ["", f"**{group}**", ""]
        extra = "mean_test_loss" in benches[0].get("extra_info", {})
        head = f"| case | time | rounds | vs {base_name or 'baseline'} |" + (" mean test loss |" if extra else "")
        out += [head, "|---|---|---|---|" + ("---|" if extra else "")]
        for b in benches:
            t, shown = _time(b)
            if b in baselines:
                ratio = "1.00× (baseline)"
            elif base:
                ratio = f"**{t / base:.2f}×**"
            else:
                ratio = "no baseline in this group"
            row = f"| {_label(b)} | {shown} | {b['stats']['rounds']} | {ratio} |"
            if extra:
                row += f" {b['extra_info'].get('mean_test_loss', float('nan')):.4f} |"
            out.append(row)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=pathlib.Path, help="a pytest-benchmark JSON file")
    ap.add_argument("--out", type=pathlib.Path, help="write the Markdown here instead of printing it")
    args = ap.parse_args(argv)
    text = tables(json.loads(args.json.read_text()))
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
