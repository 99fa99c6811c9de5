"""Data sources of ``tikmix run``: the configured domains and targets as map-style datasets of token rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig, TextFolderSource, TokenFileSource
from tikmix._distributed import barrier

__all__ = ["open_sources", "split_targets"]


def _open(cfg: RunConfig, section: str, name: str, src: Any, rank: int) -> Any:
    """One source as a dataset yielding ``seq_len + 1`` tokens per row (inputs and shifted targets)."""
    from tikmix.data import TokenFileDataset, build_token_file_from_texts

    dtype = None
    if isinstance(src, TokenFileSource):
        path, dtype = Path(src.token_file), src.dtype
    elif isinstance(src, TextFolderSource):
        # Tokenised once, by rank 0, next to the run's outputs; names are restricted to safe file names.
        path = cfg.out_dir / "data" / f"{section}_{name}.tokens"
        if rank == 0 and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            build_token_file_from_texts(src.text_folder, path, pattern=src.pattern)
        barrier()
    else:  # pragma: no cover - the schema admits only the kinds above
        raise TypeError(f"unknown source type {type(src).__name__}")
    try:
        return TokenFileDataset(path, cfg.data.seq_len, with_targets=True, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"data.{section}.{name}", str(exc)) from None


def open_sources(cfg: RunConfig, section: str, rank: int = 0) -> dict[str, Any]:
    """``section`` (``"domains"`` or ``"targets"``) as name -> dataset, in config order."""
    return {name: _open(cfg, section, name, src, rank) for name, src in getattr(cfg.data, section).items()}


def _stack(ds: Any, idx: range) -> torch.Tensor:
    return torch.stack([ds[i] for i in idx])


def split_targets(cfg: RunConfig, targets: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each target's first half (influence, "dev") and second half (evaluation, "test"), at most ``max_sequences``.

    A target of one sequence is used for both.
    """
    dev, test = {}, {}
    for name, ds in targets.items():
        cap = cfg.data.targets[name].max_sequences
        n = min(len(ds), cap) if cap is not None else len(ds)
        half = max(1, (n + 1) // 2)
        dev[name] = _stack(ds, range(0, half))
        test[name] = _stack(ds, range(half, n)) if n > half else dev[name]
    return dev, test
