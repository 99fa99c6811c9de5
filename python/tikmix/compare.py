"""``tikmix compare RUN_DIR...``: test losses of finished ``tikmix run`` outputs side by side.

Each run folder holds ``history.json`` (the controller history: solver, mixtures, loss curves) and
``eval.json`` (the final per-sequence test losses and a hash of each target's test set). Runs are only
compared when they are comparable: the same targets evaluated on the same test sequences, and the same
budget (steps and tokens per step); otherwise :class:`CompareError` names what differs.

For every run the table gives each target's final test loss, their mean, the improvement over the baseline
run (baseline loss minus run loss, > 0 = better: the sign of :func:`improvement`) and a 95% paired
bootstrap interval of that improvement: test sequences are resampled with
replacement within each target, the same resample for both runs, so the interval reflects which sequences
happened to be in the test set. The plot (:func:`compare_figure`) shows that improvement with its interval for
every target and for the mean, and the improvement along training, one panel per target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formats import EVAL, HISTORY, HISTORY_READABLE

__all__ = ["CompareError", "RunResult", "load_run", "compare", "improvement", "paired_bootstrap", "format_table",
           "plot_curves", "compare_figure"]


def improvement(baseline_loss: float, method_loss: float) -> tuple[float, float]:
    """The one sign convention of "vs the baseline" in tables, report files and plots: the improvement
    ``baseline loss − method loss`` and the same relative to the baseline, in percent. Positive = the method's
    loss is lower = better."""
    delta = float(baseline_loss) - float(method_loss)
    return delta, 100.0 * delta / float(baseline_loss)


class CompareError(ValueError):
    """Runs that cannot be compared, or a run folder that cannot be read."""


@dataclass
class RunResult:
    """One finished run: its name (the folder's name), solver label, budget, curves, per-sequence losses and the
    whole controller history (``history.json``)."""

    name: str
    path: Path
    solver: str
    steps: int
    tokens_per_step: int
    targets: dict[str, np.ndarray]  # target -> float64 [test sequences]
    test_sha1: dict[str, str]
    curve_steps: list[int]
    curve_mean: list[float]
    history: dict[str, Any] = field(default_factory=dict)
    eval_s: float | None = None  # wall-clock seconds spent evaluating (eval.json), if recorded
    dev_losses: dict[str, float] | None = None  # final mean loss on each target's dev rows (eval.json), if recorded

    @property
    def final(self) -> dict[str, float]:
        return {t: float(v.mean()) for t, v in self.targets.items()}

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.final.values())))


def load_run(path: str | Path) -> RunResult:
    """Read ``history.json`` and ``eval.json`` of a finished ``tikmix run`` folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise CompareError(f"{folder}: not a folder (expected a tikmix run output folder)")
    files = {}
    for name in ("history.json", "eval.json"):
        f = folder / name
        if not f.is_file():
            hint = " (the run has not finished, or was written by an older tikmix)" if name == "eval.json" else ""
            raise CompareError(f"{folder}: no {name}{hint}")
        try:
            files[name] = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise CompareError(f"{f}: not valid JSON ({exc})") from None
    ev, hist = files["eval.json"], files["history.json"]
    if not isinstance(ev, dict) or ev.get("format") != EVAL:
        raise CompareError(f"{folder / 'eval.json'}: format is {ev.get('format') if isinstance(ev, dict) else None!r}, "
                           f"expected {EVAL!r}")
    if not isinstance(hist, dict) or hist.get("format") not in HISTORY_READABLE:
        raise CompareError(f"{folder / 'history.json'}: format is "
                           f"{hist.get('format') if isinstance(hist, dict) else None!r}, expected {HISTORY!r}")
    try:
        targets = {str(k): np.asarray(v, dtype=np.float64) for k, v in ev["targets"].items()}
        steps, tps = int(ev["steps"]), int(ev["tokens_per_step"])
        sha = {str(k): str(v) for k, v in ev["test_sha1"].items()}
        eval_s = None if ev.get("eval_s") is None else float(ev["eval_s"])
        dev = None if ev.get("dev_losses") is None else {str(k): float(v) for k, v in ev["dev_losses"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CompareError(f"{folder / 'eval.json'}: malformed ({exc!r})") from None
    for t, v in targets.items():
        if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
            raise CompareError(f"{folder / 'eval.json'}: target {t!r} has no finite per-sequence losses")
    xs, ys = [], []
    for row in hist.get("metrics", []):
        vals = [row.get(f"target/{t}") for t in targets]
        if "step" in row and all(isinstance(v, (int, float)) for v in vals):
            xs.append(int(row["step"]))
            ys.append(float(np.mean(vals)))
    return RunResult(folder.name, folder, str(ev.get("solver", hist.get("solver", "?"))), steps, tps, targets, sha,
                     xs, ys, hist, eval_s, dev)


def _check_comparable(runs: Sequence[RunResult]) -> None:
    ref = runs[0]
    for r in runs[1:]:
        diffs = []
        if list(r.targets) != list(ref.targets):
            diffs.append(f"targets {list(r.targets)} vs {list(ref.targets)}")
        else:
            for t in ref.targets:
                if r.test_sha1.get(t) != ref.test_sha1.get(t) or r.targets[t].size != ref.targets[t].size:
                    diffs.append(f"target {t!r} is evaluated on different test sequences")
        if r.steps != ref.steps:
            diffs.append(f"budget: {r.steps} steps vs {ref.steps}")
        if r.tokens_per_step != ref.tokens_per_step:
            diffs.append(f"budget: {r.tokens_per_step} tokens per step vs {ref.tokens_per_step}")
        if diffs:
            raise CompareError(f"runs {ref.name!r} and {r.name!r} are not comparable: " + "; ".join(diffs))


def paired_bootstrap(run: RunResult, base: RunResult, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean over targets of (run - base) per-sequence test loss, and its paired percentile bootstrap interval."""
    rng = np.random.default_rng(seed)
    point = 0.0
    reps = np.zeros(n_boot)
    for t in base.targets:
        d = run.targets[t] - base.targets[t]
        point += d.mean()
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        reps += d[idx].mean(axis=1)
    k = len(base.targets)
    lo, hi = np.percentile(reps / k, [50 * (1 - level), 50 * (1 + level)])
    return point / k, float(lo), float(hi)


def compare(paths: Sequence[str | Path], baseline: str | None = None) -> tuple[list[RunResult], RunResult, list[dict[str, Any]]]:
    """Load and check the runs; the baseline (by folder name, or the first fixed-mixture run, else the first run);
    one row per run with final losses, mean, difference to the baseline and its interval."""
    if len(paths) < 2:
        raise CompareError(f"give at least two run folders to compare, got {len(paths)}")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CompareError(f"run folders must have different names (they label the runs); repeated: {dup}")
    _check_comparable(runs)
    if baseline is not None:
        if baseline not in names:
            raise CompareError(f"--baseline {baseline!r} is not one of the runs: {names}")
        base = runs[names.index(baseline)]
    else:
        fixed = [r for r in runs if r.solver.startswith(("static", "proportional"))]
        base = fixed[0] if fixed else runs[0]
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name, "solver": r.solver, "final": r.final, "mean": r.mean,
                               "baseline": r is base}
        if r is not base:
            diff, lo, hi = paired_bootstrap(r, base)  # run - baseline; reported as improvement = -diff
            row.update(improvement=-diff, improvement_pct=-100 * diff / base.mean, ci=(-hi, -lo),
                       target_improvement_pct={t: improvement(base.final[t], r.final[t])[1] for t in r.final})
        rows.append(row)
    return runs, base, rows


def format_table(runs: Sequence[RunResult], base: RunResult, rows: Sequence[dict[str, Any]]) -> str:
    targets = list(base.targets)
    head = ["run", "solver", *targets, "mean", f"improvement over {base.name}", "95% CI (paired bootstrap)"]
    lines = [f"budget: {base.steps} steps x {base.tokens_per_step} tokens; test sequences: "
             + ", ".join(f"{t} {base.targets[t].size}" for t in targets) + f"; baseline: {base.name}",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["run"], row["solver"]]
        for t in targets:
            cell = f"{row['final'][t]:.4f}"
            if not row["baseline"]:
                cell += f" ({row['target_improvement_pct'][t]:+.2f}%)"
            cells.append(cell)
        cells.append(f"{row['mean']:.4f}")
        if row["baseline"]:
            cells += ["(baseline)", ""]
        else:
            lo, hi = row["ci"]
            cells += [f"{row['improvement']:+.4f} ({row['improvement_pct']:+.2f}%)", f"[{lo:+.4f}, {hi:+.4f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("improvement = baseline loss - run loss, > 0 = lower test loss than the baseline (per-target % "
                 "likewise); an interval that excludes 0 is a difference the "
                 "test set resolves")
    return "\n".join(lines)


def _target_curves(run: RunResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each target's test-loss curve ``(steps, loss)`` from the run's ``history.json`` metrics."""
    try:
        hist = json.loads((run.path / "history.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    rows = hist.get("metrics", []) if isinstance(hist, dict) else []
    out = {}
    for t in run.targets:
        pts = [(int(r["step"]), float(r[f"target/{t}"])) for r in rows
               if "step" in r and isinstance(r.get(f"target/{t}"), (int, float))]
        out[t] = (np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float))
    return out


def _label(run: RunResult) -> str:
    return run.name if run.solver in ("", "?", run.name) else f"{run.name} ({run.solver})"


def _default_baseline(runs: Sequence[RunResult]) -> RunResult:
    fixed = [r for r in runs if r.solver.startswith(("static", "proportional"))]
    return fixed[0] if fixed else runs[0]


def compare_figure(runs: Sequence[RunResult], base: RunResult | str | None = None, level: float = 0.95) -> Any:
    """The figure of ``tikmix compare`` (a matplotlib Figure; needs matplotlib).

    Top: the final improvement over ``base`` (baseline loss - run loss, in % of the baseline's loss, > 0 = better)
    of every run on every target and on their mean, with ``level`` paired bootstrap intervals
    (:func:`paired_bootstrap` on each target alone, and on all targets for the mean), so a target that got worse
    is visible next to an average that improved. Below, one panel per target and one for the mean: the
    improvement over the baseline along training, from step 0. ``base``: the baseline run (or its name);
    default the rule of :func:`compare` (the first static/proportional run, else the first run).
    """
    from dataclasses import replace

    from tikmix._extras import pyplot

    if len(runs) < 2:
        raise CompareError(f"compare_figure needs at least two runs, got {len(runs)}")
    if base is None:
        base = _default_baseline(runs)
    elif isinstance(base, str):
        names = [r.name for r in runs]
        if base not in names:
            raise CompareError(f"base {base!r} is not one of the runs: {names}")
        base = runs[names.index(base)]
    plt = pyplot()
    targets = list(base.targets)
    others = [r for r in runs if r is not base]
    color = {r.name: f"C{i}" for i, r in enumerate(runs)}
    labels = targets + ["mean over targets"]

    ncols = min(4, len(targets) + 1)
    nrows = 1 + -(-(len(targets) + 1) // ncols)
    bar_h = max(2.6, 0.32 * len(labels) * len(others) + 1.2)
    fig = plt.figure(figsize=(3.6 * ncols + 1.0, bar_h + 2.7 * (nrows - 1) + 0.6), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols, height_ratios=[bar_h] + [2.7] * (nrows - 1))

    # the final improvement per target and for the mean, with paired intervals
    ax = fig.add_subplot(grid[0, :])
    height = 0.8 / len(others)
    y0 = np.arange(len(labels))[::-1].astype(float)  # first target on top, the mean at the bottom
    for k, r in enumerate(others):
        pts, los, his = [], [], []
        for t in targets:
            one, one_base = replace(r, targets={t: r.targets[t]}), replace(base, targets={t: base.targets[t]})
            d, lo, hi = paired_bootstrap(one, one_base, level=level)
            ref = base.final[t]
            pts.append(-100 * d / ref), los.append(-100 * hi / ref), his.append(-100 * lo / ref)
        d, lo, hi = paired_bootstrap(r, base, level=level)
        pts.append(-100 * d / base.mean), los.append(-100 * hi / base.mean), his.append(-100 * lo / base.mean)
        y = y0 + 0.4 - height * (k + 0.5)
        p, lo_, hi_ = np.array(pts), np.array(los), np.array(his)
        ax.barh(y, p, height=height * 0.9, color=color[r.name], alpha=0.85, label=_label(r))
        ax.errorbar(p, y, xerr=np.vstack([p - lo_, hi_ - p]), fmt="none", ecolor="0.15", elinewidth=1.0, capsize=3)
        for yy, v, lo1, hi1 in zip(y, p, lo_, hi_):  # the value beyond the bar's far end, interval included
            right = v >= 0
            ax.annotate(f"{v:+.2f}%", (max(hi1, v) if right else min(lo1, v), yy), xytext=(4 if right else -4, 0),
                        textcoords="offset points", va="center", ha="left" if right else "right", fontsize=8)
    ax.axhline(0.5, color="0.5", lw=0.8)  # separates the mean from the targets
    ax.axvline(0.0, color="0.2", lw=1.0)
    ax.set_yticks(y0, labels, fontsize=9)
    ax.margins(x=0.15)
    ax.set_xlabel(f"improvement over {base.name} at the end, % of its test loss (> 0 = lower loss; "
                  f"bars: {level:.0%} paired bootstrap interval)", fontsize=9)
    ax.set_title(f"Final test loss vs the baseline {_label(base)}, per target and mean", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    # the improvement along training, one panel per target and one for the mean
    curves = {r.name: _target_curves(r) for r in runs}
    panels = ["mean"] + targets
    for i, key in enumerate(panels):
        pax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        if key == "mean":
            bx, by = np.asarray(base.curve_steps, dtype=float), np.asarray(base.curve_mean, dtype=float)
        else:
            bx, by = curves[base.name].get(key, (np.array([]), np.array([])))
        at = dict(zip(bx.tolist(), by.tolist()))
        for r in others:
            if key == "mean":
                xs, ys = np.asarray(r.curve_steps, dtype=float), np.asarray(r.curve_mean, dtype=float)
            else:
                xs, ys = curves[r.name].get(key, (np.array([]), np.array([])))
            keep = [j for j, x in enumerate(xs.tolist()) if x in at]
            if keep:
                pax.plot(xs[keep], [at[x] - ys[j] for j, x in zip(keep, xs[keep].tolist())], marker=".",
                         color=color[r.name], lw=1.4, label=r.name)
        if i == 0 and pax.get_legend_handles_labels()[0]:
            pax.legend(fontsize=7, loc="best")
        pax.axhline(0.0, color="0.2", lw=0.9)
        pax.set_xlim(left=0)
        pax.set_title("mean over targets" if key == "mean" else f"target: {key}", fontsize=9)
        pax.set_xlabel("training step", fontsize=8)
        pax.tick_params(labelsize=8)
        pax.grid(alpha=0.3)
        if i % ncols == 0:
            pax.set_ylabel(f"{base.name} loss − run loss\n(> 0 = better)", fontsize=8)
    fig.suptitle(f"tikmix compare: {len(others)} run(s) against {base.name}", fontsize=11)
    return fig


def plot_curves(runs: Sequence[RunResult], path: str | Path, base: RunResult | str | None = None) -> Path:
    """Write :func:`compare_figure` to a PNG at ``path`` (folders are created); returns the path."""
    fig = compare_figure(runs, base)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
