"""Mixing-quality benchmark: uniform vs TiKMiX-D vs TiKMiX-M on real text, several seeds, equal tokens.

    python benchmarks/mixing_quality.py                 # full run: 3 seeds, 2 worker processes
    python benchmarks/mixing_quality.py --quick         # smoke test (tiny corpus and budget, one seed)
    python benchmarks/mixing_quality.py --report-only   # the table from the runs already in --out

**Corpus.** Seven domains of real text found in the running Python installation (no download, nothing
generated): ``stdlib`` (standard-library source), ``numeric`` (numpy + scipy source), ``torch`` (PyTorch's
Python source), ``tests`` (test modules of installed packages), ``docs`` (package descriptions from
``*.dist-info/METADATA``), ``licenses`` (licence texts shipped with packages) and ``prose`` (Markdown and
reStructuredText files shipped in packages). Each file is read as bytes (the demo GPT is byte-level) and
cut into rows of ``seq_len + 1`` bytes. Files are deduplicated by content hash across all domains.

**Targets.** ``code`` (standard-library files), ``science`` (numpy/scipy files) and ``docs`` (package
descriptions) are held out *by file*: about one file in eight of those domains (chosen by a hash of its
path, the same for every seed) never enters training; its rows form the target's dev set (half of the
held-out files: what the controller measures influence on) and test set (the other half: the reported
losses). Training rows identical to any target row are dropped too (dedupe by sequence hash).

**Runs.** The corpus is written once as token files (``<out>/corpus/``; each domain one token stream that a run
cuts into rows of ``seq_len + 1`` tokens at a stride of ``seq_len``). Every (method, seed) is one ``tikmix run``
(:func:`tikmix.run.train`, the loop every user run goes through; the config comes from
:func:`tikmix.demo.run.run_config`, the run folder is ``<out>/runs/<method>_seed<seed>/``): the built-in GPT
(:class:`tikmix.models.GPT`) from the same initialisation, for the same number of steps. Each finished run is
appended to ``<out>/runs.jsonl``, so an interrupted benchmark resumes and ``--report-only`` prints what is done.

**Table.** Per target and mean test loss (mean over seeds), change vs uniform in %, a 95% paired bootstrap
interval of the mean loss difference over test sequences (paired by sequence, averaged over seeds), wins
(seeds whose mean loss beats uniform), the mixture per stage (mean over seeds) and the controller's time
share (influence + solving over training time).
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DOMAINS = ("stdlib", "numeric", "torch", "tests", "docs", "licenses", "prose")
TARGETS = {"code": "stdlib", "science": "numeric", "docs": "docs"}  # target -> domain it is held out of
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
            if pkg.is_dir() and not pkg.name.endswith(".dist-info") and pkg.name not in ("numpy", "scipy", "torch"):
                src["tests"] += _py_files(pkg, tests=True)
        for info in sorted(site.glob("*.dist-info")):
            meta = info / "METADATA"
            if meta.is_file():
                src["docs"].append(meta)
            for lic in sorted(info.rglob("*")):
                if lic.is_file() and lic.name.upper().startswith(("LICEN", "COPYING", "NOTICE", "AUTHORS")):
                    src["licenses"].append(lic)
        for ext in ("*.md", "*.rst"):
            for p in site.rglob(ext):
                if ".dist-info" not in str(p) and not p.name.upper().startswith(("LICEN", "COPYING")):
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
        test[target] = _rows(test_files, width)[:target_rows]
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
    """Set up a worker: ``data`` is the run configs' ``data`` section (:func:`write_corpus`)."""
    import torch

    global _DATA
    _DATA = data
    torch.set_num_threads(threads)


def write_corpus(corpus: Any, folder: Path) -> dict[str, Any]:
    """The corpus as token files in ``folder`` (written once); returns the run configs' ``data`` section."""
    from tikmix.demo.run import write_corpus as write

    return write(corpus, folder)


#: Method-suffix options that go to TiKMiX-D's solver (:func:`tikmix.solve_direct`) rather than to the decision.
SOLVER_KEYS = ("alpha", "beta", "gamma")


def method_options(spec: str) -> tuple[Any, dict[str, float]]:
    """The controller's ``decision`` and TiKMiX-D solver options from a method suffix: ``""`` (the defaults),
    ``"robust"``, ``"paper"``, or an objective with options, e.g. ``"robust,shrink=none,ema=0.7"`` or
    ``"robust,alpha=4"`` (``none`` = None, numbers as floats; ``alpha``, ``beta``, ``gamma`` go to the solver)."""
    if not spec:
        return None, {}
    objective, *pairs = spec.split(",")
    if not pairs:
        return objective, {}
    decision: dict[str, Any] = {"objective": objective}
    solver: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"method option {pair!r}: expected key=value")
        if key in SOLVER_KEYS:
            solver[key] = float(value)
        else:
            decision[key] = None if value.lower() == "none" else (value if key == "shrink" else float(value))
    return decision, solver


def _run_dir(out: Path, method: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    return out / "runs" / f"{safe}_seed{seed}"


def _run_one(job: tuple[argparse.Namespace, str, int]) -> dict[str, Any]:
    from tikmix.compare import load_run
    from tikmix.demo.run import train_method
    from tikmix.report import run_summary

    args, method, seed = job
    base, _, suffix = method.partition(":")  # e.g. tikmix-d:robust = TiKMiX-D with Decision("robust")
    decision, solver = method_options(suffix)
    settings = settings_for(args, seed)
    settings = replace(settings, decision=decision, direct={**settings.direct, **solver},
                       methods=("uniform", base) if base != "uniform" else ("uniform",))
    t0 = time.perf_counter()
    run = load_run(train_method(base, settings, _DATA, _run_dir(args.out, method, seed)))
    summary = run_summary(run)
    return {
        "method": method,
        "seed": seed,
        "domains": list(run.history["domains"]),
        "targets": list(run.targets),
        "final": run.final,
        "final_per_sequence": {t: v.tolist() for t, v in run.targets.items()},
        "stage_weights": [s["weights"] for s in run.history.get("stages", [])],
        "timing": summary["timing"],
        "wall_s": time.perf_counter() - t0,
        "steps": run.steps,
        "tokens": run.steps * run.tokens_per_step,
    }


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def report(runs: list[dict[str, Any]], load: str) -> str:
    from tikmix.report import improvement

    if not runs:
        return "no finished runs yet"
    methods = ["uniform"] + sorted({r["method"] for r in runs} - {"uniform"})
    targets = runs[0]["targets"]
    domains = runs[0]["domains"]
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs if ("uniform", r["seed"]) in by})
    lines = [f"Mixing quality on real text: {len(domains)} domains ({', '.join(domains)}), targets "
             f"{', '.join(targets)}; {runs[0]['steps']} steps = {runs[0]['tokens']:,} tokens per run; seeds "
             f"{seeds}; {load}", ""]
    head = ("| method | seeds | " + " | ".join(targets)
            + " | mean | mean vs uniform | 95% CI (paired) | wins | worst target |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for m in methods:
        ss = [s for s in seeds if (m, s) in by]
        if not ss:
            continue
        per_t = {t: np.mean([by[(m, s)]["final"][t] for s in ss]) for t in targets}
        mean = float(np.mean(list(per_t.values())))
        cells = [f"{per_t[t]:.4f}" for t in targets]
        if m == "uniform":
            lines.append(f"| {m} | {len(ss)} | " + " | ".join(cells) + f" | {mean:.4f} | - | - | - | - |")
            continue
        base = {t: np.mean([by[("uniform", s)]["final"][t] for s in ss]) for t in targets}
        base_mean = float(np.mean(list(base.values())))
        # improvement over uniform (uniform loss - method loss, > 0 = better): tikmix.report.improvement's sign
        pct = {t: improvement(base[t], per_t[t])[1] for t in targets}
        cells = [f"{per_t[t]:.4f} ({pct[t]:+.2f}%)" for t in targets]
        # mean over targets of the per-sequence improvement; sequences paired within each target
        diffs = []
        for s in ss:
            row = []
            for t in targets:
                a = np.asarray(by[(m, s)]["final_per_sequence"][t])
                b = np.asarray(by[("uniform", s)]["final_per_sequence"][t])
                row.append((b - a) / len(targets))
            diffs.append(row)
        lo = hi = 0.0
        for ti in range(len(targets)):
            d = np.asarray([diffs[k][ti] for k in range(len(ss))])
            l, h = paired_ci(d, seed=ti)
            lo, hi = lo + l, hi + h  # a conservative interval for the mean over targets (sum of per-target)
        wins = sum(np.mean(list(by[(m, s)]["final"].values())) < np.mean(list(by[("uniform", s)]["final"].values()))
                   for s in ss)
        worst = min(pct, key=lambda t: pct[t])
        lines.append(f"| {m} | {len(ss)} | " + " | ".join(cells) + f" | {mean:.4f} | {improvement(base_mean, mean)[1]:+.2f}% "
                     f"| [{lo:+.4f}, {hi:+.4f}] | {wins}/{len(ss)} | {worst} {pct[worst]:+.2f}% |")
    lines += ["", "Improvement over uniform = uniform loss - method loss, > 0 = better (per target in %, and the mean). "
              "Per-target % and the interval compare each method with uniform on the same seeds; the interval is "
              "the sum over targets of per-target 95% paired bootstrap intervals of (uniform - method) / targets.",
              "", "Mixture chosen at each boundary (mean over seeds; the first stage is uniform):", ""]
    lines += ["| method | boundary | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 2)]
    for m in methods:
        ws = [by[(m, s)]["stage_weights"] for s in seeds if (m, s) in by and by[(m, s)]["stage_weights"]]
        if not ws:
            continue
        arr = np.asarray(ws)
        for k in range(arr.shape[1]):
            lines.append(f"| {m} | {k + 1} | " + " | ".join(f"{v:.3f}" for v in arr[:, k].mean(axis=0)) + " |")
    lines += ["", "| method | controller time / training time | wall per run (s) |", "|---|---|---|"]
    for m in methods:
        rs = [by[(m, s)] for s in seeds if (m, s) in by]
        share = np.mean([r["timing"]["controller_s"] / max(r["timing"]["train_s"], 1e-9) for r in rs])
        lines.append(f"| {m} | {100 * share:.1f}% | {np.mean([r['wall_s'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny corpus and budget, one seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps per run (full mode)")
    ap.add_argument("--target-samples", type=int, default=0,
                    help="dev rows per target that measure influence at a boundary (full mode; of 512; 0 = all)")
    ap.add_argument("--bytes-per-domain", type=int, default=4_000_000, help="training text per domain (full mode)")
    ap.add_argument("--methods", nargs="+", default=["uniform", "tikmix-d", "tikmix-m"],
                    help="uniform, tikmix-d, tikmix-m; append :robust or :paper for the controller's decision, "
                         "optionally with options (tikmix-d:robust,shrink=none,ema=0.7; alpha, beta, gamma go to "
                         "TiKMiX-D's solver)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one run each); 1 = in this process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--out", type=Path, default=Path("mixing_quality_out"),
                    help="where the corpus, the run folders and runs.jsonl go")
    ap.add_argument("--report-only", action="store_true", help="print the table of the finished runs")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / ("runs_quick.jsonl" if args.quick else "runs.jsonl")
    load = f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    if not args.report_only:
        corpus, info = build_corpus(*_corpus_args(args))
        print(json.dumps(info))
        data = write_corpus(corpus, args.out / ("corpus_quick" if args.quick else "corpus"))
        done = {(r["method"], r["seed"]) for r in _load(runs_file)}
        # method-major: the first methods listed get all their seeds first (a partial run is still a comparison)
        jobs = [(args, m, s) for m in args.methods for s in seeds if (m, s) not in done]
        t0 = time.perf_counter()

        def record(r: dict[str, Any]) -> None:
            with runs_file.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"done {r['method']} seed {r['seed']}: mean {np.mean(list(r['final'].values())):.4f} "
                  f"({r['wall_s']:.0f} s)", flush=True)

        if args.jobs <= 1:  # in this process: no worker start-up
            import torch

            threads = torch.get_num_threads()
            _init_worker(data, args.threads)
            try:
                for job in jobs:
                    record(_run_one(job))
            finally:
                torch.set_num_threads(threads)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(args.jobs, len(jobs) or 1), _init_worker, (data, args.threads)) as pool:
                for r in pool.imap_unordered(_run_one, jobs):
                    record(r)
        load += f"; {time.perf_counter() - t0:.0f} s wall, load average at end {os.getloadavg()[0]:.1f}"
    print(report([r for r in _load(runs_file) if r["seed"] in seeds], load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
