"""``tikmix search``: proxy search for a static mixture (RegMix) -- jobs, resume, the fit, the written config, the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tikmix.cli import main
from tikmix.data import write_token_file
from tikmix.demo.corpus import build_corpus
from tikmix.formats import SEARCH
from tikmix.run import load_config, parse_config
from tikmix.run.search import SearchResult, fit_search, proxy_weights, search

# the module itself: tikmix.run.search, the attribute, is the function
search_mod = sys.modules["tikmix.run.search"]

SEQ = 32
DOMAINS = ("arith", "facts", "noise")
TARGETS = ("sums", "lookup")
FAST = {"candidates": 2000, "top_k": 20, "threads": 1, "progress": False, "log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three demo domains and two split targets as token files."""
    root = tmp_path_factory.mktemp("search_data")
    corpus = build_corpus(0, seq_len=SEQ, train_sequences=64, dev_sequences=8, test_sequences=8)
    for name in DOMAINS:
        write_token_file(root / f"{name}.tokens", corpus.domains[name].reshape(-1), vocab_size=256)
    for t in TARGETS:
        write_token_file(root / f"{t}.dev.tokens", corpus.target_dev[t].reshape(-1), vocab_size=256)
        write_token_file(root / f"{t}.test.tokens", corpus.target_test[t].reshape(-1), vocab_size=256)
    return root


def _config(data_dir: Path, out: Path) -> dict:
    """A staged TiKMiX-D config: the search ignores its solver and stages."""
    return {
        "out": str(out),
        "seed": 0,
        "data": {
            "seq_len": SEQ,
            "vocab_size": 256,
            "domains": {n: {"token_file": str(data_dir / f"{n}.tokens")} for n in DOMAINS},
            "targets": {t: {"dev": {"token_file": str(data_dir / f"{t}.dev.tokens")},
                            "test": {"token_file": str(data_dir / f"{t}.test.tokens")}} for t in TARGETS},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
        "train": {"steps": 48, "batch_size": 8, "lr": 0.01, "warmup": 8, "eval_every": 16},
        "stages": {"boundaries": [16, 32]},
        "influence": {"k": 64, "samples_per_domain": 8, "batch_size": 8},
    }


@pytest.fixture(scope="module")
def searched(data_dir, tmp_path_factory) -> tuple[SearchResult, dict]:
    """One search, jobs=1, 6 proxies of 6 steps (shared by the tests that only read it)."""
    cfg = _config(data_dir, tmp_path_factory.mktemp("run"))
    return search(cfg, proxies=6, proxy_steps=6, jobs=1, **FAST), cfg


def _table(res: SearchResult) -> list[tuple]:
    return [(p["index"], p["weights"], p["dev_loss"], p["steps"], p["tokens"]) for p in res.proxies]


# ---------------------------------------------------------------------------------------------- the search
def test_search_result_and_files(searched):
    res, cfg = searched
    assert [p["index"] for p in res.proxies] == list(range(6))
    assert res.domains == list(DOMAINS) and res.targets == list(TARGETS)
    for p in res.proxies:
        assert p["steps"] == 6 and p["tokens"] == 6 * 8 * SEQ
        assert set(p["dev_loss"]) == set(TARGETS) and all(np.isfinite(list(p["dev_loss"].values())))
        assert p["weights"] == proxy_weights(0, p["index"], np.ones(3))  # Dirichlet(1,1,1), seed = config's seed
        assert sum(p["realised_tokens"]) == p["tokens"]
        assert np.allclose(np.divide(p["realised_tokens"], p["tokens"]), p["weights"], atol=1.5 / (6 * 8))
    assert len({tuple(p["weights"]) for p in res.proxies}) == 6
    assert sum(res.best_weights) == pytest.approx(1.0) and min(res.best_weights) >= 0
    assert set(res.fit["r2"]) == set(res.fit["spearman"]) == set(TARGETS)
    assert res.fit["cv"].startswith("k-fold") and "lightgbm" in res.fit["method"]
    c = res.compute
    assert (c["proxy_runs"], c["proxy_steps"], c["proxy_tokens"]) == (6, 36, 36 * 8 * SEQ)
    assert c["train_token_equivalents"] == pytest.approx(36 / 48)
    assert c["flops"] == pytest.approx(6 * res.proxies[0]["params"] * c["proxy_tokens"])
    doc = json.loads((res.out / "search.json").read_text())
    assert doc["format"] == SEARCH and doc["best_weights"] == res.best_weights and doc["proxies"] == res.proxies
    assert res.out == (Path(cfg["out"]) / "search").resolve()
    assert res.plot_path == res.out / "search.png" and res.plot_path.stat().st_size > 0
    assert not (res.out / "proxies" / "0" / "checkpoints").exists()  # removed once the proxy is recorded


def test_proxy_is_a_static_run_and_its_dev_loss_is_measured_on_dev(searched, tmp_path):
    """Proxy 0's config is the config as a short static run; retraining it with tikmix.run.train and evaluating
    the dev rows (independently of the search) gives the recorded dev losses."""
    from tikmix.run import prepare, train
    from tikmix.run.checkpoint import load_latest
    from tikmix.run.model import build_model
    from tikmix.run.train import evaluate

    res, _ = searched
    p0 = load_config(res.out / "proxies" / "0" / "config.yaml")
    assert p0.solver.name == "static" and p0.stages.boundaries == []
    assert p0.solver.weights == pytest.approx(res.proxies[0]["weights"], abs=1e-12)
    assert (p0.train.steps, p0.train.warmup, p0.train.eval_every, p0.train.checkpoint_every) == (6, 1, 6, 6)
    assert p0.seed == 0 and p0.model.d_model == 32
    again = p0.model_copy(update={"out": str(tmp_path / "again")})
    train(again, progress=False, log=lambda *a, **k: None, plots=False)
    run = prepare(again, log=lambda *a: None)
    model, loss_fn = build_model(again, run.vocab_size, torch.device("cpu"))
    model.load_state_dict(load_latest(again.out_dir)["model"])
    dev = evaluate(model, run.dev, torch.device("cpu"), loss_fn)
    test = evaluate(model, run.test, torch.device("cpu"), loss_fn)
    assert dev == pytest.approx(res.proxies[0]["dev_loss"], rel=1e-6)
    assert dev != pytest.approx(test, rel=1e-6)


def test_jobs_2_gives_the_same_search(searched, tmp_path):
    res1, cfg = searched
    res2 = search(cfg, proxies=6, proxy_steps=6, jobs=2, out=tmp_path / "s2", **FAST)
    assert _table(res2) == _table(res1)
    assert res2.best_weights == res1.best_weights
    assert res2.fit["r2"] == res1.fit["r2"]


def test_static_yaml_loads_with_the_best_weights(searched):
    res, cfg = searched
    static = load_config(res.config_path)
    assert static.solver.name == "static" and static.stages.boundaries == []
    assert static.data.initial_weights is None
    assert static.solver.weights == pytest.approx(res.best_weights, abs=1e-12)
    assert static.out_dir == res.out / "static_run"
    assert static.train.steps == cfg["train"]["steps"]  # the full run, not a proxy
    assert static.comparable()["data"] == parse_config(cfg).comparable()["data"]


def test_resume_trains_only_missing_proxies(searched, tmp_path, monkeypatch):
    res1, cfg = searched
    out = tmp_path / "s"
    shutil.copytree(res1.out, out)
    for i in (1, 4):
        (out / "proxies" / str(i) / "proxy.json").unlink()
    calls: list[str] = []
    real = search_mod.train

    def counting(run, **kw):
        calls.append(str(run.config.out))
        return real(run, **kw)

    monkeypatch.setattr(search_mod, "train", counting)
    res = search(cfg, proxies=6, proxy_steps=6, out=out, **FAST)
    assert sorted(calls) == [str(out / "proxies" / "1"), str(out / "proxies" / "4")]
    assert _table(res) == _table(res1) and res.best_weights == res1.best_weights
    calls.clear()
    more = search(cfg, proxies=7, proxy_steps=6, out=out, **FAST)  # one more proxy, the six kept
    assert calls == [str(out / "proxies" / "6")]
    assert _table(more)[:6] == _table(res1)


def test_interrupted_search_resumes_to_the_same_result(searched, tmp_path, monkeypatch):
    res1, cfg = searched
    out = tmp_path / "s"
    real = search_mod.train
    calls = []

    def dies_on_the_third(run, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(run, **kw)

    monkeypatch.setattr(search_mod, "train", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        search(cfg, proxies=6, proxy_steps=6, out=out, **FAST)
    assert sorted(p.parent.name for p in out.glob("proxies/*/proxy.json")) == ["0", "1"]
    monkeypatch.setattr(search_mod, "train", real)
    res = search(cfg, proxies=6, proxy_steps=6, out=out, **FAST)
    assert _table(res) == _table(res1) and res.best_weights == res1.best_weights


@pytest.mark.parametrize("change, key", [({"proxy_steps": 5}, "proxy_steps"), ({"concentration": 2.0}, "concentration"),
                                         ({"seed": 3}, "seed")])
def test_a_different_search_in_the_same_folder_is_refused(searched, change, key):
    res, cfg = searched
    args = {"proxies": 6, "proxy_steps": 6, "out": res.out, **FAST, **change}
    # only what was changed is named (not the proxies' config keys derived from it)
    with pytest.raises(ValueError, match=rf"^out: .*different search \(changed: {key}\);"):
        search(cfg, **args)


def test_a_changed_config_in_the_same_folder_is_refused(searched):
    res, cfg = searched
    other = {**cfg, "train": {**cfg["train"], "lr": 0.02}}
    with pytest.raises(ValueError, match=r"^out: .*changed: config\.train\.lr"):
        search(other, proxies=6, proxy_steps=6, out=res.out, **FAST)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    ({"proxies": 3}, r"^proxies must be >= max\(4, domains \+ 1\) = 4"),
    ({"proxy_steps": 0}, r"^proxy_steps must be >= 1 and <= train.steps \(48\), got 0"),
    ({"proxy_steps": 49}, r"^proxy_steps must be >= 1 and <= train.steps \(48\), got 49"),
    ({"concentration": 0.0}, r"^concentration must be a finite number > 0"),
    ({"concentration": -1.0}, r"^concentration must be a finite number > 0"),
    ({"top_k": 11, "candidates": 10}, r"^top_k must be <= candidates \(10\), got 11"),
    ({"jobs": 0}, r"^jobs must be >= 1, got 0"),
    ({"threads": 0}, r"^threads must be >= 1, got 0"),
])
def test_bad_arguments(data_dir, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search(_config(data_dir, tmp_path), progress=False, **kwargs)
    assert not (tmp_path / "search").exists()


def test_more_domains_need_more_proxies(data_dir, tmp_path):
    cfg = _config(data_dir, tmp_path)
    cfg["data"]["domains"] = {f"{n}{k}": {"token_file": str(data_dir / f"{n}.tokens")} for n in DOMAINS for k in (1, 2)}
    with pytest.raises(ValueError, match=r"^proxies must be >= max\(4, domains \+ 1\) = 7 for 6 domains.*got 6"):
        search(cfg, proxies=6, progress=False)


def test_bad_cfg_type():
    with pytest.raises(TypeError, match="cfg must be a RunConfig"):
        search(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the fit
_OPT = {"a": np.array([0.6, 0.3, 0.1]), "b": np.array([0.2, 0.2, 0.6])}
_CURV = {"a": np.diag([2.0, 1.0, 3.0]), "b": np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 2.0]])}


def quadratic_loss_ref(W: np.ndarray, target: str) -> np.ndarray:
    """True dev loss ``[n]`` of mixtures ``W [n, 3]``: 1 + (w - w*)^T A (w - w*)."""
    D = W - _OPT[target]
    return 1.0 + np.einsum("ni,ij,nj->n", D, _CURV[target], D)


def simplex_argmin_ref(targets: list[str], step: int = 200) -> tuple[np.ndarray, float]:
    """Brute force over the simplex grid of spacing 1/step: the mixture ``[3]`` with the least mean true loss."""
    i, j = np.meshgrid(np.arange(step + 1), np.arange(step + 1), indexing="ij")
    keep = i + j <= step
    W = np.stack([i[keep], j[keep], step - i[keep] - j[keep]], axis=1) / step
    loss = np.mean([quadratic_loss_ref(W, t) for t in targets], axis=0)
    return W[int(np.argmin(loss))], float(loss.min())


def _synthetic(n: int, seed: int = 7) -> list[dict]:
    W = np.random.default_rng(seed).dirichlet(np.ones(3), n)
    return [{"weights": list(w), "dev_loss": {t: float(quadratic_loss_ref(w[None], t)[0]) for t in _OPT}} for w in W]


@pytest.mark.parametrize("targets", [["a", "b"], ["a"], ["b"]])
def test_fit_search_recovers_the_best_mixture_of_a_quadratic(targets):
    rows = _synthetic(64)
    got = fit_search(rows, ["x", "y", "z"], targets, seed=0, candidates=20_000, top_k=50)
    best = np.asarray(got["best_weights"])
    ref_w, ref_loss = simplex_argmin_ref(targets)
    true_at_best = float(np.mean([quadratic_loss_ref(best[None], t)[0] for t in targets]))
    spread = float(np.ptp([np.mean([r["dev_loss"][t] for t in targets]) for r in rows]))
    assert true_at_best - ref_loss < 0.02 * spread, (best, ref_w)  # within 2% of the proxies' loss range
    assert np.abs(best - ref_w).sum() < 0.2, (best, ref_w)
    assert got["fit"]["targets"] == targets and set(got["fit"]["r2"]) == set(targets)
    assert all(got["fit"]["r2"][t] > 0.9 and got["fit"]["spearman"][t] > 0.9 for t in targets)
    assert got == fit_search(rows, ["x", "y", "z"], targets, seed=0, candidates=20_000, top_k=50)  # deterministic


def test_fit_search_subset_differs_from_the_whole():
    rows = _synthetic(48)
    a = fit_search(rows, ["x", "y", "z"], ["a"], candidates=5000, top_k=20)["best_weights"]
    b = fit_search(rows, ["x", "y", "z"], ["b"], candidates=5000, top_k=20)["best_weights"]
    assert np.abs(np.subtract(a, b)).sum() > 0.4  # the two targets want different mixtures


def test_fit_search_prior_zero_keeps_a_domain_out():
    got = fit_search(_synthetic(24), ["x", "y", "z"], ["a"], prior=[0.5, 0.5, 0.0], candidates=2000, top_k=10)
    assert got["best_weights"][2] == 0.0 and sum(got["best_weights"]) == pytest.approx(1.0)


@pytest.mark.parametrize("change, match", [
    ({"proxies": 3}, r"^proxies: need at least max\(4, domains \+ 1\) = 4"),
    ({"targets": ["c"]}, r"^targets: proxies\[0\] has no dev loss of target 'c' \(it has: a, b\)"),
    ({"targets": []}, r"^targets must name at least one target"),
    ({"targets": "a"}, r"^targets must be a list"),
    ({"top_k": 30, "candidates": 20}, r"^top_k must be <= candidates \(20\), got 30"),
    ({"domains": ["x", "y"]}, r"^proxies\[0\]\['weights'\] has 3 entries but there are 2 domains"),
    ({"prior": [1.0, 1.0]}, r"^prior has 2 entries but there are 3 domains"),
    ({"concentration": 0}, r"^concentration must be a finite number > 0"),
])
def test_fit_search_bad_input(change, match):
    args = {"proxies": _synthetic(8), "domains": ["x", "y", "z"], "targets": ["a"], "candidates": 100, "top_k": 10}
    if "proxies" in change:
        change = {"proxies": args["proxies"][: change["proxies"]]}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fit_search(**args)


def test_fit_search_non_finite_loss():
    rows = _synthetic(8)
    rows[2]["dev_loss"]["a"] = float("nan")
    with pytest.raises(ValueError, match=r"^proxies\[2\]\['dev_loss'\] is not finite"):
        fit_search(rows, ["x", "y", "z"], ["a"], candidates=100, top_k=10)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_search_then_run(data_dir, tmp_path, capsys, monkeypatch):
    # a config as users write it: data paths relative to its own folder, run from that folder; the static.yaml the
    # search writes must then run from anywhere
    (tmp_path / "data").mkdir()
    for f in data_dir.iterdir():
        shutil.copy(f, tmp_path / "data" / f.name)
    cfg = _config(Path("data"), Path("run"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    rc = main(["search", "config.yaml", "--proxies", "5", "--proxy-steps", "4", "--threads", "1", "--seed", "2",
               "--no-progress"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = capsys.readouterr().out
    assert rc == 0, out
    folder = (tmp_path / "run" / "search").resolve()
    doc = json.loads((folder / "search.json").read_text())
    assert doc["settings"]["seed"] == 2 and len(doc["proxies"]) == 5
    for d, w in zip(DOMAINS, doc["best_weights"]):
        assert f"  {d}  {w:.4f}" in out
    assert "x the configured run's tokens" in out and f"{20 / 48:.2f} x" in out
    assert str(folder / "static.yaml") in out and "R^2" in out and "Spearman" in out
    assert main(["run", str(folder / "static.yaml"), "--no-progress"]) == 0
    ev = json.loads((folder / "static_run" / "eval.json").read_text())
    assert ev["solver"] == "static" and ev["steps"] == 48


def test_cli_errors(data_dir, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(data_dir, tmp_path / "run")))
    assert main(["search", str(path), "--jobs", "0"]) == 2
    assert "tikmix search: error: jobs must be >= 1, got 0" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "tikmix search: config error: config: config file not found" in capsys.readouterr().err


def test_refused_under_a_launcher(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"^WORLD_SIZE > 1: tikmix search trains every proxy in one process"):
        search(_config(data_dir, tmp_path), progress=False)
