"""Optional dependencies: the one place that imports a package some features need and the core does not.

``pip install tikmix`` installs the core (torch, numpy, scipy); each feature below names the extra that brings its
package, and ``pip install 'tikmix[all]'`` installs every one:

==============  ===========================  ==================================================
extra           packages                     needed by
==============  ===========================  ==================================================
``regression``  lightgbm                     ``solve_regression(model="lightgbm")`` (TiKMiX-M)
``plots``       matplotlib                   ``tikmix report --plots``, the demo's figures
``run``         pyyaml, pydantic             ``tikmix run CONFIG.yaml``
``progress``    tqdm                         progress bars (skipped quietly unless asked for)
``data``        pyarrow, tiktoken, ...       parquet sources, tiktoken tokenizers, TensorBoard
``hf``          transformers, ...            :mod:`tikmix.integrations.hf`
``lightning``   lightning                    :mod:`tikmix.integrations.lightning`
==============  ===========================  ==================================================
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Optional

__all__ = ["require", "optional", "progress_bar", "pyplot"]


def _missing(exc: ImportError, module: str) -> bool:
    """True when ``exc`` says ``module`` itself (or its top-level package) is not installed, not that something it
    imports is broken."""
    top = module.split(".")[0]
    return isinstance(exc, ModuleNotFoundError) and exc.name in (module, top)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; if it is not installed, raise an ImportError that names the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not _missing(exc, module):
            raise
        raise ImportError(
            f"{feature} needs the optional package '{module.split('.')[0]}', which is not installed: "
            f"pip install 'tikmix[{extra}]'  (or 'tikmix[all]' for every optional feature)"
        ) from exc


def optional(module: str) -> Optional[ModuleType]:
    """``module`` if it is installed, else None (for features that are skipped quietly without it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not _missing(exc, module):
            raise
        return None


class _NoBar:
    """Stands in for a tqdm bar when none is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: Optional[bool], feature: str, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``) for ``feature``: ``progress=True`` needs tqdm (ImportError naming the extra
    otherwise); ``None`` shows one when tqdm is installed and the output is a terminal; ``False`` shows none."""
    if progress is False:
        return _NoBar()
    if progress is None:
        auto = optional("tqdm.auto")
        return _NoBar() if auto is None else auto.tqdm(disable=None, **tqdm_kwargs)
    return require("tqdm.auto", "progress", f"{feature} with progress=True").tqdm(disable=False, **tqdm_kwargs)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (plots are written to PNG files, never shown)."""
    matplotlib = require("matplotlib", "plots", "plotting")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
