"""The ``tikmix`` command line: ``demo``, ``run``, ``search``, ``report``, ``compare`` and ``tokenize``.

* ``tikmix demo`` -- no downloads: trains a small GPT on an embedded multi-domain corpus with a static
  uniform mixture, staged TiKMiX-D and staged TiKMiX-M on the same token budget, prints the results table
  and writes ``report.json``, per-method histories and PNG plots into ``--out``.
* ``tikmix run CONFIG.yaml`` -- staged training on your data (token files, text folders, jsonl or parquet per
  domain) with the built-in GPT, a Hugging Face causal LM or your own model, single process or under ``torchrun``;
  ``--check`` only checks the config and the data, ``--resume`` continues from the last checkpoint. The config
  reference is ``docs/run-config.md`` (:mod:`tikmix.run.schema`).
* ``tikmix search CONFIG.yaml`` -- the baseline: a static mixture found by proxy search (RegMix): short proxy
  runs of the config on random mixtures, a regression of dev loss on the mixture, the best predicted mixture
  written as a ready-to-run static config (:mod:`tikmix.run.search`).
* ``tikmix report FILE.json`` -- re-draws the table and plots from a demo report or a run history.
* ``tikmix compare RUN_DIR... [--baseline NAME]`` -- test losses of finished runs side by side, the improvement
  over a baseline run (> 0 = better) with a paired bootstrap interval, and one plot of all loss curves.
* ``tikmix tokenize SOURCE... -o OUT.tokens [--tokenizer bytes|FILE]`` -- builds a token file once from jsonl,
  parquet, text files or text folders (streamed, with a progress bar and the throughput), for ``token_file:``
  sources of any number of runs.

``main(argv)`` returns the exit status: 0 on success, 2 for a usage or config error (the message names
the flag or config key), 1 for anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]


def _static_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=weight pairs separated by commas, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="tikmix", description="Influence-driven dynamic data mixtures (TiKMiX).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,run,search,report,tokenize,compare}")

    d = sub.add_parser("demo", help="uniform vs TiKMiX-D vs TiKMiX-M on an embedded corpus (no downloads)",
                       description="Train a small GPT on an embedded multi-domain corpus with a static uniform "
                                   "mixture and with staged TiKMiX-D / TiKMiX-M on the same token budget.")
    d.add_argument("--device", default="cpu", help="torch device (default cpu; a CUDA device uses the CUDA kernels)")
    d.add_argument("--seed", type=int, default=0, help="seed of the corpus, model, sampler and influence (default 0)")
    d.add_argument("--out", default=None, help="output folder (default ./tikmix-demo/seed<SEED>)")
    d.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                   help="training tokens per method (default 3,072,000 = 1500 steps x 32 x 64)")
    d.add_argument("--quick", action="store_true", help="a tiny budget for smoke tests (~1-2 min)")
    d.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the numbers are reproducible as printed; the float sums of "
                        "matmuls depend on the thread count, so other counts give slightly different results)")
    d.add_argument("--methods", default=None,
                   help="comma-separated subset of uniform,static,tikmix-d,tikmix-m (default all but static)")
    d.add_argument("--static-weights", type=_static_weights, default=None, metavar="NAME=W,...",
                   help="also train a static mixture of your choice, e.g. arith=0.3,prose=0.3,facts=0.4")
    d.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("run", help="staged TiKMiX training on your own data from a YAML config")
    r.add_argument("config", help="YAML config (reference: docs/run-config.md)")
    r.add_argument("--resume", action="store_true",
                   help="continue from the newest usable checkpoint in <out>/checkpoints, if any")
    r.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    r.add_argument("--check", action="store_true",
                   help="only check the config and its data (nothing is written or trained) and exit")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("search", help="a static mixture found by proxy search (RegMix), the baseline for TiKMiX",
                       description="Train short proxy runs of CONFIG on random static mixtures (Dirichlet around "
                                   "the config's initial_weights, else uniform), regress each target's dev loss on "
                                   "the mixture (LightGBM), and write the best predicted mixture as a ready-to-run "
                                   "static config <out>/static.yaml. An interrupted search resumes in the same "
                                   "--out.")
    s.add_argument("config", help="YAML config of tikmix run (its solver and stages are ignored)")
    s.add_argument("--proxies", type=int, default=16, metavar="N",
                   help="proxy runs (default 16; at least max(4, domains + 1))")
    s.add_argument("--proxy-steps", type=int, default=None, metavar="S",
                   help="optimizer steps per proxy (default train.steps // 8)")
    s.add_argument("--concentration", type=float, default=1.0, metavar="C",
                   help="Dirichlet concentration around the prior (default 1: uniform on the simplex for a "
                        "uniform prior; larger = closer to the prior)")
    s.add_argument("--jobs", type=int, default=1, metavar="J", help="proxies trained at once, one process each "
                                                                    "(default 1)")
    s.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per proxy (default cores // jobs)")
    s.add_argument("--out", default=None, metavar="DIR", help="search folder (default <config's out>/search)")
    s.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the mixtures and the fit (default the config's seed)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (one line per proxy instead)")

    rep = sub.add_parser("report", help="re-draw the table and plots from a report/history JSON")
    rep.add_argument("file", help="report.json of tikmix demo, or history.json of tikmix run / a Controller "
                                  "(or the folder holding either)")
    rep.add_argument("--out", default=None, help="where the PNGs go (default: next to the file)")
    rep.add_argument("--prefix", default="", help="prefix of the PNG file names (e.g. demo_)")

    c = sub.add_parser("compare", help="test losses of finished runs side by side, with paired bootstrap intervals",
                       description="Compare finished `tikmix run` output folders (same targets, test sequences and "
                                   "budget): final test loss per target and mean, the difference to a baseline run "
                                   "with a 95% paired bootstrap interval over test sequences, and one plot of all "
                                   "loss curves.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run output folders (their names label the runs)")
    c.add_argument("--baseline", default=None, metavar="NAME",
                   help="the run folder name to compare against (default: the first static/proportional run, "
                        "else the first run)")
    c.add_argument("--plot", default="tikmix_compare.png", metavar="PATH",
                   help="where the loss-curve plot goes (default ./tikmix_compare.png; 'none' for no plot)")
    t = sub.add_parser("tokenize", help="build a token file once from jsonl / parquet / text sources",
                       description="Tokenise documents (streamed) into one token file, an end-of-document token "
                                   "after each; reuse it in any run config as a token_file source.")
    t.add_argument("sources", nargs="+", help="jsonl / parquet / text files or folders of text files, in order")
    t.add_argument("-o", "--out", required=True, help="the token file to write")
    t.add_argument("--tokenizer", default="bytes",
                   help="bytes (default), a local tokenizer.json, or a local tiktoken BPE rank file")
    t.add_argument("--field", default="text", help="the text field of jsonl records / parquet column (default text)")
    t.add_argument("--format", dest="fmt", default=None, choices=["jsonl", "parquet", "text_folder", "text"],
                   help="source format (default: from the file extension; folders are text folders)")
    t.add_argument("--pattern", default="**/*.txt", help="glob of files inside text folders (default **/*.txt)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _compare(args: argparse.Namespace) -> int:
    from tikmix.compare import CompareError, compare, format_table, plot_curves

    try:
        runs, base, rows = compare(args.runs, args.baseline)
    except CompareError as exc:
        print(f"tikmix compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(runs, base, rows))
    if args.plot != "none":
        print(f"plot: {plot_curves(runs, args.plot, base)}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from tikmix.data.text_sources import tokenize_to_token_file
    from tikmix.data.tokenizers import TokenizerSpecError, load_tokenizer

    try:
        tok = load_tokenizer(args.tokenizer)
    except TokenizerSpecError as exc:
        print(f"tikmix tokenize: error: --tokenizer: {exc}", file=sys.stderr)
        return 2
    try:
        tokenize_to_token_file(args.sources, args.out, tok, fmt=args.fmt, field=args.field, pattern=args.pattern,
                               progress=not args.no_progress, log=print)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tikmix tokenize: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tikmix.demo.run import run_demo, settings_for
    from tikmix.report import format_tables

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    try:
        settings = settings_for(seed=args.seed, quick=args.quick, budget=args.budget, device=args.device,
                                methods=methods, static_weights=args.static_weights)
    except ValueError as exc:
        print(f"tikmix demo: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("tikmix-demo") / f"seed{args.seed}"
    steps = settings.steps
    print(f"[tikmix demo] seed {settings.seed}, {steps} steps x {settings.tokens_per_step} tokens per method "
          f"({steps * settings.tokens_per_step:,} tokens), methods: {', '.join(settings.methods)}, "
          f"device {settings.device}, {_threads()} torch thread(s); writing to {out}", flush=True)
    t0 = time.perf_counter()
    report = run_demo(settings, out, progress=not args.no_progress, plots=not args.no_plots)
    print()
    print(format_tables(report))
    print()
    for name, c in report["comparison"].items():
        verdict = "beats" if c["beats_baseline"] else "does NOT beat"
        print(f"{name} {verdict} uniform on the mean target loss: improvement {c['mean_improvement']:+.4f} "
              f"({c['mean_improvement_pct']:+.1f}%; uniform loss - {name} loss, > 0 = better); influence + solving "
              f"took {100 * c['influence_share']:.1f}% of the training time")
    print(f"\nreport: {out / 'report.json'}")
    for p in report.get("plots", []):
        print(f"plot:   {p}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _load(args: argparse.Namespace, command: str, check: bool = False) -> Any:
    """The validated config of ``args.config`` (ConfigWarnings printed as ``tikmix COMMAND: warning: ...``), or
    the exit code 2 after printing its ConfigError."""
    import warnings

    from tikmix.run import ConfigError, ConfigWarning, check_config, load_config

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigWarning)
            cfg = load_config(args.config)
            if check:
                check_config(cfg)
    except ConfigError as exc:
        print(f"tikmix {command}: config error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, ConfigWarning):
            print(f"tikmix {command}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from tikmix.run import ConfigError, train
    from tikmix.run.checkpoint import CheckpointError

    cfg = _load(args, "run", check=args.check)
    if isinstance(cfg, int):
        return cfg
    if args.check:
        print(f"{args.config}: OK")
        return 0
    try:
        train(cfg, resume=args.resume, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"tikmix run: config error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"tikmix run: checkpoint error: {exc}", file=sys.stderr)
        return 1
    return 0


def _search(args: argparse.Namespace) -> int:
    from tikmix.run import ConfigError
    from tikmix.run.search import search

    cfg = _load(args, "search")
    if isinstance(cfg, int):
        return cfg
    try:
        res = search(cfg, proxies=args.proxies, proxy_steps=args.proxy_steps, concentration=args.concentration,
                     jobs=args.jobs, threads=args.threads, seed=args.seed, out=args.out,
                     progress=not args.no_progress)
    except ConfigError as exc:
        print(f"tikmix search: config error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"tikmix search: error: {exc}", file=sys.stderr)
        return 2
    fit, c = res.fit, res.compute
    width = max(len(d) for d in res.domains)
    print("\nbest static mixture (proxy search):")
    for d, w in zip(res.domains, res.best_weights):
        print(f"  {d:<{width}}  {w:.4f}")
    print(f"predicted mean dev loss: {fit['predicted_best']:.4f} (prior mixture: {fit['predicted_prior']:.4f})")
    print(f"fit ({fit['cv']}):")
    for t in res.targets:
        print(f"  {t}: R^2 {fit['r2'][t]:.3f}, Spearman {fit['spearman'][t]:.3f}")
    print(f"compute: {c['proxy_runs']} proxies, {c['proxy_steps']:,} steps, {c['proxy_tokens']:,} tokens = "
          f"{c['train_token_equivalents']:.2f} x the configured run's tokens, {c['flops']:.3g} FLOPs "
          f"(6 x params x tokens), {c['wall_s']:.0f} s of proxy training")
    print(f"search:  {res.out / 'search.json'}")
    if res.plot_path is not None:
        print(f"plot:    {res.plot_path}")
    print(f"config:  {res.config_path}  (train it: tikmix run {res.config_path})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tikmix.report import render

    try:
        tables, plots = render(args.file, args.out, args.prefix)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"tikmix report: error: {exc}", file=sys.stderr)
        return 2
    print(tables)
    for p in plots:
        print(f"plot: {p}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tikmix`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        print(f"tikmix {args.command}: error: --threads must be >= 1, got {threads}", file=sys.stderr)
        return 2
    commands = {"demo": _demo, "run": _run, "search": _search, "tokenize": _tokenize, "report": _report,
                "compare": _compare}
    if not threads:
        return commands[args.command](args)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return commands[args.command](args)
    finally:
        torch.set_num_threads(before)  # main() may run inside another program (or a test): leave it as found


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

