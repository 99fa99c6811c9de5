"""Lightning integration: TikmixCallback over three stages, resume through Lightning checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

import lightning.pytorch as L  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import tikmix  # noqa: E402
from tikmix.integrations.lightning import TikmixCallback  # noqa: E402
from tikmix.losses import causal_lm_loss  # noqa: E402

from integration_testing import check_two_stage_history, dict_collate, domains, state_of, targets, tiny_llama  # noqa: E402


class LlamaModule(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class _StopAt(L.Callback):
    """Stop training after optimizer step ``step`` (the run's max_steps stays the full run's)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _setup(max_steps, tmp_path, seed=0, callbacks=()):
    model = tiny_llama(seed=seed)
    doms = domains()
    train = tikmix.concat_domains(list(doms.values()))
    sampler = tikmix.MixtureSampler(train.domain_sizes, [1 / 3] * 3, batch_size=8, seed=5)
    controller = tikmix.Controller(model, sampler, domains=doms, targets=targets(), loss_fn=causal_lm_loss,
                                   collate=dict_collate, stages=[3, 6], samples_per_domain=6, batch_size=6,
                                   influence={"k": 256, "n_bootstrap": 0}, seed=1)
    module = LlamaModule(model)
    loader = DataLoader(train, sampler=sampler, batch_size=4, collate_fn=dict_collate)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=4, save_top_k=-1,
                                       filename="{step}")
    trainer = L.Trainer(max_steps=max_steps, accumulate_grad_batches=2, use_distributed_sampler=False,
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[TikmixCallback(controller), ckpt, *callbacks])
    return trainer, module, loader, controller, sampler, train


def test_lightning_three_stages_and_exact_resume(tmp_path):
    trainer, module, loader, ctl, sampler, train = _setup(9, tmp_path / "full")
    trainer.fit(module, loader)
    hist = check_two_stage_history(ctl.history, sampler)
    expected = sampler.global_indices(0, 9)
    ref = torch.stack([train[int(i)]["input_ids"] for i in expected])
    assert torch.equal(torch.cat(module.seen), ref)  # one sampler step per optimizer step, in order

    t1, m1, l1, _, _, _ = _setup(9, tmp_path / "part", callbacks=[_StopAt(4)])
    t1.fit(m1, l1)
    ckpt = tmp_path / "part" / "step=4.ckpt"
    assert ckpt.is_file()
    t2, m2, l2, ctl2, _, _ = _setup(9, tmp_path / "part", seed=7)
    t2.fit(m2, l2, ckpt_path=str(ckpt))
    assert [r["step"] for r in ctl2.history["stages"]] == [3, 6]
    for a, b in zip(ctl2.history["stages"], hist):
        assert a["applies_from_step"] == b["applies_from_step"]
        np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(a["S"], b["S"], rtol=1e-4, atol=1e-9)
    assert torch.equal(torch.cat(m1.seen + m2.seen), ref)
    full, resumed = state_of(module.model), state_of(m2.model)
    for k, v in full.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-5, atol=1e-6)


def test_lightning_rejects_mismatched_batch(tmp_path):
    trainer, module, loader, ctl, sampler, train = _setup(2, tmp_path)
    bad = DataLoader(train, sampler=sampler, batch_size=3, collate_fn=dict_collate)
    with pytest.raises(ValueError, match="batch_size .* accumulate_grad_batches"):
        trainer.fit(module, bad)
    with pytest.raises(TypeError, match="tikmix.Controller"):
        TikmixCallback(sampler)
