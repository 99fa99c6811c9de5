"""Shared pieces of the influence tests (tests/test_influence_*.py): tiny language models, batches, and float64
brute-force references computed with plain autograd — independent of tikmix's capture and projection code."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 32
SEQ = 8


class TinyLM(nn.Module):
    """A small causal LM: token + position embeddings, a pre-norm MLP block, a causal running mean, a tied head.

    ``shared_positions=True`` looks positions up once (``[T]``, broadcast over the batch, as many GPTs do);
    ``extra_param=True`` adds a parameter used directly in ``forward`` (no module owns its use).
    """

    def __init__(self, d: int = 16, shared_positions: bool = False, extra_param: bool = False, tied: bool = True):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(SEQ, d)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.mix = nn.Linear(d, d, bias=False)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        if tied:
            self.head.weight = self.tok.weight
        self.shared_positions = shared_positions
        self.gate = nn.Parameter(torch.full((d,), 0.5)) if extra_param else None
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.05 * torch.randn_like(p))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.tok(idx) + (self.pos(pos) if self.shared_positions else self.pos(pos.expand(b, t)))
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        counts = torch.arange(1, t + 1, device=idx.device, dtype=x.dtype).view(1, t, 1)
        x = x + self.mix(x.cumsum(1) / counts)  # causal running mean
        if self.gate is not None:
            x = x * self.gate
        return self.head(self.ln_f(x))



class FunctionalTie(nn.Module):
    """Embedding -> a ``width x width`` Linear whose weight is also used outside its forward (``tie_scale`` times a
    functional call: hooks alone would miss that use) -> a head over VOCAB."""

    def __init__(self, width: int = 8, tie_scale: float = 1.0):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.lin = nn.Linear(width, width)
        self.out = nn.Linear(width, VOCAB)
        self.tie_scale = tie_scale

    def forward(self, idx):
        x = self.emb(idx)
        x = self.lin(x) + self.tie_scale * F.linear(torch.tanh(x), self.lin.weight)
        return self.out(x)

def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token cross-entropy; ``batch``: ``[B, T+1]`` token ids."""
    logits = model(batch[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
    return ce.view(batch.shape[0], -1).mean(1)


def domain_batches(seed: int, n_batches: int = 2, batch_size: int = 3, low: int = 0, high: int = VOCAB) -> List[torch.Tensor]:
    """Token batches ``[B, SEQ+1]``; a domain is a token range and a repeating pattern, so domains differ."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        base = torch.randint(low, high, (batch_size, 1), generator=g)
        step = torch.randint(1, 4, (batch_size, 1), generator=g)
        noise = torch.randint(0, 2, (batch_size, SEQ + 1), generator=g)
        seq = (base + step * torch.arange(SEQ + 1) + noise - low) % (high - low) + low
        out.append(seq)
    return out


def make_data(n_domains: int = 3, n_targets: int = 2, n_batches: int = 2, batch_size: int = 3, seed: int = 0):
    doms = {f"d{j}": domain_batches(seed + 10 * j, n_batches, batch_size, low=(j * 7) % 16, high=(j * 7) % 16 + 16)
            for j in range(n_domains)}
    tgts = {f"t{i}": domain_batches(seed + 1000 + i, 1, batch_size + 1, low=(i * 11) % 16, high=(i * 11) % 16 + 16)
            for i in range(n_targets)}
    return doms, tgts


# ---- float64 brute-force references ------------------------------------------------------------------------------
def params_of(model: nn.Module, names: Sequence[str] | None = None) -> List[nn.Parameter]:
    named = dict(model.named_parameters())
    return [p for n, p in named.items() if names is None or n in names]


def flat_grad_ref(model: nn.Module, loss: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Full flat gradient of a scalar ``loss`` (float64)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]).double()


def per_sample_grads_ref(model, loss_fn, batches, params) -> torch.Tensor:
    """``[N, D]``: one backward per sample (batch of one) — the definition of a per-sample gradient."""
    rows = []
    for batch in batches:
        for n in range(batch.shape[0]):
            rows.append(flat_grad_ref(model, loss_fn(model, batch[n : n + 1]).sum(), params))
    return torch.stack(rows)


def influence_ref(model, loss_fn, domains: Dict[str, list], targets: Dict[str, list], params=None,
                  reduction: str = "mean", scale: torch.Tensor | None = None) -> torch.Tensor:
    """``S[i, j] = ∇f_iᵀ diag(scale) G_j`` from full per-sample gradients (float64)."""
    params = list(model.parameters()) if params is None else params
    t_rows = []
    for batches in targets.values():
        g = per_sample_grads_ref(model, loss_fn, batches, params)
        t_rows.append(g.mean(0))
    d_rows = []
    for batches in domains.values():
        g = per_sample_grads_ref(model, loss_fn, batches, params)
        d_rows.append(g.mean(0) if reduction == "mean" else g.sum(0))
    t, d = torch.stack(t_rows), torch.stack(d_rows)
    if scale is not None:
        t = t * scale
    return t @ d.t()


def snapshot(model: nn.Module) -> dict:
    """Everything a computation must leave as it was: values, grads (objects and values), hooks, modes, flags."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: (None if p.grad is None else (id(p.grad), p.grad.clone())) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
                     for m in model.modules()),
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for n, v in before["params"].items():
        assert torch.equal(v, after["params"][n]), f"parameter {n} changed"
    for n, g in before["grads"].items():
        h = after["grads"][n]
        assert (g is None) == (h is None), f"grad of {n} appeared/disappeared"
        if g is not None:
            assert g[0] == h[0] and torch.equal(g[1], h[1]), f"grad of {n} changed"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"], "hooks left behind"
    assert before["training"] == after["training"], "train/eval mode changed"


import pytest  # noqa: E402


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models run fastest single-threaded (and the CI machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
