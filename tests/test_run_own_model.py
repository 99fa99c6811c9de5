"""``tikmix run`` with your own model (Hugging Face config or a factory), tokenizer and jsonl / parquet data."""
from __future__ import annotations

import copy
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("transformers")

from tikmix.run import ConfigError, train, validate_config  # noqa: E402

from text_testing import DOCS, train_tokenizer_json, write_jsonl, write_parquet  # noqa: E402

LLAMA = {"model_type": "llama", "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
         "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    code = [f"def f{i}(x):\n    return x * {i} + {i % 3}\n" for i in range(40)]
    (root / "prose").mkdir()
    for i in range(4):
        (root / "prose" / f"p{i}.txt").write_text(" ".join(DOCS[i * 10 : i * 10 + 10]))
    return {
        "tokenizer": train_tokenizer_json(root / "tokenizer.json", vocab_size=300),
        "web": write_jsonl(root / "web.jsonl"),
        "code": write_parquet(root / "code.parquet", docs=code),
        "prose": root / "prose",
        "qa": write_jsonl(root / "qa.jsonl", docs=[f"q: what is {i} * 7? a: {i * 7}" for i in range(30)]),
        "root": root,
    }


def _cfg(files, out, **over):
    cfg = {
        "out": str(out),
        "tokenizer": str(files["tokenizer"]),
        "data": {
            "seq_len": 16,
            "domains": {"web": {"jsonl": str(files["web"])}, "code": {"parquet": str(files["code"])},
                        "prose": {"text_folder": str(files["prose"])}},
            "targets": {"qa": {"jsonl": str(files["qa"])}},
        },
        "model": {"hf": {"config": dict(LLAMA)}},
        "train": {"steps": 6, "batch_size": 6, "lr": 0.01, "warmup": 1, "eval_every": 3, "checkpoint_every": 100},
        "stages": {"boundaries": [2, 4]},
        "influence": {"k": 64, "samples_per_domain": 6, "batch_size": 6, "n_bootstrap": 0},
    }
    cfg.update(over)
    return cfg


def test_run_hf_config_with_trained_tokenizer_jsonl_parquet_and_tensorboard(files, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tikmix.data.tokenizers import load_tokenizer

    cfg = validate_config(_cfg(files, tmp_path / "out", log="tensorboard"))
    seen = []
    hist = train(cfg, progress=False, log=lambda *a, **k: None, on_boundary=seen.append)
    assert [r["step"] for r in seen] == [2, 4] and [r["step"] for r in hist["stages"]] == [2, 4]
    for r in hist["stages"]:
        S = np.asarray(r["S"])
        assert S.shape == (1, 3) and np.all(np.isfinite(S)) and np.abs(S).max() > 0
    w = [hist["initial_weights"]] + [r["weights"] for r in hist["stages"]]
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])
    # every text source was tokenised with the trained tokenizer, once, into a cached token file
    tok = load_tokenizer(files["tokenizer"])
    data = sorted(p.name for p in (tmp_path / "out" / "data").iterdir())
    assert data == sorted(f"{s}.{tok.fingerprint}.tokens" for s in
                          ("domains_web", "domains_code", "domains_prose", "targets_qa"))
    from tikmix.data import TokenFileDataset

    web = np.asarray(TokenFileDataset(tmp_path / "out" / "data" / data[2], 16).tokens)
    np.testing.assert_array_equal(web, np.concatenate(tok.encode_batch(DOCS)))
    ea = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"loss/train", "loss/target/qa", "weights/web", "S/qa/code"} <= tags
    assert [e.step for e in ea.Scalars("weights/code")] == [0, 2, 4]
    assert len(ea.Scalars("loss/train")) == 6


FACTORY = textwrap.dedent('''
    import torch
    from tikmix.models import GPT, GPTConfig, sequence_loss

    def good(vocab_size, seq_len):
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=1, n_head=2, d_model=16)), sequence_loss

    def scalar_loss(vocab_size, seq_len):
        model, _ = good(vocab_size, seq_len)
        return model, lambda m, rows: sequence_loss(m, rows).mean()

    def not_a_pair(vocab_size, seq_len):
        return "model"

    RECORDS = []

    def remember(record):
        RECORDS.append(record["step"])
''')


def test_run_factory_model_and_per_sequence_check(files, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_models", None)
    base = _cfg(files, tmp_path / "out", tokenizer="bytes", model={"factory": "my_models:good"},
                on_boundary="my_models:remember")
    base["train"]["steps"] = 5
    hist = train(validate_config(base), progress=False, log=lambda *a, **k: None)
    assert len(hist["stages"]) == 2
    assert sys.modules["my_models"].RECORDS == [2, 4]  # the config's on_boundary hook saw both boundaries
    for name, match in (("scalar_loss", "per-sequence losses of shape"), ("not_a_pair", "must return")):
        cfg = validate_config(_cfg(files, tmp_path / f"out_{name}", tokenizer="bytes",
                                   model={"factory": f"my_models:{name}"}))
        with pytest.raises(ConfigError, match=f"^model.factory: .*{match}"):
            train(cfg, progress=False, log=lambda *a, **k: None)
        assert not (tmp_path / f"out_{name}" / "checkpoints").exists()  # refused before training


def _bad(files, tmp_path, mutate):
    cfg = copy.deepcopy(_cfg(files, tmp_path / "out"))
    mutate(cfg)
    return cfg


BAD = [
    (lambda c: c["model"].update(hf={"path": "meta-llama/Llama-3.2-1B"}), "model.hf.path", "never downloads"),
    (lambda c: c["model"].update(hf={"config": {"hidden_size": 8}}), "model.hf.config.model_type", "required"),
    (lambda c: c["model"].update(hf={}), "model.hf", "exactly one of config or path"),
    (lambda c: c["model"].update(n_layer=2), "model.n_layer", "no effect with model.hf"),
    (lambda c: c["model"].update(factory="pkg.mod:fn"), "model.factory", "not both"),
    (lambda c: c.update(model={"factory": "not a callable"}), "model.factory", ""),
    (lambda c: c.update(tokenizer="org/some-tokenizer"), "tokenizer", "never from a hub"),
    (lambda c: c["data"]["domains"]["web"].update(field="body"), "data.domains.web.jsonl", "no 'body' field"),
    (lambda c: c["data"]["domains"]["code"].update(field="body"), "data.domains.code.parquet", "no 'body' column"),
    (lambda c: c["data"]["domains"]["web"].update(jsonl="missing.jsonl"), "data.domains.web.jsonl", "not found"),
    (lambda c: c.update(log="wandb"), "log", ""),
    (lambda c: c.update(on_boundary="print"), "on_boundary", ""),
]


@pytest.mark.parametrize("mutate,key,words", BAD)
def test_bad_model_tokenizer_and_data_name_the_key(files, tmp_path, mutate, key, words):
    with pytest.raises(ConfigError) as info:
        validate_config(_bad(files, tmp_path, mutate))
    assert info.value.key == key, str(info.value)
    assert words in str(info.value)


def test_unparsable_tokenizer_and_small_vocab(files, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="^tokenizer: .*is not a tokenizer.json: not valid JSON"):
        validate_config(_cfg(files, tmp_path / "out", tokenizer=str(bad)))
    small = dict(LLAMA, vocab_size=100)
    with pytest.raises(ConfigError, match=r"^model.hf.config.vocab_size: .*smaller than the data's \(300"):
        validate_config(_cfg(files, tmp_path / "out", model={"hf": {"config": small}}))  # before anything is built


def test_run_hf_model_from_local_folder(files, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(LLAMA)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw))
    model.save_pretrained(tmp_path / "local_llama")
    cfg = _cfg(files, tmp_path / "out", model={"hf": {"path": str(tmp_path / "local_llama")}})
    cfg["train"]["steps"] = 3
    cfg["stages"]["boundaries"] = [2]
    hist = train(validate_config(cfg), progress=False, log=lambda *a, **k: None)
    assert len(hist["stages"]) == 1
