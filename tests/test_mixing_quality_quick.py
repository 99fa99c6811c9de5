"""benchmarks/mixing_quality.py --quick: the real-text corpus builds with held-out targets, every method is one run
of ``tikmix.run.train``, and the table comes out (a smoke test; the measured table is in docs/mixing-quality.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mixing_quality.py"


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_holds_out_target_files_and_sequences():
    mq = _load("mixing_quality_corpus")
    corpus, info = mq.build_corpus(32, 20_000, 32)
    assert set(corpus.target_test) == set(mq.TARGETS) and len(corpus.domains) >= 5
    assert set(mq.TARGETS) == {t for targets in mq.TARGET_SETS.values() for t in targets}
    targets = {r.tobytes() for t in mq.TARGETS for r in (*corpus.target_dev[t], *corpus.target_test[t])}
    for name, rows in corpus.domains.items():
        assert rows.dtype == np.uint8 and rows.shape[1] == 33
        assert not any(r.tobytes() in targets for r in rows), name
    for t in mq.TARGETS:  # dev and test come from different held-out files
        dev = {r.tobytes() for r in corpus.target_dev[t]}
        assert not any(r.tobytes() in dev for r in corpus.target_test[t])
        # nor as a run reads them (rows of seq_len + 1 tokens at a stride of seq_len)
        dev_rows = set(mq._windows(corpus.target_dev[t].reshape(-1), 32))
        assert not dev_rows & set(mq._windows(corpus.target_test[t].reshape(-1), 32))
        assert info["held_out_files"][t] >= 2


def test_quick_benchmark_prints_the_table(tmp_path, capsys, monkeypatch):
    """In this process (--jobs 1), so the one training loop can be counted: one tikmix.run.train per run."""
    import tikmix.run

    mq = _load("mixing_quality_main")
    calls = []
    real_train = tikmix.run.train

    def counted(cfg, **kwargs):
        calls.append(cfg)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(tikmix.run, "train", counted)
    assert mq.main(["--quick", "--jobs", "1", "--out", str(tmp_path), "--methods", "uniform", "tikmix-d",
                    "tikmix-m:robust"]) == 0
    # uniform once (evaluated on every target), each TiKMiX method once per target set (influence on its targets)
    assert [c.solver.name for c in calls] == ["static", "direct", "direct", "regression", "regression"]
    assert [sorted(c.data.targets) for c in calls[1:3]] == [sorted(mq.TARGET_SETS["A"]), sorted(mq.TARGET_SETS["B"])]
    assert sorted(calls[0].data.targets) == sorted(mq.TARGETS)
    assert calls[3].solver.decision == "robust"
    assert all((tmp_path / "runs" / f"{n}_seed0" / "eval.json").is_file()
               for n in ("uniform", "tikmix-d_A", "tikmix-d_B", "tikmix-m_robust_A", "tikmix-m_robust_B"))
    out = capsys.readouterr().out
    for text in ("| uniform |", "| tikmix-d |", "| tikmix-m:robust |", "vs uniform", "controller share",
                 "Target set A", "Target set B", "Goals:"):
        assert text in out, out
    runs = [json.loads(x) for x in (tmp_path / "runs_quick.jsonl").read_text().splitlines()]
    assert {(r["method"], r["set"]) for r in runs} == {("uniform", "all"), ("tikmix-d", "A"), ("tikmix-d", "B"),
                                                      ("tikmix-m:robust", "A"), ("tikmix-m:robust", "B")}
    assert len({r["tokens"] for r in runs}) == 1  # equal tokens
    assert all(set(r["dev"]) == set(r["targets"]) for r in runs)  # dev losses recorded for every run
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    again = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--report-only", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert again.returncode == 0 and "| tikmix-d |" in again.stdout
    # every run records its corpus; a run of another corpus is neither reused nor reported beside this one's
    fingerprint = mq.corpus_fingerprint(tmp_path / "corpus_quick")
    assert fingerprint and all(r["corpus"] == fingerprint for r in runs)
    other = [{**r, "corpus": "0123456789abcdef"} for r in runs if r["method"] == "uniform"]
    with (tmp_path / "runs_quick.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in other))
    calls.clear()
    assert mq.main(["--quick", "--jobs", "1", "--out", str(tmp_path), "--methods", "uniform"]) == 0
    assert calls == []  # this corpus's uniform run is reused
    assert "1 recorded runs of another corpus (or of none recorded) left out" in capsys.readouterr().out


def test_a_bad_method_option_fails_before_any_run(tmp_path, monkeypatch):
    """A method's config override is checked by the config schema in this process, before any run: the error
    names the method and the key (not a worker's traceback after the other runs)."""
    import tikmix.run

    mq = _load("mixing_quality_bad_option")
    calls = []
    monkeypatch.setattr(tikmix.run, "train", lambda cfg, **kw: calls.append(cfg))
    with pytest.raises(SystemExit, match=r"--methods 'tikmix-d:robust,influence\.mode=per_sample': influence\.mode"):
        mq.main(["--quick", "--jobs", "1", "--out", str(tmp_path), "--methods", "uniform",
                 "tikmix-d:robust,influence.mode=per_sample"])
    assert calls == [] and not (tmp_path / "runs_quick.jsonl").exists()


def test_corpus_fingerprint_follows_the_token_files(tmp_path):
    mq = _load("mixing_quality_fp")
    assert mq.corpus_fingerprint(tmp_path) is None and mq.corpus_fingerprint(tmp_path / "missing") is None
    (tmp_path / "a.tokens").write_bytes(b"\x01\x02")
    first = mq.corpus_fingerprint(tmp_path)
    (tmp_path / "a.tokens").write_bytes(b"\x01\x03")
    assert mq.corpus_fingerprint(tmp_path) != first
    (tmp_path / "a.tokens").write_bytes(b"\x01\x02")
    assert mq.corpus_fingerprint(tmp_path) == first
    rows = [{"corpus": first, "seed": 0}, {"corpus": "x", "seed": 1}, {"seed": 2}]
    assert mq._of_corpus(rows, first) == ([rows[0]], 2) and mq._of_corpus(rows, None) == (rows, 0)


def test_report_signs_the_improvement_over_uniform():
    mq = _load("mixing_quality_report")
    """The table uses tikmix's one sign: improvement = uniform loss - method loss, > 0 = better."""
    def run(method, seed, losses):
        return {"method": method, "seed": seed, "targets": ["a", "b"], "domains": ["x", "y"], "steps": 10,
                "tokens": 640, "final": {"a": float(np.mean(losses[0])), "b": float(np.mean(losses[1]))},
                "final_per_sequence": {"a": list(losses[0]), "b": list(losses[1])}, "stage_weights": [],
                "timing": {"controller_s": 1.0, "train_s": 10.0}, "wall_s": 11.0}

    base = [np.full(8, 2.0), np.full(8, 1.0)]
    better = [np.full(8, 1.8), np.full(8, 1.0)]  # target a 10% lower loss, target b unchanged
    table = mq.report([run("uniform", 0, base), run("tikmix-d", 0, better)], "load test")
    row = next(line for line in table.splitlines() if line.startswith("| tikmix-d |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1.8000 (+10.00%)" and cells[3] == "1.0000 (+0.00%)"
    assert cells[5] == "+6.67%"  # mean 1.4 vs 1.5
    lo, hi = (float(x) for x in cells[6].strip("[]").split(","))
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)  # constant improvement 0.2 / 2 targets
    assert cells[8] == "b +0.00%"  # the worst target is the least improved one


def test_method_suffix_gives_the_controllers_decision_and_solver_options():
    from tikmix.decision import Decision

    mq = _load("mixing_quality_spec")
    assert mq.method_options("") == (None, {}, {}) and mq.method_options("paper") == ("paper", {}, {})
    decision, solver, overrides = mq.method_options("robust,shrink=none,ema=0.7,alpha=4,influence.k=512")
    assert decision == {"objective": "robust", "shrink": None, "ema": 0.7} and solver == {"alpha": 4.0}
    assert overrides == {"influence.k": 512} and isinstance(overrides["influence.k"], int)
    assert Decision.from_options(decision).options()["max_shift"] == 0.3  # the rest keep robust's defaults
    assert mq.method_options("robust,shrink=ci") == ({"objective": "robust", "shrink": "ci"}, {}, {})
    with pytest.raises(ValueError, match="expected key=value"):
        mq.method_options("robust,ema")
    with pytest.raises(ValueError, match="could not convert"):
        mq.method_options("robust,gamma=high")


def test_options_are_compared_with_their_defaults_on_the_same_seeds():
    """The options table compares ``method:options`` with ``method`` on the runs both have, dev first."""
    mq = _load("mixing_quality_variants")

    def run(method, seed, test, dev, share=0.1):
        return {"kind": "run", "method": method, "set": "A", "seed": seed, "targets": ["a"], "domains": ["x"],
                "steps": 10, "tokens": 640, "final": {"a": test}, "dev": {"a": dev},
                "final_per_sequence": {"a": [test] * 4}, "stage_weights": [],
                "timing": {"controller_s": share, "train_s": 1.0}, "wall_s": 1.0}

    runs = [run("uniform", 0, 2.0, 2.0), run("uniform", 1, 2.0, 2.0),
            run("tikmix-d", 0, 1.9, 1.8), run("tikmix-d", 1, 1.9, 1.8),
            run("tikmix-d:robust,safe=0", 0, 1.8, 2.0, share=0.05)]  # seed 1 missing: compared on seed 0 only
    table = mq.report(runs, "load test")
    row = next(line for line in table.splitlines() if line.startswith("| tikmix-d:robust,safe=0 | tikmix-d |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == ["A", "0"]
    assert cells[4] == "-11.11% [-11.11, -11.11]"  # dev 1.8 -> 2.0: the option is worse where options are chosen
    assert cells[5] == "+5.26% [+5.26, +5.26]"  # test 1.9 -> 1.8: better, reported only
    assert cells[6] == "0/1" and cells[7] == "5.0% vs 10.0%"  # runs better by dev, where options are chosen
    # the interval is over the (set, seed) pairs: it holds the mean and stays within the pairs' values
    lo, hi = mq._pairs_interval([1.0, 3.0, 2.0, 2.5])
    assert 1.0 <= lo < 2.125 < hi <= 3.0
    assert mq._pairs_interval([0.5] * 3) == (0.5, 0.5)


def test_the_corpus_leaves_out_tikmix_itself():
    # tikmix's package metadata holds its README: in the corpus, every documentation edit would change the data
    mq = _load("mixing_quality_own")
    for files in mq.find_sources().values():
        for path in files:
            assert not any(part.split("-")[0] in mq.OWN_PACKAGES for part in path.parts), path
