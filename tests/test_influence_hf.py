"""Per-sample influence on transformers' GPT-2 and Llama with the batches their collators make (attention_mask,
padding, labels -100): exact against one autograd backward per sample, left padding equal to right padding, and
token counts without padding. Tiny float64 models built from configs, a word-level tokenizer built offline."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from influence_testing import one_thread  # noqa: E402,F401
from tikmix.influence import GroupInfluence  # noqa: E402
from tikmix.influence.sketch_space import Projector  # noqa: E402
from tikmix.losses import causal_lm_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the cat sat on a mat dog ran far away big small red blue fish swam in sea sky was grey and then it "
         "rained all day long").split()


def _tokenizer(padding_side: str = "right"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.padding_side = padding_side
    return fast


def _texts(seed: int, n: int, lo: int = 3, hi: int = 11):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def _batches(tokenizer, seed: int, n_batches: int, batch_size: int, pad_to_multiple_of=None):
    from transformers import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=pad_to_multiple_of)
    texts = _texts(seed, n_batches * batch_size)
    return [collate([tokenizer(t) for t in texts[i : i + batch_size]]) for i in range(0, len(texts), batch_size)]


def _data(padding_side: str = "right", pad_to_multiple_of=None):
    tok = _tokenizer(padding_side)
    doms = {"a": _batches(tok, 1, 2, 3, pad_to_multiple_of), "b": _batches(tok, 2, 1, 4, pad_to_multiple_of)}
    tgts = {"t0": _batches(tok, 3, 1, 3, pad_to_multiple_of), "t1": _batches(tok, 4, 2, 2, pad_to_multiple_of)}
    return doms, tgts


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=40, n_positions=32, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():  # norms away from their initial ones, so their per-sample gradients are not trivial
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


MODELS = {"gpt2": _gpt2, "llama": _llama}


def _per_sample_ref(model: nn.Module, batches, params) -> torch.Tensor:
    """``[N, D]`` float64: one backward per sample (the row alone, with the batch's padding)."""
    rows = []
    for batch in batches:
        for n in range(batch["input_ids"].shape[0]):
            one = {k: v[n : n + 1] for k, v in batch.items()}
            grads = torch.autograd.grad(causal_lm_loss(model, one).sum(), params, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for p, g in zip(params, grads)]))
    return torch.stack(rows).double()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_per_sample_unit_scores_exact_on_collator_batches(arch):
    model = MODELS[arch]()
    doms, tgts = _data()
    assert any(bool((b["labels"] == -100).any()) for b in doms["a"])  # the collator padded
    res = GroupInfluence(model, causal_lm_loss, k=None, mode="per_sample", progress=False,
                         n_bootstrap=0).compute(doms, tgts)
    # every parameter, position embeddings and the tied head included, through hook rules (no torch.func)
    assert set(res.layout["per_sample_capture"].values()) == {"hooks"}
    if arch == "gpt2":
        assert "transformer.wpe.weight" in res.layout["per_sample_capture"]
    params = [p for _, p in model.named_parameters()]
    t = torch.stack([_per_sample_ref(model, b, params).mean(0) for b in tgts.values()])
    g = torch.cat([_per_sample_ref(model, b, params) for b in doms.values()])
    torch.testing.assert_close(res.unit_scores, g @ t.t(), rtol=1e-9, atol=1e-12)
    assert res.unit_domains.tolist() == [0] * 6 + [1] * 4


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_per_sample_sketches_equal_projected_autograd_gradients(arch):
    model = MODELS[arch]()
    doms, tgts = _data()
    gi = GroupInfluence(model, causal_lm_loss, k=256, seed=7, mode="per_sample", progress=False, n_bootstrap=0,
                        keep_sketches=True)
    res = gi.compute(doms, tgts)
    assert any(s.kind == "kron" for s in gi.layout.slots) and any(s.kind == "dense" for s in gi.layout.slots)
    projector = Projector(gi.layout, 7, torch.device("cpu"))
    ref = projector.zeros(10)
    params = [s.param for s in gi.layout.slots]
    g = torch.cat([_per_sample_ref(model, b, params) for b in doms.values()])
    col = 0
    for s in gi.layout.slots:
        projector.add_grad(ref, s, g[:, col : col + s.numel].reshape(-1, *s.shape))
        col += s.numel
    torch.testing.assert_close(res.unit_sketches, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("mode", ["group", "per_sample"])
def test_left_padding_and_longer_padding_give_the_same_influence(arch, mode):
    model = MODELS[arch]()
    results = {}
    for side, multiple in (("right", None), ("right", 16), ("left", None), ("left", 16)):
        doms, tgts = _data(side, multiple)
        results[side, multiple] = GroupInfluence(model, causal_lm_loss, k=None, mode=mode, progress=False,
                                                 n_bootstrap=0).compute(doms, tgts)
    base = results["right", None]
    # tokens counted without padding: the collator's longest row sets the width, not the count
    n_real = sum(int(b["attention_mask"].sum()) for b in _data()[0]["a"])
    assert base.domain_tokens[0] == n_real < sum(b["input_ids"].numel() for b in _data("right", 16)[0]["a"])
    for key, res in results.items():
        torch.testing.assert_close(res.S, base.S, rtol=1e-9, atol=1e-12, msg=lambda m: f"{key}: {m}")
        assert res.domain_tokens.tolist() == base.domain_tokens.tolist()
        assert res.target_tokens.tolist() == base.target_tokens.tolist()
        if mode == "per_sample":
            torch.testing.assert_close(res.unit_scores, base.unit_scores, rtol=1e-9, atol=1e-12)


class _NoPositions(nn.Module):
    """A causal LM whose forward takes no position_ids (a left-padded row would be mispositioned)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.pos = nn.Embedding(32, 8)
        self.out = nn.Linear(8, 40)

    def forward(self, input_ids, attention_mask=None):
        pos = torch.arange(input_ids.shape[1])
        return self.out(self.emb(input_ids) + self.pos(pos))


def test_left_padding_is_refused_where_the_model_takes_no_position_ids():
    model = _NoPositions()
    right = _batches(_tokenizer("right"), 1, 1, 3)[0]
    assert causal_lm_loss(model, right).shape == (3,)
    left = _batches(_tokenizer("left"), 1, 1, 3)[0]
    with pytest.raises(ValueError, match="left-padded rows.*position_ids"):
        causal_lm_loss(model, left)
    left["position_ids"] = (left["attention_mask"].cumsum(1) - 1).clamp_min(0)
    with pytest.raises(TypeError):  # given by the caller, passed to the model as is
        causal_lm_loss(model, left)


def test_attention_mask_shape_is_checked():
    batch = _batches(_tokenizer(), 1, 1, 2)[0]
    batch["attention_mask"] = batch["attention_mask"][:, :-1]
    with pytest.raises(ValueError, match="attention_mask"):
        causal_lm_loss(_gpt2(), batch)
