"""Hugging Face integration: the causal-LM loss, hook rules for HF blocks, MixtureTrainer + TikmixCallback."""
from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import tikmix  # noqa: E402
from tikmix.influence import hook_rules  # noqa: E402
from tikmix.losses import causal_lm_loss  # noqa: E402

from integration_testing import (  # noqa: E402
    VOCAB, check_two_stage_history, dict_collate, domains, hf_stop_callbacks, state_of, targets, tiny_llama,
)


# ---------------------------------------------------------------------------------------------- loss
def causal_lm_loss_ref(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token NLL, one position at a time in float64 (logits [B,T,V], labels [B,T])."""
    out = []
    lp = torch.log_softmax(logits.double(), -1)
    for b in range(labels.shape[0]):
        terms = [-lp[b, t, labels[b, t + 1]] for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(1, 5), (3, 16), (4, 9)])
def test_causal_lm_loss_matches_reference_and_model_loss(shape):
    model = tiny_llama(seed=1).eval()
    g = torch.Generator().manual_seed(sum(shape))
    ids = torch.randint(0, VOCAB, shape, generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if shape[0] > 1:
        mask[1, shape[1] - 2 :] = 0  # right padding
        labels[mask == 0] = -100
        labels[0, 2] = -100  # an ignored position inside a sequence
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    losses = causal_lm_loss(model, batch)
    assert losses.shape == (shape[0],) and losses.dtype == torch.float32
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(losses.double(), causal_lm_loss_ref(out.logits, labels), rtol=1e-5, atol=1e-6)
    counted = (labels[:, 1:] != -100).sum(1).double()
    torch.testing.assert_close((losses.double() * counted).sum() / counted.sum(), out.loss.double(),
                               rtol=1e-5, atol=1e-6)
    # without labels: input_ids with padding ignored
    no_labels = causal_lm_loss(model, {"input_ids": ids, "attention_mask": mask})
    ref = causal_lm_loss_ref(out.logits, ids.masked_fill(mask == 0, -100))
    torch.testing.assert_close(no_labels.double(), ref, rtol=1e-5, atol=1e-6)


def test_causal_lm_loss_bad_inputs():
    model = tiny_llama().eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(TypeError, match="input_ids"):
        causal_lm_loss(model, ids)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        causal_lm_loss(model, {"input_ids": ids[0]})
    labels = ids.clone()
    labels[1, 1:] = -100
    with pytest.raises(ValueError, match="sequence 1 .* no token to predict"):
        causal_lm_loss(model, {"input_ids": ids, "labels": labels})
    with pytest.raises(TypeError, match="no logits"):
        causal_lm_loss(lambda input_ids, **kw: (input_ids,), {"input_ids": ids})
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        causal_lm_loss(lambda input_ids, **kw: torch.zeros(2, 6), {"input_ids": ids})


# ---------------------------------------------------------------------------------------------- hook rules
def _split(batch: dict, n: int) -> dict:
    return {k: v[n : n + 1] for k, v in batch.items()}


def per_sample_ref(model, batches, params) -> torch.Tensor:
    """[N, D] float64 per-sample gradients, one backward per sample."""
    rows = []
    for batch in batches:
        for n in range(batch["input_ids"].shape[0]):
            loss = causal_lm_loss(model, _split(batch, n)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                                   for p, g in zip(params, grads)]))
    return torch.stack(rows)


def _batches(model_vocab: int, seed: int, n: int = 2, b: int = 3, t: int = 10, pad: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, model_vocab, (b, t), generator=g)
        item = {"input_ids": ids}
        if pad:
            mask = torch.ones_like(ids)
            mask[0, -3:] = 0
            item["attention_mask"] = mask
            item["labels"] = ids.masked_fill(mask == 0, -100)
        out.append(item)
    return out


def test_llama_per_sample_all_on_hook_rules_and_exact():
    model = tiny_llama(seed=3, tie=True).double().eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    doms = {"a": _batches(VOCAB, 1, pad=True), "b": _batches(VOCAB, 2, pad=True)}
    tgts = {"t": _batches(VOCAB, 3, n=1, pad=True)}
    gi = tikmix.GroupInfluence(model, causal_lm_loss, k=None, mode="per_sample", n_bootstrap=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parameter may fall back to torch.func
        res = gi.compute(doms, tgts)
    paths = res.layout["parameter_paths"]
    assert paths["model.embed_tokens.weight"] == "exact <- hook rule 'embedding'+'linear'"  # tied embedding
    assert paths["model.norm.weight"] == "exact <- hook rule 'hf_rms_norm'"
    assert paths["model.layers.0.self_attn.q_proj.weight"] == "exact <- hook rule 'linear'"
    assert set(res.layout["per_sample_capture"].values()) == {"hooks"}
    params = [p for _, p in model.named_parameters()]
    g = {n: per_sample_ref(model, b, params) for n, b in doms.items()}
    t = per_sample_ref(model, tgts["t"], params).mean(0)
    torch.testing.assert_close(res.unit_scores[:, 0], torch.cat([g["a"], g["b"]]) @ t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.S[0], torch.stack([g["a"].mean(0) @ t, g["b"].mean(0) @ t]), rtol=1e-9,
                               atol=1e-12)


def test_llama_sketched_kronecker_blocks_match_group_mode():
    model = tiny_llama(seed=4).eval()
    doms = {"a": _batches(VOCAB, 5), "b": _batches(VOCAB, 6)}
    tgts = {"t": _batches(VOCAB, 7, n=1)}
    kw = dict(k=512, n_bootstrap=0, progress=False, seed=3)
    per = tikmix.GroupInfluence(model, causal_lm_loss, mode="per_sample", **kw).compute(doms, tgts)
    grp = tikmix.GroupInfluence(model, causal_lm_loss, mode="group", **kw).compute(doms, tgts)
    assert per.layout["parameter_paths"]["model.layers.1.mlp.down_proj.weight"] == "kronecker <- hook rule 'linear'"
    assert per.layout["parameter_paths"]["model.layers.1.input_layernorm.weight"] == "dense <- hook rule 'hf_rms_norm'"
    assert grp.layout["parameter_paths"]["model.norm.weight"] == "dense <- autograd"
    torch.testing.assert_close(per.S, grp.S, rtol=1e-4, atol=1e-6)  # same sketch: per-sample rows sum to the group's


def test_gpt2_conv1d_rule_exact():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0)).double().eval()
    doms = {"a": _batches(VOCAB, 8, t=8), "b": _batches(VOCAB, 9, t=8)}
    tgts = {"t": _batches(VOCAB, 10, n=1, t=8)}
    gi = tikmix.GroupInfluence(model, causal_lm_loss, k=None, mode="per_sample", n_bootstrap=0, progress=False)
    res = gi.compute(doms, tgts)
    paths = res.layout["parameter_paths"]
    assert paths["transformer.h.0.attn.c_attn.weight"] == "exact <- hook rule 'conv1d'"
    assert paths["transformer.h.0.mlp.c_proj.bias"] == "exact <- hook rule 'conv1d'"
    # positions are looked up once as [1, T]: the embedding rule hands the forward a [B, T, d] view, so its hook sees
    # every sample's gradient (no torch.func, which fails on transformers' attention-mask control flow)
    assert paths["transformer.wpe.weight"] == "exact <- hook rule 'embedding'"
    params = [p for _, p in model.named_parameters()]
    g = torch.cat([per_sample_ref(model, b, params) for b in doms.values()])
    t = per_sample_ref(model, tgts["t"], params).mean(0)
    torch.testing.assert_close(res.unit_scores[:, 0], g @ t, rtol=1e-9, atol=1e-12)
    sk = tikmix.GroupInfluence(model, causal_lm_loss, k=256, mode="per_sample", n_bootstrap=0,
                               progress=False).compute(doms, tgts)
    assert sk.layout["parameter_paths"]["transformer.h.0.mlp.c_fc.weight"] == "kronecker <- hook rule 'conv1d'"


def test_hf_rms_norm_rule_matches_llama_copies_only():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    for cls in (Qwen2RMSNorm, MistralRMSNorm):
        assert hook_rules.hook_rule(cls(8)).name == "hf_rms_norm"
    assert hook_rules.hook_rule(GemmaRMSNorm(8)) is None  # (1 + weight) * x̂: another formula, so torch.func

    class Overridden(Qwen2RMSNorm):
        def forward(self, hidden_states):
            return super().forward(hidden_states) * 2

    assert hook_rules.hook_rule(Overridden(8)) is None
    norm = Qwen2RMSNorm(8, eps=1e-5)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(norm.double()(x), norm.weight * hook_rules.hook_rule(norm).normalize(norm, x))


class _ScaledNorm(nn.Module):
    """out = weight * x / (1 + |x|): a custom module, off the built-in rules."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return self.weight * (x / (1 + x.abs()))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.norm = _ScaledNorm(8)
        self.out = nn.Linear(8, VOCAB)

    def forward(self, input_ids, **kw):
        return self.out(self.norm(self.emb(input_ids)))


@contextlib.contextmanager
def _user_hook_rule(cls, kind, **rule):
    """Register a user hook rule for ``cls`` for the duration of the block, then remove it (and the class cache)."""
    hook_rules.register_hook_rule(cls, kind, **rule)
    try:
        yield
    finally:
        hook_rules._user_rules.pop(cls)
        hook_rules._class_cache.clear()


def test_register_hook_rule_and_fallback_report():
    torch.manual_seed(0)
    model = _Net().double().eval()
    doms = {"a": _batches(VOCAB, 11, t=6), "b": _batches(VOCAB, 12, t=6)}
    tgts = {"t": _batches(VOCAB, 13, n=1, t=6)}
    kw = dict(k=None, mode="per_sample", n_bootstrap=0, progress=False)
    before = tikmix.GroupInfluence(model, causal_lm_loss, **kw).compute(doms, tgts)
    assert before.layout["parameter_paths"]["norm.weight"] == "exact <- torch.func"
    with pytest.raises(ValueError, match="normalize"):
        hook_rules.register_hook_rule(_ScaledNorm, "norm")
    with pytest.raises(ValueError, match="kind"):
        hook_rules.register_hook_rule(_ScaledNorm, "conv")
    with _user_hook_rule(_ScaledNorm, "norm", normalize=lambda m, x: x / (1 + x.abs())):
        after = tikmix.GroupInfluence(model, causal_lm_loss, **kw).compute(doms, tgts)
    assert after.layout["parameter_paths"]["norm.weight"] == "exact <- hook rule '_ScaledNorm'"
    torch.testing.assert_close(after.S, before.S, rtol=1e-9, atol=1e-12)
    # a wrong rule is caught by the verification pass and moved to torch.func
    with _user_hook_rule(_ScaledNorm, "norm", name="wrong", normalize=lambda m, x: x):
        with pytest.warns(RuntimeWarning, match="norm.weight"):
            wrong = tikmix.GroupInfluence(model, causal_lm_loss, **kw).compute(doms, tgts)
    assert wrong.layout["parameter_paths"]["norm.weight"] == "exact <- torch.func"
    torch.testing.assert_close(wrong.S, before.S, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- Trainer
def _trainer(tmp_path, *, max_steps=9, stop_at=None, save_steps=4, ga=2, seed=0):
    from transformers import TrainingArguments

    from tikmix.integrations.hf import MixtureTrainer

    model = tiny_llama(seed=seed)
    doms = domains()
    train = tikmix.concat_domains(list(doms.values()))
    sampler = tikmix.MixtureSampler(train.domain_sizes, [1 / 3] * 3, batch_size=2 * ga, seed=5)
    controller = tikmix.Controller(model, sampler, domains=doms, targets=targets(), loss_fn=causal_lm_loss,
                                   collate=dict_collate, stages=[3, 6], samples_per_domain=6, batch_size=6,
                                   influence={"k": 256, "n_bootstrap": 0}, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             gradient_accumulation_steps=ga, max_steps=max_steps, learning_rate=3e-3,
                             save_strategy="steps", save_steps=save_steps, logging_steps=1000, report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=seed, dataloader_num_workers=0,
                             lr_scheduler_type="linear")
    trainer = MixtureTrainer(controller=controller, model=model, args=args, train_dataset=train,
                             data_collator=dict_collate, callbacks=hf_stop_callbacks(stop_at))
    return trainer, controller, sampler


def _seen_batches(trainer):
    """Record the input_ids of every micro-batch the Trainer trains on."""
    seen = []
    orig = trainer.training_step

    def training_step(model, inputs, *a, **kw):
        seen.append(inputs["input_ids"].clone())
        return orig(model, inputs, *a, **kw)

    trainer.training_step = training_step
    return seen


def test_trainer_three_stages_and_exact_resume(tmp_path):
    full, ctl, sampler = _trainer(tmp_path / "full")
    seen_full = _seen_batches(full)
    full.train()
    hist = check_two_stage_history(ctl.history, sampler)
    assert len(seen_full) == 9 * 2  # max_steps x gradient accumulation micro-batches
    # every optimizer step trains on exactly one sampler step (the block of batch_size samples)
    train = tikmix.concat_domains(list(domains().values()))
    expected = sampler.global_indices(0, 9).reshape(9, 4)
    got = torch.cat(seen_full).reshape(9, 4, -1)
    for s in range(9):
        ref = torch.stack([train[int(i)]["input_ids"] for i in expected[s]])
        assert torch.equal(got[s], ref), f"step {s}"
    assert json.loads((tmp_path / "full" / "checkpoint-4" / "tikmix_controller.json").read_text())["done"] == [3]

    part, _, _ = _trainer(tmp_path / "part", stop_at=4)
    seen_a = _seen_batches(part)
    part.train()
    assert part.state.global_step == 4
    resumed, ctl2, _ = _trainer(tmp_path / "part", seed=7)  # a different init: the checkpoint must win
    seen_b = _seen_batches(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-4"))
    assert ctl2.history["stages"] == hist or _same_history(ctl2.history["stages"], hist)
    for a, b in zip(seen_a + seen_b, seen_full):
        assert torch.equal(a, b)
    assert len(seen_a + seen_b) == len(seen_full)
    for k, v in state_of(full.model).items():
        torch.testing.assert_close(state_of(resumed.model)[k], v, rtol=1e-5, atol=1e-6)


def _same_history(a, b) -> bool:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["step"] == rb["step"] and ra["applies_from_step"] == rb["applies_from_step"]
        np.testing.assert_allclose(ra["weights"], rb["weights"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(ra["S"], rb["S"], rtol=1e-4, atol=1e-9)
    return True


def test_trainer_rejects_bad_setup(tmp_path):
    from transformers import TrainingArguments

    from tikmix.integrations.hf import MixtureTrainer, TikmixCallback

    trainer, controller, sampler = _trainer(tmp_path)
    args = trainer.args
    with pytest.raises(ValueError, match="batch_size .* per_device_train_batch_size"):
        MixtureTrainer(controller=controller, model=trainer.model, train_dataset=trainer.train_dataset,
                       data_collator=dict_collate,
                       args=TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3,
                                              gradient_accumulation_steps=2, max_steps=4, use_cpu=True,
                                              report_to="none"))
    with pytest.raises(ValueError, match="max_steps"):
        MixtureTrainer(controller=controller, model=trainer.model, train_dataset=trainer.train_dataset,
                       args=TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                              gradient_accumulation_steps=2, use_cpu=True, report_to="none"))
    with pytest.raises(ValueError, match="train_dataset has 48 samples but the controller's domains"):
        MixtureTrainer(controller=controller, model=trainer.model, args=args,
                       train_dataset=domains()["low"])
    with pytest.raises(TypeError, match="tikmix.Controller"):
        TikmixCallback(sampler)
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(FileNotFoundError, match="tikmix_controller.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_boundary_rule_passed_between_calls_triggers_once():
    from tikmix.integrations import advance

    model = tiny_llama()
    doms = domains()
    sampler = tikmix.MixtureSampler([len(d) for d in doms.values()], [1 / 3] * 3, batch_size=4, seed=0)
    controller = tikmix.Controller(model, sampler, domains=doms, targets=targets(), loss_fn=causal_lm_loss,
                                   collate=dict_collate, stages=[3, 5, 9], samples_per_domain=4,
                                   influence={"k": 128, "n_bootstrap": 0})
    model.train()
    assert advance(controller, 2) == []
    recs = advance(controller, 6)  # jumped over 3 and 5
    assert [r["step"] for r in recs] == [3, 5]
    assert model.training  # restored after measuring in eval mode
    assert advance(controller, 6) == [] and advance(controller, 8) == []
    assert [r["step"] for r in advance(controller, 12)] == [9]
    assert controller.stages_done == 3


def test_core_import_does_not_import_frameworks():
    import subprocess

    code = ("import sys, tikmix, tikmix.integrations, tikmix.losses, tikmix.influence.hook_rules, tikmix.run, "
            "tikmix.data.tokenizers, tikmix.data.text_sources, tikmix.cli; "
            "bad = [m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_distributed_slicing_survives_accelerate_prepare():
    """accelerate's prepare on 2 processes wraps the batch sampler to split batches again; unshard undoes it."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from tikmix.integrations.hf import unshard_dataloader

    doms = domains()
    train = tikmix.concat_domains(list(doms.values()))
    for rank in (0, 1):
        sampler = tikmix.MixtureSampler(train.domain_sizes, [0.5, 0.3, 0.2], batch_size=8, seed=2, rank=rank,
                                        world_size=2)
        dl = prepare_data_loader(DataLoader(train, sampler=sampler, batch_size=2, collate_fn=dict_collate),
                                 num_processes=2, process_index=rank, put_on_device=False)
        unshard_dataloader(dl, sampler)
        got = []
        for i, batch in enumerate(dl):
            got.append(batch["input_ids"])
            if i == 5:
                break
        expected = sampler.local_indices(0, 3)  # 3 steps x 4 local samples = 6 batches of 2
        ref = torch.stack([train[int(i)]["input_ids"] for i in expected])
        assert torch.equal(torch.cat(got), ref)
