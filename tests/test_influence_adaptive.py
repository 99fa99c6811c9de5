"""Adaptive sampling of influence rows (``Controller(sampling=...)``, :mod:`tikmix.influence.adaptive`): rounds that
reach every ceiling measure exactly what the fixed mode measures; rounds that stop early equal one measurement on
the rows they took; no row is measured twice; two processes stop at the same rows as one; the run config carries
the options; bad options are refused by name."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import end_worker, free_port
from integration_testing import pattern_data
from tikmix.controller import Controller
from tikmix.data import MixtureSampler
from tikmix.influence.adaptive import Sampling
from tikmix.models import GPT, GPTConfig, sequence_loss

SEQ = 12
FIELDS = ("S", "ci_low", "ci_high", "unit_scores", "unit_domains", "unit_sizes", "domain_sketches", "target_sketches",
          "domain_samples", "target_samples")
# group mode shrunk by micro-batch intervals (micro-batches of 2: ceil(10 / 8)) and per-sample mode
MODES = {"group": {"objective": "paper", "shrink": "ci"}, "per_sample": "robust"}


def _data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return pattern_data(SEQ)


def _controller(mode: str, sampling, *, batch_size: int = 3, loss_fn=sequence_loss, **kw) -> Controller:
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    domains, targets = _data()
    sampler = MixtureSampler([len(v) for v in domains.values()], [1 / 3] * 3, batch_size=4, seed=3,
                             rank=0, world_size=1)
    influence = {"k": 32, "n_bootstrap": 20, "mode": mode, **kw.pop("influence", {})}
    return Controller(model, sampler, domains=domains, targets=targets, loss_fn=loss_fn, stages=[2, 5],
                      influence=influence, samples_per_domain=10, batch_size=batch_size, seed=5, total_steps=7,
                      decision=MODES[mode], sampling=sampling, **kw)


def _same(a, b, what: str) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, f"{what}: {name} {tuple(x.shape)} vs {tuple(y.shape)}"
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-10, atol=1e-12, msg=f"{what}: {name}")


@pytest.mark.parametrize("mode", MODES)
def test_tolerance_zero_measures_the_fixed_mode_rows_and_numbers(mode):
    ctrl = _controller(mode, {"tolerance": 0.0, "min_samples": 1, "round_samples": 3})
    fixed = ctrl._influence.compute(*ctrl._influence_inputs(0))
    merged, record = ctrl._measure_adaptive(0)
    _same(fixed, merged, mode)
    assert record["rounds"] > 1
    for kind, ceiling in (("domains", {"good": 10, "bad": 10, "noise": 10}), ("targets", {"t": 6, "u": 5})):
        for name, rows in ceiling.items():
            assert record[kind][name]["rows"] == rows and record[kind][name]["stop"] == "ceiling", (kind, name)
    # group mode's micro-batches of 2 make a round of 3 rows take 4 (whole units): 4, 8, 10; per-sample: 3 each
    assert record["domains"]["good"]["rounds"] == (3 if mode == "group" else 4)


@pytest.mark.parametrize("mode", MODES)
def test_a_huge_tolerance_stops_at_the_floor_and_equals_one_measurement_of_those_rows(mode):
    # micro-batches of one row: the floor's 4 rows are the 4 bootstrap units a domain needs to be judged
    ctrl = _controller(mode, {"tolerance": 1e9, "min_samples": 4, "round_samples": 2}, batch_size=1)
    merged, record = ctrl._measure_adaptive(0)
    for kind in ("domains", "targets"):
        for name, s in record[kind].items():
            assert (s["rows"], s["rounds"], s["stop"]) == (4, 2, "stable"), (kind, name, s)
            assert s["stability"] is not None and s["stability"] < 1e9
    assert record["rounds"] == 2
    # the merge of the two rounds equals one compute on the union of the rows they took
    domain_batches = {name: ctrl._local_batches("domains", name, ctrl._domain_draw(0, j)[:4], 1)
                      for j, name in enumerate(ctrl.domain_names)}
    target_batches = {name: ctrl._local_batches("targets", name, np.arange(4)) for name in ctrl.target_names}
    _same(ctrl._influence.compute(domain_batches, target_batches), merged, mode)


@pytest.mark.parametrize("mode", MODES)
def test_no_row_is_measured_twice(mode):
    seen: list[int] = []

    def counting_loss(model, batch):
        seen.append(int(batch.shape[0]))
        return sequence_loss(model, batch)

    ctrl = _controller(mode, {"tolerance": 0.05, "min_samples": 3, "round_samples": 3}, loss_fn=counting_loss)
    # per-sample mode: the rehearsal passed, so no self-check backward at the boundaries
    assert ctrl._influence.verify is False or mode == "group"
    seen.clear()
    record = ctrl.step(2)["influence_sampling"]
    taken = sum(s["rows"] for kind in ("domains", "targets") for s in record[kind].values())
    assert sum(seen) == taken
    assert taken < 3 * 10 + 6 + 5 or record["rounds"] == 4  # stopped early, or it went to every ceiling


def _spawned(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save(_measurements(), os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()


def _measurements() -> dict:
    out = {}
    for mode in MODES:
        ctrl = _controller(mode, {"tolerance": 0.2, "min_samples": 3, "round_samples": 3}, rehearse=False)
        result, record = ctrl._measure_adaptive(0)
        out[mode] = ({name: getattr(result, name) for name in FIELDS}, record)
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_stop_at_the_rows_of_one_and_measure_the_same(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_spawned, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref = _measurements()
    stops = {s["stop"] for _, record in ref.values() for kind in ("domains", "targets") for s in record[kind].values()}
    assert stops == {"stable", "ceiling"}  # both outcomes are compared
    for _, record in ref.values():
        for kind in ("domains", "targets"):
            for s in record[kind].values():  # each stop is the rule's: stable below the tolerance past the floor
                if s["stop"] == "stable":
                    assert s["stability"] < 0.2 and 3 <= s["rows"] < s["ceiling"], s
                else:
                    assert s["rows"] == s["ceiling"], s
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for mode, (numbers, record) in ref.items():
            assert got[mode][1] == record, (mode, rank)
            for name, value in numbers.items():
                torch.testing.assert_close(got[mode][0][name].double(), value.double(), rtol=1e-9, atol=1e-12,
                                           msg=f"{mode} rank {rank} {name}")


def test_the_record_and_a_fixed_run():
    fixed = _controller("group", None).step(2)
    assert fixed["influence_sampling"] is None
    rec = _controller("group", {"tolerance": 0.3}).step(2)["influence_sampling"]
    assert rec["tolerance"] == 0.3 and rec["min_samples"] == 16 and rec["round_samples"] == 64
    # a floor above a domain's draw is capped at the draw: every row, then "ceiling"
    assert all(s["stop"] == "ceiling" for kind in ("domains", "targets") for s in rec[kind].values())


@pytest.mark.parametrize("sampling, error, match", [
    ({"tolerence": 0.1}, ValueError, r"sampling has an unknown key 'tolerence' \(did you mean tolerance\?\)"),
    ({"tolerance": -1.0}, ValueError, r"sampling\['tolerance'\] must be a finite number >= 0, got -1.0"),
    ({"tolerance": float("nan")}, ValueError, r"sampling\['tolerance'\] must be a finite number"),
    ({"min_samples": 0}, ValueError, r"sampling\['min_samples'\]"),
    ({"round_samples": 2.5}, TypeError, r"sampling\['round_samples'\]"),
    (0.1, TypeError, r"sampling must be None \(fixed sampling\) or a dict"),
])
def test_bad_options_are_named(sampling, error, match):
    with pytest.raises(error, match=match):
        _controller("group", sampling, rehearse=False)


@pytest.mark.parametrize("influence, match", [
    ({"preconditioner": "gauss_newton"}, r"sampling \(adaptive sampling\) cannot be used with preconditioner="
                                         r"'gauss_newton'"),
    ({"n_bootstrap": 0}, r"sampling \(adaptive sampling\) needs n_bootstrap >= 1"),
])
def test_measurements_it_cannot_merge_or_judge_are_refused(influence, match):
    with pytest.raises(ValueError, match=match):
        _controller("group", {}, rehearse=False, influence=influence)
    _controller("group", None, rehearse=False, influence=influence)  # the fixed mode takes them


def test_sampling_options_from_a_mapping():
    assert Sampling.from_options(None) is None
    s = Sampling.from_options({"round_samples": 8})
    assert s.as_dict() == {"tolerance": 0.1, "min_samples": 16, "round_samples": 8}
    assert Sampling.from_options(s) is s


# ------------------------------------------------------------------------------------------ tikmix run config
def _run_config(data_dir, out, adaptive) -> dict:
    from demo_testing import DEMO_DOMAINS

    return {
        "out": str(out),
        "data": {
            "seq_len": 16,
            "domains": {n: {"token_file": str(data_dir / f"{n}.tokens")} for n in DEMO_DOMAINS},
            "targets": {"lookup": {"dev": {"token_file": str(data_dir / "dev.tokens")},
                                   "test": {"token_file": str(data_dir / "test.tokens")}}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 4, "batch_size": 8, "lr": 0.01, "warmup": 1, "eval_every": 4, "checkpoint_every": 100},
        "stages": {"boundaries": [2]},
        "influence": {"k": 16, "samples_per_domain": 8, "batch_size": 2, "n_bootstrap": 20, "target_samples": 12,
                      "adaptive": adaptive},
    }


def test_run_config_carries_the_options_to_the_controller(tmp_path):
    from demo_testing import write_demo_run_data
    from tikmix.run import ConfigError, parse_config, train, validate_config

    write_demo_run_data(tmp_path, seq_len=16, train_sequences=32)
    cfg = parse_config(_run_config(tmp_path, tmp_path / "out", {"tolerance": 1e9, "min_samples": 4}), tmp_path)
    assert cfg.influence.adaptive.model_dump() == {"tolerance": 1e9, "min_samples": 4, "round_samples": 64}
    assert parse_config(_run_config(tmp_path, tmp_path / "out", None), tmp_path).influence.adaptive is None
    assert parse_config(_run_config(tmp_path, tmp_path / "out", {}), tmp_path).influence.adaptive.tolerance == 0.1
    for adaptive, key in (({"tolerance": -0.5}, "influence.adaptive.tolerance"),
                          ({"round_sample": 4}, "influence.adaptive.round_sample"),
                          ({"min_samples": 0}, "influence.adaptive.min_samples")):
        with pytest.raises(ConfigError) as info:
            parse_config(_run_config(tmp_path, tmp_path / "out", adaptive), tmp_path)
        assert info.value.key == key, str(info.value)
    raw = _run_config(tmp_path, tmp_path / "out", {})
    raw["influence"]["preconditioner"] = "gauss_newton"
    with pytest.raises(ConfigError, match="^influence.adaptive: is not available with preconditioner gauss_newton"):
        parse_config(raw, tmp_path)

    raw = _run_config(tmp_path, tmp_path / "out", {"tolerance": 1e9, "min_samples": 4, "round_samples": 4})
    history = train(validate_config(raw, tmp_path), progress=False, log=lambda *a, **k: None)
    record = history["stages"][0]["influence_sampling"]
    # the domains are stable after one round (two units each); the target (8 dev rows) cannot be judged after one
    # round and reaches its ceiling in the second
    assert record["rounds"] == 2 and record["round_samples"] == 4
    assert [(s["rows"], s["stop"]) for s in record["domains"].values()] == [(4, "stable")] * 3
    assert [(s["rows"], s["ceiling"], s["stop"]) for s in record["targets"].values()] == [(8, 8, "ceiling")]
    assert history["stages"][0]["influence_samples"] == [4, 4, 4]


def test_a_domain_is_not_judged_on_fewer_than_four_bootstrap_units():
    # group mode, micro-batches of 2: after 2 rounds of 2 rows a domain has 2 units, so even a huge tolerance does
    # not stop it before its fourth unit (8 rows)
    ctrl = _controller("group", {"tolerance": 1e9, "min_samples": 2, "round_samples": 2}, batch_size=2)
    _, record = ctrl._measure_adaptive(0)
    for name, s in record["domains"].items():
        assert (s["rows"], s["stop"]) == (8, "stable"), (name, s)
