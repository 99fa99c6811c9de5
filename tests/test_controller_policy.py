"""The Controller's measurement policy: eval mode, training RNG untouched, every boundary once in order, the rehearsal
before training, and the checks that refuse a run that could not do what it says."""
from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import default_collate

import tikmix
from tikmix.controller import REHEARSAL_ROWS, Controller

VOCAB, SEQ = 32, 9


class Gate(nn.Module):
    """Data-dependent control flow on a parameter with no hook rule: per-sample capture cannot vmap it."""

    def __init__(self, d: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        if x.sum() > 0:
            return x * self.scale
        return x * self.scale * 2


class Tiny(nn.Module):
    def __init__(self, dropout: float = 0.1, gate: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(dropout)
        self.gate = Gate(8) if gate else nn.Identity()
        self.out = nn.Linear(8, VOCAB)

    def forward(self, ids):
        return self.out(self.gate(self.drop(self.emb(ids))))


SEEN: list = []


def loss_fn(model, batch):
    SEEN.append([m.training for m in model.modules()])
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").mean(1)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    doms = {"a": torch.randint(0, 16, (20, SEQ), generator=g), "b": torch.randint(10, VOCAB, (12, SEQ), generator=g)}
    return doms, {"t": torch.randint(0, 20, (6, SEQ), generator=g)}


def drawing_collate(items):
    torch.rand(3)  # a collator that draws (masking, cropping): the controller must not let it move the streams
    random.random()
    np.random.rand()
    return default_collate(items)


def make(model=None, stages=(3, 5), **kw):
    doms, tgts = data()
    sampler = tikmix.MixtureSampler([len(d) for d in doms.values()], [0.5, 0.5], batch_size=4, seed=0)
    opts = dict(domains=doms, targets=tgts, loss_fn=loss_fn, stages=list(stages), samples_per_domain=6, batch_size=3,
                influence={"k": 32, "n_bootstrap": 0}, collate=drawing_collate, total_steps=10)
    opts.update(kw)
    return Controller(model if model is not None else Tiny(), sampler, **opts)


def rng_snapshot():
    return torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy()


def test_boundary_in_eval_mode_restores_flags_and_rng():
    SEEN.clear()
    ctl = make()
    assert SEEN and not any(any(flags) for flags in SEEN)  # the rehearsal measured in eval mode too
    model = ctl.model
    model.train()
    model.out.eval()  # a submodule the user froze in eval mode stays so
    before = [m.training for m in model.modules()]
    torch.manual_seed(123)
    snap = rng_snapshot()
    SEEN.clear()
    assert ctl.step(2) is None and not SEEN
    record = ctl.step(3)
    assert record["step"] == 3 and SEEN and not any(any(flags) for flags in SEEN)
    assert [m.training for m in model.modules()] == before
    after = rng_snapshot()
    assert torch.equal(after[0], snap[0]) and after[1] == snap[1] and np.array_equal(after[2], snap[2])
    assert ctl.history["measure"] == {"mode": "eval", "training_rng": "preserved"}


def test_measure_mode_train_is_explicit_and_part_of_the_state():
    SEEN.clear()
    ctl = make(Tiny(dropout=0.0), measure_mode="train", rehearse=False)
    ctl.model.train()
    ctl.step(3)
    assert SEEN and all(all(flags) for flags in SEEN)
    assert ctl.history["measure"]["mode"] == "train"
    other = make(Tiny(dropout=0.0), rehearse=False)
    with pytest.raises(ValueError, match="measure_mode"):
        other.load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="measure_mode must be one of"):
        make(measure_mode="inference")


def test_every_boundary_up_to_step_once_in_order():
    ctl = make(stages=(3, 5, 8), rehearse=False)
    record = ctl.step(6)  # jumped over 3 and 5
    assert [r["step"] for r in ctl.history["stages"]] == [3, 5] and record["step"] == 5
    assert ctl.step(6) is None and ctl.step(7) is None
    assert ctl.step(9)["step"] == 8 and ctl.stages_done == 3
    # 1-based convention: a loop that fetches only what it trains on gets the new weights from the next step
    assert [r["applies_from_step"] for r in ctl.history["stages"]] == [4, 6, 9]


def test_rehearsal_reports_an_unmeasurable_model_before_training():
    model = Tiny(dropout=0.0, gate=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 0
    with pytest.raises(RuntimeError, match="rehearsal .* failed"):
        make(model, influence={"k": 32, "n_bootstrap": 0, "mode": "per_sample"})
        steps += 1  # never reached: the loop below would be the first optimizer step
        opt.step()
    assert steps == 0
    # without the rehearsal the same model fails only at the first boundary, after training time was spent
    ctl = make(Tiny(dropout=0.0, gate=True), influence={"k": 32, "n_bootstrap": 0, "mode": "per_sample"},
               rehearse=False)
    assert ctl.history["rehearsal"] is None
    with pytest.raises(Exception):
        ctl.step(3)


def test_passed_rehearsal_records_its_cost_and_skips_the_self_check():
    ctl = make(influence={"k": 32, "n_bootstrap": 0, "mode": "per_sample"}, batch_size=6)
    reh = ctl.history["rehearsal"]
    first, *others = ctl.domain_names
    assert reh["verified"] is True and reh["self_check_at_boundaries"] is False
    # a whole micro-batch of the first domain (memory), a few rows of every other source (structure, self-check)
    assert reh["rows"]["domains"][first] == ctl.batch_size > REHEARSAL_ROWS
    assert all(reh["rows"]["domains"][n] == REHEARSAL_ROWS for n in others)
    assert reh["rows"]["targets"] == dict.fromkeys(ctl.target_names, REHEARSAL_ROWS)
    assert ctl._influence.verify is False
    record = ctl.step(3)
    assert record["step"] == 3 and record["timing"]["rehearsal_s"] > 0
    assert ctl.step(5)["timing"]["rehearsal_s"] == 0.0  # counted once
    group = make()
    assert group.history["rehearsal"]["verified"] is False


def test_history_records_what_was_measured():
    model = Tiny(dropout=0.0)
    some = [n for n, _ in model.named_parameters()][-2:]
    ctl = make(model, influence={"k": 32, "n_bootstrap": 0, "params": some}, rehearse=False)
    settings = ctl.history["influence"]
    assert settings == ctl._influence.settings() and settings["parameters"] == some
    assert settings["k"] == 32 and settings["mode"] == "group"
    json.dumps(ctl.history)  # JSON-ready
    every = make(Tiny(dropout=0.0), rehearse=False).history["influence"]["parameters"]
    assert every == [n for n, p in Tiny(dropout=0.0).named_parameters() if p.requires_grad]


def test_total_steps_checks():
    ctl = make(total_steps=None, rehearse=False)
    with pytest.warns(UserWarning, match="total_steps is not set"):
        ctl.step(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctl.step(2)  # warned once
    with pytest.raises(ValueError, match=r"boundary 5 \(steps\) is at step 5, not before the end of training \(total_steps=5\)"):
        make(total_steps=None, rehearse=False).set_total_steps(5)
    ctl = make(total_steps=10, rehearse=False)
    ctl.set_total_steps(10)
    with pytest.raises(ValueError, match="total_steps=10, but the trainer runs max_steps=12"):
        ctl.set_total_steps(12)
    with pytest.raises(ValueError, match=r"boundary 5 \(steps\) .* \(total_steps=4\)"):
        make(total_steps=4)


def test_domains_must_match_the_sampler_in_order():
    doms, tgts = data()
    sampler = tikmix.MixtureSampler([12, 20], [0.5, 0.5], batch_size=4, seed=0)
    with pytest.raises(ValueError, match=r"domains do not match the sampler: domains has sizes \(a=20, b=12\)"):
        Controller(Tiny(), sampler, domains=doms, targets=tgts, loss_fn=loss_fn, stages=[3], rehearse=False)


def test_concat_domains_carries_names_and_sizes():
    doms, _ = data()
    ds = tikmix.concat_domains(doms)
    assert ds.domain_names == ("a", "b") and ds.domain_sizes == (20, 12)
    assert tikmix.concat_domains(list(doms.values())).domain_names is None
    with pytest.raises(ValueError, match=r"datasets\['b'\] is empty"):
        tikmix.concat_domains({"a": doms["a"], "b": doms["b"][:0]})
