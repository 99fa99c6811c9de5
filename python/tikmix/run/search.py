"""``tikmix search CONFIG``: a static mixture found by proxy search, the RegMix way -- the baseline TiKMiX is
measured against.

:func:`search` trains ``proxies`` short runs of the config, each with a fixed mixture drawn from a Dirichlet around
the config's prior (``data.initial_weights``, else uniform), measures every target's dev loss, and hands the table
to :func:`fit_search`: one LightGBM regressor per target (mixture -> dev loss), cross-validated, then the mean of
the ``top_k`` best of ``candidates`` fresh mixtures by predicted mean dev loss. It writes a ready-to-run static
config, so the found mixture is trained with ``tikmix run`` exactly like any other run and compared with
``tikmix compare``.

Every proxy is a ``tikmix run`` of the config (:func:`tikmix.run.train`, the one training loop): the same model,
initialisation (the config's seed, identical for all proxies, as RegMix does), optimiser and data, only
``solver: static`` with the proxy's weights and ``train.steps = proxy_steps``. Only the dev halves of the targets
are used to choose the mixture; the test halves stay for reporting.

Files under ``out``::

    proxies/settings.json      what the proxies depend on; a different search in the same folder is refused
    proxies/<i>/proxy.json     proxy i's mixture, dev losses, steps, tokens, seconds (a finished proxy)
    proxies/<i>/config.yaml    proxy i's config (``tikmix run`` trains it again)
    proxies/<i>/...            proxy i's run folder (history.json, eval.json, plots; its checkpoints are
                               removed once proxy.json is written)
    search.json                every proxy, the fit quality, the chosen mixture, the compute spent
    search.png                 predicted vs measured dev loss of the proxies, and the chosen mixture
    static.yaml                the config with the chosen static mixture, ``out: <out>/static_run``
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tikmix._extras import optional, progress_bar, require
from tikmix._validation import check_int
from tikmix.formats import SEARCH

from .config import load_config, parse_config
from .schema import RunConfig, config_differences
from .train import train

__all__ = ["search", "fit_search", "SearchResult", "write_static_config", "proxy_weights", "draw_mixtures",
           "dirichlet_alpha"]

#: LightGBM settings of the per-target surrogates. The table is small (tens of proxies): leaves of two rows, bins
#: of one row, a slow learning rate and row bagging; 400 trees keep scoring 100,000 candidates to about a second
#: per target on one thread. Constant leaves, not linear ones: linear leaves extrapolate
#: toward the corners of the simplex, where no proxy was trained, and the search then picks a corner.
_LGB_PARAMS: dict[str, Any] = {
    "num_leaves": 4,
    "min_data_in_bin": 1,
    "learning_rate": 0.05,
    "num_boost_round": 400,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "linear_tree": False,
    "early_stopping_round": 0,
}
_MAX_FOLDS = 5
_CANDIDATE_STREAM = 2**32 - 1  # the candidates' seed word; proxies use [seed, i] with i < 2**32 - 1


# ---------------------------------------------------------------------------------------------- mixtures
def dirichlet_alpha(prior: Sequence[float], concentration: float) -> np.ndarray:
    """The Dirichlet parameter of the proxies' and candidates' mixtures: ``concentration * m * prior``.

    With a uniform prior and ``concentration = 1`` every entry is 1: mixtures uniform on the simplex. Larger
    values keep the mixtures closer to the prior, smaller ones push them toward the corners (few domains each).
    A domain whose prior weight is 0 gets 0 here and weight 0 in every mixture.
    """
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size < 2 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"prior must be >= 2 finite non-negative weights with a positive sum, got {list(prior)!r}")
    c = float(concentration)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"concentration must be a finite number > 0, got {concentration!r}")
    return c * p.size * (p / p.sum())


def draw_mixtures(rng: np.random.Generator, alpha: np.ndarray, n: int) -> np.ndarray:
    """``n`` mixtures ``[n, m]`` from Dirichlet(``alpha``); domains with ``alpha == 0`` get weight 0."""
    support = alpha > 0
    out = np.zeros((n, alpha.size))
    out[:, support] = rng.dirichlet(alpha[support], size=n)
    return out


def proxy_weights(seed: int, index: int, alpha: np.ndarray) -> list[float]:
    """Proxy ``index``'s mixture: one draw of :func:`draw_mixtures` from ``np.random.default_rng([seed, index])``,
    so a proxy's mixture does not depend on how many proxies the search has."""
    return [float(x) for x in draw_mixtures(np.random.default_rng([seed, index]), alpha, 1)[0]]


# ---------------------------------------------------------------------------------------------- the fit
def _rank_r2(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant column: scipy warns and returns nan, which is what we report
        rho = float(spearmanr(y, pred).statistic) if np.ptp(pred) > 0 and np.ptp(y) > 0 else float("nan")
    return r2, rho


def _surrogate(n: int, seed: int) -> Any:
    from tikmix.solvers.regression import _LightGBM

    require("lightgbm", "regression", "tikmix search")
    # Leaves of at least n/16 rows (2 for the small tables of a short search, LightGBM's 20 from 320 proxies on).
    return _LightGBM({**_LGB_PARAMS, "min_data_in_leaf": min(20, max(2, n // 16))}, seed % 2**31)


def fit_search(
    proxies: Sequence[Mapping[str, Any]],
    domains: Sequence[str],
    targets: Sequence[str],
    *,
    prior: Sequence[float] | None = None,
    seed: int = 0,
    candidates: int = 100_000,
    top_k: int = 100,
    concentration: float = 1.0,
) -> dict[str, Any]:
    """Regress dev loss on the mixture and choose the static mixture (RegMix).

    Args:
        proxies: finished proxy runs, each a mapping with ``"weights"`` (``m`` floats in domain order) and
            ``"dev_loss"`` (target name -> float; it may hold more targets than ``targets``).
        domains: the ``m`` domain names, in the order of ``weights``.
        targets: the targets to minimise (the mean of their dev losses); any non-empty subset of the proxies'
            targets.
        prior: the mixture the candidates are drawn around (default uniform); see :func:`dirichlet_alpha`.
        seed: seeds the folds, LightGBM and the candidates; the same inputs and seed give the same answer.
        candidates: mixtures drawn from Dirichlet(:func:`dirichlet_alpha`) and scored by the surrogates.
        top_k: how many of the best-scored candidates are averaged into the answer.
        concentration: the Dirichlet concentration of the candidates (the search's).

    One LightGBM regressor per target maps the mixture to that target's dev loss. Its quality is measured by
    k-fold cross-validation (k = min(5, proxies), folds from a seeded permutation): out-of-fold predictions give
    R^2 and the Spearman rank correlation per target. The regressors refitted on all proxies then score every
    candidate by the mean over ``targets`` of the predicted dev loss, and the answer is the mean of the ``top_k``
    best candidates. Averaging, as RegMix does, because the single best candidate of a surrogate fitted to tens of
    noisy points sits wherever the surrogate's error happens to be lowest; the mean of the best region moves much
    less with that error and, as a convex combination, is a mixture again.

    Returns:
        ``{"best_weights": [m floats, sum 1], "fit": {...}}``. ``fit`` holds ``r2`` and ``spearman`` (target ->
        float, nan for a constant column), ``predicted`` (target -> out-of-fold prediction per proxy, in the
        proxies' order), ``predicted_best`` / ``predicted_prior`` (the refitted surrogates' mean dev loss at the
        answer and at the prior), ``best_proxy`` (position of the proxy with the lowest measured mean dev loss),
        ``method``, ``cv``, ``targets``, ``candidates``, ``top_k``.

    Raises:
        ValueError: naming the argument: too few proxies (fewer than ``max(4, m + 1)``), a proxy without a
            target's loss or with the wrong number of weights, an unknown or empty target list, ``top_k`` greater
            than ``candidates``, a non-finite loss.
    """
    names = [str(d) for d in domains]
    m = len(names)
    if m < 2:
        raise ValueError(f"domains must name at least 2 domains, got {names!r}")
    if isinstance(targets, str):
        raise ValueError(f"targets must be a list of target names, got the string {targets!r}")
    tnames = [str(t) for t in targets]
    if not tnames:
        raise ValueError("targets must name at least one target, got an empty list")
    rows = list(proxies)
    need = max(4, m + 1)
    if len(rows) < need:
        raise ValueError(f"proxies: need at least max(4, domains + 1) = {need} finished proxy runs for {m} domains, "
                         f"got {len(rows)}")
    candidates = check_int(candidates, "candidates", minimum=1)
    top_k = check_int(top_k, "top_k", minimum=1)
    if top_k > candidates:
        raise ValueError(f"top_k must be <= candidates ({candidates}), got {top_k}")
    seed = check_int(seed, "seed", minimum=0)
    alpha = dirichlet_alpha([1.0] * m if prior is None else prior, concentration)
    if alpha.size != m:
        raise ValueError(f"prior has {alpha.size} entries but there are {m} domains ({', '.join(names)})")

    X = np.zeros((len(rows), m))
    Y = np.zeros((len(rows), len(tnames)))
    for r, p in enumerate(rows):
        w = np.asarray(p.get("weights", ()), dtype=np.float64).reshape(-1)
        if w.size != m:
            raise ValueError(f"proxies[{r}]['weights'] has {w.size} entries but there are {m} domains")
        X[r] = w
        losses = p.get("dev_loss", {})
        for c, t in enumerate(tnames):
            if t not in losses:
                known = ", ".join(sorted(losses)) or "none"
                raise ValueError(f"targets: proxies[{r}] has no dev loss of target {t!r} (it has: {known})")
            Y[r, c] = float(losses[t])
    if not np.all(np.isfinite(Y)):
        bad = int(np.argwhere(~np.isfinite(Y))[0, 0])
        raise ValueError(f"proxies[{bad}]['dev_loss'] is not finite: {rows[bad]['dev_loss']!r}")

    n = len(rows)
    k = min(_MAX_FOLDS, n)
    folds = np.array_split(np.random.default_rng([seed, _CANDIDATE_STREAM, 0]).permutation(n), k)
    r2: dict[str, float] = {}
    rho: dict[str, float] = {}
    predicted: dict[str, list[float]] = {}
    models = []
    for c, t in enumerate(tnames):
        oof = np.zeros(n)
        for f, held in enumerate(folds):
            keep = np.setdiff1d(np.arange(n), held)
            oof[held] = _surrogate(keep.size, seed + f).fit(X[keep], Y[keep, c]).predict(X[held])
        r2[t], rho[t] = _rank_r2(Y[:, c], oof)
        predicted[t] = [float(v) for v in oof]
        models.append(_surrogate(n, seed).fit(X, Y[:, c]))

    C = draw_mixtures(np.random.default_rng([seed, _CANDIDATE_STREAM]), alpha, candidates)
    score = np.mean([mdl.predict(C) for mdl in models], axis=0)
    best_rows = np.argsort(score, kind="stable")[:top_k]
    best = C[best_rows].mean(axis=0)
    best = best / best.sum()
    at = np.vstack([best, alpha / alpha.sum()])
    pred_at = np.mean([mdl.predict(at) for mdl in models], axis=0)
    return {
        "best_weights": [float(x) for x in best],
        "fit": {
            "r2": r2,
            "spearman": rho,
            "method": f"lightgbm: one regressor per target, mixture -> dev loss ({_LGB_PARAMS['num_leaves']} leaves, "
                      f"{_LGB_PARAMS['num_boost_round']} trees at learning rate {_LGB_PARAMS['learning_rate']}); the "
                      f"mean of the top {top_k} of {candidates} Dirichlet candidates by predicted mean dev loss",
            "cv": f"k-fold, k={k}: R^2 and Spearman of the out-of-fold predictions of {n} proxies",
            "predicted": predicted,
            "predicted_best": float(pred_at[0]),
            "predicted_prior": float(pred_at[1]),
            "best_proxy": int(np.argmin(Y.mean(axis=1))),
            "targets": tnames,
            "candidates": candidates,
            "top_k": top_k,
        },
    }


# ---------------------------------------------------------------------------------------------- proxies
def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _scaled(value: int, proxy_steps: int, steps: int, minimum: int) -> int:
    return max(minimum, int(round(value * proxy_steps / steps)))


def _proxy_raw(cfg: RunConfig, weights: Sequence[float], proxy_steps: int, out: Path) -> dict[str, Any]:
    """The proxy's config as a plain mapping: the config with ``solver: static``, no stages, ``proxy_steps`` steps
    (warm-up scaled by ``proxy_steps / train.steps``; the test halves evaluated only at the start and the end -- a
    proxy's curve is never used, and evaluating it would cost more than the proxy's training; one checkpoint at the
    end), no TensorBoard."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    t = cfg.train
    raw["out"] = str(out)
    raw["solver"] = {"name": "static", "weights": [float(w) for w in weights]}
    raw.pop("stages", None)
    raw["data"].pop("initial_weights", None)
    raw.pop("on_boundary", None)  # a static run has no boundary
    raw["log"] = "none"
    raw["train"] = {**raw["train"], "steps": proxy_steps,
                    "warmup": _scaled(t.warmup, proxy_steps, t.steps, 0),
                    "eval_every": proxy_steps,
                    "checkpoint_every": proxy_steps}
    return raw


def _parse_quietly(raw: dict[str, Any]) -> RunConfig:
    from .schema import ConfigWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # the config's own warnings were shown once, for the search
        return parse_config(raw)


def _proxy_file(out: Path, index: int) -> Path:
    return out / "proxies" / str(index) / "proxy.json"


def _write_json(path: Path, doc: Any) -> None:
    """Write then rename: a reader (a resumed search) sees a whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


_PREPARED: Any = None  # this process's opened data (tikmix.run.prepare), shared by the proxies it trains


def _init_worker(cfg: RunConfig, threads: int) -> None:
    """Worker process set-up: its torch threads and its own opening of the data."""
    import torch

    from .prepare import prepare

    global _PREPARED
    torch.set_num_threads(threads)
    _PREPARED = prepare(cfg, log=_quiet)


def _run_proxy(job: dict[str, Any]) -> dict[str, Any]:
    """Train one proxy through :func:`tikmix.run.train`, evaluate its dev sets, write its ``proxy.json``."""
    import torch

    from .checkpoint import checkpoint_dir, load_latest
    from .model import build_model
    from .prepare import PreparedRun
    from .train import evaluate

    import yaml

    base = _PREPARED
    t0 = time.perf_counter()
    cfg = _parse_quietly(job["raw"])
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "config.yaml").write_text(yaml.safe_dump(job["raw"], sort_keys=False))  # tikmix run can redo it
    run = PreparedRun(config=cfg, tokenizer=base.tokenizer, vocab_size=base.vocab_size, domains=base.domains,
                      dev=base.dev, test=base.test)
    with warnings.catch_warnings():
        # A drawn weight below the sampler's weight grid is not sampled (the sampler warns once per proxy); the
        # tokens each domain really got are recorded with the proxy, the regression uses the drawn weights.
        warnings.filterwarnings("ignore", message=r"set_weights: domain\(s\) .* will not be sampled")
        # resume: a proxy interrupted mid-training continues from its checkpoint (none: it starts at step 0)
        history = train(run, resume=True, progress=False, log=_quiet, plots=False)
    device = torch.device(cfg.device)
    state = load_latest(cfg.out_dir, device, log=_quiet)
    if state is None or int(state["step"]) != cfg.train.steps:
        raise RuntimeError(f"proxy {job['index']}: no final checkpoint in {checkpoint_dir(cfg.out_dir)} after "
                           "training")
    model, loss_fn = build_model(cfg, base.vocab_size, device)
    model.load_state_dict(state["model"])
    dev = evaluate(model, base.dev, device, loss_fn)
    record = {
        "index": int(job["index"]),
        "weights": [float(w) for w in job["weights"]],
        "dev_loss": {k: float(v) for k, v in dev.items()},
        "steps": int(cfg.train.steps),
        "tokens": int(cfg.train.steps * cfg.tokens_per_step),
        "wall_s": time.perf_counter() - t0,
        "params": int(sum(p.numel() for p in model.parameters())),
        "realised_tokens": [int(n) for n in history["final"]["realised_total"]["tokens"]],
    }
    _write_json(_proxy_file(Path(job["out"]), record["index"]), {"format": SEARCH, "proxy": record})
    # The proxy's dev losses are all the search needs: its model and optimizer state would only fill the disk.
    shutil.rmtree(checkpoint_dir(cfg.out_dir), ignore_errors=True)
    return record


def _finished(out: Path, index: int, weights: list[float], proxy_steps: int) -> dict[str, Any] | None:
    path = _proxy_file(out, index)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        rec = doc["proxy"]
        ok = (doc.get("format") == SEARCH and rec["index"] == index and rec["steps"] == proxy_steps
              and np.allclose(rec["weights"], weights, rtol=0, atol=1e-12))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"out: {path} is not proxy {index} of this search ({proxy_steps} steps, weights "
                         f"{[round(w, 4) for w in weights]}); use another out folder or delete that proxy's folder")
    return rec


# ---------------------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        proxies: one dict per proxy, in index order: ``index``, ``weights`` (domain order), ``dev_loss`` (target ->
            mean per-sequence dev loss), ``steps``, ``tokens``, ``wall_s`` (seconds it took when it was trained),
            ``params`` (the model's parameter count), ``realised_tokens`` (training tokens per domain, as sampled).
        best_weights: the chosen mixture, in domain order (:func:`fit_search`).
        fit: the fit quality and details (:func:`fit_search`'s ``fit``): ``r2``, ``spearman``, ``method``, ``cv``, ...
        compute: ``proxy_runs``, ``proxy_steps`` and ``proxy_tokens`` (summed over the proxies),
            ``train_token_equivalents`` (proxy tokens / tokens of the configured run), ``flops`` (6 x parameters x
            proxy tokens), ``wall_s`` (the proxies' seconds, summed: what the search costs whatever ``jobs`` and
            however often it was resumed) and ``elapsed_s`` (this call, end to end).
        config_path: ``<out>/static.yaml``, the config with the chosen mixture, for ``tikmix run``.
        domains: the domain names (the order of every weight list).
        targets: the targets minimised.
        out: the search folder.
        plot_path: ``<out>/search.png``, or None without matplotlib.
    """

    proxies: list[dict[str, Any]]
    best_weights: list[float]
    fit: dict[str, Any]
    compute: dict[str, Any]
    config_path: Path
    domains: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    out: Path = Path(".")
    plot_path: Path | None = None


def _as_config(cfg: Any) -> RunConfig:
    if isinstance(cfg, RunConfig):
        return cfg
    if isinstance(cfg, (str, os.PathLike)):
        return load_config(cfg)
    if isinstance(cfg, dict):
        return parse_config(cfg)
    raise TypeError(f"cfg must be a RunConfig, a config file path or a config mapping, got {type(cfg).__name__}")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix proxies of different searches in one folder; record the settings of a new one."""
    path = folder / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        # "source" (the user's config, which the proxies' config is derived from) names the changes; it is compared
        # only for display, so that a folder written without it still resumes
        changed = config_differences({k: v for k, v in saved.items() if k != "source"},
                                     {k: v for k, v in settings.items() if k != "source"})
        if changed and "source" in saved:
            named = config_differences(saved["source"], settings.get("source"), "config")
            changed = named + [c for c in changed if not c.startswith("config")] or changed
        if changed:
            raise ValueError(f"out: {folder.parent} holds proxies of a different search (changed: "
                             f"{', '.join(changed)}); use another out folder, or delete {folder} to start over")
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)


def search(
    cfg: RunConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    proxies: int = 16,
    proxy_steps: int | None = None,
    concentration: float = 1.0,
    jobs: int = 1,
    threads: int | None = None,
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    candidates: int = 100_000,
    top_k: int = 100,
    progress: bool = True,
    log: Callable[..., Any] = print,
) -> SearchResult:
    """Find a static mixture by proxy search (RegMix) and write a ready-to-run config for it.

    Args:
        cfg: a :class:`RunConfig`, a config file path (:func:`load_config`) or a config mapping
            (:func:`parse_config`; relative paths are relative to the current folder). Its solver and stages are
            ignored (the proxies are static); its targets are what the search minimises: the mean over targets of
            the dev loss. Text sources are tokenised once into the config's ``<out>/data``, where ``tikmix run``
            of the config finds them again.
        proxies: short runs to train; at least ``max(4, domains + 1)``. Proxy ``i``'s mixture depends on ``seed``
            and ``i`` only, so a larger count in the same ``out`` adds proxies to the finished ones.
        proxy_steps: optimizer steps per proxy, at most ``train.steps``; default ``train.steps // 8`` (at least
            1). Warm-up is scaled by ``proxy_steps / train.steps`` and the cosine schedule spans the proxy's own
            steps; test losses are evaluated only at the start and the end.
        concentration: the Dirichlet concentration around the prior (:func:`dirichlet_alpha`): 1 with a uniform
            prior draws mixtures uniformly from the simplex.
        jobs: proxies trained at once, each in its own (spawned) process; 1 trains them in this process.
        threads: torch threads per proxy; default ``cores // jobs`` (at least 1). Matmul sums depend on the thread
            count, so the same ``threads`` gives identical results whatever ``jobs``.
        seed: seeds the mixtures, the folds and the surrogates; default the config's seed. The model
            initialisation and the data order are the config's (its seed), the same for every proxy.
        out: the search folder; default ``<config's out>/search``. A proxy whose ``proxy.json`` exists there is
            not trained again, so an interrupted search resumes; a folder holding proxies of a different search
            (config, proxy_steps, concentration, seed or prior changed) is refused.
        candidates: mixtures scored by the surrogates (:func:`fit_search`).
        top_k: the best-scored candidates averaged into the answer (:func:`fit_search`).
        progress: a tqdm bar over the proxies.
        log: where status lines go.

    Returns:
        a :class:`SearchResult`; ``<out>/search.json``, ``<out>/search.png`` and ``<out>/static.yaml`` are written.

    Raises:
        ValueError: naming the argument: ``proxies`` < ``max(4, domains + 1)``, ``proxy_steps`` outside
            ``[1, train.steps]``, ``concentration`` <= 0, ``top_k`` > ``candidates``, ``jobs`` < 1, ``threads`` < 1,
            ``out`` holding a different search; under a launcher with ``WORLD_SIZE`` > 1 (the proxies are
            single-process runs: use ``jobs``). :class:`tikmix.run.ConfigError` for a bad config.
    """
    t_start = time.perf_counter()
    config = _as_config(cfg)
    names, tnames = list(config.data.domains), list(config.data.targets)
    m = len(names)
    need = max(4, m + 1)
    proxies = check_int(proxies, "proxies")
    if proxies < need:
        raise ValueError(f"proxies must be >= max(4, domains + 1) = {need} for {m} domains (a regression on the "
                         f"mixture needs more runs than it has weights), got {proxies}")
    steps = config.train.steps
    proxy_steps = max(1, steps // 8) if proxy_steps is None else check_int(proxy_steps, "proxy_steps")
    if not 1 <= proxy_steps <= steps:
        raise ValueError(f"proxy_steps must be >= 1 and <= train.steps ({steps}), got {proxy_steps}")
    if isinstance(concentration, bool) or not isinstance(concentration, (int, float)) \
            or not (math.isfinite(concentration) and concentration > 0):
        raise ValueError(f"concentration must be a finite number > 0, got {concentration!r}")
    candidates = check_int(candidates, "candidates", minimum=1)
    top_k = check_int(top_k, "top_k", minimum=1)
    if top_k > candidates:
        raise ValueError(f"top_k must be <= candidates ({candidates}), got {top_k}")
    jobs = check_int(jobs, "jobs")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = max(1, _cores() // jobs) if threads is None else check_int(threads, "threads")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    seed = config.seed if seed is None else check_int(seed, "seed", minimum=0)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("WORLD_SIZE > 1: tikmix search trains every proxy in one process; run it without a "
                         "launcher and use jobs for parallel proxies")
    folder = Path(out) if out is not None else config.out_dir / "search"
    folder = folder.resolve()
    prior = list(config.data.initial_weights or [1.0 / m] * m)
    alpha = dirichlet_alpha(prior, concentration)

    template = _parse_quietly(_proxy_raw(config, prior, proxy_steps, folder / "proxies" / "0")).comparable()
    template.pop("solver")
    source = config.comparable()
    for ignored in ("solver", "stages", "on_boundary"):  # a search trains static proxies
        source.pop(ignored, None)
    _check_settings(folder / "proxies", {"format": SEARCH, "config": template, "proxy_steps": proxy_steps,
                                         "concentration": float(concentration), "seed": seed, "prior": prior,
                                         "source": source})

    draws = [proxy_weights(seed, i, alpha) for i in range(proxies)]
    records: dict[int, dict[str, Any]] = {}
    for i, w in enumerate(draws):
        rec = _finished(folder, i, w, proxy_steps)
        if rec is not None:
            records[i] = rec
    pending = [i for i in range(proxies) if i not in records]
    tokens_per_proxy = proxy_steps * config.tokens_per_step
    log(f"[tikmix search] {proxies} proxies x {proxy_steps} steps ({tokens_per_proxy:,} tokens each; "
        f"{len(records)} already finished in {folder}), {jobs} job(s) x {threads} thread(s)")
    jobs_in = [{"index": i, "weights": draws[i], "out": str(folder),
                "raw": _proxy_raw(config, draws[i], proxy_steps, folder / "proxies" / str(i))} for i in pending]
    if pending:
        _train_proxies(config, jobs_in, records, jobs=jobs, threads=threads, progress=progress, log=log,
                       total=proxies)

    rows = [records[i] for i in range(proxies)]
    fitted = fit_search(rows, names, tnames, prior=prior, seed=seed, candidates=candidates, top_k=top_k,
                        concentration=concentration)
    best = fitted["best_weights"]
    run_tokens = steps * config.tokens_per_step
    proxy_tokens = sum(int(r["tokens"]) for r in rows)
    compute = {
        "proxy_runs": proxies,
        "proxy_steps": sum(int(r["steps"]) for r in rows),
        "proxy_tokens": proxy_tokens,
        "train_token_equivalents": proxy_tokens / run_tokens,
        "flops": float(sum(6.0 * int(r["params"]) * int(r["tokens"]) for r in rows)),
        "wall_s": float(sum(float(r["wall_s"]) for r in rows)),
        "elapsed_s": time.perf_counter() - t_start,
    }
    config_path = write_static_config(config, names, best, folder / "static.yaml", folder / "static_run")
    result = SearchResult(proxies=rows, best_weights=best, fit=fitted["fit"], compute=compute,
                          config_path=config_path, domains=names, targets=tnames, out=folder)
    result.plot_path = _plot(result, folder / "search.png")
    _write_json(folder / "search.json", {
        "format": SEARCH,
        "domains": names,
        "targets": tnames,
        "settings": {"proxies": proxies, "proxy_steps": proxy_steps, "concentration": float(concentration),
                     "seed": seed, "prior": prior, "candidates": candidates, "top_k": top_k},
        "proxies": rows,
        "best_weights": best,
        "fit": fitted["fit"],
        "compute": compute,
        "config_path": str(config_path),
        "plot_path": None if result.plot_path is None else str(result.plot_path),
    })
    return result


def _train_proxies(config: RunConfig, jobs_in: list[dict[str, Any]], records: dict[int, dict[str, Any]], *,
                   jobs: int, threads: int, progress: bool, log: Callable[..., Any], total: int) -> None:
    bar = progress_bar(True if progress else False, "tikmix search", total=total, initial=len(records),
                       unit="proxy", desc="tikmix search", dynamic_ncols=True)

    def done(rec: dict[str, Any]) -> None:
        records[rec["index"]] = rec
        bar.update(1)
        mean = float(np.mean(list(rec["dev_loss"].values())))
        bar.set_postfix(last_mean_dev_loss=f"{mean:.3f}", refresh=False)
        if not progress:
            log(f"[tikmix search] proxy {rec['index']}: mean dev loss {mean:.4f} ({rec['wall_s']:.1f} s)")

    try:
        if jobs == 1:
            import torch

            from .prepare import prepare

            global _PREPARED
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            _PREPARED = prepare(config, log=log)
            try:
                for job in jobs_in:
                    done(_run_proxy(job))
            finally:
                _PREPARED = None
                torch.set_num_threads(before)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from .prepare import prepare

        prepare(config, log=log)  # text sources are tokenised once, here, before the workers open them
        with ProcessPoolExecutor(max_workers=min(jobs, len(jobs_in)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(config, threads)) as pool:
            futures = [pool.submit(_run_proxy, job) for job in jobs_in]
            try:
                for fut in as_completed(futures):
                    done(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- outputs
def write_static_config(cfg: RunConfig, domains: Sequence[str], weights: Sequence[float], path: Path,
                        run_out: Path) -> Path:
    """Write ``cfg`` as a static run of ``weights`` (``solver: {name: static, weights: {domain: w}}``, no stages, no
    ``initial_weights``, ``out: run_out``) to ``path`` as YAML; returns ``path``. Paths in it are absolute, so it
    runs from anywhere: ``tikmix run path``."""
    import yaml

    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw["out"] = str(run_out)
    raw.pop("stages", None)
    raw["data"].pop("initial_weights", None)
    raw["solver"] = {"name": "static", "weights": {d: float(w) for d, w in zip(domains, weights)}}
    _parse_quietly(raw)  # what is written must load
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("# tikmix search: the static mixture chosen by proxy search; train it with tikmix run\n"
                   + yaml.safe_dump(raw, sort_keys=False))
    os.replace(tmp, path)
    return path


def _plot(res: SearchResult, path: Path) -> Path | None:
    if optional("matplotlib") is None:
        return None
    from tikmix._extras import pyplot

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        lo, hi = math.inf, -math.inf
        for t in res.targets:
            actual = [r["dev_loss"][t] for r in res.proxies]
            pred = res.fit["predicted"][t]
            ax.scatter(actual, pred, s=18, label=f"{t} (R² {res.fit['r2'][t]:.2f}, ρ {res.fit['spearman'][t]:.2f})")
            lo, hi = min(lo, *actual, *pred), max(hi, *actual, *pred)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel("measured dev loss")
        ax.set_ylabel("predicted dev loss (out of fold)")
        ax.set_title(f"{len(res.proxies)} proxies: surrogate fit")
        ax.legend(fontsize=8)
        x = np.arange(len(res.domains))
        bx.bar(x, res.best_weights, color="tab:green")
        bx.set_xticks(x, res.domains, rotation=30, ha="right")
        bx.set_ylabel("weight")
        bx.set_title("chosen static mixture")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
