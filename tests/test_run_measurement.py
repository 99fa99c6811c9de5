"""``tikmix run`` measures as every other entry point does (the Controller's measurement policy): the model in eval
mode, the training RNG streams untouched, ``S`` equal to :class:`tikmix.GroupInfluence` on the eval-mode model, for
a factory model and a Hugging Face model, with dropout 0 and 0.1; a run resumed in the middle of a stage equals the
uninterrupted run bit for bit with dropout on; TiKMiX-M (per-sample) runs on a GPT-2 config with dropout."""
from __future__ import annotations

import copy
import json
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers")

from tikmix.influence.engine import GroupInfluence  # noqa: E402
from tikmix.run import train, validate_config  # noqa: E402

from text_testing import DOCS, train_tokenizer_json, write_jsonl  # noqa: E402

FACTORY = textwrap.dedent('''
    import torch
    from tikmix.models import GPT, GPTConfig, sequence_loss

    def gpt(vocab_size, seq_len, dropout):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=1, n_head=2, d_model=16, dropout=dropout)
        return GPT(cfg), sequence_loss

    def gpt_dropout0(vocab_size, seq_len):
        return gpt(vocab_size, seq_len, 0.0)

    def gpt_dropout1(vocab_size, seq_len):
        return gpt(vocab_size, seq_len, 0.1)
''')


def gpt2(dropout: float) -> dict:
    return {"model_type": "gpt2", "vocab_size": 320, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 32,
            "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    (root / "my_measure_models.py").write_text(FACTORY)
    return {
        "root": root,
        "tokenizer": train_tokenizer_json(root / "tokenizer.json", vocab_size=300),
        "web": write_jsonl(root / "web.jsonl", docs=DOCS[:30]),
        "prose": write_jsonl(root / "prose.jsonl", docs=DOCS[30:]),
        "code": write_jsonl(root / "code.jsonl", docs=[f"def f{i}(x):\n    return x * {i}\n" for i in range(40)]),
        "qa": write_jsonl(root / "qa.jsonl", docs=[f"q: what is {i} * 7? a: {i * 7}" for i in range(30)]),
    }


def config(files, out, model, *, solver="direct", steps=6, boundaries=(2, 4), mode="group"):
    return validate_config({
        "out": str(out),
        "tokenizer": str(files["tokenizer"]),
        "seed": 3,
        "data": {
            "seq_len": 16,
            "domains": {n: {"jsonl": str(files[n])} for n in ("web", "prose", "code")},
            "targets": {"qa": {"jsonl": str(files["qa"])}},
        },
        "model": model,
        "train": {"steps": steps, "batch_size": 6, "lr": 0.01, "warmup": 1, "eval_every": 3, "checkpoint_every": 100},
        "stages": {"boundaries": list(boundaries)},
        "solver": {"name": solver},
        "influence": {"k": 64, "samples_per_domain": 6, "batch_size": 3, "n_bootstrap": 20},
    })


MODELS = {
    "factory": lambda p: {"factory": f"my_measure_models:gpt_dropout{int(p * 10)}"},
    "hf": lambda p: {"hf": {"config": gpt2(p)}},
}


@pytest.fixture
def factory_path(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files["root"]))
    sys.modules.pop("my_measure_models", None)


def quiet(*a, **k):
    pass


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["factory", "hf"])
def test_run_measures_in_eval_mode_with_rng_untouched(files, tmp_path, monkeypatch, factory_path, kind, dropout):
    calls = []
    compute = GroupInfluence.compute

    def spy(self, domains, targets):
        seen = {"training": [m.training for m in self.model.modules()], "model": copy.deepcopy(self.model),
                "domains": domains, "targets": targets, "rng": torch.get_rng_state(), "gi": self}
        res = compute(self, domains, targets)
        seen["S"] = res.S.clone()
        seen["rng_after"] = torch.get_rng_state()
        calls.append(seen)
        return res

    monkeypatch.setattr(GroupInfluence, "compute", spy)
    hist = train(config(files, tmp_path / "out", MODELS[kind](dropout)), progress=False, log=quiet)
    assert len(calls) == 3  # the rehearsal, then the two boundaries
    assert hist["measure"] == {"mode": "eval", "training_rng": "preserved"}
    for seen in calls:
        assert not any(seen["training"]), "influence measured with a module in train mode"
    first = calls[1]
    gi = first["gi"]
    ref = GroupInfluence(first["model"].eval(), gi.loss_fn, k=gi.k, seed=gi.seed, mode=gi.mode, n_bootstrap=0,
                         progress=False)
    expected = ref.compute(first["domains"], first["targets"]).S
    assert torch.equal(first["S"], expected)
    assert hist["stages"][0]["S"] == expected.tolist()


@pytest.mark.parametrize("kind,stop_at", [("factory", 3), ("hf", 3), ("hf", 2)])
def test_run_resumed_with_dropout_is_exact(files, tmp_path, factory_path, kind, stop_at):
    model = MODELS[kind](0.1)
    full = train(config(files, tmp_path / "full", model), progress=False, log=quiet)
    cfg = config(files, tmp_path / "part", model)
    train(cfg, progress=False, log=quiet, stop_at=stop_at)
    resumed = train(cfg, progress=False, log=quiet, resume=True)
    for key in ("S", "weights", "applies_from_step", "decision"):
        assert [r[key] for r in resumed["stages"]] == [r[key] for r in full["stages"]], key
    assert [m for m in resumed["metrics"]] == [m for m in full["metrics"]]
    a = json.loads((tmp_path / "full" / "eval.json").read_text())
    b = json.loads((tmp_path / "part" / "eval.json").read_text())
    assert a["targets"] == b["targets"]


def test_tikmix_m_on_gpt2_with_dropout_runs_two_boundaries(files, tmp_path):
    cfg = config(files, tmp_path / "out", MODELS["hf"](0.1), solver="regression")
    hist = train(cfg, progress=False, log=quiet)
    assert [r["step"] for r in hist["stages"]] == [2, 4]
    assert hist["rehearsal"]["verified"] is True
    for r in hist["stages"]:
        assert r["solver"]["used"].startswith("tikmix-")
        assert sum(r["weights"]) == pytest.approx(1.0)
