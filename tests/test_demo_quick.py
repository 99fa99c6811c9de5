"""``tikmix demo --quick`` end to end (runs of ``tikmix.run.train``, report structure, mixture changed, plots), plus
the corpus and model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tikmix.cli import main
from tikmix.demo.corpus import DOMAIN_ROLES, build_corpus
from tikmix.models import GPT, GPTConfig, sequence_loss

PNG = b"\x89PNG\r\n\x1a\n"


TRAIN_CALLS: list = []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import contextlib
    import io

    import tikmix.run

    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    real_train = tikmix.run.train

    def counted(cfg, **kwargs):
        TRAIN_CALLS.append(cfg)
        return real_train(cfg, **kwargs)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(tikmix.run, "train", counted)
        assert main(["demo", "--quick", "--seed", "0", "--out", str(out), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # main() leaves the thread count as it found it
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def demo_out(demo_run):
    return demo_run[0]


def test_quick_demo_is_reproducible_as_printed(demo_run):
    """The demo runs on one torch thread by default (results do not depend on the machine's core count) and
    says so; report.json records it; the printed verdict uses the report's sign convention."""
    out, printed = demo_run
    assert "1 torch thread(s)" in printed.splitlines()[0]
    report = json.loads((out / "report.json").read_text())
    assert report["torch_threads"] == 1
    for name, c in report["comparison"].items():
        assert f"{name} {'beats' if c['beats_baseline'] else 'does NOT beat'} uniform" in printed
        assert f"improvement {c['mean_improvement']:+.4f} ({c['mean_improvement_pct']:+.1f}%" in printed
    assert "Improvement over uniform (uniform loss − method loss; > 0 = better)" in printed
    # times print with a sensible precision: no 4-decimal seconds in the timing table
    timing = printed[printed.index("Time (wall clock"):].split("\n\n")[0].splitlines()[3:]
    assert timing and not any(re.search(r"\d\.\d{3,}", line) for line in timing), timing


def test_quick_demo_trains_through_tikmix_run(demo_out):
    """Every method is one call of the one training loop, on a config read from the run folder."""
    from tikmix.run import RunConfig

    assert [c.solver.name for c in TRAIN_CALLS] == ["static", "direct", "regression"]
    assert all(isinstance(c, RunConfig) for c in TRAIN_CALLS)
    assert TRAIN_CALLS[0].solver.weights == pytest.approx([1 / 6] * 6)
    assert {c.train.steps for c in TRAIN_CALLS} == {160} and TRAIN_CALLS[1].stages.boundaries == [40, 80, 120]
    for name in ("uniform", "tikmix-d", "tikmix-m"):
        assert (demo_out / "runs" / name / "config.yaml").is_file()
        assert (demo_out / "runs" / name / "eval.json").is_file()
    # the run folders are ordinary tikmix run outputs: tikmix compare reads them (baseline: the static run)
    from tikmix.compare import compare

    _, base, rows = compare([demo_out / "runs" / n for n in ("uniform", "tikmix-d", "tikmix-m")])
    assert base.name == "uniform"
    report = json.loads((demo_out / "report.json").read_text())
    for row in rows[1:]:
        c = report["comparison"][row["run"]]
        assert c["ci"] == pytest.approx(list(row["ci"])) and c["mean_improvement"] == pytest.approx(row["improvement"])


def test_quick_demo_report_structure(demo_out):
    from tikmix.formats import DEMO
    from tikmix.report import load

    raw = json.loads((demo_out / "report.json").read_text())
    assert raw["format"] == DEMO and "methods" not in raw  # the per-run data lives in the run folders only
    assert raw["runs"] == {n: f"runs/{n}" for n in ("uniform", "tikmix-d", "tikmix-m")}
    report = load(demo_out / "report.json")
    domains, targets = report["domains"], report["targets"]
    assert domains == ["arith", "prose", "facts", "web", "noise", "rumours"]
    assert targets == ["sums", "grammar", "lookup"]
    assert list(report["methods"]) == ["uniform", "tikmix-d", "tikmix-m"]
    steps = report["settings"]["steps"]
    tokens = steps * report["settings"]["batch_size"] * report["settings"]["model"]["seq_len"]
    for name, m in report["methods"].items():
        assert set(m["final"]) == set(targets)
        assert all(np.isfinite(v) and 0 < v < 10 for v in m["final"].values())
        assert m["mean"] == pytest.approx(np.mean(list(m["final"].values())))
        assert m["curve"][-1]["step"] == steps
        assert sum(m["realised_tokens"]) == tokens  # same token budget for every method
        assert m["timing"]["train_s"] > 0
    for name in ("tikmix-d", "tikmix-m"):
        c = report["comparison"][name]
        base, mine = report["methods"]["uniform"], report["methods"][name]
        # one sign convention: improvement = uniform loss - method loss, > 0 = better
        assert c["improvement"] == pytest.approx({t: base["final"][t] - mine["final"][t] for t in targets})
        assert c["mean_improvement"] == pytest.approx(base["mean"] - mine["mean"])
        assert c["mean_improvement_pct"] == pytest.approx(100 * (base["mean"] - mine["mean"]) / base["mean"])
        assert c["beats_baseline"] == (c["mean_improvement"] > 0)
        assert 0 <= c["influence_share"] < 5
        lo, hi = c["ci"]
        assert lo <= c["mean_improvement"] <= hi


def test_quick_demo_controller_changed_the_mixture(demo_out):
    from tikmix.report import load

    report = load(demo_out / "report.json")
    for name in ("tikmix-d", "tikmix-m"):
        hist = report["methods"][name]["history"]
        assert hist == json.loads((demo_out / "runs" / name / "history.json").read_text())
        stages = hist["stages"]
        assert [s["step"] for s in stages] == [40, 80, 120]
        for s in stages:
            assert np.array(s["S"]).shape == (3, 6)
            w = np.array(s["weights"])
            assert abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
        last = np.array(stages[-1]["weights"])
        assert np.abs(last - 1 / 6).max() > 0.02, last
        # realised tokens of the last stage follow the last mixture (exact per-batch counts)
        realised = np.array(hist["final"]["realised_last_stage"]["samples"], dtype=float)
        np.testing.assert_allclose(realised / realised.sum(), last, atol=1 / 32)
    # the uniform baseline never changes its mixture
    assert report["methods"]["uniform"]["weights_final"] == pytest.approx([1 / 6] * 6)


def test_quick_demo_plots_and_report_redraw(demo_out, tmp_path, capsys):
    for name in ("mixture.png", "loss_curves.png", "influence.png"):
        assert (demo_out / name).read_bytes()[:8] == PNG
    assert main(["report", str(demo_out / "report.json"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Target loss at the end of training" in printed and "tikmix-m: domain weights per stage" in printed
    # feedback.png: the last stage's predicted against realised change (closed at the end of training)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["feedback.png", "influence.png", "loss_curves.png",
                                                             "mixture.png"]
    # the README's figures come only from the named run: a --quick report is refused
    import os
    import subprocess

    script = subprocess.run(["bash", "scripts/make_figures.sh", str(demo_out)], capture_output=True, text=True,
                            env={**os.environ, "FIG_DIR": str(tmp_path / "figs")}, timeout=300)
    assert script.returncode != 0 and "is not the named run" in script.stderr, script.stderr
    assert not (tmp_path / "figs").exists()
    # a single controller history re-draws too
    assert main(["report", str(demo_out / "runs" / "tikmix-d" / "history.json"), "--out", str(tmp_path / "h")]) == 0
    assert "Group influence at step 40" in capsys.readouterr().out
    # a folder stands for the report.json or history.json in it
    assert main(["report", str(demo_out / "runs" / "tikmix-d"), "--out", str(tmp_path / "h2")]) == 0
    assert "Group influence at step 40" in capsys.readouterr().out
    assert main(["report", str(demo_out), "--out", str(tmp_path / "h3")]) == 0
    assert "tikmix-m: domain weights per stage" in capsys.readouterr().out


def test_report_rejects_unknown_files(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "something else"}')
    assert main(["report", str(bad)]) == 2
    assert "unknown format" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "without a report.json (tikmix demo) or a history.json (tikmix run)" in capsys.readouterr().err
    from tikmix.formats import DEMO

    bad.write_text(json.dumps({"format": DEMO, "runs": {"uniform": "runs/uniform"}}))
    assert main(["report", str(bad)]) == 2
    assert "run 'uniform' of the report" in capsys.readouterr().err


def test_demo_flags_are_validated(capsys):
    assert main(["demo", "--budget", "10", "--no-progress"]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["demo", "--methods", "uniform,best", "--quick", "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["demo", "--static-weights", "arith"])


def test_corpus_is_deterministic_and_shaped():
    a = build_corpus(3, seq_len=32, train_sequences=40, dev_sequences=4, test_sequences=6)
    b = build_corpus(3, seq_len=32, train_sequences=40, dev_sequences=4, test_sequences=6)
    c = build_corpus(4, seq_len=32, train_sequences=40, dev_sequences=4, test_sequences=6)
    assert list(a.domains) == list(DOMAIN_ROLES)
    for name in a.domains:
        assert a.domains[name].shape == (40, 33) and a.domains[name].dtype == np.uint8
        np.testing.assert_array_equal(a.domains[name], b.domains[name])
        assert not np.array_equal(a.domains[name], c.domains[name])
    for t in a.target_dev:
        assert a.target_dev[t].shape == (4, 33) and a.target_test[t].shape == (6, 33)
        # dev and test are disjoint windows of one stream
        assert not any((row == a.target_test[t]).all(axis=1).any() for row in a.target_dev[t])
    # the domains are what they claim: ascii text except the noise domain
    assert a.domains["noise"].max() > 127
    assert all(a.domains[n].max() < 128 for n in a.domains if n != "noise")
    assert b";" in a.domains["rumours"].tobytes() and b">" in a.domains["facts"].tobytes()
    with pytest.raises(ValueError, match="train_sequences"):
        build_corpus(0, train_sequences=0)


def test_model_and_sequence_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(seq_len=16, n_layer=1, n_head=2, d_model=8))
    batch = torch.randint(0, 256, (3, 17))
    loss = sequence_loss(model, batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    # per-sequence: each row's loss is independent of the other rows
    torch.testing.assert_close(sequence_loss(model, batch[1:2]), loss[1:2])
    # near log(256) at initialisation
    assert abs(float(loss.detach().mean()) - np.log(256)) < 0.5
    assert model.head.weight is model.tok_emb.weight
    with pytest.raises(ValueError, match="exceeds config.seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="T\\+1"):
        sequence_loss(model, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=0)


def test_settings_from_flags():
    from tikmix.demo.run import QUICK, settings_for

    s = settings_for(quick=True, methods=["uniform"], static_weights={"arith": 1.0})
    assert s.methods == ("uniform", "static") and s.static_weights == {"arith": 1.0}
    assert s.steps == QUICK.steps
    s = settings_for(budget=200 * 32 * 64, seed=4)
    assert s.steps == 200 and s.seed == 4 and s.stage_steps() == [50, 100, 150]
    assert s.direct == {"max_shift": 0.3}
    with pytest.raises(ValueError, match="methods"):
        settings_for(methods=["tikmix-d"])  # the uniform baseline is required


def test_settings_become_a_run_config(tmp_path):
    """Every DemoSettings field that shapes training reaches the run config the demo trains with."""
    from tikmix.decision import Decision
    from tikmix.demo.run import DemoSettings, run_config
    from tikmix.run import validate_config

    s = DemoSettings(seed=3, steps=40, batch_size=8, model=GPTConfig(seq_len=16, n_layer=1, n_head=2, d_model=16),
                     lr=1e-3, warmup=4, min_lr_ratio=0.2, weight_decay=0.0, grad_clip=0.5, stages=(0.25, 0.5),
                     eval_every=10, samples_per_domain=8, target_samples=4, sketch_k=64, influence_batch_size=4,
                     direct={"max_shift": 0.2}, regression={"n_candidates": 32, "rounds": 1},
                     decision=Decision.from_options("paper"))
    root = tmp_path / "data"
    corpus = build_corpus(0, seq_len=16, train_sequences=32, dev_sequences=8, test_sequences=8)
    from tikmix.demo.run import write_corpus

    data = write_corpus(corpus, root)
    cfg = validate_config(run_config("tikmix-m", s, data, tmp_path / "m"))
    t = cfg.train
    assert (cfg.seed, t.steps, t.batch_size, t.lr, t.warmup, t.min_lr_ratio, t.weight_decay, t.grad_clip,
            t.eval_every) == (3, 40, 8, 1e-3, 4, 0.2, 0.0, 0.5, 10)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.data.seq_len) == (1, 2, 16, 16)
    assert cfg.stages.boundaries == [10, 20] and cfg.solver.name == "regression"
    assert cfg.solver.options == {"direct": {"max_shift": 0.2}, "regression": {"n_candidates": 32, "rounds": 1}}
    assert cfg.solver.decision["objective"] == "paper"
    assert json.loads(json.dumps(s.to_dict()))["decision"]["objective"] == "paper"
    i = cfg.influence
    assert (i.k, i.samples_per_domain, i.target_samples, i.batch_size) == (64, 8, 4, 4)
    uniform = validate_config(run_config("uniform", s, data, tmp_path / "u"))
    assert uniform.solver.name == "static" and uniform.solver.weights == pytest.approx([1 / 6] * 6)
    assert validate_config(run_config("tikmix-d", s, data, tmp_path / "d")).solver.options == {"max_shift": 0.2}
    with pytest.raises(ValueError, match="static_weights"):
        run_config("static", s, data, tmp_path / "s")
    with pytest.raises(ValueError, match="unknown 'best'"):
        run_config("best", s, data, tmp_path / "b")
