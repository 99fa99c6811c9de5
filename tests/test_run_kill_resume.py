"""``tikmix run`` killed with SIGKILL at several points and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from tikmix.data import write_token_file
from tikmix.demo.corpus import build_corpus
from tikmix.run.checkpoint import checkpoint_dir, list_checkpoints

SEQ = 16
FAULTS = Path(__file__).with_name("run_faults.py")


def _config(data: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "seed": 3,
        "data": {
            "seq_len": SEQ,
            "domains": {name: {"token_file": str(data / f"{name}.tokens")} for name in ("arith", "facts", "noise")},
            "targets": {"lookup": {"token_file": str(data / "lookup.tokens")}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "dropout": 0.1},
        "train": {"steps": 24, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 6, "checkpoint_every": 4},
        "stages": {"boundaries": [8, 16]},
        "influence": {"k": 32, "samples_per_domain": 8, "batch_size": 8, "n_bootstrap": 5},
    }


def _run(config: Path, *fault: str, resume: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(FAULTS), *fault, "run", str(config), "--no-progress", "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run(argv + (["--resume"] if resume else []), capture_output=True, text=True, timeout=600,
                          env=env)


def _history(out: Path) -> dict:
    h = json.loads((out / "history.json").read_text())
    for s in h["stages"]:
        s.pop("timing")
    h["final"].pop("train_s_last_stage")
    return h


def test_sigkill_at_several_points_then_resume_is_bit_identical(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    corpus = build_corpus(0, seq_len=SEQ, train_sequences=64, dev_sequences=8, test_sequences=8)
    for name in ("arith", "facts", "noise"):
        write_token_file(data / f"{name}.tokens", corpus.domains[name].reshape(-1), vocab_size=256)
    write_token_file(data / "lookup.tokens", np.concatenate([corpus.target_dev["lookup"].reshape(-1),
                                                             corpus.target_test["lookup"].reshape(-1)]), vocab_size=256)
    configs = {}
    for name in ("reference", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(_config(data, tmp_path / name)))

    ref = _run(configs["reference"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = tmp_path / "killed"
    steps = lambda: [s for s, _ in list_checkpoints(killed)]  # noqa: E731
    # 1. between checkpoints: after step 6 (the last checkpoint is step 4)
    p = _run(configs["killed"], "--kill-after-step", "6")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert steps() == [4]
    # 2. during the influence measurement of the boundary at step 16 (the controller's rehearsal is the first call,
    # the boundary at 8 the second)
    p = _run(configs["killed"], "--kill-in-influence-call", "3", resume=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert steps() == [12, 8]
    # 3. half-way through writing the checkpoint of step 20: the older two stay intact
    p = _run(configs["killed"], "--kill-in-checkpoint-write", "20", resume=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert steps() == [16, 12]
    assert [t.name for t in checkpoint_dir(killed).glob(".*.tmp")] == [".step-000000020.pt.tmp"]
    # 4. to the end
    p = _run(configs["killed"], resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed at step 16" in p.stdout
    assert not list(checkpoint_dir(killed).glob(".*.tmp"))

    assert _history(killed) == _history(tmp_path / "reference")
    (step_a, a), _ = list_checkpoints(tmp_path / "reference")
    (step_b, b), _ = list_checkpoints(killed)
    assert step_a == step_b == 24
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa["model"].keys() == wb["model"].keys()
    for key, value in wa["model"].items():
        assert torch.equal(value, wb["model"][key]), key
    assert torch.equal(wa["rng"][0]["torch"], wb["rng"][0]["torch"])  # dropout's stream ended in the same place
    assert wa["controller"]["history"]["stages"][1]["weights"] == wb["controller"]["history"]["stages"][1]["weights"]
