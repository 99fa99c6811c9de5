"""Loading a ``tikmix run`` config: YAML in, a validated :class:`RunConfig` out, every problem a :class:`ConfigError`.

:func:`load_config` reads YAML (a key given twice is refused) and runs :func:`validate_config`'s first pass,
:func:`parse_config`: the schema (:mod:`tikmix.run.schema`), then the checks that read no data
(:func:`tikmix.run.preflight.check_surroundings`: output folder, device, the files named exist, ``model.hf.config``
keys, solver options). The data is read once, by :func:`tikmix.run.prepare` for a run or by
:func:`tikmix.run.preflight.check_config` for ``--check``.

A :class:`ConfigError`'s key is the dotted path of the bad entry (``data.domains.web.token_file``), taken from
pydantic's error location plus the schema's own (:class:`~tikmix.run.schema.SchemaError` ``parts``); unknown
keys come first and say which known key was probably meant.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tikmix._extras import require

from .preflight import check_config, check_surroundings, did_you_mean
from .schema import (  # noqa: F401  (ConfigError, ConfigWarning, RunConfig, TrainConfig, config_differences: re-exported)
    _SPLIT_TAG,
    _TAG,
    SOURCE_KINDS,
    ConfigError,
    ConfigWarning,
    DevTestSource,
    RunConfig,
    SchemaError,
    TrainConfig,
    config_differences,
    section_model,
)

__all__ = ["load_config", "parse_config", "validate_config"]


# ---------------------------------------------------------------------------------------------- errors
#: How pydantic names the members of a plain union (``int | list[float] | Literal[...]``) in an error's location.
_UNION_MEMBER = re.compile(r"^(literal|list|dict|tuple|set|union|function-[a-z]+|constrained-[a-z]+)\[|"
                           r"^(str|int|float|bool|none|constrained-(float|int|str))$")


def _union_member(part: Any) -> bool:
    return isinstance(part, str) and bool(_UNION_MEMBER.match(part))


def _one_error_per_union(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A value that fits no member of a union gets one error per member; keep the most specific one (the deepest
    location: the member whose shape the value had, e.g. the list branch for a list with a negative entry) and drop
    the member names from its location."""
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err["loc"])
        at = next((i for i, part in enumerate(loc) if _union_member(part)), None)
        if at is None:
            out.append(err)
            continue
        err = {**err, "loc": tuple(p for p in loc if not _union_member(p))}
        best = chosen.get(loc[:at])
        if best is None or len(err["loc"]) > len(best["loc"]):
            chosen[loc[:at]] = err
    return out + list(chosen.values())


def _dotted(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, str) and (part.startswith((_TAG, _SPLIT_TAG)) or part == "[key]" or part == ""):
            continue
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key or "config"


_TYPE_NAMES = {
    "int_type": "int", "int_parsing": "int", "int_from_float": "int", "float_type": "number",
    "float_parsing": "number", "string_type": "str", "bool_type": "bool", "list_type": "list",
    "dict_type": "mapping", "model_type": "mapping", "model_attributes_type": "mapping",
}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _source_fields() -> list[str]:
    return sorted({f for model in SOURCE_KINDS.values() for f in model.model_fields})


def _describe_source(loc: tuple[Any, ...], value: Any) -> tuple[str, str]:
    """A mapping that is not exactly one source kind: name the misspelt kind key when there is one."""
    kinds = " or ".join(SOURCE_KINDS)
    if not isinstance(value, dict):
        return _dotted(loc), f"expected a mapping with one of {kinds}, got {type(value).__name__} ({_short(value)})"
    given = [k for k in SOURCE_KINDS if k in value]
    if len(given) > 1:
        return _dotted(loc), f"give exactly one of {kinds} (got {' and '.join(given)})"
    unknown = [str(k) for k in value if k not in _source_fields()]
    if unknown:
        return _dotted((*loc, unknown[0])), (f"unknown key {unknown[0]}{did_you_mean(unknown[0], list(SOURCE_KINDS))}"
                                             f"; a source gives exactly one of {kinds}")
    return _dotted(loc), f"give exactly one of {kinds}"


#: Keyword names of the Python API that a run config spells differently (a likely slip when moving a loop to YAML).
_PYTHON_API_NAMES = {"sampling": "adaptive"}


def _describe(err: dict[str, Any]) -> tuple[int, str, str]:
    """(rank, dotted key, message) of one pydantic error; unknown keys rank first, missing keys last."""
    loc = tuple(err["loc"])
    kind = err["type"]
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, SchemaError):
        return 1, _dotted(loc + error.parts), error.message
    if isinstance(error, ConfigError):
        return 1, error.key, str(error)[len(error.key) + 2:]
    key = _dotted(loc)
    value = err.get("input")
    if kind == "missing":
        return 2, key, "required key is missing"
    if kind == "extra_forbidden":
        word = str(loc[-1])
        known = _known_keys(loc[:-1])
        alias = _PYTHON_API_NAMES.get(word)
        hint = (f" (did you mean {alias}? the Python API's {word}= is {alias} in a run config)"
                if alias in known else "") or did_you_mean(word, known) \
            or (f" (known keys here: {', '.join(known)})" if known else "")
        return 0, key, f"unknown key {word}{hint}"
    if kind == "source_kind":
        key, message = _describe_source(loc, value)
        return (0 if message.startswith("unknown key") else 1), key, message
    if kind in _TYPE_NAMES:
        got = "a bool" if isinstance(value, bool) else type(value).__name__
        return 1, key, f"expected {_TYPE_NAMES[kind]}, got {got} ({_short(value)})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    hint = ""
    if kind == "literal_error" and isinstance(value, str):
        hint = did_you_mean(value, re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", ""))))
    return 1, key, f"{msg[:1].lower()}{msg[1:]}, got {_short(value)}{hint}"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, str) and part.startswith(_SPLIT_TAG):
            model = DevTestSource if part.endswith("split") else model
        elif isinstance(part, str) and part.startswith(_TAG):
            model = SOURCE_KINDS[part[len(_TAG):]]
        elif isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = section_model(model.model_fields[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


# ---------------------------------------------------------------------------------------------- loading
def parse_config(raw: Any, base_dir: str | os.PathLike[str] = ".") -> RunConfig:
    """The schema and every check that reads no data; fills defaults. Nothing is read, built, trained or written.

    Relative paths are resolved against ``base_dir``. Raises :class:`ConfigError` naming the first bad key (unknown
    keys first; the message lists any other bad keys the schema found); warns with :class:`ConfigWarning`.
    """
    if not isinstance(raw, dict):
        raise ConfigError("config", f"the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        # absolute, so that a config written back (a search's static.yaml, a proxy's config) runs from anywhere
        cfg = RunConfig.model_validate(raw, context={"base_dir": Path(base_dir).resolve()})
    except ValidationError as exc:
        problems = sorted((_describe(e) for e in _one_error_per_union(exc.errors(include_url=False))),
                          key=lambda p: p[0])
        _, key, message = problems[0]
        if len(problems) > 1:
            message += "; also " + "; ".join(f"{k}: {m}" for _, k, m in problems[1:3])
            if len(problems) > 3:
                message += f" (and {len(problems) - 3} more)"
        raise ConfigError(key, message) from None
    check_surroundings(cfg)
    return cfg


def validate_config(raw: Any, base_dir: str | os.PathLike[str] = ".") -> RunConfig:
    """Check a parsed config completely, the data included, writing nothing; fills defaults.

    :func:`parse_config`, then :func:`tikmix.run.preflight.check_config` (the tokenizer loads, the token ids fit the
    vocabulary, text sources have their text field, the influence options fit the model). A run does not need
    this: :func:`tikmix.run.prepare` makes the data checks on the sources it opens.
    """
    cfg = parse_config(raw, base_dir)
    check_config(cfg)
    return cfg


def _duplicate_keys(node: Any, path: str = "") -> None:
    """Refuse a mapping that gives a key twice (YAML loaders silently keep the last one)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    raise ConfigError(dotted, f"duplicate key (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                              "give each key once")
                seen[key] = key_node.start_mark.line + 1
            _duplicate_keys(value_node, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{i}]")


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a YAML config file and :func:`parse_config` it (relative paths are relative to the file's folder)."""
    yaml = require("yaml", "run", "reading a tikmix run config")
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"config file not found: {p}")
    text = p.read_text()
    try:
        _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{p} is not valid YAML: {exc}") from None
    return parse_config(raw, p.parent)

