"""Baselines in ``tikmix run`` (solver static / proportional), dev/test target sources, and ``tikmix compare``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tikmix.cli import main
from tikmix.compare import CompareError, RunResult, compare, load_run, paired_bootstrap
from tikmix.formats import HISTORY
from tikmix.data import write_token_file
from tikmix.run import ConfigError, train, validate_config

from demo_testing import write_demo_run_data

SEQ = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmpdata")
    corpus = write_demo_run_data(root, seq_len=SEQ, train_sequences=64)
    # a test source whose 5th row (rows are tokens [i*SEQ, (i+1)*SEQ + 1)) is the dev source's 3rd row
    dev, test = corpus.target_dev["lookup"].reshape(-1), corpus.target_test["lookup"].reshape(-1)
    leak = np.concatenate([test[: 4 * SEQ], dev[2 * SEQ : 3 * SEQ + 1]])
    write_token_file(root / "leak.tokens", leak, vocab_size=256)
    return root


def _cfg(data_dir: Path, out: Path, solver: dict, stages: list[int] | None = None, target: dict | None = None) -> dict:
    cfg = {
        "out": str(out),
        "data": {
            "seq_len": SEQ,
            "domains": {n: {"token_file": str(data_dir / f"{n}.tokens")} for n in ("arith", "facts", "noise")},
            "targets": {"lookup": target or {"dev": {"token_file": str(data_dir / "dev.tokens")},
                                             "test": {"token_file": str(data_dir / "test.tokens")}}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 12, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 4, "checkpoint_every": 100},
        "influence": {"k": 32, "samples_per_domain": 8, "batch_size": 8, "n_bootstrap": 10},
        "solver": solver,
    }
    if stages is not None:
        cfg["stages"] = {"boundaries": stages}
    return cfg


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, solver, stages in [("uniform", {"name": "static", "weights": "uniform"}, None),
                                 ("tikmix-d", {"name": "direct", "decision": "robust"}, [6]),
                                 ("proportional", {"name": "proportional"}, None)]:
        cfg = validate_config(_cfg(data_dir, root / name, solver, stages))
        train(cfg, progress=False, log=lambda *a, **k: None)
        out[name] = root / name
    return out


# ------------------------------------------------------------------------------------------ run outputs
def test_static_run_is_labelled_and_keeps_its_mixture(runs):
    h = json.loads((runs["uniform"] / "history.json").read_text())
    assert h["solver"] == "static (uniform)" and h["stages"] == []
    assert h["final"]["weights"] == pytest.approx([1 / 3] * 3, abs=1e-4)
    samples = h["final"]["realised_total"]["samples"]
    assert max(samples) - min(samples) <= 1  # exact uniform: 96 samples over 3 domains
    p = json.loads((runs["proportional"] / "history.json").read_text())
    assert p["solver"] == "proportional"


def test_eval_json_holds_the_per_sequence_losses_of_the_reported_means(runs):
    for path in runs.values():
        ev = json.loads((path / "eval.json").read_text())
        h = json.loads((path / "history.json").read_text())
        losses = np.asarray(ev["targets"]["lookup"])
        assert losses.shape == (8,) and np.isfinite(losses).all()
        assert losses.mean() == pytest.approx(h["final"]["test_losses"]["lookup"], rel=1e-12)
        assert ev["steps"] == 12 and ev["tokens_per_step"] == 8 * SEQ


def test_robust_decision_reaches_the_history(runs):
    h = json.loads((runs["tikmix-d"] / "history.json").read_text())
    assert h["solver"] == "tikmix-d" and h["stages"][0]["decision"]["options"]["objective"] == "robust"


# ------------------------------------------------------------------------------------------ compare
def paired_ref(a, b, n_boot, seed):
    """Reference: one target; resample sequence indices with the same generator calls as documented."""
    rng = np.random.default_rng(seed)
    d = np.asarray(a) - np.asarray(b)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    reps = np.array([d[i].mean() for i in idx])
    return d.mean(), np.percentile(reps, 2.5), np.percentile(reps, 97.5)


def _result(name, losses, steps=10, sha="x"):
    return RunResult(name, Path(name), "s", steps, 64, {"t": np.asarray(losses, dtype=np.float64)}, {"t": sha}, [], [])


@pytest.mark.parametrize("n", [1, 7, 300])
def test_paired_bootstrap_matches_reference(n):
    rng = np.random.default_rng(n)
    base = rng.normal(3, 0.5, n)
    run = base + rng.normal(-0.05, 0.02, n)
    got = paired_bootstrap(_result("r", run), _result("b", base), n_boot=500, seed=4)
    ref = paired_ref(run, base, 500, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    if n == 300:
        assert got[2] < 0  # a consistent improvement is resolved


def test_compare_cli_prints_the_table_and_draws_the_plot(runs, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    rc = main(["compare", str(runs["tikmix-d"]), str(runs["uniform"]), str(runs["proportional"]), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "baseline: uniform" in out and "static (uniform)" in out and "tikmix-d" in out
    assert "(baseline)" in out and "[" in out
    assert plot.is_file() and plot.stat().st_size > 1000
    loaded, base, rows = compare([runs["tikmix-d"], runs["uniform"]], baseline="tikmix-d")
    assert base.name == "tikmix-d"
    row = next(r for r in rows if r["run"] == "uniform")
    # improvement = baseline (tikmix-d) loss - run (uniform) loss, > 0 = better than the baseline
    assert row["improvement"] == pytest.approx(load_run(runs["tikmix-d"]).mean - load_run(runs["uniform"]).mean,
                                               rel=1e-9)
    assert row["ci"][0] <= row["improvement"] <= row["ci"][1]


def test_compare_refuses_incomparable_runs_naming_the_difference(runs, data_dir, tmp_path, capsys):
    other = validate_config(_cfg(data_dir, tmp_path / "longer", {"name": "static", "weights": [1, 0, 1]}))
    raw = other.model_dump(mode="json")
    raw["train"]["steps"] = 16
    train(validate_config(raw), progress=False, log=lambda *a, **k: None)
    with pytest.raises(CompareError, match=r"not comparable: budget: 16 steps vs 12"):
        compare([runs["uniform"], tmp_path / "longer"])
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    ev = json.loads((runs["uniform"] / "eval.json").read_text())
    ev["targets"] = {"other": ev["targets"]["lookup"]}
    ev["test_sha1"] = {"other": ev["test_sha1"]["lookup"]}
    (renamed / "eval.json").write_text(json.dumps(ev))
    (renamed / "history.json").write_text((runs["uniform"] / "history.json").read_text())
    with pytest.raises(CompareError, match=r"targets \['other'\] vs \['lookup'\]"):
        compare([runs["uniform"], renamed])
    ev = json.loads((runs["uniform"] / "eval.json").read_text())
    ev["test_sha1"]["lookup"] = "0" * 40
    (renamed / "eval.json").write_text(json.dumps(ev))
    with pytest.raises(CompareError, match="'lookup' is evaluated on different test sequences"):
        compare([runs["uniform"], renamed])
    assert main(["compare", str(runs["uniform"]), str(renamed)]) == 2
    assert "not comparable" in capsys.readouterr().err


def test_compare_bad_input(runs, tmp_path):
    with pytest.raises(CompareError, match="at least two run folders"):
        compare([runs["uniform"]])
    with pytest.raises(CompareError, match="not a folder"):
        compare([runs["uniform"], tmp_path / "missing"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "history.json").write_text("{}")
    with pytest.raises(CompareError, match="no eval.json"):
        compare([runs["uniform"], tmp_path / "half"])
    with pytest.raises(CompareError, match=r"--baseline 'nope' is not one of the runs"):
        compare([runs["uniform"], runs["tikmix-d"]], baseline="nope")
    with pytest.raises(CompareError, match="repeated"):
        compare([runs["uniform"], runs["uniform"]])
    (tmp_path / "half" / "eval.json").write_text("not json")
    with pytest.raises(CompareError, match="not valid JSON"):
        load_run(tmp_path / "half")


# ------------------------------------------------------------------------------------------ config
def test_static_weights_must_match_the_domains(data_dir, tmp_path):
    base = _cfg(data_dir, tmp_path / "o", {"name": "static", "weights": [1, 2]})
    with pytest.raises(ConfigError, match=r"solver.weights: has 2 entries but there are 3 domains"):
        validate_config(base)
    for weights, match in [({"arith": 1, "web": 1}, r"solver.weights.web: not a domain"),
                           ([0, 0, 0], "the weights sum to 0"), ([1, -1, 1], r"solver.weights")]:
        bad = copy.deepcopy(base)
        bad["solver"]["weights"] = weights
        with pytest.raises(ConfigError, match=match):
            validate_config(bad)
    ok = validate_config(_cfg(data_dir, tmp_path / "o", {"name": "static", "weights": {"arith": 3, "noise": 1}}))
    assert ok.solver.weights == [0.75, 0.0, 0.25]
    with pytest.raises(ConfigError, match=r"stages.boundaries: solver static keeps one mixture"):
        validate_config(_cfg(data_dir, tmp_path / "o", {"name": "static", "weights": "uniform"}, [4]))
    with pytest.raises(ConfigError, match=r"solver.weights: only for solver static"):
        validate_config(_cfg(data_dir, tmp_path / "o", {"name": "direct", "weights": "uniform"}, [4]))
    with pytest.raises(ConfigError, match=r"stages.boundaries: solver direct re-chooses"):
        validate_config(_cfg(data_dir, tmp_path / "o", {"name": "direct"}))
    with pytest.raises(ConfigError,
                       match=r"solver\.decision\.ema: must be off \(None; null in YAML\) or a number in \[0, 1\), got 2"):
        validate_config(_cfg(data_dir, tmp_path / "o", {"name": "direct", "decision": {"ema": 2}}, [4]))


def test_overlapping_dev_and_test_are_refused(data_dir, tmp_path):
    target = {"dev": {"token_file": str(data_dir / "dev.tokens")}, "test": {"token_file": str(data_dir / "leak.tokens")}}
    cfg = validate_config(_cfg(data_dir, tmp_path / "leak", {"name": "static", "weights": "uniform"}, target=target))
    with pytest.raises(ConfigError, match=r"data.targets.lookup: dev and test share 1 identical sequence\(s\) \(of 5"):
        train(cfg, progress=False, log=lambda *a, **k: None)


def test_one_source_target_falls_back_to_halves_and_says_so(data_dir, tmp_path):
    target = {"token_file": str(data_dir / "lookup.tokens")}
    cfg = validate_config(_cfg(data_dir, tmp_path / "halves", {"name": "static", "weights": "uniform"}, target=target))
    said: list[str] = []
    train(cfg, progress=False, log=lambda *a, **k: said.append(" ".join(map(str, a))))
    assert any("target 'lookup' has one source: its first 8 sequences (by position) measure influence" in s
               for s in said)
    with pytest.raises(ConfigError, match=r"data.targets.lookup.test: required key is missing"):
        validate_config(_cfg(data_dir, tmp_path / "o", {"name": "static", "weights": "uniform"},
                             target={"dev": {"token_file": str(data_dir / "dev.tokens")}}))


# ------------------------------------------------------------------------------------------ compare plot
def _written_run(root: Path, name: str, solver: str, shift: dict[str, float]) -> RunResult:
    """A run folder whose history holds per-target curves; ``shift[t]`` lowers target t's loss (> 0 = better)."""
    rng = np.random.default_rng(0)  # the same sequences in every run: the differences are the shifts
    folder = root / name
    folder.mkdir()
    metrics = [{"step": s, **{f"target/{t}": 3.0 + np.exp(-s / 20) - d * s / 40 for t, d in shift.items()}}
               for s in (0, 10, 20, 30, 40)]
    (folder / "history.json").write_text(json.dumps({"format": HISTORY, "solver": solver, "metrics": metrics}))
    targets = {t: 3.0 - d + rng.normal(0, 0.2, 50) for t, d in shift.items()}
    (folder / "eval.json").write_text(json.dumps({
        "format": "tikmix.eval/1", "solver": solver, "steps": 40, "tokens_per_step": 64,
        "targets": {t: v.tolist() for t, v in targets.items()}, "test_sha1": {t: "same" for t in shift}}))
    return load_run(folder)


def test_compare_figure_shows_every_target_and_the_mean(tmp_path):
    from tikmix.compare import compare_figure, plot_curves

    pytest.importorskip("matplotlib")
    targets = ["a", "b", "c"]
    base = _written_run(tmp_path, "uniform", "static (uniform)", {t: 0.0 for t in targets})
    run = _written_run(tmp_path, "tikmix-d", "tikmix-d", {"a": 0.05, "b": 0.04, "c": -0.02})  # c got worse
    fig = compare_figure([run, base])  # the static run is the baseline, as in compare()
    bars, *panels = fig.axes
    assert [t.get_text() for t in bars.get_yticklabels()] == [*targets, "mean over targets"]  # top to bottom
    widths = {label: patch.get_width() for label, patch in
              zip([*targets, "mean over targets"], [p for p in bars.patches if p.get_height() > 0])}
    ref = {t: 100 * (base.final[t] - run.final[t]) / base.final[t] for t in targets}
    ref["mean over targets"] = 100 * (base.mean - run.mean) / base.mean
    assert widths == pytest.approx(ref, rel=1e-9)
    assert widths["c"] < 0 < widths["mean over targets"]  # the worse target is visible beside a better mean
    assert [a.get_title() for a in panels] == ["mean over targets", "target: a", "target: b", "target: c"]
    for a in panels:
        assert a.get_xlim()[0] == 0  # from step 0
        (line,) = a.get_lines()[:1]
        assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == pytest.approx(0.0)
    assert panels[3].get_lines()[0].get_ydata()[-1] == pytest.approx(-0.02)  # c: baseline loss - run loss
    out = plot_curves([run, base], tmp_path / "sub" / "compare.png", base="uniform")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CompareError, match="base 'nope' is not one of the runs"):
        compare_figure([run, base], base="nope")
