"""Data sources of ``tikmix run``: the configured domains and targets as map-style datasets of token rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, DevTestSource, JsonlSource, ParquetSource, RunConfig, TextFolderSource, TokenFileSource
from tikmix._distributed import barrier

__all__ = ["open_sources", "split_targets", "source_vocab"]


def _open(cfg: RunConfig, section: str, name: str, src: Any, rank: int, tokenizer: Any = None) -> Any:
    """One source as a dataset yielding ``seq_len + 1`` tokens per row (inputs and shifted targets).

    Text sources (text folders, jsonl, parquet) are tokenised once, by rank 0, with the run's tokenizer into
    ``<out>/data/<section>_<name>.<tokenizer fingerprint>.tokens`` (names are restricted to safe file names); a
    later run with the same tokenizer reuses the file.
    """
    from tikmix.data import TokenFileDataset
    from tikmix.data.text_sources import tokenize_to_token_file
    from tikmix.data.tokenizers import load_tokenizer

    dtype = None
    key = f"data.{section}.{name}"
    if isinstance(src, TokenFileSource):
        path, dtype = Path(src.token_file), src.dtype
    elif isinstance(src, (TextFolderSource, JsonlSource, ParquetSource)):
        tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        if isinstance(src, TextFolderSource):
            origin, fmt, field, pattern = src.text_folder, "text_folder", "text", src.pattern
        elif isinstance(src, JsonlSource):
            origin, fmt, field, pattern = src.jsonl, "jsonl", src.field, ""
        else:
            origin, fmt, field, pattern = src.parquet, "parquet", src.field, ""
        path = cfg.out_dir / "data" / f"{section}_{name}.{tok.fingerprint}.tokens"
        if rank == 0 and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tokenize_to_token_file([origin], path, tok, fmt=fmt, field=field, pattern=pattern or "**/*.txt",
                                       progress=False)
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(f"{key}.{fmt}", str(exc)) from None
        barrier()
    else:  # pragma: no cover - the schema admits only the kinds above
        raise TypeError(f"unknown source type {type(src).__name__}")
    try:
        return TokenFileDataset(path, cfg.data.seq_len, with_targets=True, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ConfigError(key, str(exc)) from None


def source_vocab(cfg: RunConfig, section: str, name: str, src: Any, tokenizer: Any) -> int:
    """The vocabulary size a source needs (its largest token id + 1, or its header's vocab_size).

    Opens token files (a file that does not open is a :class:`ConfigError` naming the source) and reads
    their headers; the ids themselves are scanned only for a file without a vocab_size in its header, or one
    whose header claims more than ``data.vocab_size``. A text source needs the run's tokenizer's vocabulary.
    """
    from tikmix.data import TokenFileDataset

    if not isinstance(src, TokenFileSource):
        return int(tokenizer.vocab_size)
    try:
        ds = TokenFileDataset(src.token_file, cfg.data.seq_len, with_targets=True, dtype=src.dtype)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"data.{section}.{name}", str(exc)) from None
    declared = cfg.data.vocab_size
    if ds.vocab_size is not None and (declared is None or ds.vocab_size <= declared):
        return int(ds.vocab_size)
    return int(ds.tokens.max()) + 1


def open_sources(cfg: RunConfig, section: str, rank: int = 0, tokenizer: Any = None) -> dict[str, Any]:
    """``section`` (``"domains"`` or ``"targets"``) as name -> dataset, in config order; a target given as
    ``{dev, test}`` becomes a ``(dev dataset, test dataset)`` pair."""
    out: dict[str, Any] = {}
    for name, src in getattr(cfg.data, section).items():
        if isinstance(src, DevTestSource):
            out[name] = (_open(cfg, section, f"{name}.dev", src.dev, rank, tokenizer),
                         _open(cfg, section, f"{name}.test", src.test, rank, tokenizer))
        else:
            out[name] = _open(cfg, section, name, src, rank, tokenizer)
    return out


def _stack(ds: Any, idx: range) -> torch.Tensor:
    return torch.stack([ds[i] for i in idx])


def _cap(ds: Any, src: Any) -> int:
    cap = getattr(src, "max_sequences", None)
    return min(len(ds), cap) if cap is not None else len(ds)


def split_targets(
    cfg: RunConfig, targets: dict[str, Any], warn: Any = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each target's dev rows (influence) and test rows (evaluation), at most ``max_sequences`` per source.

    A target given as ``{dev, test}`` uses its two sources; a test row identical to a dev row raises
    :class:`ConfigError` (rows compared by hash). A target given as one source falls back to its first half
    by position (dev) and second half (test) -- ``warn`` (a callable taking a message) is told so; a target
    of one sequence is used for both.
    """
    dev, test = {}, {}
    for name, ds in targets.items():
        src = cfg.data.targets[name]
        if isinstance(src, DevTestSource):
            d_ds, t_ds = ds
            dev[name] = _stack(d_ds, range(_cap(d_ds, src.dev)))
            test[name] = _stack(t_ds, range(_cap(t_ds, src.test)))
            seen = {row.tobytes() for row in dev[name].numpy()}
            shared = sum(row.tobytes() in seen for row in test[name].numpy())
            if shared:
                raise ConfigError(
                    f"data.targets.{name}",
                    f"dev and test share {shared} identical sequence(s) (of {test[name].shape[0]} test sequences); "
                    "the reported loss would include sequences the mixture was chosen for: remove the overlap",
                )
            continue
        n = _cap(ds, src)
        half = max(1, (n + 1) // 2)
        dev[name] = _stack(ds, range(0, half))
        test[name] = _stack(ds, range(half, n)) if n > half else dev[name]
        if warn is not None:
            warn(f"[tikmix] warning: target {name!r} has one source: its first {half} sequences (by position) measure "
                 f"influence and the other {n - half if n > half else half} are evaluated; give data.targets.{name} "
                 "as {dev: ..., test: ...} to keep them apart")
    return dev, test
