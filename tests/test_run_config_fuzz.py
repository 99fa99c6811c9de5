"""Fuzz of the ``tikmix run`` config: mutated valid configs end in a valid config or a ConfigError naming a key.

Never a traceback of another kind, never a partially built run: the property holds for any value at any key
(wrong types, huge or negative numbers, NaN, unknown keys, missing keys). The explicit table of known-bad
configs lives in test_cli_run.py.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tikmix.data import write_token_file
from tikmix.run import ConfigError, RunConfig, validate_config

TOP_LEVEL = set(RunConfig.model_fields) | {"config"}


def _valid(root: Path) -> dict:
    rng = np.random.default_rng(0)
    for name in ("web", "code", "qa"):
        write_token_file(root / f"{name}.tokens", rng.integers(0, 300, size=4000), vocab_size=300)
    (root / "text").mkdir()
    (root / "text" / "a.txt").write_text("some text\n" * 50)
    return {
        "out": str(root / "out"),
        "seed": 1,
        "device": "cpu",
        "data": {
            "seq_len": 16,
            "domains": {"web": {"token_file": "web.tokens"}, "code": {"token_file": "code.tokens"},
                        "prose": {"text_folder": "text"}},
            "targets": {"qa": {"token_file": "qa.tokens", "max_sequences": 20}},
            "initial_weights": [0.5, 0.25, 0.25],
            "vocab_size": 300,
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "dropout": 0.1},
        "train": {"steps": 40, "batch_size": 8, "lr": 0.01, "warmup": 2, "min_lr_ratio": 0.1, "weight_decay": 0.01,
                  "grad_clip": 1.0, "eval_every": 10, "checkpoint_every": 20},
        "stages": {"unit": "steps", "boundaries": [10, 20]},
        "solver": {"name": "direct", "options": {"max_shift": 0.5, "min_weight": 0.05}},
        "influence": {"k": 64, "samples_per_domain": 8, "batch_size": 8, "target_samples": 8,
                      "preconditioner": "identity", "n_bootstrap": 10, "damping": 0.1, "params": ["blocks.*"]},
    }


def _paths(node, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cfg = _valid(root)
    validate_config(cfg, root)  # the starting point is valid
    return root, cfg


WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2),
    st.text(max_size=6), st.sampled_from(["cuda", "cuda:7", "cpu:0", "../x", "a..b", "", "tokens", "regression",
                                          "adam", "gauss_newton", "web.tokens", "text", "uint8", "**/*"]),
    st.lists(st.integers(-3, 50), max_size=4), st.lists(st.floats(-1, 2), max_size=4),
    st.dictionaries(st.sampled_from(["web", "code", "x", "token_file", "max_shift", "min_weight", "regression"]),
                    st.one_of(st.integers(-2, 3), st.floats(-1, 2), st.text(max_size=3)), max_size=3),
)


@st.composite
def mutations(draw, cfg):
    cfg = copy.deepcopy(cfg)
    paths = _paths(cfg)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = cfg
        try:
            for part in path[:-1]:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced a parent
        if not isinstance(parent, (dict, list)) or (isinstance(parent, list) and (not isinstance(path[-1], int)
                                                                              or path[-1] >= len(parent))):
            continue
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "replace" or isinstance(parent, list):
            parent[path[-1]] = draw(WEIRD)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.sampled_from(["extra", "Steps", "token_file", "pattern", "k"]))] = draw(WEIRD)
    return cfg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_configs_are_valid_or_name_the_key(base, data):
    root, valid = base
    cfg = data.draw(mutations(valid))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checked = validate_config(cfg, root)
    except ConfigError as exc:
        assert str(exc).startswith(f"{exc.key}: ") and len(str(exc)) > len(exc.key) + 2
        assert exc.key.split(".")[0].split("[")[0] in TOP_LEVEL or "unknown key" in str(exc), exc.key
        assert "Traceback" not in str(exc)
    else:
        assert isinstance(checked, RunConfig)
        # a valid result validates again from its own dump (defaults filled, paths absolute)
        assert validate_config(checked.model_dump(mode="json")) == checked
    assert not (root / "out").exists()  # validation builds and writes nothing
