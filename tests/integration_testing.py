"""Shared helpers of the framework-integration tests: a tiny Llama built from a config and three token domains."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

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
