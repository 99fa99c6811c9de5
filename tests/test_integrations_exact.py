"""One measurement whatever the loop: the plain Controller loop, HF ``MixtureTrainer`` and the Lightning callback give
the same S at the first boundary (bit for bit, equal to GroupInfluence on the eval-mode model), with and without
dropout; and each loop resumed from a checkpoint reproduces its uninterrupted run bit for bit with dropout on."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("transformers")

import tikmix  # noqa: E402
from tikmix.losses import causal_lm_loss  # noqa: E402

from integration_testing import dict_collate, domains, hf_stop_callbacks, targets, tiny_gpt2  # noqa: E402

STAGES = [3, 6]
STEPS = 9
PER_DEVICE = 2
INFLUENCE = {"k": 256, "n_bootstrap": 0, "mode": "group"}


def make_controller(model, ga: int):
    doms = domains()
    train = tikmix.concat_domains(doms)
    sampler = tikmix.MixtureSampler(train.domain_sizes, [1 / 3] * 3, batch_size=PER_DEVICE * ga, seed=5)
    ctl = tikmix.Controller(model, sampler, domains=doms, targets=targets(), loss_fn=causal_lm_loss,
                            collate=dict_collate, stages=STAGES, samples_per_domain=6, batch_size=6,
                            influence=dict(INFLUENCE), seed=1)
    return ctl, train


def spy_first_boundary(ctl) -> dict:
    """Record the model state, its train/eval flags and the batches of the controller's first measurement."""
    seen: dict = {}
    compute = ctl._influence.compute

    def wrapped(doms, tgts):
        if not seen:
            seen.update(state=copy.deepcopy(ctl.model.state_dict()), training=[m.training for m in ctl.model.modules()],
                        domains=doms, targets=tgts, rng=torch.get_rng_state())
        return compute(doms, tgts)

    ctl._influence.compute = wrapped
    return seen


def eval_loss(model) -> float:
    model.eval()
    with torch.no_grad():
        batch = dict_collate([targets()["lowish"][i] for i in range(8)])
        return float(causal_lm_loss(model, batch).mean())


# ------------------------------------------------------------------------------------------------ the three loops
def run_plain(folder, *, dropout, lr=3e-3, ga=2, stop_at=None, resume=False):
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_gpt2(seed=0, dropout=dropout)
    ctl, train = make_controller(model, ga)
    ctl.set_total_steps(STEPS)
    spy = spy_first_boundary(ctl)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    start, losses = 0, []
    loader = iter(DataLoader(train, sampler=ctl.sampler, batch_size=PER_DEVICE, collate_fn=dict_collate))
    if resume:  # a user's checkpoint: model, optimizer, controller (sampler inside) and the training RNG
        ck = torch.load(folder / "plain.pt", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        ctl.load_state_dict(ck["controller"])
        loader = iter(DataLoader(train, sampler=ctl.sampler, batch_size=PER_DEVICE, collate_fn=dict_collate))
        torch.set_rng_state(ck["rng"])
        start = ck["step"]
    model.train()
    for step in range(start + 1, STEPS + 1):
        for _ in range(ga):
            loss = model(**next(loader)).loss / ga
            loss.backward()
            losses.append(loss.item())
        opt.step()
        opt.zero_grad()
        ctl.step(step)
        if step == stop_at:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "controller": ctl.state_dict(step=step), "rng": torch.get_rng_state()}, folder / "plain.pt")
            return dict(losses=losses, ctl=ctl, model=model, spy=spy)
    ctl.finish(STEPS, eval_loss=eval_loss(model))
    return dict(losses=losses, ctl=ctl, model=model, spy=spy)


def run_hf(folder, *, dropout, lr=3e-3, ga=2, stop_at=None, resume=False):
    from transformers import TrainingArguments

    from tikmix.integrations.hf import MixtureTrainer

    model = tiny_gpt2(seed=0, dropout=dropout)
    ctl, train = make_controller(model, ga)
    spy = spy_first_boundary(ctl)
    args = TrainingArguments(output_dir=str(folder), per_device_train_batch_size=PER_DEVICE,
                             gradient_accumulation_steps=ga, max_steps=STEPS, learning_rate=lr,
                             save_strategy="steps", save_steps=100, logging_steps=1000, report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)

    trainer = MixtureTrainer(controller=ctl, model=model, args=args, train_dataset=train,
                             data_collator=dict_collate, callbacks=hf_stop_callbacks(stop_at))
    losses = []
    orig = trainer.training_step

    def training_step(*a, **kw):
        loss = orig(*a, **kw)
        losses.append(loss.item())
        return loss

    trainer.training_step = training_step
    trainer.train(resume_from_checkpoint=str(folder / f"checkpoint-{resume}") if resume else None)
    return dict(losses=losses, ctl=ctl, model=model, spy=spy)


def run_lightning(folder, *, dropout, lr=3e-3, ga=2, stop_at=None, resume=False):
    L = pytest.importorskip("lightning.pytorch")
    from tikmix.integrations.lightning import TikmixCallback

    class Module(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            loss = self.model(**batch).loss
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=lr)

    model = tiny_gpt2(seed=0, dropout=dropout)
    ctl, train = make_controller(model, ga)
    spy = spy_first_boundary(ctl)
    module = Module(model)
    loader = DataLoader(train, sampler=ctl.sampler, batch_size=PER_DEVICE, collate_fn=dict_collate)
    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == stop_at:
                trainer.should_stop = True

    callbacks = [TikmixCallback(ctl)]
    if stop_at:
        callbacks += [Stop(), L.callbacks.ModelCheckpoint(dirpath=str(folder), every_n_train_steps=stop_at,
                                                          save_top_k=-1, filename="{step}")]
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=ga, use_distributed_sampler=False,
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(stop_at), callbacks=callbacks)
    L.seed_everything(0, verbose=False)
    trainer.fit(module, loader, ckpt_path=str(folder / f"step={resume}.ckpt") if resume else None)
    return dict(losses=module.losses, ctl=ctl, model=model, spy=spy)


LOOPS = {"plain": run_plain, "hf": run_hf, "lightning": run_lightning}


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_first_boundary_S_same_on_every_loop(tmp_path, dropout):
    """lr=0 keeps the weights at their initial values, so every loop measures the same model: S must agree bit for
    bit, be measured in eval mode, and equal GroupInfluence on the eval-mode model."""
    out = {}
    for name, run in LOOPS.items():
        if name == "lightning":
            pytest.importorskip("lightning")
        res = run(tmp_path / name, dropout=dropout, lr=0.0)
        out[name] = res
        assert not any(res["spy"]["training"]), f"{name}: influence measured with a module in train mode"
    ref = tiny_gpt2(seed=0, dropout=dropout).eval()
    spy = out["plain"]["spy"]
    gi = tikmix.GroupInfluence(ref, causal_lm_loss, seed=1, progress=False, **INFLUENCE)
    expected = gi.compute(spy["domains"], spy["targets"]).S.tolist()
    for name, res in out.items():
        first = res["ctl"].history["stages"][0]
        assert first["step"] == STAGES[0]
        assert first["S"] == expected, name
    assert out["hf"]["ctl"].history["measure"] == {"mode": "eval", "training_rng": "preserved"}


def _compare(full, parts, where):
    a, b = full["ctl"].history, parts["ctl"].history
    assert parts["losses"] == full["losses"], f"{where}: training losses differ"
    assert [r["S"] for r in b["stages"]] == [r["S"] for r in a["stages"]], f"{where}: S differs"
    assert [r["weights"] for r in b["stages"]] == [r["weights"] for r in a["stages"]], f"{where}: mixtures differ"
    assert [r["applies_from_step"] for r in b["stages"]] == [r["applies_from_step"] for r in a["stages"]]
    for k, v in full["model"].state_dict().items():
        assert torch.equal(parts["model"].state_dict()[k], v), f"{where}: {k} differs"
    assert eval_loss(parts["model"]) == eval_loss(full["model"])
    assert b["final"] is not None and b["final"]["realised_total"] == a["final"]["realised_total"]


@pytest.mark.parametrize("loop,stop_at,ga", [("plain", 4, 2), ("plain", 3, 2), ("hf", 4, 2), ("hf", 3, 2),
                                             ("hf", 4, 1), ("lightning", 4, 2), ("lightning", 3, 2)])
def test_resume_with_dropout_is_exact(tmp_path, loop, stop_at, ga):
    if loop == "lightning":
        pytest.importorskip("lightning")
    run = LOOPS[loop]
    full = run(tmp_path / "full", dropout=0.1, ga=ga)
    assert [r["step"] for r in full["ctl"].history["stages"]] == STAGES
    first = run(tmp_path / "part", dropout=0.1, ga=ga, stop_at=stop_at)
    second = run(tmp_path / "part", dropout=0.1, ga=ga, resume=stop_at)
    second["losses"] = first["losses"] + second["losses"]
    _compare(full, second, f"{loop} resumed at step {stop_at}")


def test_tikmix_m_on_gpt2_with_dropout_in_hf(tmp_path):
    """TiKMiX-M (per-sample influence) on a GPT-2 config with dropout 0.1, fed the Trainer's attention-mask
    batches, handles both boundaries; its rehearsal ran the per-sample self-check before the first step."""
    from transformers import TrainingArguments

    from tikmix.integrations.hf import MixtureTrainer

    model = tiny_gpt2(seed=0, dropout=0.1)
    doms = domains()
    train = tikmix.concat_domains(doms)
    sampler = tikmix.MixtureSampler(train.domain_sizes, [1 / 3] * 3, batch_size=PER_DEVICE * 2, seed=5)
    ctl = tikmix.Controller(model, sampler, domains=doms, targets=targets(), loss_fn=causal_lm_loss,
                            collate=dict_collate, stages=STAGES, samples_per_domain=6, batch_size=3,
                            influence={"k": 128, "n_bootstrap": 20}, solver="regression", seed=1,
                            solver_options={"regression": {"n_candidates": 64, "rounds": 2,
                                                           "samples_per_round": 256, "top_k": 8}})
    assert ctl.history["rehearsal"]["verified"] is True
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=PER_DEVICE,
                             gradient_accumulation_steps=2, max_steps=STEPS, learning_rate=3e-3, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    MixtureTrainer(controller=ctl, model=model, args=args, train_dataset=train, data_collator=dict_collate).train()
    records = ctl.history["stages"]
    assert [r["step"] for r in records] == STAGES
    for r in records:
        assert r["solver"]["used"].startswith("tikmix-")
        assert np.all(np.isfinite(np.asarray(r["S"])))
        assert sum(r["weights"]) == pytest.approx(1.0)
    assert ctl.history["final"] is not None
