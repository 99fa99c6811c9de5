"""The run package in layers: no import circle, the data read once by ``load_config`` + ``prepare``, and errors that
name the key they are about."""

from __future__ import annotations

import ast
import collections
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tikmix.cli import main
from tikmix.data import write_token_file
from tikmix.run import ConfigError, PreparedRun, load_config, parse_config, prepare, validate_config

from text_testing import write_jsonl

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "tikmix"


# ------------------------------------------------------------------------------------------ import graph
def module_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (anywhere: top level or inside functions; relative
    imports resolved; ``from pkg import sub`` counts as importing ``pkg.sub``; TYPE_CHECKING blocks left out)."""
    package = root.name
    files: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, (path, is_pkg) in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for stmt in node.body for n in ast.walk(stmt)}
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                target = known(name)
                if target is not None and target != mod and target.split(".")[0] == package:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_import_graph_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    assert find_cycle(module_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import x\n")
    assert find_cycle(module_graph(pkg)) is None


def test_the_package_has_no_import_circle():
    graph = module_graph(PACKAGE)
    assert "tikmix.run.schema" in graph and "tikmix.run.prepare" in graph
    assert find_cycle(graph) is None, find_cycle(graph)
    # the schema is declarations: it reaches no other layer of the run package
    assert not {m for m in graph["tikmix.run.schema"] if m.startswith("tikmix.run.")}


def test_import_run_loads_nothing_from_the_demo():
    code = "import sys, tikmix.run; assert not [m for m in sys.modules if m.startswith('tikmix.demo')]"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ data read once
SEQ = 8


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("web", "code", "qa_dev", "qa_test"):
        write_token_file(tmp_path / f"{name}.tokens", rng.integers(0, 200, size=40 * (SEQ + 1)), vocab_size=200)
    (tmp_path / "prose").mkdir()
    (tmp_path / "prose" / "a.txt").write_text("the quick brown fox " * 40)
    write_jsonl(tmp_path / "docs.jsonl")
    return tmp_path


def _config(root: Path, **over) -> dict:
    cfg = {
        "out": str(root / "out"),
        "data": {
            "seq_len": SEQ,
            "domains": {"web": {"token_file": "web.tokens", "max_sequences": 5}, "code": {"token_file": "code.tokens"},
                        "prose": {"text_folder": "prose"}, "docs": {"jsonl": "docs.jsonl"}},
            "targets": {"qa": {"dev": {"token_file": "qa_dev.tokens"}, "test": {"token_file": "qa_test.tokens"}}},
        },
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "train": {"steps": 4, "batch_size": 4},
        "stages": {"boundaries": [2]},
        "influence": {"k": 16, "samples_per_domain": 4, "batch_size": 4, "n_bootstrap": 0},
    }
    cfg.update(over)
    return cfg


def _write(root: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_load_config_and_prepare_open_each_source_once_and_load_the_tokenizer_once(files, monkeypatch):
    import tikmix.data.text_sources as text_sources
    import tikmix.data.token_file as token_file
    import tikmix.data.tokenizers as tokenizers

    opened: collections.Counter = collections.Counter()
    loads = []
    header, texts, load = token_file.read_token_file_header, text_sources.iter_texts, tokenizers.load_tokenizer

    def spy_header(path, *a, **k):
        opened[Path(path).resolve()] += 1
        return header(path, *a, **k)

    def spy_texts(path, *a, **k):
        opened[Path(path).resolve()] += 1
        return texts(path, *a, **k)

    def spy_load(*a, **k):
        loads.append(a)
        return load(*a, **k)

    monkeypatch.setattr(token_file, "read_token_file_header", spy_header)
    monkeypatch.setattr(text_sources, "iter_texts", spy_texts)
    monkeypatch.setattr(tokenizers, "load_tokenizer", spy_load)
    cfg = load_config(_write(files, _config(files)))
    assert not opened and not loads  # loading reads no data
    run = prepare(cfg, log=lambda *a: None)

    sources = [files / f for f in ("web.tokens", "code.tokens", "qa_dev.tokens", "qa_test.tokens", "prose",
                                   "docs.jsonl")]
    tokenized = sorted((files / "out" / "data").glob("*.tokens"))
    assert len(tokenized) == 2
    assert opened == {p.resolve(): 1 for p in [*sources, *tokenized]}
    assert len(loads) == 1

    assert [f.name for f in dataclasses.fields(PreparedRun)] == ["config", "tokenizer", "vocab_size", "domains",
                                                                 "dev", "test"]
    assert run.config is cfg and run.tokenizer.name == "bytes" and run.vocab_size == 257
    assert list(run.domains) == ["web", "code", "prose", "docs"]
    assert len(run.domains["web"]) == 5  # max_sequences
    row = run.domains["docs"][0]
    assert row.dtype == torch.int64 and row.shape == (SEQ + 1,)
    assert run.dev["qa"].shape == (44, SEQ + 1) and run.test["qa"].shape == (44, SEQ + 1)
    assert torch.equal(run.dev["qa"][0], torch.from_numpy(
        np.asarray(token_file.TokenFileDataset(files / "qa_dev.tokens", SEQ, with_targets=True)[0])))


def test_token_files_only_load_no_tokenizer(files, monkeypatch):
    cfg = _config(files)
    for name in ("prose", "docs"):
        cfg["data"]["domains"].pop(name)
    run = prepare(parse_config(cfg, files), log=lambda *a: None)
    assert run.tokenizer is None and run.vocab_size == 256  # the headers' 200, at least 256


def test_prepare_makes_the_ranks_agree_first(files, monkeypatch):
    prep = importlib.import_module("tikmix.run.prepare")  # the module (tikmix.run.prepare is also the function)
    calls = []
    monkeypatch.setattr(prep, "check_same_on_all_ranks", lambda value, what: calls.append((value, what)))
    cfg = parse_config(_config(files), files)
    prep.prepare(cfg, log=lambda *a: None)
    assert calls == [(cfg.comparable(), "run config")]
    assert "out" not in cfg.comparable()


def test_prepare_checks_the_vocabulary_before_anything_is_written(files):
    pytest.importorskip("transformers")
    model = {"hf": {"config": {"model_type": "gpt2", "vocab_size": 100, "n_layer": 1, "n_embd": 16, "n_head": 2,
                               "n_positions": 32}}}
    cfg = parse_config(_config(files, model=model), files)
    with pytest.raises(ConfigError, match=r"^model.hf.config.vocab_size: .*smaller than the data's \(257"):
        prepare(cfg, log=lambda *a: None)
    assert not (files / "out").exists()


# ------------------------------------------------------------------------------------------ errors name the key
def _error(root: Path, cfg: dict, capsys) -> tuple[str, str]:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, root)
    assert main(["run", str(_write(root, cfg)), "--check"]) == 2
    err = capsys.readouterr().err
    assert err == f"tikmix run: config error: {info.value}\n"
    assert "<root>" not in err
    return info.value.key, str(info.value)


def test_misspelt_section_is_unknown_before_missing(files, capsys):
    cfg = _config(files)
    cfg["trian"] = cfg.pop("train")
    key, message = _error(files, cfg, capsys)
    assert key == "trian"
    assert message.startswith("trian: unknown key trian (did you mean train?)")


def test_python_api_name_points_to_the_config_key(files, capsys):
    cfg = _config(files)
    cfg.setdefault("influence", {})["sampling"] = {"tolerance": 0.2}
    key, message = _error(files, cfg, capsys)
    assert key == "influence.sampling"
    assert "unknown key sampling (did you mean adaptive? the Python API's sampling= is adaptive" in message


def test_misspelt_source_key_is_named(files, capsys):
    cfg = _config(files)
    cfg["data"]["domains"]["docs"] = {"jsnl": "docs.jsonl"}
    key, message = _error(files, cfg, capsys)
    assert key == "data.domains.docs.jsnl"
    assert "unknown key jsnl (did you mean jsonl?)" in message


def test_json_that_is_not_a_tokenizer(files, capsys):
    (files / "tok.json").write_text(json.dumps({"foo": 1}))
    key, message = _error(files, _config(files, tokenizer="tok.json"), capsys)
    assert key == "tokenizer"
    assert "not a tokenizer.json (no `model` section)" in message
    (files / "tok.json").write_text("{not json")
    key, message = _error(files, _config(files, tokenizer="tok.json"), capsys)
    assert key == "tokenizer" and "not valid JSON" in message


def test_cross_field_error_names_its_key_without_a_config_dump(files, capsys):
    cfg = _config(files, solver={"name": "static", "weights": [1, 2, 3]}, stages={"boundaries": []})
    key, message = _error(files, cfg, capsys)
    assert key == "solver.weights"
    assert message == "solver.weights: has 3 entries but there are 4 domains (web, code, prose, docs)"


def test_unknown_hf_config_key_with_did_you_mean(files, capsys):
    pytest.importorskip("transformers")
    model = {"hf": {"config": {"model_type": "gpt2", "n_embed": 32, "n_layer": 1, "n_head": 2}}}
    key, message = _error(files, _config(files, model=model), capsys)
    assert key == "model.hf.config.n_embed"
    assert "unknown key n_embed for GPT2Config (did you mean n_embd?)" in message
    # the keys a config class knows through __init__, its defaults and its attribute_map are accepted, and so are
    # the legacy keys it converts (rope_theta into rope_parameters)
    ok = {"hf": {"config": {"model_type": "gpt2", "n_embd": 16, "num_hidden_layers": 1, "n_head": 2,
                            "n_positions": 32, "tie_word_embeddings": True}}}
    parse_config(_config(files, model=ok), files)
    llama = {"model_type": "llama", "vocab_size": 300, "hidden_size": 16, "intermediate_size": 32,
             "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32, "rope_theta": 500000.0}
    parse_config(_config(files, model={"hf": {"config": llama}}), files)
    with pytest.raises(ConfigError, match="^model.hf.config.rms_norm_epsilon: unknown key .*did you mean rms_norm_eps"):
        parse_config(_config(files, model={"hf": {"config": dict(llama, rms_norm_epsilon=1e-5)}}), files)


def test_influence_error_names_the_option_it_is_about(files):
    cfg = _config(files)
    cfg["influence"]["params"] = ["nothing.*"]
    with pytest.raises(ConfigError, match=r"^influence.params: params pattern 'nothing.\*' matches no parameter"):
        parse_config(cfg, files)


def test_compare_help_prints_one_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "95%" in out and "95%%" not in out


# ------------------------------------------------------------------------------------------ ranks agree
def _ranks_worker(rank: int, world: int, init: str, root: str) -> None:
    import torch.distributed as dist

    from dist_testing import end_worker

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    base = Path(root)
    results = {}
    for case, seed in (("same", 0), ("differ", rank)):
        cfg = parse_config(_config(base, out=str(base / f"out_{case}"), seed=seed), base)
        try:
            run = prepare(cfg, rank=rank, log=lambda *a: None)
            results[case] = f"ok {run.vocab_size}"
        except ValueError as exc:
            results[case] = f"refused: {exc}"
    (base / f"rank{rank}.json").write_text(json.dumps(results))
    end_worker()


def test_ranks_with_different_configs_are_refused_before_any_work(files):
    import torch.multiprocessing as mp

    mp.start_processes(_ranks_worker, args=(2, f"file://{files / 'rendezvous'}", str(files)), nprocs=2,
                       start_method="fork", join=True)
    for rank in range(2):
        results = json.loads((files / f"rank{rank}.json").read_text())
        assert results["same"] == "ok 257", results
        assert results["differ"].startswith("refused: ") and "run config" in results["differ"], results
        assert "seed" in results["differ"]
    assert not (files / "out_differ").exists()  # refused before anything was tokenised or written


def test_a_record_without_its_text_field_names_the_source(files):
    cfg = _config(files)
    cfg["data"]["domains"]["docs"]["field"] = "body"
    parsed = parse_config(cfg, files)  # the data is not read yet
    with pytest.raises(ConfigError, match=r"^data.domains.docs.jsonl: .*docs.jsonl:1: record has no 'body' field"):
        prepare(parsed, log=lambda *a: None)
    assert not list((files / "out" / "data").glob("domains_docs.*"))  # no partial token file is left
    with pytest.raises(ConfigError, match=r"^data.domains.docs.jsonl: .*no 'body' field"):
        validate_config(cfg, files)


@pytest.mark.parametrize("solver,key,words", [
    ({"name": "static", "weights": [1, -1, 1, 1]}, "solver.weights[1]", "greater than or equal to 0, got -1"),
    ({"name": "static", "weights": {"web": 1, "code": -2}}, "solver.weights.code", "greater than or equal to 0"),
    ({"name": "static", "weights": "unifrom"}, "solver.weights", "got 'unifrom' (did you mean uniform?)"),
    ({"name": "direct", "decision": "robst"}, "solver.decision", "got 'robst' (did you mean robust?)"),
])
def test_a_value_no_union_member_accepts_gets_one_clear_error(files, capsys, solver, key, words):
    """A value that fits no member of a union (a weight list, mapping or 'uniform'; a decision name or mapping) is
    reported once, at the member it was shaped like, without pydantic's member names in the key."""
    cfg = _config(files, solver=solver)
    if solver["name"] == "static":
        cfg.pop("stages")
    got_key, message = _error(files, cfg, capsys)
    assert got_key == key
    assert words in message
    assert "literal[" not in message and "list[" not in message and "dict[" not in message
