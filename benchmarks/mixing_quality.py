"""Mixing-quality benchmark: TiKMiX against the static answers on real text, two target sets, several seeds.

    python benchmarks/mixing_quality.py                 # full run: 5 seeds, 2 target sets, 2 worker processes
    python benchmarks/mixing_quality.py --quick         # smoke test (tiny corpus and budget, one seed)
    python benchmarks/mixing_quality.py --report-only   # the tables from the runs already in --out

**Corpus.** Seven domains of real text found in the running Python installation (no download, nothing
generated): ``stdlib`` (standard-library source), ``numeric`` (numpy + scipy source), ``torch`` (PyTorch's
Python source), ``tests`` (test modules of installed packages), ``docs`` (package descriptions from
``*.dist-info/METADATA``), ``licenses`` (licence texts shipped with packages) and ``prose`` (Markdown and
reStructuredText files shipped in packages). Each file is read as bytes (the demo GPT is byte-level) and
cut into rows of ``seq_len + 1`` bytes. Files are deduplicated by content hash across all domains.

**Targets.** Two target sets (:data:`TARGET_SETS`): A = ``code`` (standard-library files), ``science``
(numpy/scipy files), ``docs`` (package descriptions); B = ``testcode`` (test modules), ``prose`` (Markdown/reST).
Each target is held out *by file*: about one file in eight of its domain (chosen by a hash of its path, the same for
every seed) never enters training; its rows form the target's dev set (half of the held-out files: what the
controller measures influence on, what search fits, what settings are chosen by) and test set (the other half: the
reported losses, never used for a decision). Training rows identical to any target row are dropped too.

**Methods.** ``uniform`` and ``proportional`` (fixed mixtures; trained once per seed, evaluated on every target);
per target set: ``once`` (TiKMiX-D's decision at the first boundary, then held: a run with one boundary),
``tikmix-d`` and ``tikmix-m`` (re-decided at 3 boundaries), and ``search`` (:func:`tikmix.run.search.search`: short
proxy runs of the same model on random mixtures, a LightGBM fit of the dev losses, the best predicted static mixture;
one search per seed over every target, fitted per target set). A ``:suffix`` sets the decision's options.

**Runs.** The corpus is written once as token files (``<out>/corpus/``). Every run is one ``tikmix run``
(:func:`tikmix.run.train`, the loop every user run goes through) of the built-in GPT from the same initialisation, for
the same number of steps; the run folder is ``<out>/runs/<method>[_<set>]_seed<seed>/``. Each finished run or search
is appended to ``<out>/runs.jsonl``, so an interrupted benchmark resumes and ``--report-only`` prints what is done.

**Tables.** Per target set: per target and mean test loss (mean over seeds), change vs uniform in %, a 95% paired
bootstrap interval of the mean loss difference over test sequences, wins (seeds whose mean beats uniform), the worst
target, the same change on the dev halves, each method's extra compute in training-run equivalents (controller time
over training time; search: proxy tokens over run tokens) and the controller's time share; the goals, met or not;
the mixture per stage.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DOMAINS = ("stdlib", "numeric", "torch", "tests", "docs", "licenses", "prose")
#: Two target sets the benchmark optimises for, separately: target -> the domain its files are held out of.
TARGET_SETS = {
    "A": {"code": "stdlib", "science": "numeric", "docs": "docs"},
    "B": {"testcode": "tests", "prose": "prose"},
}
TARGETS = {t: d for targets in TARGET_SETS.values() for t, d in targets.items()}  # every target, held out once
HOLD_OUT_EVERY = 8  # one file in eight of a target's domain is held out
_SKIP_DIRS = {"__pycache__", "site-packages", "test", "tests", "idle_test", "testing", "_vendor", "vendored"}


# ---------------------------------------------------------------------------------------- corpus
def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _py_files(root: Path | None, *, tests: bool = False) -> list[Path]:
    if root is None or not root.is_dir():
        return []
    out = []
    for p in root.rglob("*.py"):
        parts = set(p.relative_to(root).parts[:-1])
        is_test = bool(parts & {"test", "tests", "testing"}) or p.name.startswith("test_")
        if "__pycache__" in parts or "site-packages" in parts:
            continue
        if tests != is_test:
            continue
        if not tests and parts & _SKIP_DIRS:
            continue
        out.append(p)
    return out


def _site_packages() -> list[Path]:
    # In a virtual environment that sees the system's packages, numpy and torch live outside its own purelib:
    # take their folders too, or the corpus would depend on how the environment was made.
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths |= {str(d.parent) for d in (_package_dir("numpy"), _package_dir("torch")) if d is not None}
    return [Path(p) for p in sorted(paths) if Path(p).is_dir()]


#: tikmix's own files are left out of the corpus: its package metadata holds the README, which changes with the
#: documentation (and would change the corpus with it).
OWN_PACKAGES = ("tikmix", "tikmix_ext")


def find_sources() -> dict[str, list[Path]]:
    """Candidate files of every domain (sorted; the caller caps and deduplicates them)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sites = _site_packages()
    src: dict[str, list[Path]] = {d: [] for d in DOMAINS}
    src["stdlib"] = _py_files(stdlib)
    src["numeric"] = _py_files(_package_dir("numpy")) + _py_files(_package_dir("scipy"))
    src["torch"] = _py_files(_package_dir("torch"))
    for site in sites:
        for pkg in sorted(site.iterdir()):
            if pkg.is_dir() and not pkg.name.endswith(".dist-info") and pkg.name not in ("numpy", "scipy", "torch") \
                    and pkg.name not in OWN_PACKAGES:
                src["tests"] += _py_files(pkg, tests=True)
        for info in sorted(site.glob("*.dist-info")):
            if info.name.split("-")[0] in OWN_PACKAGES:
                continue
            meta = info / "METADATA"
            if meta.is_file():
                src["docs"].append(meta)
            for lic in sorted(info.rglob("*")):
                if lic.is_file() and lic.name.upper().startswith(("LICEN", "COPYING", "NOTICE", "AUTHORS")):
                    src["licenses"].append(lic)
        for ext in ("*.md", "*.rst"):
            for p in site.rglob(ext):
                if ".dist-info" not in str(p) and not p.name.upper().startswith(("LICEN", "COPYING")) \
                        and p.relative_to(site).parts[0] not in OWN_PACKAGES:
                    src["prose"].append(p)
    return {d: sorted(set(v)) for d, v in src.items()}


def _text(path: Path, domain: str) -> bytes:
    data = path.read_bytes()
    if domain == "docs":  # METADATA: keep the description (the body after the e-mail style header)
        head, sep, body = data.partition(b"\n\n")
        data = body if sep else b""
    return data


def _key(path: Path) -> int:
    return int.from_bytes(hashlib.sha1(str(path).encode()).digest()[:8], "little")


def _rows(chunks: list[bytes], width: int) -> np.ndarray:
    blob = b"\n\n".join(chunks)
    n = len(blob) // width
    return np.frombuffer(blob[: n * width], dtype=np.uint8).reshape(n, width).copy()


def _windows(stream: np.ndarray, seq_len: int) -> list[bytes]:
    """The rows a run reads from a token stream: ``seq_len + 1`` tokens at a stride of ``seq_len``."""
    return [stream[i * seq_len : i * seq_len + seq_len + 1].tobytes() for i in range((len(stream) - 1) // seq_len)]


def _disjoint(test: np.ndarray, dev: np.ndarray, seq_len: int) -> np.ndarray:
    """``test`` rows whose stream, as a run cuts it, shares no row with ``dev``'s (boilerplate such as licence headers
    repeats across held-out files): a test window equal to a dev window loses its ``seq_len`` tokens, which keeps
    every later window aligned; repeated until none is left."""
    width = seq_len + 1
    stream, dev_windows = test.reshape(-1), set(_windows(dev.reshape(-1), seq_len))
    while True:
        bad = [i for i, w in enumerate(_windows(stream, seq_len)) if w in dev_windows]
        if not bad:
            break
        keep = np.ones(len(stream), dtype=bool)
        for i in bad:
            keep[i * seq_len : (i + 1) * seq_len] = False
        stream = stream[keep]
    n = len(stream) // width
    return stream[: n * width].reshape(n, width)


def full_targets(held: tuple[list[bytes], list[bytes]], want: int) -> bool:
    return min(sum(map(len, held[0])), sum(map(len, held[1]))) >= want


def build_corpus(seq_len: int, bytes_per_domain: int, target_rows: int) -> tuple[Any, dict[str, Any]]:
    """A :class:`tikmix.demo.corpus.DemoCorpus` of real text, and a description of what went in."""
    from tikmix.demo.corpus import DemoCorpus

    width = seq_len + 1
    sources = find_sources()
    missing = [d for d in DOMAINS if not sources[d]]
    if len(DOMAINS) - len(missing) < 5 or any(TARGETS[t] in missing for t in TARGETS):
        raise RuntimeError(f"too few text sources on this machine: no files for {missing}")
    seen: set[bytes] = set()
    train_chunks: dict[str, list[bytes]] = {}
    held: dict[str, tuple[list[bytes], list[bytes]]] = {t: ([], []) for t in TARGETS}  # dev files, test files
    info: dict[str, Any] = {"files": {}, "bytes": {}, "held_out_files": {}}
    want = target_rows * width
    for domain in DOMAINS:
        if domain in missing:
            continue
        target = next((t for t, d in TARGETS.items() if d == domain), None)
        chunks, used, n_files, n_held = [], 0, 0, 0
        for path in sorted(sources[domain], key=_key):  # a hash order: a spread of packages and modules
            is_held = target is not None and _key(path) % HOLD_OUT_EVERY == 0
            if is_held:
                dev_files, test_files = held[target]  # type: ignore[index]
                if full_targets((dev_files, test_files), want):
                    continue  # held-out files never train, even when the target sets are full
            elif used >= bytes_per_domain:
                if target is None or full_targets(held[target], want):
                    break
                continue
            try:
                data = _text(path, domain)
            except OSError:
                continue
            if len(data) < width:
                continue
            digest = hashlib.sha1(data).digest()
            if digest in seen:  # the same file shipped twice (vendored copies, identical licences)
                continue
            seen.add(digest)
            if is_held:
                dev_files, test_files = held[target]  # type: ignore[index]
                # alternate by size so dev and test are file-disjoint and similar in size
                (dev_files if sum(map(len, dev_files)) <= sum(map(len, test_files)) else test_files).append(data)
                n_held += 1
                continue
            chunks.append(data[: bytes_per_domain - used + width])
            used += len(chunks[-1])
            n_files += 1
        train_chunks[domain] = chunks
        info["files"][domain], info["bytes"][domain] = n_files, used
        if target is not None:
            info["held_out_files"][target] = n_held
    dev, test = {}, {}
    for target, (dev_files, test_files) in held.items():
        dev[target] = _rows(dev_files, width)[:target_rows]
        test[target] = _disjoint(_rows(test_files, width)[:target_rows], dev[target], seq_len)
        if dev[target].shape[0] < 8 or test[target].shape[0] < 8:
            raise RuntimeError(f"target {target!r}: too few held-out rows ({dev[target].shape[0]} dev, "
                               f"{test[target].shape[0]} test)")
    target_hashes = {r.tobytes() for rows in list(dev.values()) + list(test.values()) for r in rows}
    domains = {}
    for domain, chunks in train_chunks.items():
        rows = _rows(chunks, width)
        keep = np.array([r.tobytes() not in target_hashes for r in rows], dtype=bool)
        domains[domain] = rows[keep]
        info.setdefault("dropped_duplicate_rows", {})[domain] = int((~keep).sum())
    info["rows"] = {d: int(r.shape[0]) for d, r in domains.items()}
    info["target_rows"] = {t: [int(dev[t].shape[0]), int(test[t].shape[0])] for t in TARGETS}
    roles = {d: ("target source" if d in TARGETS.values() else "other") for d in domains}
    return DemoCorpus(seq_len=seq_len, domains=domains, target_dev=dev, target_test=test, roles=roles), info


# ---------------------------------------------------------------------------------------- runs
#: Fixed mixtures: trained once per seed and evaluated on every target (they do not depend on the target set).
FIXED = ("uniform", "proportional")
#: Methods trained per target set (TiKMiX measures influence on the set's targets; search fits its loss).
PER_SET = ("once", "tikmix-d", "tikmix-m", "search")
METHOD_HELP = ("uniform, proportional (fixed mixtures), once (TiKMiX-D's mixture from the first boundary, then held: "
               "a run with one boundary), tikmix-d, tikmix-m, search (the static mixture of tikmix.run.search's proxy "
               "search)")


def settings_for(args: argparse.Namespace, seed: int) -> Any:
    from tikmix.demo.run import DemoSettings
    from tikmix.models import GPTConfig

    if args.quick:
        return DemoSettings(seed=seed, steps=48, batch_size=16, model=GPTConfig(seq_len=32, n_layer=1, d_model=32),
                            stages=(0.5,), eval_every=24, samples_per_domain=8, sketch_k=128, warmup=8,
                            direct={}, regression={"n_candidates": 32, "rounds": 1, "samples_per_round": 128},
                            methods=("uniform", "tikmix-d", "tikmix-m"))
    return DemoSettings(seed=seed, steps=args.steps, batch_size=32, model=GPTConfig(seq_len=64),
                        stages=(0.25, 0.5, 0.75), eval_every=max(1, args.steps // 10), samples_per_domain=64,
                        target_samples=args.target_samples or None, sketch_k=2048, direct={},
                        regression={"n_candidates": 384, "rounds": 4, "samples_per_round": 1024},
                        methods=("uniform", "tikmix-d", "tikmix-m"))


def _corpus_args(args: argparse.Namespace) -> tuple[int, int, int]:
    if args.quick:
        return 32, 40_000, 64
    return 64, args.bytes_per_domain, 512


_DATA: Any = None


def _init_worker(data: Any, threads: int) -> None:
    """Set up a worker: ``data`` is the run configs' ``data`` section with every target (:func:`write_corpus`)."""
    import torch

    global _DATA
    _DATA = data
    torch.set_num_threads(threads)


def write_corpus(corpus: Any, folder: Path) -> dict[str, Any]:
    """The corpus as token files in ``folder`` (written once); returns the run configs' ``data`` section."""
    from tikmix.demo.run import write_corpus as write

    return write(corpus, folder)


def corpus_fingerprint(folder: Path) -> str | None:
    """A hash of the corpus's token files (names and bytes), or None without any. The corpus is read from the Python
    installation, so it changes when a package is installed or upgraded (its files, its metadata): every run records
    the fingerprint, and runs of another corpus are neither reused nor reported beside this one's."""
    files = sorted(folder.glob("*.tokens")) if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _of_corpus(rows: list[dict[str, Any]], fingerprint: str | None) -> tuple[list[dict[str, Any]], int]:
    """The rows measured on the corpus ``fingerprint`` (all rows when it is None) and how many were left out."""
    if fingerprint is None:
        return rows, 0
    kept = [r for r in rows if r.get("corpus") == fingerprint]
    return kept, len(rows) - len(kept)


def set_data(data: dict[str, Any], target_set: str | None) -> dict[str, Any]:
    """The ``data`` section restricted to one target set's targets (None or ``"all"``: every target)."""
    if target_set in (None, "all"):
        return data
    names = TARGET_SETS[target_set]
    return {**data, "targets": {t: v for t, v in data["targets"].items() if t in names}}


#: Method-suffix options that go to TiKMiX-D's solver (:func:`tikmix.solve_direct`) rather than to the decision.
SOLVER_KEYS = ("alpha", "beta", "gamma")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_options(spec: str) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """The controller's ``decision``, TiKMiX-D solver options and config overrides from a method suffix:
    ``""`` (the defaults), ``"robust"``, ``"paper"``, or an objective with options, e.g.
    ``"robust,shrink=none,ema=0.7"``, ``"robust,alpha=4"`` (``alpha``, ``beta``, ``gamma`` go to the solver),
    ``"robust,safe=0"`` or ``"robust,influence.samples_per_domain=32"`` (a dotted key sets that config entry).
    Values: ``none`` = None, ``true``/``false``, integers, floats, anything else as text."""
    if not spec:
        return None, {}, {}
    objective, *pairs = spec.split(",")
    if not pairs:
        return objective, {}, {}
    decision: dict[str, Any] = {"objective": objective}
    solver: dict[str, float] = {}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"method option {pair!r}: expected key=value")
        if key in SOLVER_KEYS:
            solver[key] = float(value)
        elif "." in key:
            overrides[key] = _value(value)
        else:
            decision[key] = _value(value) if key != "shrink" else (None if value.lower() == "none" else value)
    return decision, solver, overrides


def _run_dir(out: Path, method: str, seed: int, target_set: str = "all") -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    tail = "" if target_set == "all" else f"_{target_set}"
    return out / "runs" / f"{safe}{tail}_seed{seed}"


def _set_key(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


def run_config(method: str, settings: Any, data: dict[str, Any], folder: Path,
               static_weights: list[float] | None = None) -> dict[str, Any]:
    """The ``tikmix run`` config of one benchmark run (method with its ``:suffix``)."""
    from tikmix.demo.run import run_config as demo_config

    base, _, suffix = method.partition(":")
    decision, solver, overrides = method_options(suffix)
    tikmix_base = "tikmix-m" if base == "tikmix-m" else "tikmix-d"
    if base in ("uniform", "proportional", "search"):
        cfg = demo_config("uniform", settings, data, folder)
        if base == "proportional":
            cfg["solver"] = {"name": "proportional"}
        elif base == "search":
            if static_weights is None:
                raise ValueError("method 'search' needs the searched mixture (static_weights)")
            cfg["solver"] = {"name": "static", "weights": [float(w) for w in static_weights]}
    elif base in ("once", "tikmix-d", "tikmix-m"):
        settings = replace(settings, decision=decision, direct={**settings.direct, **solver})
        cfg = demo_config(tikmix_base, settings, data, folder)
        if base == "once":  # the first boundary's decision, held: a run with only that boundary
            cfg["stages"] = {"boundaries": cfg["stages"]["boundaries"][:1]}
    else:
        raise ValueError(f"unknown method {method!r}: {METHOD_HELP}")
    for key, value in overrides.items():
        _set_key(cfg, key, value)
    return cfg


def _train(cfg: dict[str, Any], folder: Path) -> Any:
    import warnings

    import yaml

    import tikmix.run
    from tikmix.compare import load_run

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    config = tikmix.run.load_config(folder / "config.yaml")
    with warnings.catch_warnings():
        # a weight below the sampler's grid is not sampled: expected for domains a method drives toward 0
        warnings.filterwarnings("ignore", message=r"set_weights: domain\(s\) .* will not be sampled")
        tikmix.run.train(config, progress=False, log=lambda *a, **k: None)
    return load_run(folder)


def _search_dir(out: Path, seed: int) -> Path:
    return out / "search" / f"seed{seed}"


def _run_search(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The proxy search of one seed, over every target (each target set's mixture is fitted from it later)."""
    import torch

    from tikmix.run.search import search

    settings = settings_for(args, seed)
    folder = _search_dir(args.out, seed)
    cfg = run_config("uniform", settings, set_data(_DATA, "all"), folder / "base")
    t0 = time.perf_counter()
    res = search(cfg, proxies=args.proxies, proxy_steps=max(1, settings.steps // args.proxy_fraction),
                 jobs=1, threads=torch.get_num_threads(), seed=seed, out=folder, progress=False,
                 log=lambda *a, **k: None)
    return {"kind": "search", "method": "search-proxies", "seed": seed, "set": "all",
            "proxies": res.proxies, "compute": res.compute, "wall_s": time.perf_counter() - t0}


def _search_weights(runs: list[dict[str, Any]], seed: int, target_set: str, domains: list[str]) -> list[float]:
    from tikmix.run.search import fit_search

    row = next(r for r in runs if r.get("kind") == "search" and r["seed"] == seed)
    fit = fit_search(row["proxies"], domains, list(TARGET_SETS[target_set]), seed=seed)
    return [float(w) for w in fit["best_weights"]]


def _run_one(job: tuple[argparse.Namespace, str, int, str, Any]) -> dict[str, Any]:
    from tikmix.report import run_summary

    args, method, seed, target_set, static_weights = job
    if method == "search-proxies":
        return _run_search(args, seed)
    settings = settings_for(args, seed)
    folder = _run_dir(args.out, method, seed, target_set)
    t0 = time.perf_counter()
    run = _train(run_config(method, settings, set_data(_DATA, target_set), folder.resolve(), static_weights), folder)
    summary = run_summary(run)
    return {
        "kind": "run",
        "method": method,
        "set": target_set,
        "seed": seed,
        "domains": list(run.history["domains"]),
        "targets": list(run.targets),
        "final": run.final,
        "dev": run.dev_losses,
        "final_per_sequence": {t: v.tolist() for t, v in run.targets.items()},
        "stage_weights": [s["weights"] for s in run.history.get("stages", [])],
        "static_weights": static_weights,
        "feedback": run.history.get("feedback_summary"),
        "timing": summary["timing"],
        "wall_s": time.perf_counter() - t0,
        "steps": run.steps,
        "tokens": run.steps * run.tokens_per_step,
    }


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:  # rows written before target sets existed: one set, called "A"
        r.setdefault("kind", "run")
        r.setdefault("set", "A")
    return rows


# ---------------------------------------------------------------------------------------- table
def paired_ci(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``diffs`` ([seeds, sequences]), resampling sequences
    (the same resample for every seed: the test sequences are shared)."""
    rng = np.random.default_rng(seed)
    n = diffs.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))
    means = diffs[:, idx].mean(axis=(0, 2))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _extra_compute(r: dict[str, Any], search_rows: dict[int, dict[str, Any]]) -> float | None:
    """A method's compute beyond its training run, in training-run equivalents: the controller's time over the
    training time (its rehearsal, influence, solving); for search, the proxies' training tokens over the run's tokens."""
    base = r["method"].partition(":")[0]
    if base == "search":
        s = search_rows.get(r["seed"])
        return None if s is None else float(s["compute"]["proxy_tokens"]) / max(r["tokens"], 1)
    t = r["timing"]
    return t["controller_s"] / max(t["train_s"], 1e-9)


def _set_table(runs: list[dict[str, Any]], target_set: str, search_rows: dict[int, dict[str, Any]]
               ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    from tikmix.report import improvement

    own = next((r["targets"] for r in runs if r.get("kind") == "run" and r["set"] == target_set), None)
    targets = list(own or TARGET_SETS.get(target_set, {}) or runs[0]["targets"])
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in runs:
        if r.get("kind") != "run" or r["set"] not in (target_set, "all"):
            continue
        if not all(t in r["final"] for t in targets):
            continue
        by[(r["method"], r["seed"])] = r
    methods = ["uniform"] + sorted({m for m, _ in by} - {"uniform"},
                                   key=lambda m: ((FIXED + PER_SET).index(m.partition(":")[0])
                                                  if m.partition(":")[0] in FIXED + PER_SET else 99, m))
    seeds = sorted({s for m, s in by if ("uniform", s) in by})
    summary: dict[str, dict[str, Any]] = {}
    head = ("| method | seeds | " + " | ".join(targets) + " | mean | vs uniform | 95% CI (paired) | wins | "
            "worst target | dev vs uniform | extra compute | controller share |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in methods:
        ss = [s for s in seeds if (m, s) in by]
        if not ss:
            continue
        per_t = {t: float(np.mean([by[(m, s)]["final"][t] for s in ss])) for t in targets}
        mean = float(np.mean(list(per_t.values())))
        if m == "uniform":
            lines.append(f"| {m} | {len(ss)} | " + " | ".join(f"{per_t[t]:.4f}" for t in targets)
                         + f" | {mean:.4f} | - | - | - | - | - | 0 | - |")
            summary[m] = {"mean": mean, "seeds": ss}
            continue
        base = {t: float(np.mean([by[("uniform", s)]["final"][t] for s in ss])) for t in targets}
        base_mean = float(np.mean(list(base.values())))
        # improvement over uniform (uniform loss - method loss, > 0 = better): tikmix.report.improvement's sign
        pct = {t: improvement(base[t], per_t[t])[1] for t in targets}
        lo = hi = 0.0
        for ti, t in enumerate(targets):
            d = np.asarray([(np.asarray(by[("uniform", s)]["final_per_sequence"][t])
                             - np.asarray(by[(m, s)]["final_per_sequence"][t])) / len(targets) for s in ss])
            l, h = paired_ci(d, seed=ti)
            lo, hi = lo + l, hi + h  # a conservative interval for the mean over targets (sum of per-target)
        seed_means = {s: (np.mean([by[(m, s)]["final"][t] for t in targets]),
                          np.mean([by[("uniform", s)]["final"][t] for t in targets])) for s in ss}
        wins = sum(a < b for a, b in seed_means.values())
        worst = min(pct, key=lambda t: pct[t])
        devs = [(np.mean([by[(m, s)]["dev"][t] for t in targets]), np.mean([by[("uniform", s)]["dev"][t] for t in targets]))
                for s in ss if by[(m, s)].get("dev") and by[("uniform", s)].get("dev")]
        dev_pct = improvement(float(np.mean([b for _, b in devs])), float(np.mean([a for a, _ in devs])))[1] if devs else None
        extra = [x for x in (_extra_compute(by[(m, s)], search_rows) for s in ss) if x is not None]
        share = [by[(m, s)]["timing"]["controller_s"] / max(by[(m, s)]["timing"]["train_s"], 1e-9) for s in ss]
        is_search = m.partition(":")[0] == "search"
        pct_mean = improvement(base_mean, mean)[1]
        lines.append(
            f"| {m} | {len(ss)} | " + " | ".join(f"{per_t[t]:.4f} ({pct[t]:+.2f}%)" for t in targets)
            + f" | {mean:.4f} | {pct_mean:+.2f}% | [{lo:+.4f}, {hi:+.4f}] | {wins}/{len(ss)} | {worst} {pct[worst]:+.2f}% | "
            + (f"{dev_pct:+.2f}% | " if dev_pct is not None else "- | ")
            + (f"{np.mean(extra):.3f} | " if extra else "- | ")
            + ("- |" if is_search or m.partition(":")[0] in FIXED else f"{100 * np.mean(share):.1f}% |"))
        summary[m] = {"mean": mean, "pct": pct_mean, "wins": wins, "seeds": ss, "worst": (worst, pct[worst]),
                      "dev_pct": dev_pct, "extra": float(np.mean(extra)) if extra else None,
                      "seed_pct": {s: improvement(b, a)[1] for s, (a, b) in seed_means.items()}}
    return lines, summary


def _goals(summary: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for m in ("tikmix-d", "tikmix-m"):
        s = summary.get(m)
        if s:
            ok = s["wins"] == len(s["seeds"]) and s["worst"][1] >= -0.5
            out.append(f"- {m} beats uniform on every seed and no target is worse than -0.5%: "
                       f"{'met' if ok else 'not met'} ({s['wins']}/{len(s['seeds'])} seeds, worst target "
                       f"{s['worst'][0]} {s['worst'][1]:+.2f}%)")
    d, once, srch = summary.get("tikmix-d"), summary.get("once"), summary.get("search")
    if d and once:
        out.append(f"- dynamic (tikmix-d) beats once: {'met' if d['mean'] < once['mean'] else 'not met'} "
                   f"({d['pct']:+.2f}% vs {once['pct']:+.2f}% over uniform)")
    if d and srch and d.get("extra") is not None and srch.get("extra"):
        ratio = d["extra"] / srch["extra"]
        ok = d["mean"] <= srch["mean"] and ratio <= 1 / 3
        out.append(f"- tikmix-d at least as good as search with at most a third of its extra compute: "
                   f"{'met' if ok else 'not met'} ({d['pct']:+.2f}% vs {srch['pct']:+.2f}%; extra compute "
                   f"{d['extra']:.3f} vs {srch['extra']:.3f} run-equivalents = {ratio:.2f}x)")
    return out


def _pairs_interval(values: Sequence[float], n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (one per (target set, seed) pair): the
    run-to-run variation of training, which the paired intervals over test sequences do not include."""
    return paired_ci(np.asarray(values, dtype=np.float64)[None, :], n_boot=n_boot, seed=seed)


def _variants(done: list[dict[str, Any]]) -> list[str]:
    """Each method with options (``method:options``) against its method with the defaults, on the seeds and target
    sets both ran: per (target set, seed) pair the relative change of the mean dev loss (what an option is chosen
    by) and of the mean test loss (reported only), improvement > 0 = the option is better, as the mean over the
    pairs with a 95% bootstrap interval over them; with the controller's time share of both."""
    from tikmix.report import improvement

    by = {(r["method"], r["set"], r["seed"]): r for r in done}
    rows = []
    for m in sorted({r["method"] for r in done if ":" in r["method"]}):
        base = m.partition(":")[0]
        keys = sorted((ts, s) for (mm, ts, s) in by if mm == m and (base, ts, s) in by)
        if not keys:
            continue

        def share(method: str) -> float:
            return 100 * float(np.mean([by[(method, ts, s)]["timing"]["controller_s"]
                                        / max(by[(method, ts, s)]["timing"]["train_s"], 1e-9) for ts, s in keys]))

        def changes(part: str) -> list[float]:
            return [improvement(np.mean(list(by[(base, ts, s)][part].values())),
                                np.mean(list(by[(m, ts, s)][part].values())))[1] for ts, s in keys]

        def cell(values: list[float]) -> str:
            lo, hi = _pairs_interval(values)
            return f"{np.mean(values):+.2f}% [{lo:+.2f}, {hi:+.2f}]"

        have_dev = all(by[(mm, ts, s)].get("dev") for mm in (m, base) for ts, s in keys)
        per_key = changes("dev" if have_dev else "final")
        better = sum(x > 0 for x in per_key)
        sets = sorted({ts for ts, _ in keys})
        seeds = sorted({s for _, s in keys})
        rows.append(f"| {m} | {base} | {','.join(sets)} | {','.join(map(str, seeds))} | "
                    f"{cell(per_key) if have_dev else '-'} | {cell(changes('final'))} | {better}/{len(keys)} | "
                    f"{share(m):.1f}% vs {share(base):.1f}% |")
    if not rows:
        return []
    return ["Options against the defaults (same seeds and target sets; > 0 = the option is better): the mean over "
            "the (set, seed) pairs of the relative change, with a 95% bootstrap interval over the pairs (the "
            "variation of training included). Options are chosen by the dev column; the test column is reported, "
            "never used:", "",
            "| method | against | sets | seeds | dev loss | test loss | runs better (dev) | controller share |",
            "|---|---|---|---|---|---|---|---|"] + rows + [""]


def report(runs: list[dict[str, Any]], load: str) -> str:
    if not [r for r in runs if r.get("kind", "run") == "run"]:
        return "no finished runs yet"
    runs = [dict(r, kind=r.get("kind", "run"), set=r.get("set", "A")) for r in runs]
    search_rows = {r["seed"]: r for r in runs if r["kind"] == "search"}
    done = [r for r in runs if r["kind"] == "run"]
    domains = done[0]["domains"]
    sets = [s for s in TARGET_SETS if any(r["set"] == s for r in done)] or sorted({r["set"] for r in done} - {"all"})
    if not sets:  # fixed mixtures only: every target
        sets = ["all"]
    lines = [f"Mixing quality on real text: {len(domains)} domains ({', '.join(domains)}); {done[0]['steps']} steps = "
             f"{done[0]['tokens']:,} tokens per run; {load}", ""]
    for target_set in sets:
        table, summary = _set_table(runs, target_set, search_rows)
        names = [c.strip() for c in table[0].strip("|").split("|")[2:-8]]
        lines += [f"**Target set {target_set}** ({', '.join(names)}): test loss, mean over seeds", ""] + table + [""]
        goals = _goals(summary)
        if goals:
            lines += ["Goals:"] + goals + [""]
    lines += ["Improvement over uniform = uniform loss - method loss, > 0 = better (per target in %, and the mean of the "
              "test halves). The interval is the sum over targets of per-target 95% paired bootstrap intervals of "
              "(uniform - method) / targets; wins = seeds whose mean beats uniform; dev vs uniform = the same on the "
              "dev halves (what settings are chosen by). Extra compute, in training-run equivalents: the controller's "
              "time over the training time (TiKMiX), the proxies' training tokens over the run's (search).", ""]
    lines += _variants(done)
    lines += ["Mixture per stage (mean over seeds; TiKMiX's first stage is uniform, search's is its one mixture):", "",
              "| method | set | stage | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 3)]
    keys = sorted({(r["method"], r["set"]) for r in done})
    for m, s in keys:
        rs = [r for r in done if r["method"] == m and r["set"] == s]
        if rs[0].get("static_weights"):
            arr = np.asarray([r["static_weights"] for r in rs]).mean(axis=0)
            lines.append(f"| {m} | {s} | all | " + " | ".join(f"{v:.3f}" for v in arr) + " |")
            continue
        ws = [r["stage_weights"] for r in rs if r["stage_weights"]]
        if not ws or len({len(w) for w in ws}) != 1:
            continue
        arr = np.asarray(ws)
        for k in range(arr.shape[1]):
            lines.append(f"| {m} | {s} | {k + 2} | " + " | ".join(f"{v:.3f}" for v in arr[:, k].mean(axis=0)) + " |")
    walls = [r["wall_s"] for r in runs]
    lines += ["", f"Compute of this table: {len(done)} runs and {len(search_rows)} searches, {sum(walls) / 60:.1f} "
                  f"process-minutes in all (wall per run {np.mean([r['wall_s'] for r in done]):.0f} s on average)."]
    return "\n".join(lines)


def _check_methods(args: argparse.Namespace, data: dict[str, Any], seed: int) -> None:
    """Every method's run config through the config schema before any run starts: an unknown or bad key in a
    method's options (``tikmix-d:robust,influence.param=...``) fails now, naming the method, not in a worker."""
    from tikmix.run.config import parse_config
    from tikmix.run.schema import ConfigError

    settings = settings_for(args, seed)
    uniform = [1.0 / len(data["domains"])] * len(data["domains"])
    for method in args.methods:
        for target_set in (args.sets if method.partition(":")[0] in PER_SET else ["all"]):
            folder = _run_dir(args.out, method, seed, target_set).resolve()
            try:
                parse_config(run_config(method, settings, set_data(data, target_set), folder, uniform), folder)
            except ConfigError as exc:
                raise SystemExit(f"mixing_quality.py: --methods {method!r}: {exc}") from None


def _jobs(args: argparse.Namespace, seeds: list[int], done: set[tuple[str, str, int]]) -> list[tuple[Any, ...]]:
    """The runs still to do, in an order that keeps a 2-worker pool busy: searches first (the longest), then
    method-major (the first methods listed get all their seeds first: a partial run is still a comparison)."""
    jobs: list[tuple[Any, ...]] = []
    if any(m.partition(":")[0] == "search" for m in args.methods):
        jobs += [(args, "search-proxies", s, "all", None) for s in seeds if ("search-proxies", "all", s) not in done]
    for m in args.methods:
        base = m.partition(":")[0]
        if base == "search":
            continue  # fitted from its seed's search once that is done (second pass)
        for target_set in (["all"] if base in FIXED else args.sets):
            jobs += [(args, m, s, target_set, None) for s in seeds if (m, target_set, s) not in done]
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny corpus and budget, one seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4 (quick: 0)")
    ap.add_argument("--sets", nargs="+", default=list(TARGET_SETS), choices=list(TARGET_SETS),
                    help="target sets (default: all)")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps per run (full mode)")
    ap.add_argument("--target-samples", type=int, default=0,
                    help="dev rows per target that measure influence at a boundary (full mode; of 512; 0 = all)")
    ap.add_argument("--bytes-per-domain", type=int, default=4_000_000, help="training text per domain (full mode)")
    ap.add_argument("--methods", nargs="+", default=["uniform", "proportional", "once", "tikmix-d", "tikmix-m", "search"],
                    help=METHOD_HELP + "; append :robust or :paper for the controller's decision, optionally with "
                         "options (tikmix-d:robust,safe=0; alpha, beta, gamma go to TiKMiX-D's solver; a dotted key "
                         "sets that config entry, e.g. tikmix-d:robust,influence.samples_per_domain=32)")
    ap.add_argument("--proxies", type=int, default=16, help="search: proxy runs per seed")
    ap.add_argument("--proxy-fraction", type=int, default=8, help="search: a proxy trains steps / this many steps")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one run each); 1 = in this process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--out", type=Path, default=Path("mixing_quality_out"),
                    help="where the corpus, the run folders and runs.jsonl go")
    ap.add_argument("--report-only", action="store_true", help="print the table of the finished runs")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    for m in args.methods:
        if m.partition(":")[0] not in FIXED + PER_SET:
            ap.error(f"--methods: unknown {m!r}; {METHOD_HELP}")
        method_options(m.partition(":")[2])  # a malformed suffix fails now, not in a worker
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / ("runs_quick.jsonl" if args.quick else "runs.jsonl")
    load = f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    corpus_dir = args.out / ("corpus_quick" if args.quick else "corpus")
    if not args.report_only:
        corpus, info = build_corpus(*_corpus_args(args))
        print(json.dumps(info))
        data = write_corpus(corpus, corpus_dir)
        fingerprint = corpus_fingerprint(corpus_dir)
        _check_methods(args, data, seeds[0])
        domains = list(data["domains"])
        t0 = time.perf_counter()

        def record(r: dict[str, Any]) -> None:
            r["corpus"] = fingerprint
            with runs_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
            what = (f"mean {np.mean(list(r['final'].values())):.4f}" if r["kind"] == "run"
                    else f"{len(r['proxies'])} proxies")
            print(f"done {r['method']} set {r['set']} seed {r['seed']}: {what} ({r['wall_s']:.0f} s)", flush=True)

        def run_all(jobs: list[tuple[Any, ...]]) -> None:
            if not jobs:
                return
            if args.jobs <= 1:  # in this process: no worker start-up
                import torch

                threads = torch.get_num_threads()
                _init_worker(data, args.threads)
                try:
                    for job in jobs:
                        record(_run_one(job))
                finally:
                    torch.set_num_threads(threads)
                return
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(args.jobs, len(jobs)), _init_worker, (data, args.threads)) as pool:
                for r in pool.imap_unordered(_run_one, jobs):
                    record(r)

        def done() -> set[tuple[str, str, int]]:
            return {(r["method"], r["set"], r["seed"]) for r in _of_corpus(_load(runs_file), fingerprint)[0]}

        run_all(_jobs(args, seeds, done()))
        # second pass: each searched mixture, fitted per target set from its seed's proxies (dev losses only)
        rows = _of_corpus(_load(runs_file), fingerprint)[0]
        finals = [(args, m, s, ts, _search_weights(rows, s, ts, domains))
                  for m in args.methods if m.partition(":")[0] == "search" for ts in args.sets for s in seeds
                  if (m, ts, s) not in done()]
        run_all(finals)
        load += f"; {time.perf_counter() - t0:.0f} s wall, load average at end {os.getloadavg()[0]:.1f}"
    if args.report_only:  # the corpus the runs were written with
        fingerprint = corpus_fingerprint(corpus_dir)
    rows, other = _of_corpus(_load(runs_file), fingerprint)
    if other:
        load += (f"; {other} recorded runs of another corpus (or of none recorded) left out: this corpus is "
                 f"{fingerprint}")
    print(report([r for r in rows if r["seed"] in seeds], load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
