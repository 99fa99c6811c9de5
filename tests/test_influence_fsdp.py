"""Influence on FSDP2-sharded models (``fully_shard``, gloo on the CPU; nccl with TIKMIX_TEST_BACKEND=nccl) equals one
unsharded process on the same data, at world sizes 1, 2 and 4, HSDP on a 2x2 mesh, uneven and empty shards.

Each world size is one torchrun launch that runs every scenario (tests/influence_fsdp_worker.py). Tolerances:

* world size 1 (gloo): FSDP's all-gather and reduce-scatter are copies, so S is bit-identical in group mode.
* otherwise: FSDP sums the ranks' float32 gradients of a step in a different order than one backward over the
  concatenated batch, and each rank's partial sketch is summed over ranks in float32; every coordinate then differs by
  a few float32 roundings of its largest terms (relative ~1e-6 here), so S agrees to ``1e-5 · max|S|``.
* bf16 mixed precision (bf16 forward/backward, fp32 reduce) is compared with the float32 reference to bf16's
  rounding (2e-2 relative), and with itself across world sizes is not required to be exact.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import influence_fsdp_worker as worker  # noqa: E402
from influence_testing import one_thread  # noqa: E402,F401

BACKEND = os.environ.get("TIKMIX_TEST_BACKEND", "gloo")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # the workers run single-threaded too: same summation order at ws=1
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
    pytest.mark.skipif(BACKEND == "nccl" and not torch.cuda.is_available(), reason="nccl needs GPUs"),
]


def launch(world: int, tmp: str) -> dict:
    if BACKEND == "nccl" and torch.cuda.device_count() < world:
        pytest.skip(f"nccl at world size {world} needs {world} GPUs")
    env = dict(os.environ, OMP_NUM_THREADS="1", TIKMIX_TEST_BACKEND=BACKEND)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(HERE / "influence_fsdp_worker.py"), tmp]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {r: torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache: dict = {}

    def get(world: int) -> dict:
        if world not in cache:
            cache[world] = launch(world, str(tmp_path_factory.mktemp(f"ws{world}")))
        return cache[world]
    return get


def _check_scenario(sc: dict, got: dict, world: int) -> None:
    name = sc["name"]
    if "raises" in sc:
        assert "error" in got and sc["raises"] in got["error"], (name, got.get("error", "no error"))
        return
    assert "error" not in got, f"{name}:\n{got.get('error')}"
    assert got["fsdp_settings_restored"], f"{name}: the model's FSDP reduction settings were not restored"
    ref = worker.reference(sc, world)
    scale = float(ref.S.abs().max())
    if sc.get("tol") == "bf16":
        torch.testing.assert_close(got["S"], ref.S, rtol=0, atol=2e-2 * scale, msg=name)
        return
    if world == 1 and sc["gi"]["mode"] == "group" and BACKEND == "gloo":  # same device and thread count as the reference
        assert torch.equal(got["S"], ref.S), (name, got["S"], ref.S)
    torch.testing.assert_close(got["S"], ref.S, rtol=0, atol=1e-5 * scale, msg=name)
    assert torch.equal(got["samples"], ref.domain_samples) and torch.equal(got["targets"], ref.target_samples), name
    if sc["gi"]["mode"] == "group":  # units: one per lockstep step, in step order, identical to the reference's
        torch.testing.assert_close(got["scores"], ref.unit_scores, rtol=0, atol=1e-5 * float(ref.unit_scores.abs().max()),
                                   msg=name)
    else:  # per-sample units: the same samples, ordered by domain then rank (a permutation of the reference)
        torch.testing.assert_close(got["scores"].sum(0), ref.unit_scores.sum(0), rtol=1e-5, atol=1e-6, msg=name)
        assert got["scores"].shape == ref.unit_scores.shape
    if ref.gauss_newton_damping is not None:
        assert got["damping"] == pytest.approx(ref.gauss_newton_damping, rel=1e-5), name


@pytest.mark.parametrize("world", [1, 2, 4])
def test_fsdp_influence_equals_one_unsharded_process(results, world):
    got = results(world)
    for sc in worker.scenarios(world):
        for rank in range(world):  # every rank returns the same result
            if "error" not in got[0][sc["name"]] and "error" not in got[rank][sc["name"]]:
                assert torch.equal(got[rank][sc["name"]]["S"], got[0][sc["name"]]["S"]), (sc["name"], rank)
        _check_scenario(sc, got[0][sc["name"]], world)


def test_tensor_parallel_placement_raises_naming_the_parameter(results):
    msg = results(1 if BACKEND == "nccl" and torch.cuda.device_count() < 2 else 2)[0]["tp-raises"]
    assert "fc1.weight" in msg and "Shard(dim=1)" in msg, msg


def test_docs_fsdp_example_runs_under_torchrun_and_matches_the_page():
    root = HERE.parent
    script = root / "docs" / "examples" / "fsdp_influence.py"
    page = (root / "docs" / "sharded.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    body = script.read_text().split('"""', 2)[2].lstrip("\n")  # the script without its docstring
    assert block == body, "docs/sharded.md's example differs from docs/examples/fsdp_influence.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("S =")]
    assert len(line) == 1
    S = torch.tensor(eval(line[0][4:]))  # a printed list of lists
    assert S.shape == (1, 2) and bool(torch.isfinite(S).all()) and bool(S.ne(0).all())
