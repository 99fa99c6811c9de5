"""Tables and PNG plots for a TiKMiX run: the demo's report or a single :class:`tikmix.Controller` history.

Two JSON files are understood:

* a **demo report** (``"format": "tikmix.demo/1"``, written by ``tikmix demo``): the settings, the comparison
  against the baseline and an index of the run folders (``"runs": {method: folder}``, relative to the report);
  each folder is a ``tikmix run`` output (``history.json`` + ``eval.json``) and is read back with
  :func:`tikmix.compare.load_run`, the one reader of run folders;
* a **controller history** (``"format": "tikmix.history/2"``), as written by ``Controller(history_path=...)``
  and ``tikmix run``: one run's stages (S, weights, realised tokens, solver report, timings) and the
  metrics it logged.

:func:`render` writes ``mixture.png`` (mixture per stage), ``loss_curves.png`` (target loss per method or
per target), ``influence.png`` (the S matrix per stage) and, when the history has stage feedback, ``feedback.png``
(predicted against realised gain per target and stage) into a folder and returns the text table;
``tikmix report FILE.json`` calls it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._extras import pyplot
from .compare import CompareError, RunResult, improvement, load_run
from .formats import DEMO, HISTORY, HISTORY_READABLE

__all__ = ["load", "with_runs", "run_summary", "format_tables", "plot_all", "render", "improvement"]


def load(path: str | Path) -> dict[str, Any]:
    """Read a demo report (its run folders read back, :func:`with_runs`) or a controller history; raises
    ValueError for anything else. A folder stands for the ``report.json`` (``tikmix demo --out``) or the
    ``history.json`` (``tikmix run``'s ``out``) in it."""
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in ("report.json", "history.json") if (path / name).is_file()]
        if not inside:
            raise FileNotFoundError(f"{path} is a folder without a report.json (tikmix demo) or a history.json "
                                    "(tikmix run)")
        path = inside[0]
    if not path.is_file():
        raise FileNotFoundError(f"no such report or history file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != DEMO and fmt not in HISTORY_READABLE:
        raise ValueError(f"{path}: unknown format {fmt!r}; expected {DEMO!r} or {HISTORY!r}")
    return with_runs(data, path.parent) if fmt == DEMO else data


def with_runs(report: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """The demo report with every run folder of its ``"runs"`` index (paths relative to ``folder``) read back as
    ``report["methods"][name]``: final losses and their mean, the metrics curve, the history (None for a run
    without stage boundaries), the final mixture, the realised tokens and the time split."""
    runs = report.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"{report.get('format')} report: 'runs' must map each method to its run folder, got {runs!r}")
    methods = {}
    for name, rel in runs.items():
        try:
            methods[str(name)] = run_summary(load_run(Path(folder) / str(rel)))
        except CompareError as exc:
            raise ValueError(f"run {name!r} of the report: {exc}") from None
    return {**report, "methods": methods}


def run_summary(run: RunResult) -> dict[str, Any]:
    """What the demo's tables and plots show of one run (:func:`with_runs`)."""
    hist = run.history
    final = hist.get("final") or {}
    stages = hist.get("stages", [])
    train, infl, solve = _timing_totals(hist)
    controller, rehearsal = _controller_seconds(stages)
    eval_s = float(run.eval_s or 0.0)
    total = final.get("realised_total") or {}
    return {
        "final": run.final,
        "mean": run.mean,
        "curve": list(hist.get("metrics", [])),
        "history": hist if stages else None,
        "weights_final": final.get("weights"),
        "realised_tokens": total.get("tokens"),
        "timing": {
            # the controller's training time is the wall time between steps: evaluations included
            "train_s": max(train - eval_s, 0.0),
            "influence_s": infl,
            "solve_s": solve,
            "controller_s": controller,
            "rehearsal_s": rehearsal,
            "eval_s": eval_s,
        },
    }


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


def _seconds(value: float) -> str:
    """A duration with the precision that means something for wall-clock times: 0.42, 7.3, 118."""
    if not math.isfinite(value):
        return "nan"
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _stage_starts(history: Mapping[str, Any]) -> list[int]:
    """The first optimizer step (1-based) of every stage: step 1, then each record's ``applies_from_step`` (one more
    in a version-1 history, where it was the 0-based sampler step)."""
    shift = 1 if history.get("format") == HISTORY_READABLE[0] else 0
    return [1] + [int(s["applies_from_step"]) + shift for s in history.get("stages", [])]


def _stage_weights(history: Mapping[str, Any]) -> list[tuple[str, list[float]]]:
    """(label, weights) for every stage of a controller history, first stage = the initial mixture."""
    steps = _stage_starts(history)
    ws = [list(history.get("initial_weights", []))] + [list(s["weights"]) for s in history.get("stages", [])]
    return [(f"stage {i + 1} (from step {st})", w) for i, (st, w) in enumerate(zip(steps, ws))]


def _controller_seconds(stages: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(everything the controller did: its boundaries and its one-time rehearsal before training, the rehearsal
    alone); the rehearsal's time is in the first record after it."""
    rehearsal = sum(float(s["timing"].get("rehearsal_s", 0.0) or 0.0) for s in stages)
    return sum(float(s["timing"].get("controller_s", 0.0)) for s in stages) + rehearsal, rehearsal


def _timing_totals(history: Mapping[str, Any]) -> tuple[float, float, float]:
    train = sum(s["timing"]["train_s"] for s in history.get("stages", []))
    final = history.get("final") or {}
    train += float(final.get("train_s_last_stage", 0.0) or 0.0)
    infl = sum(s["timing"]["influence_s"] for s in history.get("stages", []))
    solve = sum(s["timing"]["solve_s"] for s in history.get("stages", []))
    return train, infl, solve


def format_tables(report: Mapping[str, Any]) -> str:
    """The text tables for a demo report or a controller history."""
    if report.get("format") == DEMO:
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
        with_ci = any("ci" in c for c in (report.get("comparison") or {}).values())
        rows = []
        for name, m in methods.items():
            if name == base_name:
                continue
            d = [improvement(base["final"][t], m["final"][t])[0] for t in targets]
            dm, pct = improvement(base["mean"], m["mean"])
            ci = (report.get("comparison") or {}).get(name, {}).get("ci")
            rows.append([name] + [f"{x:+.4f}" for x in d] + [f"{dm:+.4f} ({pct:+.1f}%)"]
                        + ([f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "-"] if with_ci else []))
        if rows:
            parts.append(_table(["method"] + targets + ["mean"] + (["mean: 95% CI (paired bootstrap)"] if with_ci
                                                                    else []), rows,
                                f"Improvement over {base_name} ({base_name} loss − method loss; > 0 = better)"))
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
        rows.append([name] + [_seconds(v) for v in (t["train_s"], t["influence_s"], t["solve_s"], overhead, t["eval_s"])]
                    + [f"{100 * share:.1f}%"])
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
        controller, rehearsal = _controller_seconds(history.get("stages", []))
        parts.append(f"Time: train {train:.1f} s, influence {infl:.1f} s, solve {solve:.1f} s, rehearsal "
                     f"{rehearsal:.1f} s; the controller took {100 * controller / train:.1f}% of the training time")
    for table in (_decision_table(history), _sampling_table(history), _feedback_table(history)):
        if table:
            parts.append(table)
    metrics = history.get("metrics") or []
    if metrics:
        keys = [k for k in metrics[-1] if k != "step"]
        parts.append(_table(["step"] + keys, [[metrics[-1]["step"]] + [metrics[-1][k] for k in keys]],
                            "Last logged metrics"))
    return "\n\n".join(parts)


def _feedbacks(history: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stage feedbacks of a controller history in stage order: each boundary's (from the second on), then the
    final one that :meth:`tikmix.Controller.finish` closed."""
    out = [s["feedback"] for s in history.get("stages", []) if s.get("feedback")]
    final = (history.get("final") or {}).get("feedback")
    return out + ([final] if final else [])


def _signed(value: Any) -> str:
    return "-" if value is None else f"{float(value):+.3g}"


def _decision_table(history: Mapping[str, Any]) -> str | None:
    """Per boundary, when a safe step or a trust region shaped the mixture: how far the solver's move was taken,
    which targets it protected, and the step limit."""
    stages = history.get("stages", [])
    decisions = [s.get("decision") or {} for s in stages]
    if not any(d.get("safe") or d.get("trust_region") for d in decisions):
        return None
    rows = []
    for s, d in zip(stages, decisions):
        safe, limit = d.get("safe"), d.get("trust_region")
        rows.append([s["step"],
                     "-" if not safe else f"{safe['t']:.2f}" + (" (kept)" if safe["t"] <= 0 else ""),
                     "-" if not safe else (", ".join(safe.get("violated") or []) or "none"),
                     "-" if not limit else f"{limit['max_shift']:.2f}",
                     "-" if not limit else limit["reason"]])
    return _table(["step", "safe step t", "predicted worse (protected)", "step limit (L1)", "limit"], rows,
                  "Decision: the share of the solver's move taken (1 = all, 0 = mixture kept) and the step limit")


def _sampling_table(history: Mapping[str, Any]) -> str | None:
    """Per boundary with adaptive sampling: the rows every domain and target took out of its draw, and why it
    stopped (S = stable, C = ceiling)."""
    stages = [s for s in history.get("stages", []) if s.get("influence_sampling")]
    if not stages:
        return None
    names = [(kind, n) for kind in ("domains", "targets") for n in stages[0]["influence_sampling"][kind]]
    rows = []
    for kind, n in names:
        cells = []
        for s in stages:
            e = s["influence_sampling"][kind].get(n)
            cells.append("-" if e is None else f"{e['rows']}/{e['ceiling']} {'S' if e['stop'] == 'stable' else 'C'}")
        rows.append([f"{n} ({kind[:-1]})"] + cells)
    rows.append(["rounds"] + [s["influence_sampling"]["rounds"] for s in stages])
    return _table(["rows taken"] + [f"step {s['step']}" for s in stages], rows,
                  "Adaptive sampling: rows taken / the draw (S = stopped as stable, C = at the ceiling)")


def _predicted(value: Any) -> str:
    # a mixture that did not move predicts 0, up to float rounding (1e-17): print it as 0
    return "0" if value is not None and abs(float(value)) <= 1e-12 else _signed(value)


def _feedback_table(history: Mapping[str, Any]) -> str | None:
    """Per stage: rank agreement (Spearman rho), sign agreement, and per target predicted / realised gain."""
    fbs = _feedbacks(history)
    if not fbs:
        return None
    targets = list(history["targets"])
    rows = []
    for fb in fbs:
        pred = fb.get("predicted_change") or [None] * len(targets)
        gain = [-float(c) for c in fb["realised_change"]]
        agree = fb.get("sign_agreement")
        rows.append([f"{fb['from_step']}->{fb['to_step']}", _signed(fb.get("spearman_rho")),
                     "-" if agree is None else f"{agree:.2f}"]
                    + [f"{_predicted(p)} / {g:+.3g}" for p, g in zip(pred, gain)])
    summary = history.get("feedback_summary") or {}
    title = ("Stage feedback: predicted gain (solver units) / realised dev-loss gain per target; rho = Spearman "
             "across targets")
    if summary.get("stages"):
        title += (f"; mean rho {_signed(summary.get('mean_rho'))}, signs agree in "
                  + ("-" if summary.get("sign_agree_fraction") is None else
                     f"{100 * summary['sign_agree_fraction']:.0f}%") + " of stages")
    return _table(["steps", "rho", "signs"] + targets, rows, title)


def _feedback_plot(plt: Any, runs: Mapping[str, Mapping[str, Any]], targets: Sequence[str]) -> Any:
    """One row per run, one panel per target: predicted gain (left axis, solver units) and realised dev-loss gain
    (right axis) for every stage; each stage's rank agreement under its tick."""
    fig, axes = plt.subplots(len(runs), len(targets), figsize=(3.8 * len(targets) + 0.6, 3.2 * len(runs) + 0.9),
                             squeeze=False)
    for r, (name, hist) in enumerate(runs.items()):
        fbs = _feedbacks(hist)
        x = np.arange(len(fbs))
        ticks = [f"{fb['from_step']}–{fb['to_step']}\n"
                 + ("ρ n/a" if fb.get("spearman_rho") is None else f"ρ={fb['spearman_rho']:+.2f}") for fb in fbs]
        preds = np.array([[np.nan] * len(targets) if not fb.get("predicted_change") else fb["predicted_change"]
                          for fb in fbs], dtype=float)
        gains = -np.array([fb["realised_change"] for fb in fbs], dtype=float)
        # one scale per row for each quantity: the targets' bars compare across panels (and noise stays small)
        limits = [1.1 * (float(np.nanmax(np.abs(v), initial=0.0)) or 1.0) for v in (preds, gains)]
        for c, target in enumerate(targets):
            ax = axes[r][c]
            pred, gain = preds[:, c], gains[:, c]
            ax.bar(x - 0.2, pred, width=0.4, color="C0", label="predicted gain (solver units)")
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.set_ylabel("predicted", color="C0", fontsize=8)
            twin = ax.twinx()
            twin.bar(x + 0.2, gain, width=0.4, color="C1", label="realised dev-loss gain")
            twin.set_ylabel("realised (loss before − after)", color="C1", fontsize=8)
            # both axes share their zero line, so bars above it mean "better" on either scale
            for axis, m in zip((ax, twin), limits):
                axis.set_ylim(-m, m)
                axis.tick_params(labelsize=7)
            ax.set_xticks(x, ticks, fontsize=7)
            ax.set_title(f"{name}: {target}" if len(runs) > 1 else target, fontsize=9)
            if r == len(runs) - 1:
                ax.set_xlabel("stage (steps)", fontsize=8)
    summaries = []
    for name, hist in runs.items():
        sm = hist.get("feedback_summary") or {}
        frac = sm.get("sign_agree_fraction")
        summaries.append(f"{name}: mean ρ {_signed(sm.get('mean_rho'))}, signs agree "
                         + ("-" if frac is None else f"{100 * frac:.0f}%") + " of stages")
    handles = [plt.Rectangle((0, 0), 1, 1, color="C0"), plt.Rectangle((0, 0), 1, 1, color="C1")]
    fig.legend(handles, ["predicted gain (solver units, left axis)", "realised dev-loss gain (right axis)"],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("Stage feedback: predicted vs realised gain per target (> 0 = better)\n" + "; ".join(summaries),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# ---------------------------------------------------------------------------------------------- plots
# One style per method, told apart by colour, line style and marker, so curves that coincide stay visible.
_STYLES = [("-", "o", "full"), ("--", "s", "none"), (":", "^", "none"), ("-.", "D", "full"), ((0, (5, 1, 1, 1)), "v", "none")]


def _stage_ranges(history: Mapping[str, Any]) -> list[tuple[int, int | None]]:
    """``[(first step, last step)]`` of every stage, both 1-based and inclusive (last None if the run's end is
    unknown)."""
    starts = _stage_starts(history)
    end = (history.get("final") or {}).get("step")
    return [(a, b - 1) for a, b in zip(starts, starts[1:])] + [(starts[-1], int(end) if end is not None else None)]


def _same_runs(runs: Mapping[str, Mapping[str, Any]], key: Any, atol: float) -> list[tuple[list[str], Mapping[str, Any]]]:
    """Group runs whose ``key(history)`` agree to ``atol``: ``[(names, history)]`` in first-seen order."""
    groups: list[tuple[list[str], Mapping[str, Any], Any]] = []
    for name, hist in runs.items():
        value = np.asarray(key(hist), dtype=float)
        for names, _, ref in groups:
            if ref.shape == value.shape and np.allclose(ref, value, rtol=0.0, atol=atol):
                names.append(name)
                break
        else:
            groups.append(([name], hist, value))
    return [(names, hist) for names, hist, _ in groups]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=1e-9))


def _group_title(names: Sequence[str], what: str) -> str:
    return names[0] if len(names) == 1 else f"{' = '.join(names)} (same {what})"


def _mixture_plot(ax: Any, history: Mapping[str, Any], domains: Sequence[str], title: str) -> None:
    stages = _stage_weights(history)
    W = np.array([w for _, w in stages], dtype=float)
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    cmap = pyplot().get_cmap("tab10")
    for j, d in enumerate(domains):
        ax.bar(x, W[:, j], bottom=bottom, color=cmap(j % 10), label=d, width=0.7, edgecolor="white", lw=0.5)
        for i in np.flatnonzero(W[:, j] >= 0.07):  # label the shares big enough to hold the text
            ax.text(x[i], bottom[i] + W[i, j] / 2, f"{W[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white")
        bottom += W[:, j]
    labels = [f"stage {i + 1}\nsteps {a}–{'end' if b is None else b}" for i, (a, b) in enumerate(_stage_ranges(history))]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("domain weight")
    ax.set_title(title, fontsize=10)


def _curve(rows: Sequence[Mapping[str, float]], targets: Sequence[str], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, loss) of one panel: a target's held-out loss, or the mean over targets for ``key="mean"``."""
    keys = [f"target/{t}" for t in targets] if key == "mean" else [f"target/{key}"]
    pts = [(r["step"], float(np.mean([r[k] for k in keys]))) for r in rows if all(k in r for k in keys)]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def _loss_plot(plt: Any, curves: Mapping[str, Sequence[Mapping[str, float]]], targets: Sequence[str],
               baseline: str | None, boundaries: Sequence[int]) -> Any:
    """Held-out loss per column (mean, then each target). Rows of equal size: every step from 0; the steps from
    the first boundary on with the loss axis fitted to them (where the differences between methods are); with a
    baseline, each method's improvement over it from step 0. One legend for the figure."""
    panels = ["mean"] + list(targets)
    names = list(curves)
    with_delta = baseline in curves and len(curves) > 1
    last_step = max(float(_curve(c, targets, "mean")[0].max(initial=0)) for c in curves.values())
    zoom_from = float(boundaries[0]) if boundaries else 0.2 * last_step
    # a zoomed row only when it differs from the full one: points before zoom_from and at least two after
    with_zoom = any(bool((xs < zoom_from).any()) and int((xs >= zoom_from).sum()) > 1
                    for xs in (_curve(c, targets, "mean")[0] for c in curves.values()))
    kinds = ["all"] + (["zoom"] if with_zoom else []) + (["delta"] if with_delta else [])
    nrows = len(kinds)
    fig, axes = plt.subplots(nrows, len(panels), figsize=(3.9 * len(panels) + 0.4, 2.9 * nrows + 0.8),
                             squeeze=False)
    # a curve equal to an earlier one is drawn anyway (its own style) and its legend entry says so
    same_as: dict[str, str] = {}
    for i, n in enumerate(names):
        for m in names[:i]:
            if m not in same_as and all(_same(_curve(curves[n], targets, k)[1], _curve(curves[m], targets, k)[1])
                                        for k in panels):
                same_as[n] = m
                break

    def draw(ax: Any, k: int, name: str, xs: np.ndarray, ys: np.ndarray) -> None:
        ls, marker, fill = _STYLES[k % len(_STYLES)]
        ax.plot(xs, ys, ls=ls, marker=marker, fillstyle=fill, color=f"C{k}", lw=1.5, ms=4.5,
                label=name if name not in same_as else f"{name} (= {same_as[name]})", zorder=3 + k)

    for col, key in enumerate(panels):
        what = "mean target loss" if key == "mean" else f"target: {key}"
        for row, kind in enumerate(kinds):
            ax = axes[row][col]
            if kind == "delta":
                bx, by = _curve(curves[baseline], targets, key)  # type: ignore[index]
                base_at = dict(zip(bx.tolist(), by.tolist()))
                for k, name in enumerate(names):
                    if name == baseline:
                        continue
                    xs, ys = _curve(curves[name], targets, key)
                    keep = [i for i, x in enumerate(xs.tolist()) if x in base_at]
                    draw(ax, k, name, xs[keep], np.array([base_at[x] for x in xs[keep].tolist()]) - ys[keep])
                ax.axhline(0.0, color="0.3", lw=0.8)
                ax.set_title(f"improvement over {baseline}: {key}", fontsize=9)
                ax.set_xlim(left=0, right=last_step * 1.02)
            else:
                seen: list[float] = []
                for k, name in enumerate(names):
                    xs, ys = _curve(curves[name], targets, key)
                    draw(ax, k, name, xs, ys)
                    seen += ys[xs >= zoom_from].tolist() if kind == "zoom" else []
                if kind == "zoom" and len(seen) > 1:
                    lo, hi = min(seen), max(seen)
                    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                    ax.set_ylim(lo - pad, hi + pad)
                    ax.set_xlim(zoom_from - 0.03 * last_step, last_step * 1.02)
                    ax.set_title(f"{what}, steps ≥ {zoom_from:.0f}", fontsize=9)
                else:
                    ax.set_xlim(left=0, right=last_step * 1.02)
                    ax.set_title(f"{what}, all steps", fontsize=9)
            for b_ in boundaries:
                ax.axvline(b_, color="0.6", lw=0.9, ls=(0, (2, 2)), zorder=1)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if row == nrows - 1:
                ax.set_xlabel("training step", fontsize=9)
    for row, kind in enumerate(kinds):
        axes[row][0].set_ylabel({"all": "held-out loss\n(lower is better)", "zoom": "held-out loss, zoomed",
                                 "delta": f"{baseline} loss − method loss\n(> 0: better than {baseline})"}[kind],
                                fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if boundaries:
        handles.append(plt.Line2D([], [], color="0.6", lw=0.9, ls=(0, (2, 2))))
        labels.append("stage boundary (mixture re-solved)")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / (2.9 * nrows + 0.8), 1, 1))  # room for the legend: about 0.35 inch
    return fig


def _row_scaled(S: Any) -> np.ndarray:
    """S with each target's row divided by its largest |S| (rows of zeros stay zero)."""
    S = np.asarray(S, dtype=float)
    scale = np.abs(S).max(axis=1, keepdims=True)
    return np.divide(S, scale, out=np.zeros_like(S), where=scale > 0)


def _influence_plot(plt: Any, groups: Sequence[tuple[list[str], Mapping[str, Any]]], domains: Sequence[str],
                    targets: Sequence[str]) -> Any:
    """S per stage (columns) for every method (rows; methods with identical S share a row)."""
    ncols = max(len(h.get("stages", [])) for _, h in groups)
    fig, axes = plt.subplots(len(groups), ncols, figsize=(3.2 * ncols + 1.6, (0.45 * len(targets) + 1.6) * len(groups) + 1.2),
                             squeeze=False, layout="constrained")
    im = None
    for r, (names, hist) in enumerate(groups):
        stages = hist.get("stages", [])
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(stages):
                ax.axis("off")
                continue
            Sn = _row_scaled(stages[c]["S"])
            im = ax.imshow(Sn, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
            last_row = r == len(groups) - 1
            ax.set_xticks(range(len(domains)), domains if last_row else [""] * len(domains), rotation=60, ha="right",
                          fontsize=8)
            ax.set_yticks(range(len(targets)), targets if c == 0 else [""] * len(targets), fontsize=8)
            if last_row:
                ax.set_xlabel("domain", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{_group_title(names, 'S')}\ntarget", fontsize=8)
            ax.set_title(f"measured at step {stages[c]['step']}", fontsize=9)
            for i in range(Sn.shape[0]):
                for j in range(Sn.shape[1]):
                    ax.text(j, i, f"{round(Sn[i, j], 2) + 0.0:.2f}", ha="center", va="center", fontsize=7,  # no "-0.00"
                            color="white" if abs(Sn[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label="S / max|S| of the target (> 0: the domain helps it)")
    fig.suptitle("Group influence S of each domain on each target, per stage boundary")
    return fig


def plot_all(report: Mapping[str, Any], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write the PNG plots for a demo report or a controller history into ``out_dir``; returns their paths.

    ``mixture.png``: the mixture of every stage, one panel per method (methods with identical mixtures share
    one); ``loss_curves.png``: held-out loss per method and target, and the improvement over the baseline;
    ``influence.png``: S per stage boundary for every method; ``feedback.png`` (when a history has stage feedback):
    predicted against realised gain per target and stage. ``prefix`` is prepended to the file names.
    """
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    demo = report.get("format") == DEMO
    domains = list(report["domains"])
    targets = list(report["targets"])
    runs: dict[str, Mapping[str, Any]]
    if demo:
        runs = {n: m["history"] for n, m in report["methods"].items() if m.get("history")}
    else:
        runs = {str(report.get("solver", "run")): report}

    def save(fig: Any, name: str) -> None:
        paths.append(out / f"{prefix}{name}")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)

    if runs:
        # mixtures equal to 1e-6 are the same for the sampler (it rounds to 1/batch_size): one panel
        groups = _same_runs(runs, lambda h: [w for _, w in _stage_weights(h)], atol=1e-6)
        fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups) + 1.8, 4.0), squeeze=False)
        for ax, (names, hist) in zip(axes[0], groups):
            _mixture_plot(ax, hist, domains, _group_title(names, "mixtures to 1e-6"))
        handles, labels = axes[0][-1].get_legend_handles_labels()  # top to bottom, as the bars are stacked
        axes[0][-1].legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                           title="domain")
        fig.suptitle("Domain mixture per stage (each stage trains on its mixture)")
        fig.tight_layout()
        save(fig, "mixture.png")

    curves: dict[str, list[Mapping[str, float]]] = {}
    if demo:
        curves = {n: m.get("curve", []) for n, m in report["methods"].items()}
    elif report.get("metrics"):
        curves = {str(report.get("solver", "run")): report["metrics"]}
    curves = {n: c for n, c in curves.items() if c}
    if curves:
        boundaries = next(iter(runs.values()), {}).get("stage_boundaries", {}).get("steps", []) if runs else []
        save(_loss_plot(plt, curves, targets, report.get("baseline") if demo else None, boundaries), "loss_curves.png")

    if runs and any(h.get("stages") for h in runs.values()):
        # compared as drawn: each row scaled by its largest |S|, equal to 1e-6 = one row of panels
        groups = _same_runs({n: h for n, h in runs.items() if h.get("stages")},
                            lambda h: [_row_scaled(s["S"]) for s in h["stages"]], atol=1e-6)
        save(_influence_plot(plt, groups, domains, targets), "influence.png")

    with_feedback = {n: h for n, h in runs.items() if _feedbacks(h)}
    if with_feedback:
        save(_feedback_plot(plt, with_feedback, targets), "feedback.png")
    return paths


def render(path_or_report: str | Path | Mapping[str, Any], out_dir: str | Path | None = None,
           prefix: str = "") -> tuple[str, list[Path]]:
    """Load (if a path: a file, or a folder holding one, :func:`load`), write the plots next to the file (or into
    ``out_dir``, names starting with ``prefix``) and return (tables, pngs)."""
    if isinstance(path_or_report, Mapping):
        report = dict(path_or_report)
        if out_dir is None:
            raise ValueError("out_dir is required when a report dict is given")
    else:
        report = load(path_or_report)
        if out_dir is None:
            path = Path(path_or_report)
            out_dir = path if path.is_dir() else path.parent
    return format_tables(report), plot_all(report, out_dir, prefix)
