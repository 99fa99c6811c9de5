"""Tables and PNG plots for a TiKMiX run: the demo's report or a single :class:`tikmix.Controller` history.

Two JSON layouts are understood:

* a **demo report** (``"format": "tikmix.demo/1"``): several methods trained on the same budget, each with
  its target-loss curve, final losses, timings and -- for the TiKMiX methods -- the controller history;
* a **controller history** (``"format": "tikmix.history/1"``), as written by ``Controller(history_path=...)``
  and ``tikmix run``: one run's stages (S, weights, realised tokens, solver report, timings) and the
  metrics it logged.

:func:`render` writes ``mixture.png`` (mixture per stage), ``loss_curves.png`` (target loss per method or
per target) and ``influence.png`` (the S matrix per stage) into a folder and returns the text table;
``tikmix report FILE.json`` calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._extras import require

__all__ = ["load", "format_tables", "plot_all", "render"]

DEMO_FORMAT = "tikmix.demo/1"
HISTORY_FORMAT = "tikmix.history/1"


def load(path: str | Path) -> dict[str, Any]:
    """Read a demo report or controller history; raises ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such report or history file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt not in (DEMO_FORMAT, HISTORY_FORMAT):
        raise ValueError(f"{path}: unknown format {fmt!r}; expected {DEMO_FORMAT!r} or {HISTORY_FORMAT!r}")
    return data


# ---------------------------------------------------------------------------------------------- tables
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    if title:
        lines.append(title)
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _stage_weights(history: Mapping[str, Any]) -> list[tuple[str, list[float]]]:
    """(label, weights) for every stage of a controller history, first stage = the initial mixture."""
    steps = [0] + [int(s["applies_from_step"]) for s in history.get("stages", [])]
    ws = [list(history.get("initial_weights", []))] + [list(s["weights"]) for s in history.get("stages", [])]
    return [(f"stage {i + 1} (from step {st})", w) for i, (st, w) in enumerate(zip(steps, ws))]


def _timing_totals(history: Mapping[str, Any]) -> tuple[float, float, float]:
    train = sum(s["timing"]["train_s"] for s in history.get("stages", []))
    final = history.get("final") or {}
    train += float(final.get("train_s_last_stage", 0.0) or 0.0)
    infl = sum(s["timing"]["influence_s"] for s in history.get("stages", []))
    solve = sum(s["timing"]["solve_s"] for s in history.get("stages", []))
    return train, infl, solve


def format_tables(report: Mapping[str, Any]) -> str:
    """The text tables for a demo report or a controller history."""
    if report.get("format") == DEMO_FORMAT:
        return _demo_tables(report)
    return _history_tables(report)


def _demo_tables(report: Mapping[str, Any]) -> str:
    targets = list(report["targets"])
    domains = list(report["domains"])
    methods = report["methods"]
    base_name = report.get("baseline", "uniform")
    base = methods.get(base_name)
    parts = []
    rows = []
    for name, m in methods.items():
        final = m["final"]
        rows.append([name] + [final[t] for t in targets] + [m["mean"]])
    parts.append(_table(["method"] + [f"{t} loss" for t in targets] + ["mean"], rows,
                        "Target loss at the end of training (held-out test sets; lower is better)"))
    if base is not None:
        rows = []
        for name, m in methods.items():
            if name == base_name:
                continue
            d = [base["final"][t] - m["final"][t] for t in targets]
            dm = base["mean"] - m["mean"]
            rows.append([name] + [f"{x:+.4f}" for x in d] + [f"{dm:+.4f} ({100 * dm / base['mean']:+.1f}%)"])
        if rows:
            parts.append(_table(["method"] + targets + ["mean"], rows,
                                f"Improvement over {base_name} (baseline loss - method loss; > 0 = better)"))
    for name, m in methods.items():
        hist = m.get("history")
        if not hist:
            continue
        rows = [[label] + w for label, w in _stage_weights(hist)]
        parts.append(_table(["mixture"] + domains, rows, f"{name}: domain weights per stage"))
    rows = []
    for name, m in methods.items():
        t = m["timing"]
        overhead = t.get("controller_s", t["influence_s"] + t["solve_s"])
        share = overhead / t["train_s"] if t["train_s"] > 0 else float("nan")
        rows.append([name, t["train_s"], t["influence_s"], t["solve_s"], overhead, t["eval_s"], f"{100 * share:.1f}%"])
    parts.append(_table(["method", "train s", "influence s", "solve s", "controller s", "eval s", "controller/train"],
                        rows, "Time (wall clock; controller = sampling + influence + solving at the boundaries)"))
    return "\n\n".join(parts)


def _history_tables(history: Mapping[str, Any]) -> str:
    domains = list(history["domains"])
    targets = list(history["targets"])
    parts = []
    rows = [[label] + w for label, w in _stage_weights(history)]
    parts.append(_table(["mixture"] + domains, rows, f"{history.get('solver', 'tikmix')}: domain weights per stage"))
    for s in history.get("stages", []):
        rows = [[t] + list(r) for t, r in zip(targets, s["S"])]
        parts.append(_table(["S (target \\ domain)"] + domains, rows,
                            f"Group influence at step {s['step']} (larger = more helpful)"))
    final = history.get("final") or {}
    tot = final.get("realised_total")
    if tot and tot.get("tokens"):
        parts.append(_table(["realised"] + domains, [["tokens"] + tot["tokens"], ["samples"] + tot["samples"]],
                            "Realised totals"))
    train, infl, solve = _timing_totals(history)
    if train > 0:
        parts.append(f"Time: train {train:.1f} s, influence {infl:.1f} s, solve {solve:.1f} s "
                     f"({100 * (infl + solve) / train:.1f}% of training)")
    metrics = history.get("metrics") or []
    if metrics:
        keys = [k for k in metrics[-1] if k != "step"]
        parts.append(_table(["step"] + keys, [[metrics[-1]["step"]] + [metrics[-1][k] for k in keys]],
                            "Last logged metrics"))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    matplotlib = require("matplotlib", "plots", "plotting")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _mixture_plot(ax: Any, history: Mapping[str, Any], domains: Sequence[str], title: str) -> None:
    stages = _stage_weights(history)
    W = np.array([w for _, w in stages], dtype=float)
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    cmap = _plt().get_cmap("tab10")
    for j, d in enumerate(domains):
        ax.bar(x, W[:, j], bottom=bottom, color=cmap(j % 10), label=d, width=0.7)
        bottom += W[:, j]
    ax.set_xticks(x, [f"S{i + 1}" for i in x])
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_title(title)


def plot_all(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the PNG plots for a demo report or a controller history into ``out_dir``; returns their paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    demo = report.get("format") == DEMO_FORMAT
    domains = list(report["domains"])
    targets = list(report["targets"])
    runs: dict[str, Mapping[str, Any]]
    if demo:
        runs = {n: m["history"] for n, m in report["methods"].items() if m.get("history")}
    else:
        runs = {str(report.get("solver", "run")): report}

    # 1. mixture per stage
    if runs:
        fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1.6, 3.6), squeeze=False)
        for ax, (name, hist) in zip(axes[0], runs.items()):
            _mixture_plot(ax, hist, domains, name)
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
        fig.suptitle("Domain mixture per stage")
        fig.tight_layout()
        paths.append(out / "mixture.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    # 2. loss curves (and, for a demo report, each method's improvement over the baseline)
    curves: dict[str, list[Mapping[str, float]]] = {}
    if demo:
        curves = {n: m.get("curve", []) for n, m in report["methods"].items()}
    elif report.get("metrics"):
        curves = {str(report.get("solver", "run")): report["metrics"]}
    curves = {n: c for n, c in curves.items() if c}
    if curves:
        panels = ["mean"] + targets
        baseline = report.get("baseline") if demo else None
        with_delta = baseline in curves and len(curves) > 1
        nrows = 2 if with_delta else 1
        fig, axes = plt.subplots(nrows, len(panels), figsize=(3.6 * len(panels), 3.1 * nrows), squeeze=False)
        styles = ["-", "--", ":", "-."]
        boundaries = next(iter(runs.values()), {}).get("stage_boundaries", {}).get("steps", []) if runs else []

        def series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
            keys = [f"target/{t}" for t in targets] if key == "mean" else [f"target/{key}"]
            pts = [(r["step"], float(np.mean([r[k] for k in keys]))) for r in rows if all(k in r for k in keys)]
            return [p[0] for p in pts], [p[1] for p in pts]

        for col, key in enumerate(panels):
            ax = axes[0][col]
            for k, (name, rows) in enumerate(curves.items()):
                xs, ys = series(rows, key)
                ax.plot(xs, ys, styles[k % len(styles)], label=name, lw=1.6)
            ax.set_title("mean target loss" if key == "mean" else f"target: {key}")
            if with_delta:
                ax2 = axes[1][col]
                bx, by = series(curves[baseline], key)
                base_at = dict(zip(bx, by))
                for k, (name, rows) in enumerate(curves.items()):
                    if name == baseline:
                        continue
                    xs, ys = series(rows, key)
                    pts = [(x, base_at[x] - y) for x, y in zip(xs, ys) if x in base_at]
                    ax2.plot([p[0] for p in pts], [p[1] for p in pts], styles[k % len(styles)], label=name, lw=1.6)
                ax2.axhline(0.0, color="0.3", lw=0.8)
                ax2.set_xlabel("step")
                ax2.set_title(f"{baseline} loss - method loss", fontsize=9)
            else:
                ax.set_xlabel("step")
            for ax_ in (axes[r][col] for r in range(nrows)):
                for b_ in boundaries:
                    ax_.axvline(b_, color="0.75", lw=0.8, ls="--")
                ax_.grid(alpha=0.3)
        axes[0][0].set_ylabel("held-out loss")
        axes[0][0].legend(fontsize=8)
        if with_delta:
            axes[1][0].set_ylabel("improvement (> 0 = better)")
        fig.tight_layout()
        paths.append(out / "loss_curves.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    # 3. S matrix per stage
    if runs:
        name, hist = next(iter(runs.items()))
        stages = hist.get("stages", [])
        if stages:
            fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages) + 1.0, 0.45 * len(targets) + 2.6),
                                     squeeze=False)
            for ax, s in zip(axes[0], stages):
                S = np.asarray(s["S"], dtype=float)
                scale = np.abs(S).max(axis=1, keepdims=True)
                Sn = np.divide(S, scale, out=np.zeros_like(S), where=scale > 0)
                im = ax.imshow(Sn, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
                ax.set_xticks(range(len(domains)), domains, rotation=60, ha="right", fontsize=8)
                if ax is axes[0][0]:
                    ax.set_yticks(range(len(targets)), targets, fontsize=8)
                else:
                    ax.set_yticks([])
                ax.set_title(f"step {s['step']}", fontsize=9)
                for i in range(Sn.shape[0]):
                    for j in range(Sn.shape[1]):
                        ax.text(j, i, f"{Sn[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(Sn[i, j]) > 0.6 else "black")
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="S / max|S| per target")
            fig.suptitle(f"Group influence S per stage ({name}; rows scaled by their largest |S|)")
            paths.append(out / "influence.png")
            fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
            plt.close(fig)
    return paths


def render(path_or_report: str | Path | Mapping[str, Any], out_dir: str | Path | None = None) -> tuple[str, list[Path]]:
    """Load (if a path), write the plots next to the file (or into ``out_dir``) and return (tables, pngs)."""
    if isinstance(path_or_report, Mapping):
        report = dict(path_or_report)
        if out_dir is None:
            raise ValueError("out_dir is required when a report dict is given")
    else:
        report = load(path_or_report)
        if out_dir is None:
            out_dir = Path(path_or_report).parent
    return format_tables(report), plot_all(report, out_dir)
