"""Shared helpers of the framework-integration tests: a tiny Llama built from a config, three token
domains and a plain training loop driving a Controller."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tikmix.models import sequence_loss

VOCAB = 96
SEQ = 16


class TokenRows(Dataset):
    """Fixed random token rows as Hugging Face style dict items (``input_ids``, ``attention_mask``, ``labels``)."""

    def __init__(self, n: int, low: int, high: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(low, high, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.rows[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def check_two_stage_history(history: dict, sampler) -> list:
    """Check a controller history of a 9-step run with boundaries at steps 3 and 6, and return its stage records.

    Each stage has a finite, non-zero influence matrix S; the mixture changes at both boundaries; and the sampler's
    schedule carries each new mixture from the step its record says.
    """
    hist = history["stages"]
    assert [r["step"] for r in hist] == [3, 6]
    for r in hist:
        S = np.asarray(r["S"])
        assert np.all(np.isfinite(S)) and np.abs(S).max() > 0
    weights = [tuple(history["initial_weights"])] + [tuple(r["weights"]) for r in hist]
    assert weights[0] != weights[1] and weights[1] != weights[2]
    for r in hist:
        # the sampler realises the weights on its grid of 1 / lcm(batch_size, 10080)
        assert sampler.weights_at(r["applies_from_step"] - 1) == pytest.approx(r["weights"], abs=1.0 / 10080)
    return hist


def domains() -> dict:
    """Three domains over different (overlapping) token ranges, and one target drawn like the first."""
    return {"low": TokenRows(48, 0, 40, 1), "mid": TokenRows(40, 30, 70, 2), "high": TokenRows(56, 60, VOCAB, 3)}


def targets() -> dict:
    return {"lowish": TokenRows(8, 0, 50, 4)}


def tiny_llama(seed: int = 0, tie: bool = True):
    """A 2-layer Llama from ``LlamaConfig`` (no download), deterministic for ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                      tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(cfg)


def dict_collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_gpt2(seed: int = 0, dropout: float = 0.1):
    """A 1-layer GPT-2 from ``GPT2Config`` (no download) with ``dropout`` on embeddings, attention and residuals."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg)


def train_steps(model, opt, sampler, ctrl, rows, start: int, stop: int, *, batch_size: int) -> None:
    """Plain training loop over global steps ``start + 1 .. stop``: one ``sequence_loss`` step on a batch the sampler
    picks from ``rows``, then ``ctrl.step(step)``."""
    loader = iter(DataLoader(rows, batch_size=batch_size, sampler=sampler))
    for step in range(start + 1, stop + 1):
        loss = sequence_loss(model, next(loader)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctrl.step(step)


def hf_stop_callbacks(stop_at: int | None) -> list:
    """The ``callbacks`` of a transformers Trainer that stops after global step ``stop_at`` and saves a checkpoint
    there (none for None: the run goes to max_steps)."""
    from transformers import TrainerCallback

    if stop_at is None:
        return []

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == stop_at:
                control.should_training_stop = True
                control.should_save = True
            return control

    return [Stop()]


def pattern_data(seq: int = 12, n: int = 24) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Three small domains (two repeating byte patterns and noise) and two targets matching the patterns: a setting
    whose influence has a clear sign (rows of ``seq + 1`` tokens, deterministic)."""
    rng = np.random.default_rng(0)

    def pattern(text: bytes) -> torch.Tensor:
        stream = np.frombuffer(text * (n * (seq + 1) // len(text) + 2), dtype=np.uint8)
        starts = rng.integers(0, len(text), n)
        return torch.from_numpy(np.stack([stream[s : s + seq + 1] for s in starts]).astype(np.int64))

    domains = {"good": pattern(b"abcabcabd;"), "bad": pattern(b"abdabdabc;"),
               "noise": torch.from_numpy(rng.integers(0, 256, (n, seq + 1)))}
    targets = {"t": pattern(b"abcabcabd;")[:6], "u": pattern(b"abdabdabc;")[:5]}
    return domains, targets
