"""The Controller's predicted change, safe step, stage feedback and trust region in a plain loop: records against
direct recomputation, the final evaluation under the measurement policy, exact resume."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from integration_testing import train_steps
from test_controller_loop import _data, _strip_timing
from test_decision_feedback import spearman_ref
from tikmix.controller import Controller
from tikmix.data import MixtureSampler
from tikmix.decision import TRUST_REGION_DEFAULTS, Decision, predicted_change
from tikmix.models import GPT, GPTConfig, sequence_loss

SEQ, BATCH, STEPS = 16, 8, 26
BOUNDARIES = [6, 12, 18, 22]


def _targets():
    domains, targets = _data()
    rng = np.random.default_rng(1)
    return domains, {"t": targets["t"], "bad": domains["bad"][48:56],
                     "noise": torch.from_numpy(rng.integers(0, 256, (8, SEQ + 1)))}


def _setup(decision, solver="direct", targets=None, n_bootstrap=20, influence=None, solver_options=None,
           sampling=None):
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=SEQ, n_layer=1, n_head=2, d_model=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    domains, tgts = _targets()
    if targets is not None:
        tgts = {k: tgts[k] for k in targets}
    sampler = MixtureSampler([len(v) for v in domains.values()], [1 / 3] * 3, batch_size=BATCH, seed=3,
                             tokens_per_sample=SEQ)
    rows = torch.cat(list(domains.values()))
    ctrl = Controller(model, sampler, domains=domains, targets=tgts, loss_fn=sequence_loss, stages=BOUNDARIES,
                      influence=influence or {"k": 64, "n_bootstrap": n_bootstrap}, samples_per_domain=16,
                      batch_size=8, seed=5, total_steps=STEPS, solver=solver, solver_options=solver_options,
                      decision=decision, rehearse=False, sampling=sampling)
    return model, opt, sampler, ctrl, rows


def _run(decision, stop=STEPS, **kw):
    model, opt, sampler, ctrl, rows = _setup(decision, **kw)
    train_steps(model, opt, sampler, ctrl, rows, 0, stop, batch_size=BATCH)
    return model, opt, sampler, ctrl, rows


def _eval_ref(model, targets):
    """Mean per-sequence loss of every target, float64, eval mode, no grad."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = [float(sequence_loss(model, t).to(torch.float64).mean()) for t in targets.values()]
    model.train(was)
    return out


def test_records_prediction_and_feedback_match_direct_recomputation():
    model, opt, sampler, ctrl, rows = _run("paper")
    stages = ctrl.history["stages"]
    assert [s["feedback"] is None for s in stages] == [True, False, False, False]
    moved = False
    for k, rec in enumerate(stages):
        ci = rec["S_ci"]
        ref = predicted_change(rec["S"], rec["weights"], rec["weights_prior"], ci_low=ci["low"], ci_high=ci["high"])
        np.testing.assert_allclose(rec["predicted_change"], ref["central"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(rec["predicted_change_worst"], ref["worst"], rtol=1e-12, atol=1e-15)
        # the solver's own P_hat difference: the same formula (TiKMiX-D divides by the same row scale)
        P_hat_change = (np.asarray(rec["S"]) @ (np.asarray(rec["weights"]) - rec["weights_prior"])) / ref["scale"]
        np.testing.assert_allclose(rec["predicted_change"], P_hat_change, rtol=1e-12, atol=1e-15)
        assert rec["target_samples"] == [16, 8, 8] and len(rec["target_loss"]) == 3
        if k == 0:
            continue
        fb, prev = rec["feedback"], stages[k - 1]
        change = np.asarray(rec["target_loss"]) - prev["target_loss"]
        np.testing.assert_allclose(fb["realised_change"], change, rtol=0, atol=0)
        assert fb["predicted_change"] == prev["predicted_change"]
        ref_rho = spearman_ref(prev["predicted_change"], -change)
        if np.ptp(prev["predicted_change"]) <= 1e-12:  # the mixture did not move: nothing was predicted
            assert fb["spearman_rho"] is None and fb["signs_agree"] is None
        else:
            assert fb["spearman_rho"] == pytest.approx(ref_rho, abs=1e-12)
            moved = True
        assert (fb["from_step"], fb["to_step"]) == (prev["step"], rec["step"])
    assert moved  # at least one stage's agreement was checked
    # the boundary's target_loss is the model's dev loss at that step, as measured (eval mode, same rows)
    torch.manual_seed(11)
    rng_before = torch.get_rng_state().clone()
    model.train()
    final = ctrl.finish(STEPS)
    assert torch.equal(torch.get_rng_state(), rng_before) and model.training
    np.testing.assert_allclose(final["target_loss"], _eval_ref(model, ctrl._targets), rtol=1e-12)
    fb = final["feedback"]
    change = np.asarray(final["target_loss"]) - stages[-1]["target_loss"]
    np.testing.assert_allclose(fb["realised_change"], change, rtol=0, atol=0)
    assert (fb["from_step"], fb["to_step"]) == (BOUNDARIES[-1], STEPS)
    fbs = [s["feedback"] for s in stages[1:]] + [fb]
    rhos = [f["spearman_rho"] for f in fbs if f["spearman_rho"] is not None]
    signs = [f["signs_agree"] for f in fbs if f["signs_agree"] is not None]
    assert ctrl.history["feedback_summary"] == {
        "stages": 4, "mean_rho": pytest.approx(np.mean(rhos)), "rho_stages": len(rhos),
        "sign_agree_fraction": pytest.approx(np.mean(signs))}
    json.dumps(ctrl.history)


def _prefix_losses(model, targets, rows):
    """Mean per-sequence loss of every target's first ``rows[i]`` rows, float64, eval mode, no grad."""
    return _eval_ref(model, {name: t[:n] for (name, t), n in zip(targets.items(), rows)})


def test_adaptive_sampling_feedback_compares_each_target_on_the_rows_both_boundaries_measured():
    # with adaptive sampling a target may stop at different rows at two boundaries; its rows are prefixes of one
    # order, so the stage's realised change is read on the shorter prefix (recorded per round as loss_by_rows)
    model, opt, sampler, ctrl, rows = _setup("paper", sampling={"tolerance": 0.05, "min_samples": 2,
                                                                "round_samples": 2})
    snapshots, step = [], 0
    for boundary in BOUNDARIES + [STEPS]:
        train_steps(model, opt, sampler, ctrl, rows, step, boundary, batch_size=BATCH)
        step = boundary
        snapshots.append(copy.deepcopy(model))
    ctrl.finish(STEPS)
    stages = ctrl.history["stages"]
    samples = [s["target_samples"] for s in stages]
    assert any(a != b for a, b in zip(samples, samples[1:])), samples  # the case this test is about happens
    for k, rec in enumerate(stages):
        table = rec["influence_sampling"]["targets"]
        for i, name in enumerate(ctrl.target_names):
            # every round's prefix mean is the model's dev loss on those rows at that boundary
            entries = table[name]["loss_by_rows"]
            assert entries[-1][0] == rec["target_samples"][i]
            assert entries[-1][1] == pytest.approx(rec["target_loss"][i], rel=1e-12)
            n_rows = [n for n, _ in entries]
            ref = _prefix_losses(snapshots[k], {name: ctrl._targets[name]}, [n_rows[0]])
            assert entries[0][1] == pytest.approx(ref[0], rel=1e-5)
        if k == 0:
            assert rec["feedback"] is None
            continue
        common = [min(a, b) for a, b in zip(samples[k - 1], samples[k])]
        fb = rec["feedback"]
        np.testing.assert_allclose(fb["target_loss_before"], _prefix_losses(snapshots[k - 1], ctrl._targets, common),
                                   rtol=1e-5)
        np.testing.assert_allclose(fb["target_loss_after"], _prefix_losses(snapshots[k], ctrl._targets, common),
                                   rtol=1e-5)
        assert fb["predicted_change"] == stages[k - 1]["predicted_change"]
    # the end of the run: evaluated on the rows the last boundary measured
    final = ctrl.history["final"]
    last_rows = stages[-1]["target_samples"]
    np.testing.assert_allclose(final["target_loss"], _prefix_losses(snapshots[-1], ctrl._targets, last_rows),
                               rtol=1e-6)
    assert final["feedback"]["target_loss_before"] == stages[-1]["target_loss"]
    assert ctrl.history["feedback_summary"]["stages"] == len(BOUNDARIES)


def test_target_loss_at_a_boundary_is_the_dev_loss_then():
    model, opt, sampler, ctrl, rows = _run("paper", stop=BOUNDARIES[0])
    np.testing.assert_allclose(ctrl.history["stages"][0]["target_loss"], _eval_ref(model, ctrl._targets),
                               rtol=1e-6)


def _check_safe_and_trust_region(stages, tolerance, tr):
    previous = None
    for rec in stages:
        d = rec["decision"]
        safe, limit = d["safe"], d["trust_region"]
        # trust region: the rule applied to the feedback of the stage that just ended
        fb = rec["feedback"]
        rho = fb["spearman_rho"] if fb else None
        if previous is None:
            expected = 0.3
        elif rho is None:
            expected = previous
        else:
            expected = previous * (tr["grow"] if rho > 0 else tr["shrink"])
        assert limit["max_shift"] == pytest.approx(min(max(expected, tr["min"]), tr["max"]))
        previous = limit["max_shift"]
        w_solver, wp, w = (np.asarray(x) for x in (safe["weights_solver"], rec["weights_prior"], rec["weights"]))
        assert np.abs(w_solver - wp).sum() <= limit["max_shift"] + 1e-6
        # safe step: the mixture lies on the segment at t, every target's worst case >= -tolerance there
        assert 0.0 <= safe["t"] <= 1.0 and safe["basis"] == "worst"
        np.testing.assert_allclose(w, wp + safe["t"] * (w_solver - wp), atol=1e-12)
        assert min(safe["predicted_after"]) >= -tolerance - 1e-12
        np.testing.assert_allclose(safe["predicted_after"], rec["predicted_change_worst"], rtol=1e-12, atol=1e-15)
        violated = [n for n, p in zip(["t", "bad", "noise"], safe["predicted_before"]) if p < -tolerance]
        assert safe["violated"] == violated and (safe["t"] < 1.0) == bool(violated)
        assert safe["bounds_conflict"] is None


@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_safe_and_trust_region_records(tolerance):
    tr = {"grow": 2.0, "shrink": 0.5, "min": 0.05, "max": 1.0}
    *_, ctrl, _ = _run({"objective": "paper", "safe": tolerance, "trust_region": tr})
    stages = ctrl.history["stages"]
    _check_safe_and_trust_region(stages, tolerance, tr)
    assert {s["decision"]["trust_region"]["reason"].split(":")[0] for s in stages[1:]} <= {"grew", "shrank", "kept"}


def test_resumed_run_gives_the_records_of_an_uninterrupted_one():
    decision = {"objective": "robust", "safe": 0.02, "trust_region": True}
    model, opt, sampler, ctrl, rows = _run(decision)
    ctrl.finish(STEPS)
    full = _strip_timing(ctrl.history)
    _check_safe_and_trust_region(full["stages"], 0.02, TRUST_REGION_DEFAULTS)

    model, opt, sampler, ctrl, rows = _run(decision, stop=14)  # stopped inside the third stage
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
             "ctrl": json.loads(json.dumps(ctrl.state_dict(step=14)))}
    model, opt, sampler, ctrl, rows = _setup(decision)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    ctrl.load_state_dict(saved["ctrl"])
    train_steps(model, opt, sampler, ctrl, rows, 14, STEPS, batch_size=BATCH)
    ctrl.finish(STEPS)
    resumed = _strip_timing(ctrl.history)
    assert resumed["stages"] == full["stages"]
    assert resumed["final"] == full["final"] and resumed["feedback_summary"] == full["feedback_summary"]


def test_one_target_records_no_rank_agreement_and_does_not_crash():
    *_, ctrl, _ = _run({"objective": "paper", "trust_region": True}, targets=["t"])
    ctrl.finish(STEPS)
    for rec in ctrl.history["stages"][1:]:
        assert rec["feedback"]["spearman_rho"] is None and rec["feedback"]["signs_agree"] is None
        assert rec["decision"]["trust_region"] == {
            "max_shift": 0.3, "reason": "kept: no rank agreement for the stage (one target or constant values)"}
    assert ctrl.history["feedback_summary"] == {"stages": 4, "mean_rho": None, "rho_stages": 0,
                                                "sign_agree_fraction": None}


def test_safe_without_intervals_uses_the_central_prediction():
    *_, ctrl, _ = _run({"objective": "paper", "safe": 0.0}, n_bootstrap=0, stop=BOUNDARIES[1])
    for rec in ctrl.history["stages"]:
        assert rec["predicted_change_worst"] is None and rec["decision"]["safe"]["basis"] == "central"
        assert min(rec["predicted_change"]) >= -1e-12  # tolerance 0 on the measured S


def test_safe_step_reports_a_previous_mixture_outside_the_bounds():
    # the initial 1/3 of the target's own domain exceeds max_weight: the solver must move it down, which the
    # measured S predicts to hurt that target; tolerance 0 would keep the previous mixture, the bounds forbid it
    cap = [0.2, 1.0, 1.0]
    *_, ctrl, _ = _run({"objective": "paper", "safe": 0.0}, n_bootstrap=0, stop=BOUNDARIES[0],
                       solver_options={"max_weight": cap, "pareto": False})
    rec = ctrl.history["stages"][0]
    safe, wp, w = rec["decision"]["safe"], np.asarray(rec["weights_prior"]), np.asarray(rec["weights"])
    w_solver = np.asarray(safe["weights_solver"])
    assert "t" in safe["violated"]
    t_min = (cap[0] - wp[0]) / (w_solver[0] - wp[0])
    assert safe["t"] == pytest.approx(t_min) and w[0] == pytest.approx(cap[0])
    assert safe["bounds_conflict"].startswith("the previous mixture violates the solver's per-domain bounds for "
                                              "domain(s) ['good']")


def test_trust_region_reaches_tikmix_m_direct_options():
    *_, ctrl, _ = _run({"objective": "paper", "trust_region": {"grow": 2.0, "min": 0.1, "max": 0.4}},
                       solver="regression", stop=BOUNDARIES[1], influence={"k": 32, "n_bootstrap": 0})
    for rec in ctrl.history["stages"]:
        limit = rec["decision"]["trust_region"]["max_shift"]
        direct = rec["solver"]["direct"]
        shift = np.abs(np.asarray(direct["weights"]) - rec["weights_prior"]).sum()
        assert shift <= limit + 1e-6
        assert np.abs(np.asarray(rec["weights"]) - rec["weights_prior"]).sum() <= limit + 1e-6


def test_a_state_saved_before_safe_and_trust_region_existed_still_loads():
    *_, ctrl, _ = _run("robust", stop=BOUNDARIES[0])
    state = json.loads(json.dumps(ctrl.state_dict()))
    for key in ("safe", "trust_region"):
        state["config"]["decision"].pop(key)
    _, _, _, again, _ = _setup("robust")
    again.load_state_dict(state)
    assert again.stages_done == 1
    _, _, _, other, _ = _setup({"objective": "robust", "safe": 0.0})
    with pytest.raises(ValueError, match="decision"):
        other.load_state_dict(state)
    assert Decision.from_options(state["config"]["decision"] | {"safe": None}).safe is None


# ---------------------------------------------------------------------------------------- two ranks
def _boundaries_then_finish(decision):
    """Boundaries at 6 and 12 with a deterministic change of the weights between them (no training loop: every rank
    holds the same model), then finish at 26; the history."""
    model, opt, sampler, ctrl, rows = _setup(decision)
    g = torch.Generator().manual_seed(7)
    ctrl.step(6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ctrl.step(12)
    ctrl.finish(26)
    return json.loads(json.dumps(_strip_timing(ctrl.history)))


def _worker(rank: int, world: int, port: int, out_dir: str, decision) -> None:
    import torch.distributed as dist

    from dist_testing import end_worker

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    history = _boundaries_then_finish(decision)
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(history, f)
    end_worker()


def test_two_ranks_record_what_one_process_records(tmp_path):
    import torch.multiprocessing as mp

    from dist_testing import free_port

    decision = {"objective": "paper", "safe": 0.0, "trust_region": True}
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), decision), nprocs=2, join=True)
    single = _boundaries_then_finish(decision)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for a, b in zip(got["stages"], single["stages"]):
            np.testing.assert_allclose(a["target_loss"], b["target_loss"], rtol=1e-9)
            assert a["target_samples"] == b["target_samples"]
            np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-6)
            assert a["decision"]["trust_region"] == b["decision"]["trust_region"]
            assert a["decision"]["safe"]["t"] == pytest.approx(b["decision"]["safe"]["t"], abs=1e-6)
        np.testing.assert_allclose(got["final"]["target_loss"], single["final"]["target_loss"], rtol=1e-9)
        np.testing.assert_allclose(got["final"]["feedback"]["realised_change"],
                                   single["final"]["feedback"]["realised_change"], rtol=1e-6, atol=1e-12)
        fb, ref = got["stages"][1]["feedback"], single["stages"][1]["feedback"]
        np.testing.assert_allclose(fb["realised_change"], ref["realised_change"], rtol=1e-6, atol=1e-12)
        assert (fb["spearman_rho"] is None) == (ref["spearman_rho"] is None)
