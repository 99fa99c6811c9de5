"""``tikmix compare RUN_DIR...``: test losses of finished ``tikmix run`` outputs side by side.

Each run folder holds ``history.json`` (the controller history: solver, mixtures, loss curves) and
``eval.json`` (the final per-sequence test losses and a hash of each target's test set). Runs are only
compared when they are comparable: the same targets evaluated on the same test sequences, and the same
budget (steps and tokens per step); otherwise :class:`CompareError` names what differs.

For every run the table gives each target's final test loss, their mean, the improvement over the baseline
run (baseline loss minus run loss, > 0 = better: the sign of :func:`improvement`) and a 95% paired
bootstrap interval of that improvement: test sequences are resampled with
replacement within each target, the same resample for both runs, so the interval reflects which sequences
happened to be in the test set. One plot draws every run's mean target loss over training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formats import EVAL, HISTORY

__all__ = ["CompareError", "RunResult", "load_run", "compare", "improvement", "paired_bootstrap", "format_table",
           "plot_curves"]


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
    if not isinstance(hist, dict) or hist.get("format") != HISTORY:
        raise CompareError(f"{folder / 'history.json'}: format is "
                           f"{hist.get('format') if isinstance(hist, dict) else None!r}, expected {HISTORY!r}")
    try:
        targets = {str(k): np.asarray(v, dtype=np.float64) for k, v in ev["targets"].items()}
        steps, tps = int(ev["steps"]), int(ev["tokens_per_step"])
        sha = {str(k): str(v) for k, v in ev["test_sha1"].items()}
        eval_s = None if ev.get("eval_s") is None else float(ev["eval_s"])
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
                     xs, ys, hist, eval_s)


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


def plot_curves(runs: Sequence[RunResult], path: str | Path) -> Path:
    """One PNG: every run's mean target test loss over training steps."""
    from tikmix._extras import require

    matplotlib = require("matplotlib", "plots", "the tikmix compare plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        if r.curve_steps:
            ax.plot(r.curve_steps, r.curve_mean, marker=".", label=f"{r.name} ({r.solver})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean target test loss")
    ax.set_title("tikmix compare")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
