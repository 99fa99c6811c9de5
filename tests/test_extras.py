"""Optional dependencies: a missing package gives an ImportError naming the extra that installs it; the core
imports and runs without any of them."""
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tikmix import _extras

ROOT = Path(__file__).resolve().parents[1]


def _missing(monkeypatch, *names):
    """Make ``import NAME`` fail as if the package were not installed (None in sys.modules)."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    _missing(monkeypatch, "lightgbm")
    with pytest.raises(ImportError, match=r"TiKMiX-M needs the optional package 'lightgbm'.*pip install 'tikmix\[regression\]'"):
        _extras.require("lightgbm", "regression", "TiKMiX-M")
    assert _extras.optional("lightgbm") is None


def test_require_returns_the_module():
    assert _extras.require("numpy", "core", "arrays") is np
    assert _extras.optional("numpy") is np


def test_a_broken_dependency_inside_is_not_blamed_on_the_extra(tmp_path, monkeypatch):
    (tmp_path / "tikmix_fake_pkg.py").write_text("import tikmix_no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="tikmix_no_such_module_xyz") as info:
        _extras.require("tikmix_fake_pkg", "plots", "x")
    assert "tikmix[" not in str(info.value)
    with pytest.raises(ModuleNotFoundError):
        _extras.optional("tikmix_fake_pkg")


def test_progress_bar(monkeypatch):
    assert isinstance(_extras.progress_bar(False, "x", total=3), _extras._NoBar)
    _missing(monkeypatch, "tqdm")
    bar = _extras.progress_bar(None, "x", total=3)  # auto: no tqdm, no bar, no error
    bar.update(1), bar.set_description("d"), bar.set_postfix(a=1), bar.close()
    with pytest.raises(ImportError, match=r"pip install 'tikmix\[progress\]'"):
        _extras.progress_bar(True, "x", total=3)


def test_features_name_their_extra(monkeypatch, tmp_path):
    from tikmix.solvers import solve_regression

    _missing(monkeypatch, "lightgbm", "matplotlib", "yaml")
    with pytest.raises(ImportError, match=r"tikmix\[regression\]"):
        solve_regression(lambda W: W[:, 0], np.full(3, 1 / 3), n_candidates=40, rounds=0, top_k=4,
                         samples_per_round=8)
    from tikmix._extras import pyplot

    with pytest.raises(ImportError, match=r"tikmix\[plots\]"):
        pyplot()
    from tikmix.run.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: x\n")
    with pytest.raises(ImportError, match=r"tikmix\[run\]"):
        load_config(cfg)


def test_every_named_extra_exists_in_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set()
    for path in (ROOT / "python" / "tikmix").rglob("*.py"):
        named |= set(re.findall(r"""require\(\s*"[\w.]+",\s*"(\w+)""", path.read_text()))
    assert named and named <= set(extras), named - set(extras)
    everything = " ".join(extras["all"])
    for extra in named | {"hf", "lightning"}:
        assert extra in everything, f"tikmix[all] leaves out {extra}"
    assert re.search(r"tikmix\[(\w+,)*all(,\w+)*\]", " ".join(extras["test"]))
    assert '".[all,test]"' in (ROOT / "scripts" / "install.sh").read_text()


def test_core_runs_without_optional_packages():
    """`import tikmix`, TiKMiX-D, the sampler and Group Influence run with every optional package missing."""
    code = textwrap.dedent(
        """
        import sys
        for name in ("lightgbm", "matplotlib", "yaml", "tqdm", "pydantic", "transformers", "lightning",
                     "pyarrow", "tiktoken", "tokenizers", "tensorboard"):
            sys.modules[name] = None
        import numpy as np, torch
        import tikmix
        res = tikmix.solve_direct(np.array([[1.0, 0.2, 0.5], [0.1, 1.0, 0.3]]))
        assert res.success
        s = tikmix.MixtureSampler([10, 10, 10], [0.2, 0.3, 0.5], batch_size=4, seed=0)
        assert len(list(zip(range(8), iter(s)))) == 8
        model = torch.nn.Linear(3, 1)
        loss = lambda m, b: ((m(b[0]).squeeze(-1) - b[1]) ** 2)
        batch = lambda n: (torch.randn(n, 3), torch.randn(n))
        r = tikmix.GroupInfluence(model, loss, k=None, n_bootstrap=0).compute(
            {"a": [batch(4)], "b": [batch(4)]}, {"t": [batch(4)]})
        assert r.S.shape == (1, 2)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
