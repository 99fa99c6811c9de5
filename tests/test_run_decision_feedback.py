"""``tikmix run`` with ``solver.decision: {safe: 0.0, trust_region: true}`` end to end on a tiny config: the records,
the final feedback, the report's feedback table and plot; bad decision options name the config key."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demo_testing import DEMO_DOMAINS, write_demo_domains
from tikmix.data import write_token_file
from tikmix.report import format_tables
from tikmix.run import train, validate_config

SEQ = 16
TARGETS = ("sums", "lookup")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feedbackdata")
    corpus = write_demo_domains(root, seq_len=SEQ, train_sequences=64)
    for t in TARGETS:
        write_token_file(root / f"{t}.dev.tokens", corpus.target_dev[t].reshape(-1), vocab_size=256)
        write_token_file(root / f"{t}.test.tokens", corpus.target_test[t].reshape(-1), vocab_size=256)
    return root


def _raw(data_dir: Path, out: Path, decision) -> dict:
    return {
        "out": str(out),
        "data": {
            "seq_len": SEQ,
            "domains": {n: {"token_file": str(data_dir / f"{n}.tokens")} for n in DEMO_DOMAINS},
            "targets": {t: {"dev": {"token_file": str(data_dir / f"{t}.dev.tokens")},
                            "test": {"token_file": str(data_dir / f"{t}.test.tokens")}} for t in TARGETS},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 16, "batch_size": 8, "lr": 0.01, "warmup": 2, "eval_every": 4, "checkpoint_every": 100},
        "stages": {"boundaries": [4, 8, 12]},
        "influence": {"k": 32, "samples_per_domain": 8, "batch_size": 8, "n_bootstrap": 10},
        "solver": {"name": "direct", "decision": decision},
    }


def test_run_with_safe_and_trust_region_records_feedback(data_dir, tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    train(validate_config(_raw(data_dir, out, {"objective": "robust", "safe": 0.0, "trust_region": True})),
          progress=False, log=lines.append)
    h = json.loads((out / "history.json").read_text())
    stages = h["stages"]
    assert [s["step"] for s in stages] == [4, 8, 12] and stages[0]["feedback"] is None
    for s in stages:
        d = s["decision"]
        assert d["options"]["safe"] == 0.0 and d["options"]["trust_region"]["grow"] == 1.5
        assert d["safe"]["basis"] == "worst" and min(d["safe"]["predicted_after"]) >= -1e-12
        assert 0.05 <= d["trust_region"]["max_shift"] <= 1.0
        assert np.abs(np.asarray(d["safe"]["weights_solver"]) - s["weights_prior"]).sum() \
            <= d["trust_region"]["max_shift"] + 1e-6
        assert len(s["predicted_change"]) == len(s["predicted_change_worst"]) == 2 and len(s["target_loss"]) == 2
    for s in stages[1:]:
        assert s["feedback"]["from_step"] < s["feedback"]["to_step"] == s["step"]
    final = h["final"]["feedback"]
    assert (final["from_step"], final["to_step"]) == (12, 16) and len(final["realised_change"]) == 2
    assert h["feedback_summary"]["stages"] == 3
    assert (out / "feedback.png").is_file()
    table = format_tables(h)
    assert "Stage feedback" in table and "12->16" in table
    assert any("Stage feedback" in line for line in lines)
    # the console and the report say what shaped each mixture: the safe step's share and the step limit
    assert "Decision: the share of the solver's move taken" in table
    for s in stages:
        d = s["decision"]
        head = "mixture kept" if d["safe"]["t"] <= 0 else "new mixture"
        assert any(line.startswith(f"[tikmix] step {s['step']}: {head} ") for line in lines)
        assert any(line == f"[tikmix]   step limit (L1) {d['trust_region']['max_shift']:.2f}: "
                           f"{d['trust_region']['reason']}" for line in lines)
        if d["safe"]["t"] < 1:
            assert any(line.startswith(f"[tikmix]   safe step t={d['safe']['t']:.2f} ") for line in lines)


def test_run_with_adaptive_sampling_prints_and_reports_the_rows(data_dir, tmp_path):
    out = tmp_path / "adaptive"
    raw = _raw(data_dir, out, "robust")
    raw["influence"]["adaptive"] = {"tolerance": 0.5, "min_samples": 4, "round_samples": 4}
    raw["influence"]["batch_size"] = 4
    lines: list[str] = []
    train(validate_config(raw), progress=False, log=lines.append)
    h = json.loads((out / "history.json").read_text())
    table = format_tables(h)
    assert "Adaptive sampling: rows taken / the draw" in table
    for s in h["stages"]:
        sampling = s["influence_sampling"]
        rows = sum(e["rows"] for e in sampling["domains"].values())
        ceiling = sum(e["ceiling"] for e in sampling["domains"].values())
        assert any(line.startswith("[tikmix]   adaptive sampling, ") and f"domains {rows}/{ceiling} rows" in line
                   for line in lines)
        for name, e in sampling["targets"].items():
            assert f"{e['rows']}/{e['ceiling']} {'S' if e['stop'] == 'stable' else 'C'}" in table
    # the stage feedback is recorded with adaptive sampling (on the rows both boundaries measured)
    assert all(s["feedback"] is not None for s in h["stages"][1:]) and h["final"]["feedback"] is not None


@pytest.mark.parametrize("decision,match", [
    ({"safe": -1.0}, r"solver\.decision\.safe: must be off \(None; null in YAML\) or a finite tolerance >= 0, got -1"),
    ({"saef": 0.0}, r"solver\.decision\.saef: is not a decision option \(did you mean safe\?\); expected objective"),
    ({"trust_region": {"speed": 2.0}}, r"solver\.decision\.trust_region\.speed: is not an option; expected"),
    ({"trust_region": {"grwo": 2}}, r"solver\.decision\.trust_region\.grwo: is not an option \(did you mean grow\?\)"),
    ({"trust_region": {"min": 0.5, "max": 0.2}}, r"solver\.decision\.trust_region: needs 0 < min <= max"),
    ({"objective": "robst"}, r"solver\.decision\.objective: must be one of .*\(did you mean robust\?\)"),
])
def test_bad_decision_options_name_the_config_key(data_dir, tmp_path, decision, match):
    with pytest.raises(ValueError, match=match):
        validate_config(_raw(data_dir, tmp_path / "bad", decision))
