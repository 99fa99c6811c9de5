"""Ranks that disagree are refused: two gloo processes whose Controllers differ in the seed, the boundaries or the
sketch size ``k`` fail at construction within seconds, on every rank, with a message naming the differing key; ranks
resuming from different states are refused; a rank waiting at a boundary its peer never reaches times out with a
message instead of hanging; :func:`check_same_on_all_ranks` names dotted keys and ranks."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import free_port

from tikmix import _distributed
from tikmix.controller import Controller
from tikmix.data import MixtureSampler
from tikmix.models import GPT, GPTConfig, sequence_loss

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

SEQ = 8
TIMEOUT_S = 3.0


def _controller(seed: int = 0, stages=(4, 8), k: int = 32) -> Controller:
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    rng = np.random.default_rng(0)
    domains = {n: torch.from_numpy(rng.integers(0, 256, (12, SEQ + 1))) for n in ("a", "b")}
    targets = {"t": torch.from_numpy(rng.integers(0, 256, (4, SEQ + 1)))}
    sampler = MixtureSampler([12, 12], [0.5, 0.5], batch_size=2, seed=1, rank=0, world_size=1)
    return Controller(model, sampler, domains=domains, targets=targets, loss_fn=sequence_loss, stages=list(stages),
                      influence={"k": k, "n_bootstrap": 0}, samples_per_domain=4, batch_size=2, seed=seed)


# (name, settings of rank 0, settings of rank 1, text the error must contain)
CASES = [
    ("seed", {}, {"seed": 1}, "seed (rank 0: 0, rank 1: 1)"),
    ("stages", {}, {"stages": (4, 6)}, "stage_steps (rank 0: [4, 8], rank 1: [4, 6])"),
    ("k", {}, {"k": 16}, "influence.k (rank 0: 32, rank 1: 16)"),
]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ[_distributed.TIMEOUT_ENV] = str(TIMEOUT_S)
    early = _controller(seed=rank)  # built before the process group exists: nothing to compare with yet
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    out: dict = {}

    def attempt(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            out[name] = {"error": None}
        except (ValueError, RuntimeError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["seconds"] = time.perf_counter() - t0

    for name, mine0, mine1, _ in CASES:
        attempt(name, lambda: _controller(**(mine0 if rank == 0 else mine1)))
    attempt("same", _controller)
    attempt("early", lambda: early._influence_inputs(0))  # ... so the first boundary compares
    attempt("nested", lambda: _distributed.check_same_on_all_ranks(
        {"model": {"layers": 2, "width": 16 + rank}, "data": [{"path": "x"}, {"path": f"y{rank}"}]}, "run config"))

    # resuming from states of different progress
    ctrl = _controller()
    state = json.loads(json.dumps(ctrl.state_dict()))
    if rank == 1:
        state["done"] = [4]
        state["history"]["stages"] = [{"weights": [0.6, 0.4]}]
    attempt("resume", lambda: _controller().load_state_dict(state))

    # a boundary only rank 1 thinks is due: it must not wait for rank 0 forever
    if rank == 1:
        attempt("boundary", lambda: ctrl._influence_inputs(0))
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 0:
        time.sleep(TIMEOUT_S + 6)  # rank 0 stays up (and away) while rank 1 waits for it and gives up
    end_worker_without_barrier()


def end_worker_without_barrier() -> None:
    """After a timed-out barrier the ranks are out of step: leave as dist_testing.end_worker does, without its
    closing barrier."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)



@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    out = tmp_path_factory.mktemp("agree")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name, _0, _1, expected", CASES)
def test_controllers_that_differ_are_refused_naming_the_key(outcome, name, _0, _1, expected):
    for rank in range(2):
        got = outcome[rank][name]
        assert got["error"] is not None and got["error"].startswith("ValueError: Controller settings differ between "
                                                                    "ranks"), got
        assert expected in got["error"], got["error"]
        assert got["seconds"] < 10


def test_equal_controllers_pass(outcome):
    assert outcome[0]["same"]["error"] is None and outcome[1]["same"]["error"] is None


def test_a_controller_built_before_the_process_group_is_checked_at_the_boundary(outcome):
    for rank in range(2):
        err = outcome[rank]["early"]["error"]
        assert err.startswith("ValueError: the Controller settings at the boundary at step 4 differ between ranks")
        assert "seed (rank 0: 0, rank 1: 1)" in err


def test_nested_values_name_dotted_keys_and_ranks(outcome):
    for rank in range(2):
        err = outcome[rank]["nested"]["error"]
        assert 'model.width (rank 0: 16, rank 1: 17)' in err and 'data.1.path (rank 0: "y0", rank 1: "y1")' in err
        assert "data.0.path" not in err and "model.layers" not in err


def test_resume_from_different_states_is_refused(outcome):
    for rank in range(2):
        err = outcome[rank]["resume"]["error"]
        assert err.startswith("ValueError: the resumed controller states differ between ranks") and "done (" in err


def test_a_boundary_one_rank_misses_times_out_with_a_message(outcome):
    got = outcome[1]["boundary"]
    assert got["error"].startswith("RuntimeError: tikmix: rank 1 waited 3s for every rank at comparing the Controller "
                                   "settings at the boundary at step 4")
    assert _distributed.TIMEOUT_ENV in got["error"]
    assert "timed out" in got["error"]  # rank 0 was still up: rank 1 gave up by itself
    assert TIMEOUT_S - 0.5 < got["seconds"] < TIMEOUT_S + 5


def test_fingerprint_is_stable_and_sensitive():
    a = {"x": 1, "y": {"z": [1.0, 2.0]}, "f": np.float64(0.5), "fn": sequence_loss}
    assert _distributed.fingerprint(a) == _distributed.fingerprint(dict(reversed(list(a.items()))))
    assert _distributed.fingerprint(a) != _distributed.fingerprint({**a, "y": {"z": [1.0, 2.5]}})
    _distributed.check_same_on_all_ranks(a, "anything")  # one process: nothing to compare


def test_bad_timeout_setting_is_named(monkeypatch):
    monkeypatch.setenv(_distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="TIKMIX_RENDEZVOUS_TIMEOUT must be a positive number of seconds"):
        _distributed.rendezvous_timeout()
