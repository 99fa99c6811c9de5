"""The integrations refuse before step 1 what would go wrong later: domains in another order than the training
dataset's, a total_steps other than max_steps, token ids beyond the model's vocabulary, a model the controller
cannot measure (the rehearsal). And they finish their runs (history["final"])."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("transformers")

import tikmix  # noqa: E402
from tikmix.losses import causal_lm_loss  # noqa: E402

from integration_testing import TokenRows, dict_collate, domains, targets, tiny_gpt2  # noqa: E402


def controller(model, doms=None, **kw):
    doms = doms if doms is not None else domains()
    sampler = tikmix.MixtureSampler([len(d) for d in doms.values()], [1 / len(doms)] * len(doms), batch_size=4,
                                    seed=5)
    opts = dict(domains=doms, targets=targets(), loss_fn=causal_lm_loss, collate=dict_collate, stages=[3, 6],
                samples_per_domain=6, batch_size=6, influence={"k": 128, "n_bootstrap": 0}, seed=1)
    opts.update(kw)
    return tikmix.Controller(model, sampler, **opts)


def hf_trainer(tmp_path, ctl, train, max_steps=9, callbacks=(), eval_dataset=None):
    from transformers import TrainingArguments

    from tikmix.integrations.hf import MixtureTrainer

    evals = dict(eval_strategy="steps", eval_steps=max_steps) if eval_dataset is not None else {}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=max_steps, learning_rate=1e-3, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0, **evals)
    return MixtureTrainer(controller=ctl, model=ctl.model, args=args, train_dataset=train, data_collator=dict_collate,
                          callbacks=list(callbacks), eval_dataset=eval_dataset)


def two_domains(first: str):
    big, small = TokenRows(200, 0, 40, 1), TokenRows(150, 30, 70, 2)
    return {"big": big, "small": small} if first == "big" else {"small": small, "big": big}


def test_hf_refuses_domains_in_another_order(tmp_path):
    ctl = controller(tiny_gpt2(dropout=0.0), doms=two_domains("big"), rehearse=False)
    with pytest.raises(ValueError, match=r"train_dataset holds the domains \(small=150, big=200\) in this order, but "
                                         r"the controller's domains are \(big=200, small=150\)"):
        hf_trainer(tmp_path, ctl, tikmix.concat_domains(two_domains("small")))
    with pytest.raises(ValueError, match=r"sizes \(domain 0=150, domain 1=200\), but the controller's domains are "
                                         r"\(big=200, small=150\)"):
        hf_trainer(tmp_path, ctl, tikmix.concat_domains(list(two_domains("small").values())))
    same = {"x": TokenRows(40, 0, 40, 1), "y": TokenRows(40, 30, 70, 2)}
    ctl = controller(tiny_gpt2(dropout=0.0), doms=same, rehearse=False)
    with pytest.raises(ValueError, match=r"\(y=40, x=40\) in this order"):  # equal sizes: the names decide
        hf_trainer(tmp_path, ctl, tikmix.concat_domains({"y": same["y"], "x": same["x"]}))


def test_hf_total_steps_from_max_steps(tmp_path):
    ctl = controller(tiny_gpt2(dropout=0.0), rehearse=False)
    train = tikmix.concat_domains(domains())
    hf_trainer(tmp_path, ctl, train, max_steps=9)
    assert ctl.total_steps == 9  # unset: taken from the trainer
    with pytest.raises(ValueError, match="total_steps=9, but the trainer runs max_steps=12"):
        hf_trainer(tmp_path, ctl, train, max_steps=12)
    with pytest.raises(ValueError, match=r"boundary 6 \(steps\) is at step 6, not before the end of training"):
        hf_trainer(tmp_path, controller(tiny_gpt2(dropout=0.0), rehearse=False), train, max_steps=5)


def test_vocabulary_smaller_than_the_data_is_refused_before_training():
    from transformers import GPT2Config, GPT2LMHeadModel

    small = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"domains\['mid'\] holds token id 69, but the model's input embedding has "
                                         r"64 rows"):
        controller(small)


class Gate(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.scale if x.sum() > 0 else x * self.scale * 2  # data-dependent control flow


def test_hf_unmeasurable_model_is_reported_before_any_optimizer_step(tmp_path):
    from transformers import TrainerCallback

    def gated():
        model = tiny_gpt2(dropout=0.0)
        model.transformer.ln_f = nn.Sequential(model.transformer.ln_f, Gate(32))
        return model

    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            steps.append(state.global_step)

    per_sample = {"k": 128, "n_bootstrap": 0, "mode": "per_sample"}
    with pytest.raises(RuntimeError, match="rehearsal"):
        ctl = controller(gated(), influence=per_sample)
        hf_trainer(tmp_path, ctl, tikmix.concat_domains(domains()), callbacks=[Count()]).train()
    assert steps == []  # reported before any optimizer step
    # without the rehearsal it fails at the first boundary, after the training time was spent
    ctl = controller(gated(), influence=per_sample, rehearse=False)
    with pytest.raises(Exception):
        hf_trainer(tmp_path, ctl, tikmix.concat_domains(domains()), callbacks=[Count()]).train()
    assert steps == [1, 2, 3]


def test_lightning_refuses_domains_in_another_order_and_finishes(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from tikmix.integrations.lightning import TikmixCallback

    class Module(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def fit(ctl, train, max_steps=9):
        trainer = L.Trainer(max_steps=max_steps, accumulate_grad_batches=2, use_distributed_sampler=False,
                            accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, callbacks=[TikmixCallback(ctl)])
        trainer.fit(Module(ctl.model), DataLoader(train, sampler=ctl.sampler, batch_size=2, collate_fn=dict_collate))
        return trainer

    ctl = controller(tiny_gpt2(dropout=0.0), doms=two_domains("big"), rehearse=False)
    with pytest.raises(ValueError, match=r"\(small=150, big=200\) in this order, but the controller's domains are "
                                         r"\(big=200, small=150\)"):
        fit(ctl, tikmix.concat_domains(two_domains("small")))
    with pytest.raises(ValueError, match="total_steps=9, but the trainer runs max_steps=12"):
        fit(controller(tiny_gpt2(dropout=0.0), rehearse=False, total_steps=9), tikmix.concat_domains(domains()), 12)
    ctl = controller(tiny_gpt2(dropout=0.0), rehearse=False)
    fit(ctl, tikmix.concat_domains(domains()))
    final = ctl.history["final"]
    assert final["step"] == 9 and sum(final["realised_total"]["samples"]) == 9 * 4
    assert sum(final["realised_last_stage"]["samples"]) == 3 * 4
    assert [r["applies_from_step"] for r in ctl.history["stages"]] == [5, 8]  # the loader fetched one batch ahead


def test_hf_history_final_and_step_convention(tmp_path):
    ctl = controller(tiny_gpt2(dropout=0.0), rehearse=False)
    trainer = hf_trainer(tmp_path, ctl, tikmix.concat_domains(domains()), eval_dataset=targets()["lowish"])
    trainer.train()
    final = ctl.history["final"]
    assert final["step"] == 9 and sum(final["realised_total"]["samples"]) == 9 * 4
    assert final["eval"]["eval_loss"] == trainer.state.log_history[-2]["eval_loss"] > 0  # the last evaluation
    # the Trainer fetches one batch ahead: the first re-weighted batch is global_step b + 2
    assert [r["applies_from_step"] for r in ctl.history["stages"]] == [5, 8]
    for r in ctl.history["stages"]:
        assert ctl.sampler.weights_at(r["applies_from_step"] - 1) == pytest.approx(r["weights"], abs=1e-4)
        assert ctl.sampler.weights_at(r["applies_from_step"] - 2) == pytest.approx(r["weights_prior"], abs=1e-4)
