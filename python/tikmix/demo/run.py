"""The demo driver behind ``tikmix demo``: uniform vs TiKMiX-D vs TiKMiX-M on the same token budget.

:func:`run_demo` builds the embedded corpus (:mod:`tikmix.demo.corpus`) and writes it once as token files
(``<out>/data``); then every method is one ``tikmix run`` -- a run config (``<out>/runs/<method>/config.yaml``)
trained by :func:`tikmix.run.train`, the same loop, model (:class:`tikmix.models.GPT`, same initialisation),
optimizer and evaluation as any user run -- for the same number of steps:

* ``uniform``  -- a static uniform mixture (the baseline; ``solver: static``, ``weights: uniform``);
* ``static``   -- optional: a static mixture of the user's choice (``static_weights``);
* ``tikmix-d`` -- staged: uniform for the first stage, then at every boundary the Controller measures Group
  Influence on the target dev sets and re-solves the mixture with TiKMiX-D (``solver: direct``);
* ``tikmix-m`` -- the same with TiKMiX-M (``solver: regression``: a surrogate fitted to labels from per-sample
  influence rows).

Each run folder holds what ``tikmix run`` writes (``history.json``, ``eval.json``, plots); ``report.json`` indexes
them with the settings and the comparison against uniform (:func:`tikmix.compare.compare`: paired bootstrap
intervals over test sequences). ``tikmix report report.json`` and ``tikmix compare <out>/runs/*`` read them.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_int
from ..formats import DEMO
from ..models import GPTConfig
from .corpus import DemoCorpus, build_corpus

__all__ = ["DemoSettings", "QUICK", "METHODS", "run_demo", "write_corpus", "run_config", "settings_for"]

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
            ``min_lr_ratio * lr`` (:func:`tikmix.run.train.learning_rate`).
        grad_clip: max gradient norm (None: no clipping, as the demo's numbers were measured).
        stages: stage boundaries as fractions of ``steps`` (TiKMiX methods re-solve the mixture there).
        eval_every: steps between evaluations of the target test losses.
        train_sequences: rows generated per domain.
        samples_per_domain: rows per domain drawn at each boundary to measure influence.
        target_samples: at most this many rows of each target's dev set measure influence (None = all of them).
        sketch_k: sketch dimension of the gradient projection.
        influence_batch_size: micro-batch size while measuring influence.
        methods: which methods to run, in order (``uniform`` is the baseline and always runs first).
        static_weights: domain -> weight for the ``static`` method (required iff it is in ``methods``).
        direct: options for TiKMiX-D (:func:`tikmix.solve_direct`; also TiKMiX-M's first step). Default
            ``{"max_shift": 0.3}``: the paper's objective plus a cap of 0.3 on the L1 distance the mixture may
            move per stage. Without it, a harmful domain that was just removed can look helpful again at the
            next boundary (its absence leaves the model over-confident, and its high-entropy data is then a
            first-order improvement for some target) and come back in one jump; the cap damps that oscillation.
        regression: options for TiKMiX-M (:func:`tikmix.solve_regression`).
        decision: the controller's ``decision``: ``"paper"``, ``"robust"``, a dict of its options or a
            :class:`tikmix.decision.Decision` (the run config's ``solver.decision``; None = its default, robust).
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
    grad_clip: float | None = None
    stages: tuple[float, ...] = (0.25, 0.5, 0.75)
    eval_every: int = 100
    train_sequences: int = 4096
    samples_per_domain: int = 64
    target_samples: int | None = None
    sketch_k: int = 2048
    influence_batch_size: int = 64
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
                     "sketch_k", "influence_batch_size"):
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
        d["decision"] = _decision_options(self.decision)
        return d


def _decision_options(decision: Any) -> Any:
    """A Decision object as its options (configs and reports are plain YAML/JSON); anything else as it is."""
    return decision.options() if hasattr(decision, "options") else decision


#: A short budget for CI and smoke tests (about 20 s on one core).
QUICK = DemoSettings(steps=160, eval_every=40, train_sequences=512, samples_per_domain=32, sketch_k=512,
                     regression={"n_candidates": 64, "rounds": 2})


def write_corpus(corpus: DemoCorpus, folder: str | Path) -> dict[str, Any]:
    """Write the corpus once as token files under ``folder`` and return the ``data`` section of a run config.

    Each domain becomes one token stream (its rows in order; a run cuts it into rows of ``seq_len + 1`` tokens at
    a stride of ``seq_len``), each target a ``{dev, test}`` pair of token files.
    """
    from tikmix.data import write_token_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: np.ndarray) -> str:
        path = root / f"{name}.tokens"
        write_token_file(path, np.ascontiguousarray(rows).reshape(-1), vocab_size=256)
        return str(path.resolve())

    return {
        "seq_len": int(corpus.seq_len),
        "vocab_size": 256,
        "domains": {n: {"token_file": write(n, r)} for n, r in corpus.domains.items()},
        "targets": {t: {"dev": {"token_file": write(f"{t}.dev", corpus.target_dev[t])},
                        "test": {"token_file": write(f"{t}.test", corpus.target_test[t])}}
                    for t in corpus.target_test},
    }


def run_config(method: str, settings: DemoSettings, data: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """The ``tikmix run`` config (a plain mapping, as YAML would give it) of one demo method.

    ``data``: the config's ``data`` section (:func:`write_corpus`); ``out``: the run's folder.
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose from {METHODS}")
    m = settings.model
    if m.seq_len != data["seq_len"]:
        raise ValueError(f"settings.model.seq_len ({m.seq_len}) differs from the data's seq_len ({data['seq_len']})")
    cfg: dict[str, Any] = {
        "out": str(out),
        "seed": settings.seed,
        "device": settings.device,
        "data": dict(data),
        "model": {"n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model, "dropout": float(m.dropout)},
        "train": {"steps": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr,
                  "warmup": settings.warmup, "min_lr_ratio": settings.min_lr_ratio,
                  "weight_decay": settings.weight_decay, "grad_clip": settings.grad_clip,
                  "eval_every": settings.eval_every, "checkpoint_every": settings.steps},
        "influence": {"k": settings.sketch_k, "samples_per_domain": settings.samples_per_domain,
                      "batch_size": settings.influence_batch_size, "target_samples": settings.target_samples},
    }
    if method == "uniform":
        cfg["solver"] = {"name": "static", "weights": "uniform"}
    elif method == "static":
        if settings.static_weights is None:
            raise ValueError("method 'static' needs settings.static_weights")
        cfg["solver"] = {"name": "static", "weights": dict(settings.static_weights)}
    else:
        options = dict(settings.direct) if method == "tikmix-d" else {"direct": dict(settings.direct),
                                                                       "regression": dict(settings.regression)}
        cfg["solver"] = {"name": "direct" if method == "tikmix-d" else "regression", "options": options}
        if settings.decision is not None:
            cfg["solver"]["decision"] = _decision_options(settings.decision)
        cfg["stages"] = {"boundaries": settings.stage_steps()}
    return cfg


def train_method(method: str, settings: DemoSettings, data: Mapping[str, Any], out: str | Path, *,
                 progress: bool = False) -> Path:
    """Train one method as a ``tikmix run`` into the folder ``out`` (its ``config.yaml``, ``history.json``,
    ``eval.json``); returns the folder."""
    import yaml

    import tikmix.run

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(run_config(method, settings, data, folder.resolve()),
                                                       sort_keys=False))
    cfg = tikmix.run.load_config(folder / "config.yaml")
    with warnings.catch_warnings():
        # A weight below the sampler's weight grid is not sampled; the demo expects that for the domains TiKMiX
        # drives toward 0, and the realised counts in the history show it.
        warnings.filterwarnings("ignore", message=r"set_weights: domain\(s\) .* will not be sampled")
        tikmix.run.train(cfg, progress=progress, log=lambda *a, **k: None)
    return folder


def run_demo(
    settings: DemoSettings | None = None,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run every method in ``settings.methods`` and return the report, its runs read back
    (:func:`tikmix.report.load`).

    Files written to ``out_dir`` (default: a temporary folder, removed afterwards): ``data/`` (the corpus as token
    files), ``runs/<method>/`` (one ``tikmix run`` folder per method), ``report.json`` (settings, the index of the
    run folders and the comparison) and the plots ``mixture.png``, ``loss_curves.png``, ``influence.png``.
    """
    import tempfile

    settings = settings or DemoSettings()
    settings.validate()
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="tikmix-demo-") as tmp:
            return run_demo(settings, tmp, progress=progress, plots=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    corpus = build_corpus(settings.seed, seq_len=settings.model.seq_len, train_sequences=settings.train_sequences)
    if settings.static_weights is not None:
        unknown = sorted(set(settings.static_weights) - set(corpus.domains))
        if unknown:
            raise ValueError(f"static_weights: unknown domains {unknown}; domains are {list(corpus.domains)}")
    data = write_corpus(corpus, out / "data")
    methods = ["uniform"] + [m for m in settings.methods if m != "uniform"]
    runs: dict[str, str] = {}
    for method in methods:
        if progress:
            print(f"[tikmix demo] {method}", flush=True)
        train_method(method, settings, data, out / "runs" / method, progress=progress)
        runs[method] = f"runs/{method}"

    from tikmix.compare import compare, improvement
    from tikmix.report import plot_all, with_runs

    _, _, rows = compare([out / r for r in runs.values()], baseline="uniform")
    base = next(row for row in rows if row["baseline"])
    comparison = {}
    for row in rows:
        if row["baseline"]:
            continue
        comparison[row["run"]] = {
            # improvement = uniform loss - method loss: > 0 = better (tikmix.compare.improvement)
            "improvement": {t: improvement(base["final"][t], row["final"][t])[0] for t in row["final"]},
            "mean_improvement": float(row["improvement"]),
            "mean_improvement_pct": float(row["improvement_pct"]),
            "ci": [float(x) for x in row["ci"]],
            "beats_baseline": bool(row["improvement"] > 0),
        }
    report = {
        "format": DEMO,
        "settings": settings.to_dict(),
        "domains": list(corpus.domains),
        "roles": dict(corpus.roles),
        "targets": list(corpus.target_test),
        "baseline": "uniform",
        "runs": runs,
        "comparison": comparison,
        "wall_s": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    loaded = with_runs(report, out)
    for name, c in comparison.items():
        # everything the controller did at the boundaries (drawing samples, influence, solving), over training
        t = loaded["methods"][name]["timing"]
        c["influence_share"] = t["controller_s"] / max(t["train_s"], 1e-9)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if plots:
        loaded["plots"] = [str(p) for p in plot_all(loaded, out)]
    return loaded


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
