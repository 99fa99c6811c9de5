"""The one training loop, ``tikmix.run.train``: what it imports, what it accepts, and the training loss it records
under a process group (the global batch's mean, whatever the number of ranks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tikmix.run import train, validate_config
from tikmix.run.prepare import PreparedRun, prepare

from demo_testing import DEMO_DOMAINS, write_demo_run_data
from dist_testing import torchrun

SEQ = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loopdata")
    write_demo_run_data(root, seq_len=SEQ, train_sequences=64)
    return root


def _raw(data_dir: Path, out: Path, steps: int = 8) -> dict:
    return {
        "out": str(out),
        "data": {
            "seq_len": SEQ,
            "domains": {n: {"token_file": str(data_dir / f"{n}.tokens")} for n in DEMO_DOMAINS},
            "targets": {"lookup": {"dev": {"token_file": str(data_dir / "dev.tokens")},
                                   "test": {"token_file": str(data_dir / "test.tokens")}}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": steps, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 2, "checkpoint_every": 100},
        "solver": {"name": "static", "weights": [0.5, 0.25, 0.25]},
    }


def _quiet(*args, **kwargs) -> None:
    return None


def test_importing_the_run_package_loads_nothing_from_the_demo():
    code = "import sys, tikmix.run; assert not [m for m in sys.modules if m.startswith('tikmix.demo')], sorted(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_accepts_a_prepared_run(data_dir, tmp_path):
    cfg = validate_config(_raw(data_dir, tmp_path / "a"))
    prepared = prepare(cfg, log=_quiet)
    assert isinstance(prepared, PreparedRun) and list(prepared.domains) == list(DEMO_DOMAINS)
    assert prepared.vocab_size == 256 and prepared.test["lookup"].shape[1] == SEQ + 1
    from_prepared = train(prepared, progress=False, log=_quiet)
    from_config = train(validate_config(_raw(data_dir, tmp_path / "b")), progress=False, log=_quiet)
    assert from_prepared["metrics"] == from_config["metrics"]
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["targets"] == \
        json.loads((tmp_path / "b" / "eval.json").read_text())["targets"]
    with pytest.raises(TypeError, match="cfg must be a RunConfig"):
        train({"out": "x"}, progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cfg must be a RunConfig"):
        prepare({"out": "x"})  # type: ignore[arg-type]


def test_two_process_run_records_the_global_training_loss(data_dir, tmp_path):
    """Under torchrun each rank computes the loss of its half of the batch; the recorded training loss is the
    mean over the whole batch, as the one-process run records it."""
    single = train(validate_config(_raw(data_dir, tmp_path / "one")), progress=False, log=_quiet)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(data_dir, tmp_path / "two")))
    torchrun(2, "-m", "tikmix", "run", str(cfg_path), "--no-progress")
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    one_loss = [m["train_loss"] for m in single["metrics"] if "train_loss" in m]
    two_loss = [m["train_loss"] for m in two["metrics"] if "train_loss" in m]
    assert [m["step"] for m in two["metrics"]] == [0, 2, 4, 6, 8]
    np.testing.assert_allclose(two_loss, one_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([m["target/lookup"] for m in two["metrics"]],
                               [m["target/lookup"] for m in single["metrics"]], rtol=1e-5, atol=1e-6)
