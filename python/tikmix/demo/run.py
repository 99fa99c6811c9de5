"""The demo driver behind ``tikmix demo``: uniform vs TiKMiX-D vs TiKMiX-M on the same token budget.

:func:`run_demo` builds the embedded corpus (:mod:`tikmix.demo.corpus`), then for every method trains the
same small GPT (:mod:`tikmix.demo.model`, same initialisation) for the same number of steps, fed by a
:class:`tikmix.MixtureSampler`:

* ``uniform``  -- a static uniform mixture (the baseline);
* ``static``   -- optional: a static mixture of the user's choice (``static_weights``);
* ``tikmix-d`` -- staged: uniform for the first stage, then at every boundary a :class:`tikmix.Controller`
  measures Group Influence on the target dev sets and re-solves the mixture with TiKMiX-D;
* ``tikmix-m`` -- the same with TiKMiX-M (regression surrogate, labels from per-sample influence rows).

Target losses on held-out test sets (disjoint from the dev sets the controller measures influence on) are
evaluated along the way; the report holds the curves, final losses, per-stage mixtures, S matrices and the
wall-clock split between training, influence and solving.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .._extras import progress_bar
from .._validation import check_int
from ..report import improvement
from .corpus import DemoCorpus, build_corpus
from .model import GPT, GPTConfig, sequence_loss

__all__ = ["DemoSettings", "QUICK", "METHODS", "run_demo", "train_method"]

METHODS = ("uniform", "static", "tikmix-d", "tikmix-m")


@dataclass
class DemoSettings:
    """Everything a demo run depends on (all of it goes into the report).

    Attributes:
        seed: corpus, model initialisation, sampler and influence seed.
        steps: optimizer steps per method (the token budget is ``steps * batch_size * model.seq_len``).
        batch_size: sequences per step.
        model: the GPT size.
        lr, warmup, min_lr_ratio, weight_decay: AdamW with linear warm-up and cosine decay to
            ``min_lr_ratio * lr``.
        stages: stage boundaries as fractions of ``steps`` (TiKMiX methods re-solve the mixture there).
        eval_every: steps between evaluations of the target test losses.
        train_sequences: rows generated per domain.
        samples_per_domain: rows per domain drawn at each boundary to measure influence.
        target_samples: at most this many rows of each target's dev set measure influence (None = all of them).
        sketch_k: sketch dimension of the gradient projection.
        methods: which methods to run, in order (``uniform`` is the baseline and always runs first).
        static_weights: domain -> weight for the ``static`` method (required iff it is in ``methods``).
        direct: options for TiKMiX-D (:func:`tikmix.solve_direct`; also TiKMiX-M's first step). Default
            ``{"max_shift": 0.3}``: the paper's objective plus a cap of 0.3 on the L1 distance the mixture may
            move per stage. Without it, a harmful domain that was just removed can look helpful again at the
            next boundary (its absence leaves the model over-confident, and its high-entropy data is then a
            first-order improvement for some target) and come back in one jump; the cap damps that oscillation.
        regression: options for TiKMiX-M (:func:`tikmix.solve_regression`).
        decision: the controller's ``decision`` (:class:`tikmix.decision.Decision`; None = its default, robust).
        device: torch device string.
    """

    seed: int = 0
    steps: int = 1500
    batch_size: int = 32
    model: GPTConfig = field(default_factory=GPTConfig)
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    stages: tuple[float, ...] = (0.25, 0.5, 0.75)
    eval_every: int = 100
    train_sequences: int = 4096
    samples_per_domain: int = 64
    target_samples: int | None = None
    sketch_k: int = 2048
    methods: tuple[str, ...] = ("uniform", "tikmix-d", "tikmix-m")
    static_weights: dict[str, float] | None = None
    direct: dict[str, Any] = field(default_factory=lambda: {"max_shift": 0.3})
    regression: dict[str, Any] = field(
        default_factory=lambda: {"n_candidates": 384, "rounds": 4, "samples_per_round": 1024}
    )
    decision: Any = None
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("steps", "batch_size", "warmup", "eval_every", "train_sequences", "samples_per_domain",
                     "sketch_k"):
            check_int(getattr(self, name), name, minimum=0 if name == "warmup" else 1)
        if self.target_samples is not None:
            check_int(self.target_samples, "target_samples", minimum=1)
        if not self.stages or any(not 0 < f < 1 for f in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise ValueError(f"stages must be increasing fractions in (0, 1), got {self.stages!r}")
        bounds = self.stage_steps()
        if len(set(bounds)) != len(bounds) or bounds[0] < 1:
            raise ValueError(f"steps={self.steps} is too small for {len(self.stages)} distinct stage boundaries")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {METHODS}")
        if "uniform" not in self.methods:
            raise ValueError("methods must include 'uniform' (the baseline)")
        if ("static" in self.methods) != (self.static_weights is not None):
            raise ValueError("static_weights must be given exactly when 'static' is in methods")

    def stage_steps(self) -> list[int]:
        """The stage boundaries in steps."""
        return [int(round(f * self.steps)) for f in self.stages]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["stages"] = list(self.stages)
        d["methods"] = list(self.methods)
        return d


#: A short budget for CI and smoke tests (about 20 s on one core).
QUICK = DemoSettings(steps=160, eval_every=40, train_sequences=512, samples_per_domain=32, sketch_k=512,
                     regression={"n_candidates": 64, "rounds": 2})


def _lr(settings: DemoSettings, step: int) -> float:
    warm = min(1.0, (step + 1) / settings.warmup) if settings.warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    return settings.lr * warm * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cos)


@torch.no_grad()
def _sequence_losses(model: GPT, sets: Mapping[str, torch.Tensor], batch: int = 128) -> dict[str, torch.Tensor]:
    """Per-sequence test loss of every set (float64 [rows]), in row order."""
    was_training = model.training
    model.eval()
    out = {}
    for name, rows in sets.items():
        losses = [sequence_loss(model, rows[a : a + batch]) for a in range(0, rows.shape[0], batch)]
        out[name] = torch.cat(losses).double().cpu()
    model.train(was_training)
    return out


def _evaluate(model: GPT, sets: Mapping[str, torch.Tensor], batch: int = 128) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in _sequence_losses(model, sets, batch).items()}


def train_method(
    method: str,
    settings: DemoSettings,
    corpus: DemoCorpus,
    *,
    out_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one method on the corpus; returns its part of the report (final losses, curve, history, timing)."""
    from tikmix.controller import Controller
    from tikmix.data import MixtureSampler

    device = torch.device(settings.device)
    names = list(corpus.domains)
    rows = torch.from_numpy(np.concatenate([corpus.domains[n] for n in names]))
    sizes = [corpus.domains[n].shape[0] for n in names]
    test = {t: torch.from_numpy(r).to(device) for t, r in corpus.target_test.items()}
    if method == "static":
        assert settings.static_weights is not None
        weights = [float(settings.static_weights.get(n, 0.0)) for n in names]
    else:
        weights = [1.0 / len(names)] * len(names)

    torch.manual_seed(settings.seed)
    model = GPT(settings.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98),
                            weight_decay=settings.weight_decay)
    sampler = MixtureSampler(sizes, weights, batch_size=settings.batch_size, seed=settings.seed,
                             tokens_per_sample=settings.model.seq_len)
    loader = iter(DataLoader(rows, batch_size=settings.batch_size, sampler=sampler))

    controller = None
    if method in ("tikmix-d", "tikmix-m"):
        controller = Controller(
            model,
            sampler,
            domains={n: torch.from_numpy(corpus.domains[n]) for n in names},
            targets={t: torch.from_numpy(r) for t, r in corpus.target_dev.items()},
            loss_fn=sequence_loss,
            stages=settings.stage_steps(),
            solver="direct" if method == "tikmix-d" else "regression",
            solver_options=(
                {"direct": dict(settings.direct), "regression": dict(settings.regression)}
                if method == "tikmix-m" else dict(settings.direct)
            ),
            # verify=False: skip per-sample mode's self-check pass (it is tested in the influence suite)
            influence={"k": settings.sketch_k, "verify": False},
            samples_per_domain=settings.samples_per_domain,
            target_samples=settings.target_samples,
            batch_size=64,
            device=device,
            history_path=(out_dir / f"history_{method}.json") if out_dir is not None else None,
            seed=settings.seed,
            tokens_per_step=settings.tokens_per_step,
            total_steps=settings.steps,
            decision=settings.decision,
        )

    curve: list[dict[str, float]] = []
    train_s = eval_s = 0.0
    t_all = time.perf_counter()
    model.train()
    for step in range(1, settings.steps + 1):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = _lr(settings, step - 1)
        batch = next(loader).to(device, non_blocking=True).long()
        loss = sequence_loss(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.detach().item()
        train_s += time.perf_counter() - t0
        if controller is not None:
            controller.step(step)
        if step % settings.eval_every == 0 or step == settings.steps:
            t0 = time.perf_counter()
            losses = _evaluate(model, test)
            eval_s += time.perf_counter() - t0
            point = {"step": step, "train_loss": loss_value, **{f"target/{k}": v for k, v in losses.items()}}
            curve.append(point)
            if controller is not None:
                controller.log_metrics(step, {k: v for k, v in point.items() if k != "step"})
        if on_step is not None:
            on_step(step, loss_value)

    per_sequence = _sequence_losses(model, test)
    final = {name: float(v.mean()) for name, v in per_sequence.items()}
    history = None
    influence_s = solve_s = 0.0
    if controller is not None:
        history = controller.finish(settings.steps, test_losses=final) and controller.history
        influence_s = sum(s["timing"]["influence_s"] for s in controller.history["stages"])
        solve_s = sum(s["timing"]["solve_s"] for s in controller.history["stages"])
        controller_s = sum(s["timing"]["controller_s"] for s in controller.history["stages"])
    else:
        controller_s = 0.0
    realised = sampler.realised_counts(settings.steps)
    return {
        "final": final,
        "final_per_sequence": {name: v.tolist() for name, v in per_sequence.items()},
        "mean": float(np.mean(list(final.values()))),
        "curve": curve,
        "history": history,
        "weights_final": [float(x) for x in sampler.weights_at(settings.steps - 1)],
        "realised_tokens": [int(x) for x in realised.tokens] if realised.tokens is not None else None,
        "timing": {
            "train_s": train_s,
            "influence_s": influence_s,
            "solve_s": solve_s,
            "controller_s": controller_s,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - t_all,
        },
    }


def run_demo(
    settings: DemoSettings | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run every method in ``settings.methods`` and return the report (also written to ``out_dir``).

    Files written to ``out_dir`` (if given): ``report.json``, ``history_<method>.json`` per TiKMiX method,
    ``mixture.png``, ``loss_curves.png``, ``influence.png``.
    """
    settings = settings or DemoSettings()
    settings.validate()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    corpus = build_corpus(settings.seed, seq_len=settings.model.seq_len, train_sequences=settings.train_sequences)
    if settings.static_weights is not None:
        unknown = sorted(set(settings.static_weights) - set(corpus.domains))
        if unknown:
            raise ValueError(f"static_weights: unknown domains {unknown}; domains are {list(corpus.domains)}")
    methods = ["uniform"] + [m for m in settings.methods if m != "uniform"]

    bar = None
    if progress:
        bar = progress_bar(True, "tikmix demo", total=settings.steps * len(methods), unit="step",
                           dynamic_ncols=True, desc="tikmix demo")
    results: dict[str, Any] = {}
    try:
        for method in methods:
            if bar is not None:
                bar.set_description(f"{method:>9}")

            def on_step(step: int, loss: float) -> None:
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            with warnings.catch_warnings():
                # A weight below the sampler's weight grid is not sampled; the demo expects that for the
                # domains TiKMiX drives toward 0, and the realised counts in the history show it.
                warnings.filterwarnings("ignore", message=r"set_weights: domain\(s\) .* will not be sampled")
                results[method] = train_method(method, settings, corpus, out_dir=out, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()

    base = results["uniform"]
    comparison = {}
    for name, r in results.items():
        if name == "uniform":
            continue
        mean_improvement, mean_improvement_pct = improvement(base["mean"], r["mean"])
        comparison[name] = {
            # improvement = uniform loss - method loss: > 0 = better (tikmix.report.improvement)
            "improvement": {t: improvement(base["final"][t], r["final"][t])[0] for t in r["final"]},
            "mean_improvement": mean_improvement,
            "mean_improvement_pct": mean_improvement_pct,
            "beats_baseline": r["mean"] < base["mean"],
            # everything the controller did at the boundaries (drawing samples, influence, solving), over training
            "influence_share": r["timing"]["controller_s"] / max(r["timing"]["train_s"], 1e-9),
        }
    report = {
        "format": "tikmix.demo/1",
        "settings": settings.to_dict(),
        "domains": list(corpus.domains),
        "roles": dict(corpus.roles),
        "targets": list(corpus.target_test),
        "baseline": "uniform",
        "methods": results,
        "comparison": comparison,
        "wall_s": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if out is not None:
        (out / "report.json").write_text(json.dumps(_clean(report), indent=1))
        if plots:
            from tikmix.report import plot_all

            report["plots"] = [str(p) for p in plot_all(report, out)]
    return report


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def settings_for(
    *, seed: int = 0, quick: bool = False, budget: int | None = None, device: str = "cpu",
    methods: Sequence[str] | None = None, static_weights: Mapping[str, float] | None = None,
) -> DemoSettings:
    """Demo settings from the CLI flags (``--quick`` budget, ``--budget`` tokens, ``--seed``, ``--device``)."""
    base = QUICK if quick else DemoSettings()
    s = replace(base, seed=seed, device=device)
    if budget is not None:
        if budget < s.tokens_per_step * 8:
            raise ValueError(f"--budget must be at least {s.tokens_per_step * 8} tokens, got {budget}")
        s = replace(s, steps=budget // s.tokens_per_step)
    if methods is not None:
        s = replace(s, methods=tuple(methods))
    if static_weights is not None:
        s = replace(s, static_weights=dict(static_weights),
                    methods=tuple(m for m in s.methods if m != "static") + ("static",))
    s.validate()
    return s
