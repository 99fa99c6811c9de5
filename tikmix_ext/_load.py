"""Loads the compiled module ``tikmix_ext._C`` exactly once (it registers ``torch.ops.tikmix``).

``TIKMIX_EXT_LIB=/path/to/_C*.so`` loads a development build instead of the installed one; two copies of
``_C`` in one process would register the op namespace twice, so only one is ever loaded.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch  # noqa: F401  (torch must be imported before _C: it provides the symbols _C links against)


def _load() -> ModuleType:
    override = os.environ.get("TIKMIX_EXT_LIB")
    if override:
        if not os.path.isfile(override):
            raise ImportError(f"tikmix_ext: TIKMIX_EXT_LIB={override!r} is not a file")
        spec = importlib.util.spec_from_file_location("tikmix_ext._C", override)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["tikmix_ext._C"] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module("tikmix_ext._C")
    except ImportError as exc:
        raise ImportError(
            "tikmix_ext: the compiled module _C is missing or broken. Build it against the installed torch with "
            "`pip install --no-build-isolation .` (see docs/install.md); a build against another torch "
            f"version fails to load. Original error: {exc}"
        ) from exc


_C = _load()
