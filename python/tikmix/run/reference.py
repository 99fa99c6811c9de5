"""The ``tikmix run`` config reference page (``docs/run-config.md``), rendered from the schema.

:func:`reference_markdown` walks the models of :mod:`tikmix.run.schema` (keys, types, defaults, bounds and
descriptions) into Markdown tables; a test keeps the docs page equal to its output.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from .schema import SOURCE_KINDS, RunConfig, section_model

__all__ = ["reference_markdown", "EXAMPLE"]


EXAMPLE = """\
out: runs/exp1                  # checkpoints, history.json and plots go here
seed: 0
device: cpu                     # or cuda, cuda:1 (under torchrun: cuda -> cuda:LOCAL_RANK)
data:
  seq_len: 64
  domains:                      # name -> exactly one of token_file / text_folder / jsonl / parquet
    web:  {token_file: data/web.tokens}
    code: {text_folder: data/code, pattern: "**/*.py"}
  targets:                      # first half -> influence, second half -> evaluation
    qa:   {token_file: data/qa.tokens, max_sequences: 512}
  initial_weights: {web: 0.7, code: 0.3}
model: {n_layer: 2, n_head: 4, d_model: 64, dropout: 0.0}
train:
  steps: 2000
  batch_size: 32
  lr: 0.003
  checkpoint_every: 500
stages:
  unit: steps
  boundaries: [500, 1000, 1500]
solver:
  name: direct                  # direct (TiKMiX-D) | regression (TiKMiX-M)
  options: {max_shift: 0.5}
influence:
  k: 1024
  samples_per_domain: 64
  preconditioner: identity
"""
"""A complete config, shown at the top of the reference (the docs test validates it)."""


def _number(x: Any) -> str:
    if isinstance(x, int) and not isinstance(x, bool) and x >= 2**20 and (x & (x - 1)) == 0:
        return f"2^{x.bit_length() - 1}"
    return repr(x)


def _limits(metadata: Any) -> list[str]:
    out = []
    for m in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if type(m).__name__ == attr.capitalize():
                out.append(f"{sign} {_number(getattr(m, attr))}")
        if getattr(m, "allow_inf_nan", None) is False:
            out.append("finite")
        if type(m).__name__ == "MinLen":
            out.append(f"at least {m.min_length} entry" + ("s" if m.min_length > 1 else ""))
        if isinstance(m, FieldInfo):
            out += _limits(m.metadata)
        if isinstance(m, StringConstraints) and m.pattern:
            out.append(f"matches `{m.pattern}`")
    return out


def _describe_type(ann: Any) -> tuple[str, list[str]]:
    """(type name, constraints) of an annotation."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        name, limits = _describe_type(args[0])
        return name, _limits(args[1:]) + limits
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        name, limits = _describe_type(parts[0]) if len(parts) == 1 else (" or ".join(_describe_type(a)[0] for a in parts), [])
        return (name + " or null" if type(None) in args else name), limits
    if origin is Literal:
        return "str", ["one of " + ", ".join(f"`{a}`" for a in args)]
    if origin is list:
        name, limits = _describe_type(args[0])
        return f"list of {name}", [f"each {x}" for x in limits]
    if origin is dict:
        return "mapping", []
    if ann is float:
        return "number", []
    return getattr(ann, "__name__", str(ann)), []


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, dict) and not value:
        return "`{}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = section_model(field.annotation)
        if section is not None and section not in SOURCE_KINDS.values() and typing.get_origin(field.annotation) is not dict:
            rows.append((f"**{key}**", "section", _default(field) or "(defaults)", "", field.description or ""))
            rows += _rows(section, key + ".")
            continue
        ann = field.annotation
        if typing.get_origin(ann) is dict and typing.get_args(ann)[1] is not Any:
            _, name_limits = _describe_type(typing.get_args(ann)[0])
            limits = _limits(field.metadata) + [f"names match {x[len('matches '):]}, without `..`" for x in name_limits]
            rows.append((f"{key}.*&lt;name&gt;*", "source", _default(field), "; ".join(limits), field.description or ""))
            continue
        type_name, limits = _describe_type(ann)
        limits = _limits(field.metadata) + limits
        rows.append((key, type_name, _default(field), "; ".join(limits), field.description or ""))
    return rows


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    lines = ["| key | type | default | constraint | description |", "|---|---|---|---|---|"]
    for key, type_name, default, limits, desc in rows:
        cells = [key if key.startswith("**") or "&lt;" in key else f"`{key}`", type_name, default, limits, desc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The ``tikmix run`` config reference page (markdown), generated from the schema.

    The docs page ``docs/run-config.md`` is this text; a test keeps the two equal.
    """
    sources = []
    for kind, model in SOURCE_KINDS.items():
        sources.append(f"**`{kind}`** — {(model.__doc__ or '').strip()}\n\n" + _table(_rows(model, "")))
    return f"""<!-- Generated from the schema in tikmix/run/schema.py by tikmix.run.reference.reference_markdown(); edit the schema, not this page. -->
# `tikmix run` configuration

`tikmix run CONFIG.yaml` trains a model (the built-in GPT, a Hugging Face causal LM from `model.hf`, or your own
from `model.factory`) on your data with staged, influence-driven mixtures. The config is checked before anything
is trained: `tikmix run CONFIG.yaml --check` only checks it (the data included; nothing is written). A bad entry
stops the run with exit status 2 and a message that starts with its dotted key, for example
`data.domains.web.token_file: file not found: runs/data/web.tokens`. A key given twice, an unknown key (with the
key probably meant: `unknown key trian (did you mean train?)`, also inside `model.hf.config`) and a value of the
wrong type (`"3"` for 3) are errors too. Relative paths are relative to the config file's folder. `--resume`
continues from the last good checkpoint in `out` and refuses a config that differs from the checkpoint's (naming
the keys) in anything but `out` (a run folder can be moved or renamed and resumed), `train.eval_every` and
`train.checkpoint_every`.

## Example

```yaml
{EXAMPLE}```

## Keys

{_table(_rows(RunConfig, ""))}

Also checked before training: `model.d_model` is divisible by `model.n_head`; every stage boundary falls
before the end of training; `data.initial_weights` has one entry per domain and a positive sum; the token
ids of every source fit `data.vocab_size` (and the vocabulary of `model.hf`); `device` exists on this machine;
`out` is not a file; every file and folder named exists; the keys of `model.hf.config` are known to the
architecture's transformers config class;
`influence.params` patterns each match a parameter; `solver.options` are accepted by the solver
(`solve_direct` keyword arguments; for `regression`, `{{direct: {{...}}, regression: {{..., score: {{...}}}}}}` for
`solve_direct`, `solve_regression` and `mixture_score_fn`), including bounds that no mixture can meet. A
target that reads the same file as a training domain gives a warning.

## Data sources

Each entry of `data.domains`, and each target of `data.targets` (or its `dev` and `test`), is a mapping with
exactly one of these keys.

{(chr(10) * 2).join(sources)}
"""

