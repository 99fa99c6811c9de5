"""Checks of a schema-valid ``tikmix run`` config against its surroundings, before anything is built or trained.

The schema (:mod:`tikmix.run.schema`) checks the config on its own. These check it against the machine (device,
output folder, the files named exist), the libraries (transformers knows every ``model.hf.config`` key, the solvers
and :class:`tikmix.GroupInfluence` accept their options, the latter on a model built on the ``meta`` device: no
memory, no training) and the data (the vocabulary covers every token id). Each raises :class:`ConfigError` on the
key the check was made for: keys come from where the checked value sits in the config, never from an exception's
text. When a library refuses a group of options together, the options are re-checked one at a time to find the one
it refuses (:func:`blame`).

:func:`check_surroundings` is everything that needs no data read (:func:`tikmix.run.load_config` runs it);
:func:`check_config` adds the data checks without writing anything (``tikmix run --check``);
:func:`tikmix.run.prepare` runs the data checks on the sources it opens for the run.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tikmix._validation import did_you_mean
from tikmix.defaults import INFLUENCE

from .schema import (
    ConfigError,
    ConfigWarning,
    HFModelConfig,
    RunConfig,
    TextFolderSource,
    TokenFileSource,
    source_path,
)
from .model import build_model
from .sources import config_sources, needed_vocab, open_token_file, text_source_args

__all__ = ["check_surroundings", "check_config", "check_out", "check_device", "check_files", "check_hf_config",
           "check_solver", "warn_overlap", "load_run_tokenizer", "check_vocab", "check_influence",
           "blame", "did_you_mean"]


def blame(keys: Sequence[str], fails: Callable[[list[str]], Exception | None]) -> tuple[str, Exception] | None:
    """The key to report when a group of options fails together, and the error to report with it.

    ``fails(subset)`` checks the options of ``subset`` alone and returns the error (None when accepted). The first
    key refused on its own is reported; when each passes alone, the shortest failing prefix of ``keys`` is cut from
    the front to the fewest keys that still fail together, and the first of those (the earliest given) is reported.
    """
    for key in keys:
        err = fails([key])
        if err is not None:
            return key, err
    for end in range(2, len(keys) + 1):
        if fails(list(keys[:end])) is not None:
            start = max(i for i in range(end) if fails(list(keys[i:end])) is not None)
            err = fails(list(keys[start:end]))
            assert err is not None
            return keys[start], err
    return None


# ---------------------------------------------------------------------------------------------- no data read
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


def check_files(cfg: RunConfig) -> None:
    """Every file and folder the config names exists (nothing is opened): sources, the tokenizer, ``model.hf.path``."""
    for entry in config_sources(cfg):
        src = entry.src
        if isinstance(src, TokenFileSource):
            if not Path(src.token_file).is_file():
                raise ConfigError(f"{entry.key}.token_file", f"file not found: {src.token_file}")
        elif isinstance(src, TextFolderSource):
            folder = Path(src.text_folder)
            if not folder.is_dir():
                raise ConfigError(f"{entry.key}.text_folder", f"folder not found: {folder}")
            if not any(p.is_file() for p in folder.glob(src.pattern)):
                raise ConfigError(f"{entry.key}.text_folder", f"no files matching {src.pattern!r} in {folder}")
        else:
            path, fmt, _, _ = text_source_args(src)
            if not Path(path).is_file():
                raise ConfigError(f"{entry.key}.{fmt}", f"file not found: {path}")
    if cfg.tokenizer != "bytes" and not Path(cfg.tokenizer).is_file():
        raise ConfigError("tokenizer", f"file not found: {cfg.tokenizer} (tikmix loads tokenizers from local files "
                                       "only, never from a hub)")
    hf = cfg.model.hf
    if hf is not None and hf.path is not None:
        path = Path(hf.path)
        if not path.is_dir():
            raise ConfigError("model.hf.path", f"not a local folder: {path}. tikmix never downloads models; a hub "
                                               "model id is refused: save the model locally (save_pretrained) and "
                                               "give that folder")
        if not (path / "config.json").is_file():
            raise ConfigError("model.hf.path", f"{path} has no config.json (expected a save_pretrained folder)")


def _hf_config_keys(config_class: type) -> set[str]:
    """Every key a transformers config class understands: ``__init__`` parameters along its MRO, the attributes of
    a default instance and the aliases of its ``attribute_map``."""
    keys: set[str] = set()
    for klass in config_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys |= {n for n, p in inspect.signature(init).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
        keys |= set(getattr(klass, "attribute_map", {}) or {})
    try:
        keys |= set(config_class().to_dict())
    except Exception:  # a config class that cannot be built with defaults still has its __init__ parameters
        pass
    return keys


def check_hf_config(hf: HFModelConfig | None) -> None:
    """Every key of ``model.hf.config`` is one the architecture's config class knows (with a did-you-mean).

    Known: the ``__init__`` parameters along the class's MRO, the attributes of a default instance and the aliases of
    its ``attribute_map``; and a legacy key the class converts (``rope_theta`` into ``rope_parameters``, say): one that
    does not stay behind as an attribute of its own. Transformers keeps any other key as a new attribute and ignores
    it, which would build a model other than the one meant.
    """
    if hf is None or hf.config is None:
        return
    try:
        from transformers import AutoConfig
    except ImportError:
        raise ConfigError("model.hf", "needs transformers: pip install 'tikmix[hf]'") from None
    model_type = hf.config["model_type"]
    try:
        config_class = type(AutoConfig.for_model(model_type))
    except ValueError as exc:
        raise ConfigError("model.hf.config.model_type", f"transformers does not know {model_type!r}: {exc}") from None
    known = _hf_config_keys(config_class) | {"model_type"}
    for key, value in hf.config.items():
        if key in known:
            continue
        try:
            kept = key in vars(config_class(**{key: value}))
        except Exception:  # a value the class refuses: the model build reports it, on model.hf
            kept = False
        if kept:
            raise ConfigError(f"model.hf.config.{key}", f"unknown key {key} for {config_class.__name__}"
                              + did_you_mean(key, sorted(known)))


def _leaves(options: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the options in a nested mapping; a mapping of options is a group (its own path is not a leaf)."""
    out = []
    for key, value in options.items():
        path = (*prefix, str(key))
        out += _leaves(value, path) if isinstance(value, dict) and value else [path]
    return out


def _subset(options: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        src, dst = options, out
        for part in path[:-1]:
            src = src[part]
            dst = dst.setdefault(part, {})
        dst[path[-1]] = src[path[-1]]
    return out


def check_solver(cfg: RunConfig) -> None:
    """The solver accepts ``solver.options`` (:func:`tikmix.solvers.check_options`, the solvers' own checks).

    A refused set of options is re-checked option by option (:func:`blame`) to name the refused one's key.
    """
    from tikmix.solvers import check_options

    options = cfg.solver.options
    if cfg.solver.name not in ("direct", "regression"):  # a fixed mixture: nothing is solved
        return
    n = len(cfg.data.domains)

    def fails(paths: list[str]) -> Exception | None:
        try:
            check_options(cfg.solver.name, _subset(options, [tuple(p.split(".")) for p in paths]), n)
        except (ValueError, TypeError) as exc:
            return exc
        return None

    error = fails([".".join(p) for p in _leaves(options)])
    if error is not None:
        found = blame([".".join(p) for p in _leaves(options)], fails)
        key, error = found if found is not None else ("", error)
        raise ConfigError("solver.options" + (f".{key}" if key else ""), str(error))
    score = options.get("regression", {}).get("score", {}) if cfg.solver.name == "regression" else {}
    if isinstance(score, dict) and "seed" in score:
        raise ConfigError("solver.options.regression.score.seed", "the run seeds the resampling of each stage itself "
                                                                  "(from seed and the stage index); remove it")


def warn_overlap(cfg: RunConfig) -> None:
    """Warn when a target reads the same data as a training domain (its loss then measures memorisation)."""
    entries = config_sources(cfg)
    domains = {Path(source_path(e.src)).resolve(): e.key for e in entries if e.section == "domains"}
    for e in entries:
        where = Path(source_path(e.src)).resolve()
        if e.section == "targets" and where in domains:
            warnings.warn(f"{e.key}: reads the same data as training domain {domains[where]}", ConfigWarning,
                          stacklevel=3)


# ---------------------------------------------------------------------------------------------- data
def load_run_tokenizer(cfg: RunConfig) -> Any:
    """The run's tokenizer (:func:`tikmix.data.load_tokenizer` of ``tokenizer``); a ConfigError on ``tokenizer``."""
    from tikmix.data.tokenizers import TokenizerSpecError, load_tokenizer

    try:
        return load_tokenizer(cfg.tokenizer)
    except TokenizerSpecError as exc:
        raise ConfigError("tokenizer", str(exc)) from None


def check_vocab(cfg: RunConfig, needs: dict[str, int]) -> int:
    """The vocabulary size of the run from what each source needs (dotted key -> size): ``data.vocab_size``, which
    must cover them all, or the largest need and at least 256."""
    needed, where = 0, ""
    for key, v in needs.items():
        if v > needed:
            needed, where = v, key
    if cfg.data.vocab_size is not None and cfg.data.vocab_size < needed:
        raise ConfigError("data.vocab_size", f"{cfg.data.vocab_size} is too small: {where} holds token ids up to "
                                             f"{needed - 1} (needs vocab_size >= {needed})")
    return cfg.data.vocab_size if cfg.data.vocab_size is not None else max(needed, 256)


#: GroupInfluence argument -> the config key it comes from.
INFLUENCE_KEYS = {"k": "influence.k", "preconditioner": "influence.preconditioner",
                  "n_bootstrap": "influence.n_bootstrap", "damping": "influence.damping",
                  "params": "influence.params", "seed": "seed"}


def check_influence(cfg: RunConfig, vocab: int) -> None:
    """:class:`tikmix.GroupInfluence` accepts the influence options (and the seed) for this model.

    The model is built on the ``meta`` device (no memory, no weights) where that is possible: the built-in GPT and
    ``model.hf.config``. A model loaded from a folder or made by a factory is checked when the run builds it,
    still before the first training step.
    """
    from tikmix_ext.sketch import MAX_K

    from tikmix.influence import GroupInfluence

    infl = cfg.influence
    if infl.k is not None and infl.k >= MAX_K:
        raise ConfigError("influence.k", f"must be below 2^{MAX_K.bit_length() - 1} = {MAX_K} "
                                         f"(the sketch kernels' limit), got {infl.k}")
    if cfg.model.kind == "factory" or (cfg.model.kind == "hf" and cfg.model.hf is not None and cfg.model.hf.path):
        return
    try:
        model, loss_fn = build_model(cfg, vocab, torch.device("meta"))
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise ConfigError("model", f"cannot build the model with vocab_size {vocab}: {exc}") from None
    values = {"k": infl.k, "preconditioner": infl.preconditioner, "n_bootstrap": infl.n_bootstrap,
              "damping": infl.damping, "params": infl.params, "seed": cfg.seed}
    fixed: dict[str, Any] = {"progress": False, "k": INFLUENCE["k"]}  # k is required: options tried alone need one
    if infl.preconditioner == "adam":
        fixed["optimizer"] = torch.optim.AdamW(model.parameters())
    if cfg.solver.name == "regression":
        fixed["mode"] = "per_sample"

    def fails(names: list[str]) -> Exception | None:
        try:
            GroupInfluence(model, loss_fn, **{**fixed, **{n: values[n] for n in names}})
        except (ValueError, TypeError) as exc:
            return exc
        return None

    error = fails(list(values))
    if error is not None:
        found = blame(list(values), fails)
        name, error = found if found is not None else ("", error)
        raise ConfigError(INFLUENCE_KEYS.get(name, "influence"), str(error))


def check_config(cfg: RunConfig) -> int:
    """Everything :func:`tikmix.run.prepare` checks, reading the data but writing nothing and tokenising nothing
    (``tikmix run --check``): the tokenizer loads, every token file opens and fits the vocabulary, every text source
    has its text field in its first record, and the influence options fit the model. Returns the vocabulary size."""
    from tikmix.data.text_sources import check_text_source

    tokenizer = load_run_tokenizer(cfg)
    needs: dict[str, int] = {}
    for entry in config_sources(cfg):
        src = entry.src
        if isinstance(src, TokenFileSource):
            ds = open_token_file(cfg, entry.key, src.token_file, src.dtype)
            needs[entry.key] = needed_vocab(ds, cfg.data.vocab_size)
            continue
        path, fmt, field, pattern = text_source_args(src)
        try:
            check_text_source(path, fmt=fmt, field=field, pattern=pattern)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"{entry.key}.{fmt}", str(exc)) from None
        needs[entry.key] = int(tokenizer.vocab_size)
    vocab = check_vocab(cfg, needs)
    check_influence(cfg, vocab)
    return vocab


def check_surroundings(cfg: RunConfig) -> None:
    """Every check that reads no data, cheapest first: out, device, files, model.hf.config keys, solver options,
    the influence options (on a model of the smallest vocabulary the data could need; :func:`tikmix.run.prepare`
    checks again with the real one), and the warning for a target that is also a training domain."""
    check_out(cfg)
    check_device(cfg)
    check_files(cfg)
    check_hf_config(cfg.model.hf)
    check_solver(cfg)
    check_influence(cfg, cfg.data.vocab_size or 2)
    warn_overlap(cfg)
