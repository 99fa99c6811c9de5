"""Data sources of ``tikmix run``: the configured domains and targets, opened once each.

Every function here names the source by its dotted config key (``data.domains.web``, ``data.targets.qa.dev``),
known from where the source sits in the config, so a failure is a :class:`ConfigError` on that key.

* :func:`config_sources` -- every source of the config with its key, in config order;
* :func:`open_token_file` / :func:`needed_vocab` -- a token file as a dataset of ``seq_len + 1`` token rows, and the
  vocabulary its ids need (read from that same opened file);
* :func:`tokenize_source` -- a text source (text folder, jsonl, parquet) tokenised once with the run's tokenizer
  into ``<out>/data``;
* :func:`split_targets` -- each target's dev rows (influence) and test rows (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tikmix._distributed import all_gather_objects

from .schema import (
    ConfigError,
    DevTestSource,
    JsonlSource,
    ParquetSource,
    RunConfig,
    TextFolderSource,
)

__all__ = ["SourceEntry", "config_sources", "open_token_file", "needed_vocab", "tokenized_path", "tokenize_source",
           "text_source_args", "cap_rows", "split_targets"]


@dataclass(frozen=True)
class SourceEntry:
    """One configured source: its dotted ``key``, the ``section`` (domains/targets), the target or domain ``name``,
    ``part`` (``"dev"``/``"test"`` of a split target, else None) and the source model ``src``."""

    key: str
    section: str
    name: str
    part: str | None
    src: Any

    @property
    def file_stem(self) -> str:
        """``<section>_<name>[.<part>]``: the name of its tokenised file under ``<out>/data``."""
        return f"{self.section}_{self.name}" + (f".{self.part}" if self.part else "")


def config_sources(cfg: RunConfig) -> list[SourceEntry]:
    """Every data source of ``cfg`` with its dotted key, domains first, in config order."""
    out = []
    for section in ("domains", "targets"):
        for name, src in getattr(cfg.data, section).items():
            if isinstance(src, DevTestSource):
                out += [SourceEntry(f"data.{section}.{name}.{part}", section, name, part, getattr(src, part))
                        for part in ("dev", "test")]
            else:
                out.append(SourceEntry(f"data.{section}.{name}", section, name, None, src))
    return out


def open_token_file(cfg: RunConfig, key: str, path: str | Path, dtype: str | None = None) -> Any:
    """A token file as a :class:`tikmix.data.TokenFileDataset` of ``seq_len + 1`` token rows (inputs and shifted
    targets); a file that does not open is a :class:`ConfigError` on ``key``."""
    from tikmix.data import TokenFileDataset

    try:
        return TokenFileDataset(path, cfg.data.seq_len, with_targets=True, dtype=dtype)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(key, str(exc)) from None


def needed_vocab(ds: Any, declared: int | None) -> int:
    """The vocabulary an opened token file needs: its header's ``vocab_size``, or its largest id + 1 when the
    header has none or claims more than ``declared`` (``data.vocab_size``)."""
    if ds.vocab_size is not None and (declared is None or ds.vocab_size <= declared):
        return int(ds.vocab_size)
    return int(ds.tokens.max()) + 1


def text_source_args(src: Any) -> tuple[str, str, str, str]:
    """``(path, format, field, pattern)`` of a text source, as :func:`tikmix.data.tokenize_to_token_file` takes them."""
    if isinstance(src, TextFolderSource):
        return src.text_folder, "text_folder", "text", src.pattern
    if isinstance(src, JsonlSource):
        return src.jsonl, "jsonl", src.field, "**/*.txt"
    if isinstance(src, ParquetSource):
        return src.parquet, "parquet", src.field, "**/*.txt"
    raise TypeError(f"not a text source: {type(src).__name__}")


def tokenized_path(cfg: RunConfig, entry: SourceEntry, tokenizer: Any) -> Path:
    """``<out>/data/<section>_<name>.<tokenizer fingerprint>.tokens``: where a text source is tokenised."""
    return cfg.out_dir / "data" / f"{entry.file_stem}.{tokenizer.fingerprint}.tokens"


def tokenize_source(cfg: RunConfig, entry: SourceEntry, tokenizer: Any, rank: int = 0) -> Path:
    """Tokenise a text source once, by rank 0, into :func:`tokenized_path` (kept and reused by later runs with the
    same tokenizer); every rank waits for it. A record without the text field is a ConfigError on the source's key,
    raised on every rank (the others learn it from rank 0 instead of waiting for a file that never comes)."""
    from tikmix.data.text_sources import tokenize_to_token_file

    origin, fmt, field, pattern = text_source_args(entry.src)
    path = tokenized_path(cfg, entry, tokenizer)
    error = None
    if rank == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tokenize_to_token_file([origin], path, tokenizer, fmt=fmt, field=field, pattern=pattern, progress=False)
        except (ValueError, FileNotFoundError) as exc:
            error = str(exc)
    error = all_gather_objects(error)[0]  # also the barrier every rank waits at
    if error is not None:
        raise ConfigError(f"{entry.key}.{fmt}", error)
    return path


def cap_rows(ds: Any, src: Any) -> int:
    """Rows of ``ds`` the source's ``max_sequences`` lets the run use."""
    cap = getattr(src, "max_sequences", None)
    return min(len(ds), cap) if cap is not None else len(ds)


def _stack(ds: Any, n: int, start: int = 0) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(start, n)])


def split_targets(
    cfg: RunConfig, targets: dict[str, Any], warn: Callable[[str], Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each target's dev rows (influence) and test rows (evaluation), at most ``max_sequences`` per source.

    ``targets``: name -> dataset, or name -> ``(dev dataset, test dataset)`` for a target given as ``{dev, test}``.
    A split target uses its two sources; a test row identical to a dev row raises :class:`ConfigError` (rows
    compared by hash). A target given as one source falls back to its first half by position (dev) and second half
    (test) -- ``warn`` (a callable taking a message) is told so; a target of one sequence is used for both.
    """
    dev, test = {}, {}
    for name, ds in targets.items():
        src = cfg.data.targets[name]
        if isinstance(src, DevTestSource):
            d_ds, t_ds = ds
            dev[name] = _stack(d_ds, cap_rows(d_ds, src.dev))
            test[name] = _stack(t_ds, cap_rows(t_ds, src.test))
            seen = {row.tobytes() for row in dev[name].numpy()}
            shared = sum(row.tobytes() in seen for row in test[name].numpy())
            if shared:
                raise ConfigError(
                    f"data.targets.{name}",
                    f"dev and test share {shared} identical sequence(s) (of {test[name].shape[0]} test sequences); "
                    "the reported loss would include sequences the mixture was chosen for: remove the overlap",
                )
            continue
        n = cap_rows(ds, src)
        half = max(1, (n + 1) // 2)
        dev[name] = _stack(ds, half)
        test[name] = _stack(ds, n, half) if n > half else dev[name]
        if warn is not None:
            warn(f"[tikmix] warning: target {name!r} has one source: its first {half} sequences (by position) measure "
                 f"influence and the other {n - half if n > half else half} are evaluated; give data.targets.{name} "
                 "as {dev: ..., test: ...} to keep them apart")
    return dev, test
