"""Influence on an FSDP2-sharded model vs DDP-style replicas vs one process: time and peak memory per rank.

The same GPT (tikmix.models) and the same token batches in all three setups; the ranks split every domain's
batches. Reported per rank, each the minimum over rounds (the first round also pays one-time set-up): the time of one
``GroupInfluence.compute``, the peak memory during it ("peak") and added by it ("added"), and the memory added by one
ordinary forward/backward of a micro-batch on the same setup ("train step added"). Memory is the resident set size
sampled every 2 ms on the CPU (with a fixed glibc mmap threshold, so freed tensors leave it), ``max_memory_allocated``
on CUDA. "added / step" near 1 means the influence computation needs no more memory than training does on that
setup: FSDP2 ranks gather one block's parameters and gradients at a time, as in training, and sketch their shards;
nothing is gathered beyond that. Replicas and one process hold the whole model and a whole gradient.

    python benchmarks/bench_influence_fsdp.py                 # all three setups, table on stdout
    python benchmarks/bench_influence_fsdp.py --d-model 768 --layers 12 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory added inside the ``with`` block (bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = _rss()
        self.stop = threading.Event()
        self.top = self.base

        def sample() -> None:
            while not self.stop.is_set():
                self.top = max(self.top, _rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.top_total = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
            self.top_total = max(self.top, _rss())
        self.peak = self.top_total - self.base


def _data(args):
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq + 1)
    doms = {f"d{j}": [torch.randint(0, args.vocab, shape, generator=g) for _ in range(args.batches)]
            for j in range(args.domains)}
    tgts = {"t0": [torch.randint(0, args.vocab, shape, generator=g) for _ in range(2)]}
    return doms, tgts


def worker(args) -> None:
    """One setup on this process (rank): ``single``, ``ddp`` (replicas, sketches all-reduced) or ``fsdp``."""
    from tikmix.models import GPT, GPTConfig, sequence_loss
    from tikmix.influence import GroupInfluence

    distributed = args.setup != "single"
    if distributed:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq, n_layer=args.layers, n_head=max(1, args.d_model // 64),
                    d_model=args.d_model)
    model = GPT(cfg).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    if args.setup == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    doms, tgts = _data(args)
    doms = {k: v[rank::world] for k, v in doms.items()}
    tgts = {k: v[rank::world] for k, v in tgts.items()}
    gi = GroupInfluence(model, sequence_loss, k=args.k, progress=False, n_bootstrap=0)
    # the reference point: one ordinary forward/backward of a micro-batch (what training does on this setup)
    step_peaks = []
    batch = doms["d0"][0].to(device)
    for _ in range(args.rounds):
        if distributed:
            dist.barrier()
        with PeakMemory(device) as mem:
            sequence_loss(model, batch).sum().backward()
            model.zero_grad(set_to_none=True)
        step_peaks.append(mem.peak)
    times, peaks, totals, S = [], [], [], None
    for _ in range(args.rounds):
        if distributed:
            dist.barrier()
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            S = gi.compute(doms, tgts).S
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peaks.append(mem.peak)
        totals.append(mem.top_total)
    out = {"setup": args.setup, "rank": rank, "world": world, "time_s": min(times), "peak_added_bytes": min(peaks),
           "step_peak_added_bytes": min(step_peaks), "peak_total_bytes": min(totals),
           "params": n_params, "S": S.tolist()}
    Path(args.out).with_suffix(f".rank{rank}.json").write_text(json.dumps(out))
    if distributed:
        dist.barrier()  # no rank tears its connections down while a peer still reads from them
        dist.destroy_process_group()


def _launch(setup: str, args, tmp: Path) -> list:
    out = tmp / setup
    common = [str(Path(__file__).resolve()), "--worker", "--setup", setup, "--out", str(out)] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
        ("device", "d_model", "layers", "vocab", "seq", "batch", "batches", "domains", "k", "rounds", "threads")]
    if setup == "single":
        cmd = [sys.executable] + common
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + common
    # a fixed mmap threshold: glibc's adaptive one keeps freed blocks of up to 32 MiB in the heap, and the resident
    # set size would then count memory that is no longer in use
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="131072",
               MALLOC_TRIM_THRESHOLD_="131072")
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return [json.loads(p.read_text()) for p in sorted(tmp.glob(f"{setup}.rank*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=4, help="micro-batches per domain (all ranks together)")
    ap.add_argument("--domains", type=int, default=2)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--setup", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for setup in ("single", "ddp", "fsdp"):
            rows += _launch(setup, args, Path(tmp))
    params = rows[0]["params"]
    full_grad_mib = params * 4 / 2**20
    ref = torch.tensor(rows[0]["S"])
    print(f"GPT d_model={args.d_model} layers={args.layers} vocab={args.vocab}: {params / 1e6:.1f}M parameters "
          f"(one fp32 gradient = {full_grad_mib:.0f} MiB); {args.domains} domains x {args.batches} micro-batches of "
          f"{args.batch}x{args.seq} tokens, k={args.k}, device {args.device}, {args.threads} thread(s) per rank")
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"{'setup':<7} {'rank':>4} {'time (s)':>8} {'vs single':>9} {'peak (MiB)':>10} {'added (MiB)':>11} "
          f"{'train step added':>16} {'added / step':>12} {'max|dS|/max|S|':>14}")
    for r in rows:
        dS = float((torch.tensor(r["S"]) - ref).abs().max() / ref.abs().max())
        print(f"{r['setup']:<7} {r['rank']:>4} {r['time_s']:>8.2f} {r['time_s'] / rows[0]['time_s']:>9.2f} "
              f"{mib(r['peak_total_bytes']):>10.0f} {mib(r['peak_added_bytes']):>11.1f} "
              f"{mib(r['step_peak_added_bytes']):>16.1f} {r['peak_added_bytes'] / r['step_peak_added_bytes']:>12.2f} "
              f"{dS:>14.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
