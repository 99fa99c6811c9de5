"""Cost of Group Influence relative to plain training compute.

For a small GPT (tikmix.models.GPT) and a fixed set of micro-batches (domains + targets), measure:

* ``fwd+bwd``: one plain forward + backward (``loss.sum().backward()``) over every micro-batch — the paper's cost floor;
* ``group``: ``GroupInfluence(mode="group").compute`` over the same micro-batches;
* ``group_slotwise``: the same with one sketch call per parameter, the way group mode sketched before adjacent dense
  gradients (biases, norm weights) were joined into one call: what the joining saves on small layers;
* ``per_sample``: ``GroupInfluence(mode="per_sample").compute`` over the same micro-batches, with its default
  self-check (``verify=True``: the first micro-batch of every domain);
* ``per_sample_noverify``: the same with ``verify=False``, what a computation costs once the self-check has run
  (e.g. once per training run);

as time ratios to ``fwd+bwd`` (targets: group ≤ 1.3×, per-sample ≤ 1.3×). Phases run interleaved (one round = every
phase once; a warm-up round, then ``--repeats`` rounds; the minimum of the rounds, the run least disturbed by other
work), so drifting machine load hits all phases alike. On
CPU the ratio uses process CPU time (robust on shared machines; with ``--threads 1`` it is the compute itself), wall
time is shown too; on CUDA wall time after ``torch.cuda.synchronize()``. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` during the phase minus what was allocated before; on CPU the peak resident set
size (VmHWM, reset after set-up) of a fresh process running the phase once, minus its RSS with model and data built.

    python benchmarks/bench_influence.py --device cpu --threads 1
    python benchmarks/bench_influence.py --device cuda --d-model 768 --layers 12 --seq 1024 --batch 8 --k 8192
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

PHASES = ("fwd+bwd", "group", "group_slotwise", "per_sample", "per_sample_noverify")


def _slotwise(run: Callable[[], Any]) -> Any:
    """``run()`` with :meth:`Projector.add_grads` sketching every parameter with its own call."""
    from tikmix.influence.sketch_space import Projector

    def one_call_each(self: Any, out: Any, grads: Any, shards: Any = None) -> None:
        for slot, grad in grads:
            self.add_grad(out, slot, grad, (shards or {}).get(slot.index))

    joined = Projector.add_grads
    Projector.add_grads = one_call_each  # type: ignore[method-assign]
    try:
        return run()
    finally:
        Projector.add_grads = joined  # type: ignore[method-assign]


def _setup(args: argparse.Namespace) -> Dict[str, Any]:
    """Model, data and one zero-argument runner per phase."""
    import torch

    from tikmix.models import GPT, GPTConfig, sequence_loss
    from tikmix.influence import GroupInfluence

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, seq_len=args.seq, n_layer=args.layers, n_head=args.heads, d_model=args.d_model)

    model = GPT(cfg).to(device).eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)

    def batches(n: int) -> List[torch.Tensor]:
        return [torch.randint(0, 256, (args.batch, args.seq + 1), generator=g).to(device) for _ in range(n)]

    domains = {f"domain{j}": batches(args.batches) for j in range(args.domains)}
    targets = {"target": batches(args.batches)}
    every = [b for bs in list(domains.values()) + list(targets.values()) for b in bs]
    params = None if args.params == "all" else args.params.split(",")

    def plain() -> None:
        for b in every:
            sequence_loss(model, b).sum().backward()
        model.zero_grad(set_to_none=True)

    runners: Dict[str, Callable[[], None]] = {"fwd+bwd": plain}
    for phase, mode, verify in (("group", "group", True), ("per_sample", "per_sample", True),
                                ("per_sample_noverify", "per_sample", False)):
        gi = GroupInfluence(model, sequence_loss, k=args.k, mode=mode, params=params, n_bootstrap=0, progress=False,
                            verify=verify)
        runners[phase] = (lambda gi=gi: gi.compute(domains, targets))
    gi = GroupInfluence(model, sequence_loss, k=args.k, mode="group", params=params, n_bootstrap=0, progress=False)
    runners["group_slotwise"] = lambda: _slotwise(lambda: gi.compute(domains, targets))
    return {"torch": torch, "device": device, "runners": runners,
            "tokens": sum(b.shape[0] * (b.shape[1] - 1) for b in every),
            "parameters": sum(p.numel() for p in model.parameters())}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    """Peak RSS (VmHWM) of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_peak_phase(args: argparse.Namespace) -> Dict[str, Any]:
    """Internal (fresh process): peak RSS growth of one run of ``args.phase`` above the RSS with model and data."""
    env = _setup(args)
    rss0 = _rss_mb()
    try:  # reset the peak (Linux ≥ 4.0), so imports and set-up do not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    env["runners"][args.phase]()
    return {"phase": args.phase, "peak_mb": _hwm_mb() - rss0}


def _timed(args: argparse.Namespace, phases: List[str]) -> Dict[str, Dict[str, Any]]:
    env = _setup(args)
    torch, device, runners = env["torch"], env["device"], env["runners"]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out: Dict[str, Dict[str, Any]] = {p: {"wall": [], "cpu": [], "peak_mb": float("nan")} for p in phases}
    for rnd in range(args.repeats + 1):
        for p in phases:
            sync()
            if device.type == "cuda":
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            w0, c0 = time.perf_counter(), time.process_time()
            runners[p]()
            sync()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            if device.type == "cuda":
                out[p]["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            if rnd > 0:  # round 0 is the warm-up
                out[p]["wall"].append(w)
                out[p]["cpu"].append(c)
    for p in phases:
        out[p]["tokens"], out[p]["parameters"] = env["tokens"], env["parameters"]
    return out


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--batches", type=int, default=4, help="micro-batches per domain and per target")
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--params", default="all", help="'all' or comma-separated fnmatch patterns")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--no-peak", action="store_true", help="CPU: skip the peak-memory runs (one process per phase)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(_cpu_peak_phase(args)))
        return
    phases = args.phases.split(",")
    res = _timed(args, phases)
    if args.device == "cpu" and not args.no_peak:
        for phase in phases:
            cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
                   "--phase", phase]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"phase {phase} failed")
            res[phase]["peak_mb"] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    clock = "cpu" if args.device == "cpu" else "wall"
    base = min(res["fwd+bwd"][clock])
    target = {"fwd+bwd": "", "group": "<= 1.3x", "group_slotwise": "", "per_sample": "<= 1.3x",
              "per_sample_noverify": "<= 1.3x"}
    first = res[phases[0]]
    print(f"GPT d_model={args.d_model} layers={args.layers} seq={args.seq}, {first['parameters'] / 1e6:.2f}M params, "
          f"{args.domains} domains + 1 target x {args.batches} micro-batches x {args.batch} seqs = {first['tokens']} "
          f"tokens, k={args.k}, device={args.device}, dtype={args.dtype}, threads={args.threads or 'default'}, "
          f"params={args.params}; ratio of the minimum {clock} time over {args.repeats} "
          "interleaved rounds")
    print(f"{'phase':<20} {'wall s':>8} {'cpu s':>8} {'ratio':>7} {'target':>8} {'peak MB':>9}")
    rows = []
    for p in phases:
        r = res[p]
        row = {"phase": p, "wall_s": min(r["wall"]), "cpu_s": min(r["cpu"]),
               "ratio": min(r[clock]) / base, "peak_mb": r["peak_mb"]}
        rows.append(row)
        print(f"{p:<20} {row['wall_s']:>8.3f} {row['cpu_s']:>8.3f} {row['ratio']:>6.2f}x {target[p]:>8} "
              f"{row['peak_mb']:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
