"""``tikmix run`` with ``train.parallel: fsdp``: FSDP2 training, the Controller unchanged on the sharded model, and
DCP checkpoints that resume at another world size (2 -> 1 and 1 -> 2) with the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import yaml

from test_cli_run import _config, data_dir  # noqa: F401  (the module-scoped token files)
from tikmix.run import load_config, train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

RUNNER = textwrap.dedent("""
    import sys
    from tikmix.run import load_config, train
    cfg, resume, stop = sys.argv[1], sys.argv[2] == "resume", int(sys.argv[3])
    train(load_config(cfg), resume=resume, stop_at=stop or None, progress=False, log=lambda *a: None)
""")


def _torchrun(tmp_path: Path, world: int, cfg_path: Path, resume: bool, stop: int) -> None:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                           str(script), str(cfg_path), "resume" if resume else "fresh", str(stop)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _close(a: dict, b: dict) -> None:
    assert [s["step"] for s in a["stages"]] == [s["step"] for s in b["stages"]] == [8, 16]
    for x, y in zip(a["stages"], b["stages"]):
        np.testing.assert_allclose(x["S"], y["S"], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(x["weights"], y["weights"], atol=2e-3)
    for k, v in a["final"]["test_losses"].items():
        assert v == pytest.approx(b["final"]["test_losses"][k], rel=1e-3)


# The paper's decision: the robust decision's bootstrap intervals resample micro-batches, and those differ with
# the number of ranks, so its mixture agrees across world sizes only approximately.
PAPER = {"solver": {"name": "direct", "decision": "paper"}}


def test_fsdp_run_resumes_at_another_world_size(tmp_path, data_dir):  # noqa: F811
    log = lambda *a: None  # noqa: E731
    reference = train(load_config(_write(tmp_path, "ref", _config(data_dir, tmp_path / "ref", **PAPER))), progress=False,
                       log=log)

    # 2 ranks (FSDP2, the Controller computing influence on the sharded model) up to step 12, then 1 process
    cfg_a = _write(tmp_path, "a", _config(data_dir, tmp_path / "a", **{"train.parallel": "fsdp"}, **PAPER))
    _torchrun(tmp_path, 2, cfg_a, resume=False, stop=12)
    assert any((tmp_path / "a" / "checkpoint_dcp").iterdir())
    resumed_a = train(load_config(cfg_a), resume=True, progress=False, log=log)
    _close(resumed_a, reference)

    # 1 process up to step 12, then 2 ranks
    cfg_b = _write(tmp_path, "b", _config(data_dir, tmp_path / "b", **{"train.parallel": "fsdp"}, **PAPER))
    train(load_config(cfg_b), stop_at=12, progress=False, log=log)
    _torchrun(tmp_path, 2, cfg_b, resume=True, stop=0)
    _close(json.loads((tmp_path / "b" / "history.json").read_text()), reference)
    # older sharded states pruned: those of the last two checkpoints are kept
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoint_dcp").iterdir()) == ["step000000012", "step000000024"]


def _write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
