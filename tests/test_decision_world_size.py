"""A boundary's decision does not depend on the world size: the Controller in a plain loop over a tiny model at world
sizes 1, 2 and 4 (gloo on the CPU) chooses the same mixture at every boundary for TiKMiX-D and TiKMiX-M under every
decision (robust, paper, an explicit ``shrink="ci"``), and a run resumed at another world size (4 -> 2, 2 -> 1)
reproduces the uninterrupted one.

Every rank trains the same model on the same batches (the sampler is built for one process), so the models at the
boundaries are identical and any difference comes from how the Controller splits its measurement over the ranks.
One spawn per world size runs all six combinations; 3 ranks (an uneven split) are checked on one boundary's
measurement.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import end_worker, free_port
from integration_testing import pattern_data, train_steps
from tikmix.controller import Controller
from tikmix.data import MixtureSampler
from tikmix.models import GPT, GPTConfig, sequence_loss

SEQ = 12
BATCH = 4
STEPS = 7
BOUNDARIES = [2, 5]
SAVE_AT = 3  # between the boundaries: the resumed run measures the second boundary at the new world size
COMBOS = [(solver, decision) for solver in ("direct", "regression")
          for decision in ("robust", "paper", "shrink")]
SEARCH = {"n_candidates": 64, "rounds": 2, "samples_per_round": 256, "top_k": 8}  # a small TiKMiX-M search
DECISIONS = {"robust": "robust", "paper": "paper", "shrink": {"objective": "paper", "shrink": "ci"}}


def _data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return pattern_data(SEQ)


def _solver_options(solver: str, decision: str) -> dict | None:
    if solver != "regression":
        return None
    # the paper combination refuses every surrogate, so TiKMiX-M's fallback to TiKMiX-D is compared as well
    return {"regression": {**SEARCH, "min_r2": 1.01}} if decision == "paper" else {"regression": SEARCH}


def _setup(solver: str, decision: str):
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    domains, targets = _data()
    # built for one process on every rank: every rank trains the same model on the same batches
    sampler = MixtureSampler([len(v) for v in domains.values()], [1 / 3] * 3, batch_size=BATCH, seed=3,
                             rank=0, world_size=1)
    rows = torch.cat(list(domains.values()))
    ctrl = Controller(model, sampler, domains=domains, targets=targets, loss_fn=sequence_loss, stages=BOUNDARIES,
                      influence={"k": 32, "n_bootstrap": 20}, samples_per_domain=10, batch_size=3, seed=5,
                      total_steps=STEPS, solver=solver, decision=DECISIONS[decision],
                      solver_options=_solver_options(solver, decision))
    return model, opt, sampler, ctrl, rows


def _weights(ctrl) -> list[list[float]]:
    return [rec["weights"] for rec in ctrl.history["stages"]]


def _run_all(out_dir: str, resume_from: str | None) -> dict:
    """Every combination: the uninterrupted run (saving a checkpoint at SAVE_AT) and, with ``resume_from``, the run
    resumed from that folder's checkpoints."""
    out: dict = {}
    for solver, decision in COMBOS:
        key = f"{solver}-{decision}"
        model, opt, sampler, ctrl, rows = _setup(solver, decision)
        train_steps(model, opt, sampler, ctrl, rows, 0, SAVE_AT, batch_size=BATCH)
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ctrl": ctrl.state_dict(step=SAVE_AT)},
                       os.path.join(out_dir, f"{key}.ckpt"))
        train_steps(model, opt, sampler, ctrl, rows, SAVE_AT, STEPS, batch_size=BATCH)
        out[key] = {"full": _weights(ctrl), "used": [rec["solver"].get("used") if isinstance(rec["solver"], dict)
                                                     else None for rec in ctrl.history["stages"]]}
        if resume_from is not None:
            saved = torch.load(os.path.join(resume_from, f"{key}.ckpt"), weights_only=False)
            model, opt, sampler, ctrl, rows = _setup(solver, decision)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            ctrl.load_state_dict(saved["ctrl"])
            train_steps(model, opt, sampler, ctrl, rows, SAVE_AT, STEPS, batch_size=BATCH)
            out[key]["resumed"] = _weights(ctrl)
    return out


def _worker(rank: int, world: int, port: int, out_dir: str, resume_from: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = _run_all(out_dir, resume_from)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    dirs = {w: tmp_path_factory.mktemp(f"world{w}") for w in (4, 2, 1)}
    got: dict = {}
    for world, resume_from in ((4, None), (2, dirs[4])):
        mp.spawn(_worker, args=(world, free_port(), str(dirs[world]), str(resume_from) if resume_from else None),
                 nprocs=world, join=True)
        got[world] = [torch.load(dirs[world] / f"rank{r}.pt", weights_only=False) for r in range(world)]
    got[1] = [_run_all(str(dirs[1]), str(dirs[2]))]
    return got


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("solver, decision", COMBOS)
def test_same_mixture_at_every_world_size_and_after_resume(runs, solver, decision):
    key = f"{solver}-{decision}"
    ref = np.asarray(runs[1][0][key]["full"])
    assert ref.shape == (len(BOUNDARIES), 3)
    for world in (2, 4):
        for rank, res in enumerate(runs[world]):
            np.testing.assert_allclose(res[key]["full"], ref, rtol=0, atol=1e-6, err_msg=f"world {world} rank {rank}")
            assert res[key]["used"] == runs[1][0][key]["used"]
    for rank, res in enumerate(runs[2]):  # resumed 4 -> 2
        np.testing.assert_allclose(res[key]["resumed"], ref, rtol=0, atol=1e-6, err_msg=f"4 -> 2, rank {rank}")
    np.testing.assert_allclose(runs[1][0][key]["resumed"], ref, rtol=0, atol=1e-6, err_msg="2 -> 1")


def test_the_matrix_covers_both_tikmix_m_outcomes(runs):
    """TiKMiX-M's answer and its fallback to TiKMiX-D both occur, so both paths are compared across world sizes."""
    used = [u for solver, decision in COMBOS if solver == "regression"
            for u in runs[1][0][f"{solver}-{decision}"]["used"]]
    assert "tikmix-m" in used and any(u.startswith("tikmix-d (TiKMiX-M status") for u in used)


def _boundary_measurements() -> dict:
    """One boundary's measurement and decision input, for group mode (shrunk by micro-batch intervals) and
    per-sample mode: S, intervals, per-unit scores and sizes."""
    out = {}
    for solver, decision in (("direct", "shrink"), ("regression", "robust")):
        _, _, _, ctrl, _ = _setup(solver, decision)
        res = ctrl._influence.compute(*ctrl._influence_inputs(0))
        out[f"{solver}-{decision}"] = {"S": res.S, "low": res.ci_low, "high": res.ci_high, "scores": res.unit_scores,
                                       "sizes": res.unit_sizes, "ids": res.unit_domains}
    return out


def _worker_measure(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save(_boundary_measurements(), os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_three_ranks_measure_what_one_process_measures(tmp_path):
    """An uneven split (3 ranks; 5 micro-batches of 2 or 10 samples per domain) gives one process's units, in its order."""
    torch.set_num_threads(1)
    mp.spawn(_worker_measure, args=(3, free_port(), str(tmp_path)), nprocs=3, join=True)
    ref = _boundary_measurements()
    for rank in range(3):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key, r in ref.items():
            assert torch.equal(got[key]["sizes"], r["sizes"]) and torch.equal(got[key]["ids"], r["ids"]), key
            assert r["sizes"].tolist() == ([2] * 15 if key.startswith("direct") else [1] * 30)
            for name in ("S", "low", "high", "scores"):
                torch.testing.assert_close(got[key][name], r[name], rtol=1e-9, atol=1e-12, msg=f"{key} {name}")
