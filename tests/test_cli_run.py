"""``tikmix run CONFIG.yaml``: config validation before training, resume, and a 2-process gloo run."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tikmix.cli import main
from tikmix.run import ConfigError, ConfigWarning, load_config, train, validate_config
from tikmix.run.checkpoint import FORMAT, CheckpointError, checkpoint_dir, list_checkpoints

from demo_testing import write_demo_run_data
from dist_testing import torchrun

SEQ = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Token files for three demo domains and one target, and a text folder for a fourth domain."""
    root = tmp_path_factory.mktemp("data")
    corpus = write_demo_run_data(root, seq_len=SEQ, train_sequences=96)
    folders = corpus.write_text_folders(root / "text")
    assert (folders["prose"] / "part0.txt").stat().st_size == 96 * (SEQ + 1)
    return root


def _config(data_dir: Path, out: Path, **over) -> dict:
    cfg = {
        "out": str(out),
        "seed": 0,
        "data": {
            "seq_len": SEQ,
            "domains": {
                "arith": {"token_file": str(data_dir / "arith.tokens")},
                "facts": {"token_file": str(data_dir / "facts.tokens")},
                "noise": {"token_file": str(data_dir / "noise.tokens")},
                "prose": {"text_folder": str(data_dir / "text" / "prose")},
            },
            "targets": {"lookup": {"token_file": str(data_dir / "lookup.tokens")}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 24, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 8, "checkpoint_every": 100},
        "stages": {"boundaries": [8, 16]},
        "influence": {"k": 64, "samples_per_domain": 8, "batch_size": 8, "n_bootstrap": 10},
    }
    for key, value in over.items():
        section, _, leaf = key.partition(".")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[section] = value
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------------ validation
def _bad(cfg: dict, mutate) -> dict:
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    return cfg


BAD = [
    (lambda c: c["data"]["domains"]["arith"].update(token_file="missing.tokens"),
     "data.domains.arith.token_file", "file not found"),
    (lambda c: c["data"]["domains"]["prose"].update(text_folder="no/such/folder"),
     "data.domains.prose.text_folder", "folder not found"),
    (lambda c: c["train"].update(stepz=10), "train.stepz", "unknown key"),
    (lambda c: c.update(optimiser={}), "optimiser", "unknown key"),
    (lambda c: c["data"]["domains"]["arith"].update(tokenfile="x"), "data.domains.arith.tokenfile", "unknown key"),
    (lambda c: c["data"].update(initial_weights=[0.5, 0.5]), "data.initial_weights", "has 2 entries"),
    (lambda c: c["data"].update(initial_weights={"arith": 1, "code": 1}), "data.initial_weights.code",
     "not a domain"),
    (lambda c: c["stages"].update(boundaries=[8, 24]), r"stages.boundaries\[1\]", "beyond the training budget"),
    (lambda c: c["stages"].update(unit="tokens", boundaries=[100, 10_000]), r"stages.boundaries\[1\]",
     "beyond the training budget"),
    (lambda c: c["stages"].update(boundaries=[16, 8]), r"stages.boundaries\[1\]", "strictly increasing"),
    (lambda c: c["train"].pop("steps"), "train.steps", "required key is missing"),
    (lambda c: c["train"].update(steps="many"), "train.steps", "expected int"),
    (lambda c: c["solver"] if "solver" in c else c.update(solver={"name": "magic"}), "solver.name", "direct"),
    (lambda c: c["model"].update(d_model=15), "model.d_model", "divisible"),
    (lambda c: c["data"]["domains"]["arith"].update(text_folder="x"), "data.domains.arith",
     "exactly one of token_file or text_folder"),
]


@pytest.mark.parametrize("mutate, key, message", BAD)
def test_bad_config_names_the_key_before_training(tmp_path, data_dir, mutate, key, message):
    out = tmp_path / "out"
    cfg = _bad(_config(data_dir, out), mutate)
    with pytest.raises(ConfigError, match=f"^{key}: .*{message}") as info:
        validate_config(cfg)
    assert info.value.key.replace("[", r"\[").replace("]", r"\]") == key
    assert not out.exists()  # nothing was built or trained
    # the CLI exits with status 2 and the same message
    assert main(["run", str(_write(tmp_path, cfg))]) == 2


def test_good_config_fills_defaults(tmp_path, data_dir):
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "out")))
    assert cfg.solver.name == "direct"
    assert cfg.train.grad_clip == 1.0
    assert main(["run", str(tmp_path / "config.yaml"), "--check"]) == 0


# ------------------------------------------------------------------------------------------ hardening: bad configs
def _bad_cases(data_dir: Path, tmp_path: Path) -> list:
    """Configs that used to fail late (a traceback during training) or not at all; each must fail up front."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    arith = str(data_dir / "arith.tokens")
    return [
        (lambda c: c["influence"].update(params=["nomatch.*"]), "influence.params", "matches no parameter"),
        (lambda c: c["influence"].update(n_bootstrap=-1), "influence.n_bootstrap", ">= 0|greater than or equal"),
        (lambda c: c["influence"].update(damping=0), "influence.damping", "greater than 0"),
        (lambda c: c["model"].update(dropout=1.5), "model.dropout", "less than 1"),
        (lambda c: c["train"].update(weight_decay=-1), "train.weight_decay", "greater than or equal to 0"),
        (lambda c: c["data"].update(vocab_size=100), "data.vocab_size", "too small"),
        (lambda c: c.update(device="banana"), "device", "not a torch device"),
        (lambda c: c.update(device="meta"), "device", "cpu or cuda"),
        (lambda c: c.update(seed=-1), "seed", "greater than or equal to 0"),
        (lambda c: c.update(seed=2**64), "seed", "less than"),
        (lambda c: c.update(seed=True), "seed", "expected int, got a bool"),
        (lambda c: c.update(out=str(a_file)), "out", "not a folder"),
        (lambda c: c.update(out=str(a_file / "sub")), "out", "not a folder"),
        (lambda c: c.update(solver={"options": {"bogus": 1}}), "solver.options.bogus", "unknown solve_direct option"),
        (lambda c: c.update(solver={"options": {"min_weight": 0.5}}), "solver.options.min_weight", "sums to 2"),
        (lambda c: c.update(solver={"options": {"max_shift": -1}}), "solver.options.max_shift", "max_shift must be"),
        (lambda c: c.update(solver={"options": {"min_weight": [0.5, 0, 0, 0], "max_weight": 0.4}}),
         "solver.options.min_weight", "exceeds max_weight"),
        (lambda c: c.update(solver={"name": "regression", "options": {"regression": {"box": [2, 1]}}}),
         "solver.options.regression.box", "box must satisfy"),
        (lambda c: c.update(solver={"name": "regression", "options": {"regresion": {}}}),
         "solver.options.regresion", "unknown regression solver option group"),
        (lambda c: c.update(solver={"name": "regression", "options": {"regression": {"score": {"draws": 0}}}}),
         "solver.options.regression.score.draws", "draws must be"),
        (lambda c: c["influence"].update(k=2**26), "influence.k", "below 2\\^26"),
        (lambda c: c["train"].update(grad_clip=-1), "train.grad_clip", "greater than 0"),
        (lambda c: c["train"].update(min_lr_ratio=-5), "train.min_lr_ratio", "greater than or equal to 0"),
        (lambda c: c["train"].update(lr=float("nan")), "train.lr", "finite"),
        (lambda c: c["data"]["domains"].update({"../../../x": {"token_file": arith}}), "data.domains.../../../x",
         "should match pattern"),
        (lambda c: c["data"]["targets"].update({"a..b": {"token_file": arith}}), "data.targets.a..b", "must not contain"),
        (lambda c: c["data"]["targets"].update({"/abs": {"token_file": arith}}), "data.targets./abs", "should match pattern"),
        (lambda c: c["data"]["domains"]["arith"].update(max_sequences=0), "data.domains.arith.max_sequences",
         "greater than or equal to 1"),
        (lambda c: c["data"]["domains"]["prose"].update(pattern="*.nothing"), "data.domains.prose.text_folder",
         "no files matching"),
        (lambda c: c["data"].update(initial_weights=[1, 0, 0, -1]), r"data.initial_weights\[3\]", "greater than or equal"),
        (lambda c: c["data"].update(initial_weights=[0, 0, 0, 0]), "data.initial_weights", "sum to 0"),
    ]


def test_hardening_bad_configs_fail_before_anything_is_built(tmp_path, data_dir, capsys):
    for i, (mutate, key, message) in enumerate(_bad_cases(data_dir, tmp_path)):
        out = tmp_path / f"out{i}"
        cfg = _bad(_config(data_dir, out), mutate)
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
        assert re.match(f"^{key}: .*({message})", str(info.value)), (key, str(info.value))
        assert info.value.key.replace("[", r"\[").replace("]", r"\]") == key
        path = _write(tmp_path, cfg)
        assert main(["run", str(path), "--check"]) == 2, key
        assert not out.exists()  # neither validate_config nor --check writes anything
        err = capsys.readouterr().err
        assert err.startswith("tikmix run: config error: ") and "Traceback" not in err, err
        assert re.search(message, err), (key, err)
        assert main(["run", str(path)]) == 2, key
        err = capsys.readouterr().err
        assert err.startswith("tikmix run: config error: ") and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="^device: 'cuda' is not available"):
        validate_config(_config(data_dir, tmp_path / "out", device="cuda"))


def test_duplicate_yaml_key_is_refused(tmp_path, data_dir):
    text = _write(tmp_path, _config(data_dir, tmp_path / "out")).read_text()
    assert "  steps: 24\n" in text
    path = tmp_path / "dup.yaml"
    path.write_text(text.replace("  steps: 24\n", "  steps: 24\n  steps: 4000\n"))
    with pytest.raises(ConfigError, match=r"^train.steps: duplicate key \(lines \d+ and \d+\)"):
        load_config(path)
    assert main(["run", str(path), "--check"]) == 2


def test_target_that_is_a_training_domain_warns(tmp_path, data_dir, capsys):
    cfg = _config(data_dir, tmp_path / "out")
    cfg["data"]["targets"]["arith_again"] = {"token_file": str(data_dir / "arith.tokens")}
    with pytest.warns(ConfigWarning, match="data.targets.arith_again: reads the same data as training domain "
                                           "data.domains.arith"):
        validate_config(cfg)
    assert main(["run", str(_write(tmp_path, cfg)), "--check"]) == 0
    assert "tikmix run: warning: data.targets.arith_again" in capsys.readouterr().err


def test_largest_seed_runs(tmp_path, data_dir):
    cfg = validate_config(_config(data_dir, tmp_path / "out", seed=2**63 - 1,
                                  train={"steps": 3, "batch_size": 8, "warmup": 1}, stages={"boundaries": [1]}))
    history = train(cfg, progress=False, log=lambda *a: None)
    assert len(history["stages"]) == 1


# ------------------------------------------------------------------------------------------ training and resume
def _comparable(history: dict) -> dict:
    h = json.loads(json.dumps(history))
    for s in h["stages"]:
        s.pop("timing")
    h["final"].pop("train_s_last_stage", None)
    return h


def _final_weights(out: Path) -> dict:
    (step, path), *_ = list_checkpoints(out)
    return torch.load(path, weights_only=True)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_dropout_is_bit_identical(tmp_path, data_dir):
    """Dropout draws from the global RNG: the checkpoint carries the RNG states, so a resumed run is exact."""
    quiet = dict(progress=False, log=lambda *a: None)
    model = {"n_layer": 1, "n_head": 2, "d_model": 16, "dropout": 0.1}
    full = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "a", model=model))), **quiet)
    assert [s["step"] for s in full["stages"]] == [8, 16]
    assert (tmp_path / "a" / "history.json").is_file() and (tmp_path / "a" / "mixture.png").is_file()
    assert sum(full["final"]["realised_total"]["tokens"]) == 24 * 8 * SEQ

    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "b", model=model)))
    partial = train(cfg, stop_at=12, **quiet)  # "killed" after step 12
    assert len(partial["stages"]) == 1 and partial["final"] is None
    torch.manual_seed(1234)  # whatever the process did in between must not matter
    resumed = train(cfg, resume=True, **quiet)
    assert _comparable(resumed) == _comparable(full)
    _assert_same_weights(_final_weights(tmp_path / "b"), _final_weights(tmp_path / "a"))


def test_moved_run_folder_resumes_where_it_stopped(tmp_path, data_dir):
    """``out`` is not part of the resume identity: a run folder moved or renamed resumes there, exactly."""
    import shutil

    quiet = dict(progress=False, log=lambda *a: None)
    full = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "a"))), **quiet)
    train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "b"))), stop_at=10, **quiet)
    shutil.move(str(tmp_path / "b"), str(tmp_path / "moved"))
    assert not (tmp_path / "b").exists()
    said: list[str] = []
    # any other key that changes results is still refused, naming it
    other = load_config(_write(tmp_path, _config(data_dir, tmp_path / "moved", seed=1)))
    with pytest.raises(ConfigError, match="^seed: differs from the config of the checkpoint"):
        train(other, resume=True, **quiet)
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "moved")))
    resumed = train(cfg, resume=True, progress=False, log=said.append)
    assert any("resumed at step 10" in s for s in said), said
    assert _comparable(resumed) == _comparable(full)
    _assert_same_weights(_final_weights(tmp_path / "moved"), _final_weights(tmp_path / "a"))
    assert not (tmp_path / "b").exists()  # nothing is written to the old place


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, data_dir):
    quiet = dict(progress=False, log=lambda *a: None)
    train_cfg = {"steps": 24, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 8, "checkpoint_every": 4}
    full = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "a", train=train_cfg))), **quiet)
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "b", train=train_cfg)))
    train(cfg, stop_at=14, **quiet)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [14, 12]  # the last two are kept
    newest = list_checkpoints(tmp_path / "b")[0][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    said: list[str] = []
    resumed = train(cfg, resume=True, progress=False, log=said.append)
    assert any("skipping checkpoint" in s and "step-000000014.pt" in s for s in said), said
    assert any("resumed at step 12" in s for s in said), said
    assert _comparable(resumed) == _comparable(full)
    _assert_same_weights(_final_weights(tmp_path / "b"), _final_weights(tmp_path / "a"))

    # both remaining checkpoints unusable (one empty, one garbage): a clear error, not a fresh start
    for (_, path), content in zip(list_checkpoints(tmp_path / "b"), (b"", b"garbage")):
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="no usable checkpoint.*is empty.*not a torch.save archive"):
        train(cfg, resume=True, **quiet)
    assert main(["run", str(tmp_path / "config.yaml"), "--resume", "--no-progress"]) == 1


class _Planted:
    """Pickles to a call of Path.touch: loading it with weights_only=False would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_checkpoint_is_never_executed(tmp_path, data_dir):
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "out")))
    marker = tmp_path / "pwned"
    folder = checkpoint_dir(tmp_path / "out")
    folder.mkdir(parents=True)
    torch.save({"format": FORMAT, "step": 4, "payload": _Planted(marker)}, folder / "step-000000004.pt")
    torch.save({"format": "something/else", "step": 2}, folder / "step-000000002.pt")
    with pytest.raises(CheckpointError) as info:
        train(cfg, resume=True, progress=False, log=lambda *a: None)
    assert not marker.exists()
    assert "cannot be read safely" in str(info.value) and "not a tikmix run checkpoint" in str(info.value)


def test_planted_sharded_checkpoint_is_never_executed(tmp_path, data_dir):
    """parallel: fsdp keeps model and optimizer in a DCP folder; its pickled parts are checked the same way."""
    cfg = load_config(_write(tmp_path, _config(data_dir, tmp_path / "out", **{"train.parallel": "fsdp"})))
    train(cfg, stop_at=4, progress=False, log=lambda *a: None)
    (_, ckpt), = list_checkpoints(tmp_path / "out")
    state = torch.load(ckpt, weights_only=True)
    assert state["sharded"] == "checkpoint_dcp/step000000004"
    train(cfg, resume=True, stop_at=5, progress=False, log=lambda *a: None)  # the genuine one loads

    marker = tmp_path / "pwned"
    metadata = tmp_path / "out" / "checkpoint_dcp" / "step000000005" / ".metadata"
    metadata.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError, match="not a plain DCP metadata file"):
        train(cfg, resume=True, progress=False, log=lambda *a: None)
    assert not marker.exists()

    (_, ckpt), _ = list_checkpoints(tmp_path / "out")
    torch.save({**torch.load(ckpt, weights_only=True), "sharded": "../../elsewhere"}, ckpt)
    with pytest.raises(CheckpointError, match="not a folder of the form"):
        train(cfg, resume=True, progress=False, log=lambda *a: None)


def test_resume_refuses_a_different_config_naming_the_keys(tmp_path, data_dir):
    cfg = _config(data_dir, tmp_path / "c")
    train(load_config(_write(tmp_path, cfg)), progress=False, stop_at=4, log=lambda *a: None)
    cfg["train"]["lr"] = 0.02
    cfg["influence"]["k"] = 32
    cfg["train"]["eval_every"] = 3  # cadence changes are allowed
    with pytest.raises(ConfigError, match=r"^influence.k: .*changed: influence.k, train.lr\); refusing to resume"):
        train(load_config(_write(tmp_path, cfg)), resume=True, progress=False, log=lambda *a: None)


def test_history_json_has_no_object_reprs(tmp_path, data_dir):
    """TiKMiX-M's report holds a LightGBM Booster: history.json gets a JSON summary of it, not a repr."""
    options = {"regression": {"n_candidates": 64, "rounds": 1, "samples_per_round": 64, "top_k": 4}}
    cfg = _config(data_dir, tmp_path / "out", solver={"name": "regression", "options": options},
                  train={"steps": 6, "batch_size": 8, "warmup": 1, "eval_every": 3}, stages={"boundaries": [3]})
    history = train(load_config(_write(tmp_path, cfg)), progress=False, log=lambda *a: None)
    text = (tmp_path / "out" / "history.json").read_text()
    assert "object at 0x" not in text
    loaded = json.loads(text)
    assert json.loads(json.dumps(loaded)) == loaded == json.loads(json.dumps(history))

    def strings(x):
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return [x] if isinstance(x, str) else []

    assert not [s for s in strings(loaded) if s.startswith("<") and s.endswith(">")]
    model = loaded["stages"][0]["solver"]["regression"]["model"]
    assert model["type"] == "lightgbm.basic.Booster" and model["num_trees"] > 0


def test_two_process_gloo_run(tmp_path, data_dir):
    """``torchrun --nproc_per_node 2 -m tikmix run`` on CPU: same stages and mixture as one process.

    With the paper's decision: the robust decision's bootstrap intervals resample micro-batches, and those
    differ with the number of ranks, so its mixture agrees only approximately."""
    solver = {"name": "direct", "decision": "paper"}
    single = train(load_config(_write(tmp_path, _config(data_dir, tmp_path / "one", solver=solver))),
                   progress=False, log=lambda *a: None)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(data_dir, tmp_path / "two", solver=solver)))
    torchrun(2, "-m", "tikmix", "run", str(cfg_path), "--no-progress")
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [s["step"] for s in two["stages"]] == [8, 16]
    # the global batch is the same, so the realised per-domain counts of the first stage are identical
    assert two["stages"][0]["realised_previous_stage"] == single["stages"][0]["realised_previous_stage"]
    # gradients are averaged across ranks and influence sketches all-reduced: same numbers up to rounding
    for a, b in zip(two["stages"], single["stages"]):
        np.testing.assert_allclose(a["S"], b["S"], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(a["weights"], b["weights"], atol=2e-3)
    assert sum(two["final"]["realised_total"]["tokens"]) == 24 * 8 * SEQ
