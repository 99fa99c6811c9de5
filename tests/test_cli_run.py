"""``tikmix run CONFIG.yaml``: config validation before training, resume, and a 2-process gloo run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tikmix.cli import main
from tikmix.data import write_token_file
from tikmix.demo.corpus import build_corpus
from tikmix.run import ConfigError, load_config, train, validate_config

SEQ = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Token files for three demo domains and one target, and a text folder for a fourth domain."""
    root = tmp_path_factory.mktemp("data")
    corpus = build_corpus(0, seq_len=SEQ, train_sequences=96, dev_sequences=8, test_sequences=8)
    for name in ("arith", "facts", "noise"):
        write_token_file(root / f"{name}.tokens", corpus.domains[name].reshape(-1), vocab_size=256)
    write_token_file(root / "lookup.tokens", np.concatenate([corpus.target_dev["lookup"].reshape(-1),
                                                             corpus.target_test["lookup"].reshape(-1)]),
                     vocab_size=256)
    folders = corpus.write_text_folders(root / "text")
    assert (folders["prose"] / "part0.txt").stat().st_size == 96 * (SEQ + 1)
    return root


def _config(data_dir: Path, out: Path, **over) -> dict:
    cfg = {
        "out": str(out),
        "seed": 0,
        "data": {
            "seq_len": SEQ,
            "domains": {
                "arith": {"token_file": str(data_dir / "arith.tokens")},
                "facts": {"token_file": str(data_dir / "facts.tokens")},
                "noise": {"token_file": str(data_dir / "noise.tokens")},
                "prose": {"text_folder": str(data_dir / "text" / "prose")},
            },
            "targets": {"lookup": {"token_file": str(data_dir / "lookup.tokens")}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 24, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 8, "checkpoint_every": 100},
        "stages": {"boundaries": [8, 16]},
        "influence": {"k": 64, "samples_per_domain": 8, "batch_size": 8, "n_bootstrap": 10},
    }
    for key, value in over.items():
        section, _, leaf = key.partition(".")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[section] = value
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------ validation
def _bad(cfg: dict, mutate) -> dict:
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    return cfg


BAD = [
    (lambda c: c["data"]["domains"]["arith"].update(token_file="missing.tokens"),
     "data.domains.arith.token_file", "file not found"),
    (lambda c: c["data"]["domains"]["prose"].update(text_folder="no/such/folder"),
     "data.domains.prose.text_folder", "folder not found"),
    (lambda c: c["train"].update(stepz=10), "train.stepz", "unknown key"),
    (lambda c: c.update(optimiser={}), "optimiser", "unknown key"),
    (lambda c: c["data"]["domains"]["arith"].update(tokenfile="x"), "data.domains.arith.tokenfile", "unknown key"),
    (lambda c: c["data"].update(initial_weights=[0.5, 0.5]), "data.initial_weights", "has 2 entries"),
    (lambda c: c["data"].update(initial_weights={"arith": 1, "code": 1}), "data.initial_weights.code",
     "not a domain"),
    (lambda c: c["stages"].update(boundaries=[8, 24]), r"stages.boundaries\[1\]", "beyond the training budget"),
    (lambda c: c["stages"].update(unit="tokens", boundaries=[100, 10_000]), r"stages.boundaries\[1\]",
     "beyond the training budget"),
    (lambda c: c["stages"].update(boundaries=[16, 8]), r"stages.boundaries\[1\]", "strictly increasing"),
    (lambda c: c["train"].pop("steps"), "train.steps", "required key is missing"),
    (lambda c: c["train"].update(steps="many"), "train.steps", "expected int"),
    (lambda c: c["solver"] if "solver" in c else c.update(solver={"name": "magic"}), "solver.name", "direct"),
    (lambda c: c["model"].update(d_model=15), "model.d_model", "divisible"),
    (lambda c: c["data"]["domains"]["arith"].update(text_folder="x"), "data.domains.arith",
     "exactly one of token_file or text_folder"),
]


@pytest.mark.parametrize("mutate, key, message", BAD)
def test_bad_config_names_the_key_before_training(tmp_path, data_dir, mutate, key, message):
    out = tmp_path / "out"
    cfg = _bad(_config(data_dir, out), mutate)
    with pytest.raises(ConfigError, match=f"^{key}: .*{message}") as info:
        validate_config(cfg)
    assert info.value.key.replace("[", r"\[").replace("]", r"\]") == key
    assert not out.exists()  # nothing was built or trained
    # the CLI exits with status 2 and the same message
    assert main(["run", str(_write(tmp_path, cfg))]) == 2


def test_good_config_fills_defaults(tmp_path, data_dir):
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "out")))
    assert cfg.solver.name == "direct"
    assert cfg.train.grad_clip == 1.0
    assert main(["run", str(tmp_path / "config.yaml"), "--check"]) == 0


# ------------------------------------------------------------------------------------------ training
def _comparable(history: dict) -> dict:
    h = json.loads(json.dumps(history))
    for s in h["stages"]:
        s.pop("timing")
    h["final"].pop("train_s_last_stage", None)
    return h


def test_run_resume_after_interrupt_matches_uninterrupted(tmp_path, data_dir):
    full = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "a"))), progress=False, log=lambda *a: None)
    assert [s["step"] for s in full["stages"]] == [8, 16]
    assert (tmp_path / "a" / "history.json").is_file() and (tmp_path / "a" / "mixture.png").is_file()
    assert sum(full["final"]["realised_total"]["tokens"]) == 24 * 8 * SEQ

    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "b")))
    partial = train(cfg, progress=False, stop_at=12, log=lambda *a: None)  # "killed" after step 12
    assert len(partial["stages"]) == 1 and partial["final"] is None
    resumed = train(cfg, resume=True, progress=False, log=lambda *a: None)
    assert _comparable(resumed) == _comparable(full)


def test_resume_refuses_a_different_config(tmp_path, data_dir):
    cfg = _config(data_dir, tmp_path / "c")
    train(load_config(_write(tmp_path, cfg)), progress=False, stop_at=4, log=lambda *a: None)
    cfg["train"]["lr"] = 0.02
    with pytest.raises(ConfigError, match="different config"):
        train(load_config(_write(tmp_path, cfg)), resume=True, progress=False, log=lambda *a: None)


def test_two_process_gloo_run(tmp_path, data_dir):
    """``torchrun --nproc_per_node 2 -m tikmix run`` on CPU: same stages and mixture as one process."""
    single = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "one"))), progress=False,
                   log=lambda *a: None)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(data_dir, tmp_path / "two")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tikmix", "run", str(cfg_path), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [s["step"] for s in two["stages"]] == [8, 16]
    # the global batch is the same, so the realised per-domain counts of the first stage are identical
    assert two["stages"][0]["realised_previous_stage"] == single["stages"][0]["realised_previous_stage"]
    # gradients are averaged across ranks and influence sketches all-reduced: same numbers up to rounding
    for a, b in zip(two["stages"], single["stages"]):
        np.testing.assert_allclose(a["S"], b["S"], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(a["weights"], b["weights"], atol=2e-3)
    assert sum(two["final"]["realised_total"]["tokens"]) == 24 * 8 * SEQ
