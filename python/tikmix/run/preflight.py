"""Checks of a schema-valid ``tikmix run`` config against its surroundings, before anything is built or trained.

The schema (:mod:`.config`) checks the config on its own; these check it against the machine (device, output
folder), the data (token files open, the vocabulary covers every token id) and the library (the influence
options and solver options are accepted by :class:`tikmix.GroupInfluence` and the solvers themselves, on a
model built on the ``meta`` device: no memory, no training). Each raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ConfigWarning, RunConfig

__all__ = ["check_all", "check_out", "check_device", "check_data", "check_influence", "check_solver"]


def check_out(cfg: RunConfig) -> None:
    """``out`` is a folder or can become one."""
    out = cfg.out_dir
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError("out", f"{parent} exists and is not a folder" + ("" if parent == out else
                                  f" (so {out} cannot be created)"))
            return


def check_device(cfg: RunConfig) -> None:
    """``device`` names a device this torch build has."""
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise ConfigError("device", f"not a torch device: {cfg.device!r} ({exc})") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ConfigError("device", f"tikmix run trains on cpu or cuda devices, got {cfg.device!r}")
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError("device", f"{cfg.device!r} is not available: {why}")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("device", f"{cfg.device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")


def check_data(cfg: RunConfig, tokenizer: Any = None) -> int:
    """Every token file opens, and the model's vocabulary covers every token id; returns that vocabulary size.

    ``tokenizer``: the run's (:func:`tikmix.data.tokenizers.load_tokenizer` of ``tokenizer``), loaded if not given.
    """
    from tikmix.data.tokenizers import load_tokenizer

    from .sources import source_vocab

    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    needed, where = 0, ""
    for key, src in _sources(cfg):
        section, name = key.split(".", 1)
        v = source_vocab(cfg, section, name, src, tok)
        if v > needed:
            needed, where = v, f"data.{key}"
    if cfg.data.vocab_size is not None and cfg.data.vocab_size < needed:
        raise ConfigError("data.vocab_size", f"{cfg.data.vocab_size} is too small: {where} holds token ids up to "
                                             f"{needed - 1} (needs vocab_size >= {needed})")
    return cfg.data.vocab_size if cfg.data.vocab_size is not None else max(needed, 256)


def check_influence(cfg: RunConfig, vocab: int) -> None:
    """:class:`tikmix.GroupInfluence` accepts the influence options (and the seed) for this model.

    The model is built on the ``meta`` device (no memory, no weights) where that is possible: the demo GPT and
    ``model.hf.config``. A model loaded from a folder or made by a factory is checked when the run builds it,
    still before the first training step.
    """
    from tikmix.influence import GroupInfluence

    from .model import build_model

    if cfg.model.kind == "factory" or (cfg.model.kind == "hf" and cfg.model.hf is not None and cfg.model.hf.path):
        return
    try:
        model, loss_fn = build_model(cfg, vocab, torch.device("meta"))
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError("model", f"cannot build the model with vocab_size {vocab}: {exc}") from None
    infl = cfg.influence
    options = {"k": infl.k, "preconditioner": infl.preconditioner, "n_bootstrap": infl.n_bootstrap,
               "damping": infl.damping, "params": infl.params, "seed": cfg.seed, "progress": False}
    if infl.preconditioner == "adam":
        options["optimizer"] = torch.optim.AdamW(model.parameters())
    if cfg.solver.name == "regression":
        options["mode"] = "per_sample"
    try:
        GroupInfluence(model, loss_fn, **options)
    except (ValueError, TypeError) as exc:
        word = re.match(r"\w*", str(exc)).group(0)  # GroupInfluence's messages start with the argument's name
        key = "seed" if word == "seed" else f"influence.{word}" if word in type(infl).model_fields else "influence"
        raise ConfigError(key, str(exc)) from None
    if infl.k is not None:
        from tikmix_ext.sketch import MAX_K

        if infl.k >= MAX_K:
            raise ConfigError("influence.k", f"must be below 2^26 = {MAX_K} (the sketch kernels' limit), got {infl.k}")


def _option_keys(options: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(options, dict):
        for key, value in options.items():
            out.append(f"{prefix}{key}")
            out += _option_keys(value, f"{prefix}{key}.")
    return out


def check_solver(cfg: RunConfig) -> None:
    """The solver accepts ``solver.options``: :func:`tikmix.solvers.check_options`, the solvers' own checks."""
    from tikmix.solvers import InfeasibleConstraintsError, check_options

    options = cfg.solver.options
    if cfg.solver.name not in ("direct", "regression"):  # a fixed mixture: nothing is solved
        return
    try:
        check_options(cfg.solver.name, options, len(cfg.data.domains))
    except (ValueError, TypeError) as exc:
        # The message names the option; the dotted key is the given option named earliest in it.
        message = str(exc)
        names = [c for c in re.split(r"\W+", getattr(exc, "constraint", "")) if c] if isinstance(
            exc, InfeasibleConstraintsError) else []
        found = []
        for key in _option_keys(options):
            leaf = key.rsplit(".", 1)[-1]
            hit = re.search(rf"(?<![\w.]){re.escape(leaf)}(?!\w)", message)
            if leaf in names:  # an infeasible constraint names its options: the first one given
                found.append((names.index(leaf) - len(names), -len(key), key))
            elif hit:  # else the option mentioned first; the deepest key when nested names repeat
                found.append((hit.start(), -len(key), key))
        key = "solver.options" + (f".{min(found)[2]}" if found else "")
        raise ConfigError(key, message) from None
    score = options.get("regression", {}).get("score", {}) if cfg.solver.name == "regression" else {}
    if isinstance(score, dict) and "seed" in score:
        raise ConfigError("solver.options.regression.score.seed", "the run seeds the resampling of each stage itself "
                                                                  "(from seed and the stage index); remove it")


def _sources(cfg: RunConfig) -> list[tuple[str, Any]]:
    """("domains.NAME" / "targets.NAME" / "targets.NAME.dev" / "targets.NAME.test", source) of every data source."""
    from .config import DevTestSource

    out = []
    for section in ("domains", "targets"):
        for name, src in getattr(cfg.data, section).items():
            if isinstance(src, DevTestSource):
                out += [(f"{section}.{name}.dev", src.dev), (f"{section}.{name}.test", src.test)]
            else:
                out.append((f"{section}.{name}", src))
    return out


def warn_overlap(cfg: RunConfig) -> None:
    """Warn when a target reads the same data as a training domain (its loss then measures memorisation)."""
    sources = _sources(cfg)
    domains = {_location(src): key for key, src in sources if key.startswith("domains.")}
    for key, src in sources:
        if key.startswith("targets.") and _location(src) in domains:
            warnings.warn(f"data.{key}: reads the same data as training domain data.{domains[_location(src)]}",
                          ConfigWarning, stacklevel=3)


def _location(src: object) -> Path:
    from .config import SOURCE_KINDS

    kind = next(k for k in SOURCE_KINDS if hasattr(src, k))
    return Path(getattr(src, kind)).resolve()


def check_all(cfg: RunConfig) -> None:
    """Every check above, cheapest first."""
    check_out(cfg)
    check_device(cfg)
    warn_overlap(cfg)
    vocab = check_data(cfg)
    check_influence(cfg, vocab)
    check_solver(cfg)
