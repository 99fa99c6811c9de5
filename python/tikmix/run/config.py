"""The ``tikmix run`` config: one typed schema (pydantic v2) for keys, types, defaults, bounds and cross-field rules.

Everything about a config lives here: :func:`load_config` reads YAML (duplicate keys refused) and
:func:`validate_config` checks a parsed mapping completely before anything is built; any problem is a
:class:`ConfigError` whose message starts with the dotted key (``data.domains.web.token_file: file not
found: ...``). :func:`reference_markdown` renders the config reference from the same schema.

Each section is its own model, and every data source kind its own model in the :data:`Source` union, so a
new section, option or source kind is a local addition.
"""

from __future__ import annotations

import math
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from tikmix._extras import require

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "StagesConfig",
    "SolverConfig",
    "InfluenceConfig",
    "TokenFileSource",
    "DevTestSource",
    "TextFolderSource",
    "JsonlSource",
    "ParquetSource",
    "HFModelConfig",
    "Source",
    "NAME_PATTERN",
    "load_config",
    "validate_config",
    "config_differences",
    "reference_markdown",
]


class ConfigError(ValueError):
    """A bad ``tikmix run`` config; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class _Invalid(ValueError):
    """Raised inside the schema's validators: ``parts`` locate the bad entry relative to the validated object."""

    def __init__(self, parts: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.parts = parts
        self.message = message


class ConfigWarning(UserWarning):
    """A config that is valid but probably not what was meant (e.g. a target that is also a training domain)."""


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Domain and target names: they become file names under ``<out>``, so nothing that can leave that folder."""


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]  # '..' inside a name is refused by DataConfig
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Section(BaseModel):
    """Common settings: unknown keys and implicit conversions (``"3"`` for 3, ``true`` for 1) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def _resolve(base: Path, p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


# ---------------------------------------------------------------------------------------------- sources
class TokenFileSource(_Section):
    """A token file written by `tikmix.write_token_file` (or a headerless array of token ids with `dtype`)."""

    token_file: str = Field(description="path of the token file (relative to the config's folder)")
    dtype: str | None = Field(None, description="element type of a headerless file (e.g. uint16); null = from the header")
    max_sequences: PositiveInt | None = Field(None, description="use at most this many sequences (targets: split in halves)")

    @field_validator("token_file")
    @classmethod
    def _exists(cls, v: str, info: ValidationInfo) -> str:
        path = _resolve(_base_dir(info), v)
        if not path.is_file():
            raise _Invalid((), f"file not found: {path}")
        return str(path)


class TextFolderSource(_Section):
    """A folder of text files, tokenised once with the run's `tokenizer` into `<out>/data`."""

    text_folder: str = Field(description="folder of text files (relative to the config's folder)")
    pattern: str = Field("**/*.txt", description="glob of the files to read inside the folder")
    max_sequences: PositiveInt | None = Field(None, description="use at most this many sequences (targets: split in halves)")

    @model_validator(mode="after")
    def _has_files(self, info: ValidationInfo) -> "TextFolderSource":
        path = _resolve(_base_dir(info), self.text_folder)
        if not path.is_dir():
            raise _Invalid(("text_folder",), f"folder not found: {path}")
        if not any(p.is_file() for p in path.glob(self.pattern)):
            raise _Invalid(("text_folder",), f"no files matching {self.pattern!r} in {path}")
        self.text_folder = str(path)
        return self


class _RecordsSource(_Section):
    """Common part of the record-file sources: the file (field ``_kind``), checked, and the text field, checked on
    the first record up front."""

    _kind: ClassVar[str]  # the key naming the file: also the format check_text_source reads it as

    field: str = Field("text", description="the record field (jsonl) or column (parquet) holding the text")
    max_sequences: PositiveInt | None = Field(None, description="use at most this many sequences (targets: split in halves)")

    @model_validator(mode="after")
    def _readable(self, info: ValidationInfo) -> "_RecordsSource":
        from tikmix.data.text_sources import check_text_source

        key = self._kind
        path = _resolve(_base_dir(info), getattr(self, key))
        if not path.is_file():
            raise _Invalid((key,), f"file not found: {path}")
        try:
            check_text_source(path, fmt=key, field=self.field)
        except ValueError as exc:
            raise _Invalid((key,), str(exc)) from None
        setattr(self, key, str(path))
        return self


class JsonlSource(_RecordsSource):
    """A JSON-lines file, one document per line in ``field``; streamed and tokenised once into ``<out>/data``."""

    _kind: ClassVar[str] = "jsonl"
    jsonl: str = Field(description="path of the .jsonl file (relative to the config's folder)")


class ParquetSource(_RecordsSource):
    """A parquet file with a string column ``field``; streamed by record batch and tokenised once into ``<out>/data``."""

    _kind: ClassVar[str] = "parquet"
    parquet: str = Field(description="path of the .parquet file (relative to the config's folder)")


# One entry per source kind: the key that selects it -> its model. A new kind is one model and one line here.
SOURCE_KINDS: dict[str, type[_Section]] = {"token_file": TokenFileSource, "text_folder": TextFolderSource,
                                            "jsonl": JsonlSource, "parquet": ParquetSource}
_TAG = "source="  # union tags show up in pydantic's error locations; this prefix marks them for removal


def _source_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _TAG + next(k for k in SOURCE_KINDS if hasattr(value, k))
    if not isinstance(value, dict):
        return None
    kinds = [k for k in SOURCE_KINDS if k in value]
    return _TAG + kinds[0] if len(kinds) == 1 else None


Source = Annotated[
    Union[tuple(Annotated[model, Tag(_TAG + key)] for key, model in SOURCE_KINDS.items())],  # type: ignore[misc]
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message=f"give exactly one of {' or '.join(SOURCE_KINDS)}",
    ),
]
"""One data source: a mapping with exactly one of the :data:`SOURCE_KINDS` keys."""

Sources = Annotated[dict[Name, Source], Field(min_length=1)]


class DevTestSource(_Section):
    """A target given as two sources kept apart: ``dev`` measures influence, ``test`` is the reported loss.

    Identical sequences in both are refused when the run opens them (rows are compared by hash).
    """

    dev: Source = Field(description="the target's dev sequences (influence measurement)")
    test: Source = Field(description="the target's test sequences (evaluation only)")


_SPLIT_TAG = "target="  # tags of the target union; removed from error locations like _TAG


def _target_kind(value: Any) -> str:
    if isinstance(value, DevTestSource) or (isinstance(value, dict) and ("dev" in value or "test" in value)):
        return _SPLIT_TAG + "split"
    return _SPLIT_TAG + "source"


TargetSources = Annotated[
    dict[Name, Annotated[Union[Annotated[Source, Tag(_SPLIT_TAG + "source")],
                               Annotated[DevTestSource, Tag(_SPLIT_TAG + "split")]], Discriminator(_target_kind)]],
    Field(min_length=1),
]


# ---------------------------------------------------------------------------------------------- sections
class DataConfig(_Section):
    """Training domains, target tasks and the sequence length."""

    seq_len: Annotated[int, Field(ge=1, le=2**20)] = Field(description="tokens per training sequence")
    domains: Sources = Field(description="name -> source (one of token_file / text_folder); the mixture's domains")
    targets: TargetSources = Field(
        description="name -> {dev: source, test: source} (influence is measured on dev, the loss reported on test; "
        "identical sequences in both are refused), or name -> source (fallback: the first half by position is dev, "
        "the second test; a warning says so)"
    )
    initial_weights: list[Annotated[FiniteFloat, Field(ge=0)]] | None = Field(
        None,
        description="first-stage mixture: a list in domain order or a mapping name -> weight (missing = 0); "
        "normalised; null = uniform",
    )
    vocab_size: Annotated[int, Field(ge=2, le=2**32)] | None = Field(
        None, description="null = the largest vocab_size in the token-file headers, at least 256"
    )

    @field_validator("domains", "targets")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if ".." in name:
                raise _Invalid((name,), "a name must not contain '..'")
        return v

    @field_validator("initial_weights", mode="before")
    @classmethod
    def _weights_by_name(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict) or "domains" not in info.data:
            return v
        names = list(info.data["domains"])
        extra = [k for k in v if k not in names]
        if extra:
            raise _Invalid((str(extra[0]),), f"not a domain (domains: {', '.join(names)})")
        return [v.get(n, 0.0) for n in names]

    @model_validator(mode="after")
    def _weights_match_domains(self) -> "DataConfig":
        w = self.initial_weights
        if w is None:
            return self
        names = list(self.domains)
        if len(w) != len(names):
            raise _Invalid(("initial_weights",), f"has {len(w)} entries but there are {len(names)} domains ({', '.join(names)})")
        total = math.fsum(w)
        if total <= 0:
            raise _Invalid(("initial_weights",), "the weights sum to 0")
        self.initial_weights = [x / total for x in w]
        return self


class HFModelConfig(_Section):
    """A Hugging Face causal LM: built from a config (``AutoModelForCausalLM.from_config``) or loaded from a local
    folder (``from_pretrained(path, local_files_only=True)``). Nothing is ever downloaded."""

    config: dict[str, Any] | None = Field(
        None, description="config keys with model_type, e.g. {model_type: llama, hidden_size: 64, ...}")
    path: str | None = Field(None, description="a local folder with config.json (and weights); hub ids are refused")

    @model_validator(mode="after")
    def _one_of(self, info: ValidationInfo) -> "HFModelConfig":
        if (self.config is None) == (self.path is None):
            raise _Invalid((), "give exactly one of config or path")
        if self.config is not None:
            if not isinstance(self.config.get("model_type"), str):
                raise _Invalid(("config", "model_type"), "required: the architecture name (llama, gpt2, qwen2, ...)")
            return self
        path = _resolve(_base_dir(info), str(self.path))
        if not path.is_dir():
            raise _Invalid(("path",), f"not a local folder: {path}. tikmix never downloads models; a hub model id "
                                      "is refused: save the model locally (save_pretrained) and give that folder")
        if not (path / "config.json").is_file():
            raise _Invalid(("path",), f"{path} has no config.json (expected a save_pretrained folder)")
        self.path = str(path)
        return self


_DEMO_FIELDS = ("n_layer", "n_head", "d_model", "dropout")


class ModelConfig(_Section):
    """The model: the demo GPT (default, sized by n_layer/n_head/d_model/dropout), ``hf`` or ``factory``."""

    n_layer: Annotated[int, Field(ge=1, le=1024)] = Field(2, description="demo GPT: transformer blocks")
    n_head: Annotated[int, Field(ge=1, le=1024)] = Field(4, description="demo GPT: attention heads")
    d_model: Annotated[int, Field(ge=1, le=2**16)] = Field(64, description="demo GPT: width; divisible by n_head")
    dropout: Annotated[FiniteFloat, Field(ge=0, lt=1)] = Field(0.0, description="demo GPT: dropout probability")
    hf: HFModelConfig | None = Field(None, description="a Hugging Face causal LM: {config: {...}} or {path: folder}")
    factory: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = Field(
        None, description="'package.module:function' called as function(vocab_size=V, seq_len=T) -> (model, loss_fn)")

    @model_validator(mode="after")
    def _one_model(self) -> "ModelConfig":
        if self.hf is not None and self.factory is not None:
            raise _Invalid(("factory",), "give model.hf or model.factory, not both")
        if self.hf is not None or self.factory is not None:
            demo = [f for f in _DEMO_FIELDS if f in self.model_fields_set]
            if demo:
                raise _Invalid((demo[0],), f"sizes the demo GPT; it has no effect with model."
                                           f"{'hf' if self.hf is not None else 'factory'}")
            return self
        if self.d_model % self.n_head:
            raise _Invalid(("d_model",), f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        return self

    @property
    def kind(self) -> str:
        """``"demo"``, ``"hf"`` or ``"factory"``."""
        return "hf" if self.hf is not None else "factory" if self.factory is not None else "demo"


class TrainConfig(_Section):
    """Optimiser (AdamW, betas 0.9/0.98), cosine schedule with warm-up, evaluation and checkpoint cadence."""

    steps: PositiveInt = Field(description="optimizer steps (the training budget)")
    batch_size: PositiveInt = Field(32, description="global sequences per step (all ranks); divisible by the world size")
    lr: Annotated[FiniteFloat, Field(gt=0)] = Field(3e-3, description="peak learning rate")
    warmup: NonNegativeInt = Field(50, description="linear warm-up steps")
    min_lr_ratio: Annotated[FiniteFloat, Field(ge=0, le=1)] = Field(0.1, description="final lr / peak lr of the cosine decay")
    weight_decay: Annotated[FiniteFloat, Field(ge=0)] = Field(0.01, description="AdamW weight decay")
    grad_clip: Annotated[FiniteFloat, Field(gt=0)] | None = Field(1.0, description="max gradient norm; null = off")
    eval_every: PositiveInt = Field(100, description="evaluate the target test halves every this many steps")
    checkpoint_every: PositiveInt = Field(500, description="write a checkpoint every this many steps (and at the end)")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="data parallelism under torchrun: ddp (DistributedDataParallel) or fsdp (FSDP2 fully_shard "
        "per block + root; checkpoints with torch.distributed.checkpoint, resumable at another world size)")


class StagesConfig(_Section):
    """Where the mixture is re-chosen."""

    unit: Literal["steps", "tokens"] = Field("steps", description="unit of the boundaries")
    boundaries: list[PositiveInt] = Field(
        description="strictly increasing; each before the end of training; the mixture is re-chosen at each"
    )

    @model_validator(mode="after")
    def _increasing(self) -> "StagesConfig":
        prev = 0
        for i, b in enumerate(self.boundaries):
            if b <= prev:
                raise _Invalid(("boundaries", i), f"boundaries must be strictly increasing ({b} after {prev})")
            prev = b
        return self


class SolverConfig(_Section):
    """How the mixture is chosen: re-solved at each boundary (TiKMiX-D / TiKMiX-M) or fixed (a baseline)."""

    name: Literal["direct", "regression", "static", "proportional"] = Field(
        "direct", description="direct (TiKMiX-D), regression (TiKMiX-M), static (the fixed mixture in weights: a "
        "baseline, e.g. uniform) or proportional (fixed, proportional to the domains' sizes)")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="solve_direct keyword arguments; for regression {direct: {...}, regression: {...}}",
    )
    weights: Union[Literal["uniform"], list[Annotated[FiniteFloat, Field(ge=0)]], dict[str, Annotated[FiniteFloat, Field(ge=0)]], None] = Field(
        None, description="static only: 'uniform', a list in domain order or a mapping name -> weight (missing = 0); "
        "normalised")
    decision: Union[Literal["paper", "robust"], dict[str, Any], None] = Field(
        None, description="direct/regression: how the measured S becomes the solver's input (tikmix.decision."
        "Decision): robust (default: CI shrinkage of per-sample S, smoothing, max_shift, min_r2), paper (S as measured), or a dict of "
        "its options")

class InfluenceConfig(_Section):
    """Group Influence measurement (:class:`tikmix.GroupInfluence`) at each boundary."""

    k: PositiveInt | None = Field(1024, description="sketch dimension; null = exact gradients")
    samples_per_domain: PositiveInt = Field(64, description="rows drawn from each domain at every boundary")
    batch_size: PositiveInt = Field(32, description="micro-batch size while measuring influence")
    target_samples: PositiveInt | None = Field(None, description="at most this many examples per target; null = all")
    preconditioner: Literal["identity", "adam", "gauss_newton"] = Field("identity", description="gradient preconditioner")
    n_bootstrap: NonNegativeInt = Field(200, description="bootstrap resamples for confidence intervals")
    damping: Annotated[FiniteFloat, Field(gt=0)] = Field(0.1, description="preconditioner damping")
    params: list[str] | None = Field(
        None, description="parameter names (fnmatch patterns) whose gradients are used; a string or a list; null = all"
    )

    @field_validator("params", mode="before")
    @classmethod
    def _one_pattern(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class RunConfig(_Section):
    """A complete, validated ``tikmix run`` config (paths resolved against the config's folder)."""

    out: str = Field(description="output folder: checkpoints, history.json, plots")
    seed: Annotated[int, Field(ge=0, lt=2**63)] = Field(0, description="model init, sampler, influence samples, sketch")
    device: str = Field("cpu", description="cpu, cuda or cuda:N (under torchrun: cuda -> cuda:LOCAL_RANK)")
    data: DataConfig = Field(description="domains, targets, sequence length")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the model")
    train: TrainConfig = Field(description="optimisation")
    stages: StagesConfig = Field(
        default_factory=lambda: StagesConfig(boundaries=[]),
        description="stage boundaries (required by direct/regression; none for static/proportional)")
    solver: SolverConfig = Field(default_factory=SolverConfig, description="mixture solver")
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig, description="influence measurement")
    tokenizer: str = Field(
        "bytes", description="bytes, a local tokenizer.json, or a local tiktoken BPE rank file; used for "
        "text_folder / jsonl / parquet sources (token files are used as they are)")
    log: Literal["none", "tensorboard"] = Field(
        "none", description="tensorboard: scalars (weights, S, losses) under <out>/tensorboard")
    on_boundary: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = Field(
        None, description="'package.module:function' called with each stage boundary's history record")

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_loads(cls, v: str, info: ValidationInfo) -> str:
        from tikmix.data.tokenizers import TokenizerSpecError, load_tokenizer

        if v == "bytes":
            return v
        path = _resolve(_base_dir(info), v)
        try:
            load_tokenizer(path)
        except TokenizerSpecError as exc:
            raise _Invalid((), str(exc)) from None
        return str(path)

    @field_validator("out")
    @classmethod
    def _resolve_out(cls, v: str, info: ValidationInfo) -> str:
        return str(_resolve(_base_dir(info), v))

    @model_validator(mode="after")
    def _fixed_mixture(self) -> "RunConfig":
        sv, names = self.solver, list(self.data.domains)
        fixed = sv.name in ("static", "proportional")
        if sv.name == "static":
            w = sv.weights
            if w is None:
                raise ConfigError("solver.weights", "required with solver static: 'uniform', a list in domain order "
                                                    f"or a mapping name -> weight (domains: {', '.join(names)})")
            if w == "uniform":
                w = [1.0] * len(names)
            elif isinstance(w, dict):
                extra = [k for k in w if k not in names]
                if extra:
                    raise ConfigError(f"solver.weights.{extra[0]}", f"not a domain (domains: {', '.join(names)})")
                w = [float(w.get(n, 0.0)) for n in names]
            if len(w) != len(names):
                raise ConfigError("solver.weights", f"has {len(w)} entries but there are {len(names)} domains "
                                                    f"({', '.join(names)})")
            total = math.fsum(w)
            if total <= 0:
                raise ConfigError("solver.weights", "the weights sum to 0")
            sv.weights = [x / total for x in w]
        elif sv.weights is not None:
            raise ConfigError("solver.weights", f"only for solver static (this is solver {sv.name})")
        if fixed:
            if self.stages.boundaries:
                raise ConfigError("stages.boundaries", f"solver {sv.name} keeps one mixture for the whole run: "
                                                       "leave stages out (or give boundaries: [])")
            if self.data.initial_weights is not None:
                raise ConfigError("data.initial_weights", f"solver {sv.name} sets the mixture; leave initial_weights "
                                                          "out")
            for key in ("options", "decision"):
                if getattr(sv, key):
                    raise ConfigError(f"solver.{key}", f"has no effect with solver {sv.name}")
        elif not self.stages.boundaries:
            raise ConfigError("stages.boundaries", f"solver {sv.name} re-chooses the mixture at stage boundaries; give "
                                                   "at least one (for a fixed mixture use solver static)")
        elif sv.decision is not None:
            from tikmix.decision import Decision

            try:
                Decision.from_options(sv.decision)
            except (TypeError, ValueError) as exc:
                raise ConfigError("solver.decision", str(exc)) from None
        return self

    @model_validator(mode="after")
    def _stages_fit_budget(self) -> "RunConfig":
        t, st = self.train, self.stages
        tokens_per_step = t.batch_size * self.data.seq_len
        budget = t.steps if st.unit == "steps" else t.steps * tokens_per_step
        for i, b in enumerate(st.boundaries):
            step = b if st.unit == "steps" else -(-b // tokens_per_step)
            if step >= t.steps:
                raise _Invalid(
                    ("stages", "boundaries", i),
                    f"{b} {st.unit} is at or beyond the training budget ({budget} {st.unit} = train.steps {t.steps})",
                )
        return self

    @property
    def out_dir(self) -> Path:
        """The output folder as a path."""
        return Path(self.out)

    @property
    def tokens_per_step(self) -> int:
        """Global training tokens per optimizer step."""
        return self.train.batch_size * self.data.seq_len

    def comparable(self) -> dict[str, Any]:
        """The parts a checkpoint must match to be resumed (everything but the eval/checkpoint cadence)."""
        raw = self.model_dump(mode="json")
        raw["train"].pop("checkpoint_every", None)
        raw["train"].pop("eval_every", None)
        return raw


# ---------------------------------------------------------------------------------------------- errors
def _dotted(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, str) and (part.startswith((_TAG, _SPLIT_TAG)) or part == "[key]" or part == ""):
            continue
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key or "<root>"


_TYPE_NAMES = {
    "int_type": "int", "int_parsing": "int", "int_from_float": "int", "float_type": "number",
    "float_parsing": "number", "string_type": "str", "bool_type": "bool", "list_type": "list",
    "dict_type": "mapping", "model_type": "mapping", "model_attributes_type": "mapping",
}


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    """(dotted key, message) of one pydantic error."""
    loc = tuple(err["loc"])
    kind = err["type"]
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, _Invalid):
        return _dotted(loc + error.parts), error.message
    key = _dotted(loc)
    value = err.get("input")
    if kind == "missing":
        return key, "required key is missing"
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        return key, "unknown key" + (f" (known keys here: {', '.join(known)})" if known else "")
    if kind in _TYPE_NAMES:
        got = "a bool" if isinstance(value, bool) else type(value).__name__
        return key, f"expected {_TYPE_NAMES[kind]}, got {got} ({value!r})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return key, f"{msg[:1].lower()}{msg[1:]}, got {value!r}" if kind not in ("source_kind",) else msg


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, str) and part.startswith(_SPLIT_TAG):
            model = DevTestSource if part.endswith("split") else model
        elif isinstance(part, str) and part.startswith(_TAG):
            model = SOURCE_KINDS[part[len(_TAG):]]
        elif isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _section_model(model.model_fields[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _section_model(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def validate_config(raw: Any, base_dir: str | os.PathLike[str] = ".") -> RunConfig:
    """Check a parsed config completely; fill defaults. Nothing is built, trained or written.

    The schema first (keys, types, bounds, files exist, cross-field rules; relative paths resolved against
    ``base_dir``), then the checks against the surroundings (:mod:`tikmix.run.preflight`: output folder,
    device, token ids vs vocab_size, influence and solver options). Raises :class:`ConfigError` naming the
    first bad key (the message lists any other bad keys the schema found); warns with :class:`ConfigWarning`.
    """
    from .preflight import check_all

    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
        key, message = problems[0]
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more: {', '.join(k for k, _ in problems[1:])})"
        raise ConfigError(key, message) from None
    check_all(cfg)
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
    """Read and validate a YAML config file (relative paths inside are relative to the file's folder)."""
    yaml = require("yaml", "run", "reading a tikmix run config")
    p = Path(path)
    if not p.is_file():
        raise ConfigError("<file>", f"config file not found: {p}")
    text = p.read_text()
    try:
        _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{p} is not valid YAML: {exc}") from None
    return validate_config(raw, p.parent)


def config_differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain (JSON-like) config dumps."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            out += config_differences(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if saved == current else [path or "<root>"]


# ---------------------------------------------------------------------------------------------- reference
EXAMPLE = """\
out: runs/exp1                  # checkpoints, history.json and plots go here
seed: 0
device: cpu                     # or cuda, cuda:1 (under torchrun: cuda -> cuda:LOCAL_RANK)
data:
  seq_len: 64
  domains:                      # name -> exactly one of token_file / text_folder
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
        section = _section_model(field.annotation)
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
    """The ``tikmix run`` config reference page (markdown), generated from this schema.

    The docs page ``docs/run-config.md`` is this text; a test keeps the two equal.
    """
    sources = []
    for kind, model in SOURCE_KINDS.items():
        sources.append(f"**`{kind}`** — {(model.__doc__ or '').strip()}\n\n" + _table(_rows(model, "")))
    return f"""<!-- Generated from the schema in tikmix/run/config.py by tikmix.run.config.reference_markdown(); edit the schema, not this page. -->
# `tikmix run` configuration

`tikmix run CONFIG.yaml` trains the demo GPT on your data with staged, influence-driven mixtures.
The YAML config is checked completely before anything is built or trained: `tikmix run CONFIG.yaml --check`
only checks it. A bad entry stops the run with exit status 2 and a message that starts with its dotted key,
for example `data.domains.web.token_file: file not found: runs/data/web.tokens`. A key given twice, an
unknown key and a value of the wrong type (`"3"` for 3) are errors too. Relative paths are relative to the
config file's folder. `--resume` continues from the last good checkpoint in `out` and refuses a config that
differs from the checkpoint's (naming the keys) in anything but `train.eval_every` and `train.checkpoint_every`.

## Example

```yaml
{EXAMPLE}```

## Keys

{_table(_rows(RunConfig, ""))}

Also checked before training: `model.d_model` is divisible by `model.n_head`; every stage boundary falls
before the end of training; `data.initial_weights` has one entry per domain and a positive sum; the token
ids of every source fit `data.vocab_size`; `device` exists on this machine; `out` is not a file;
`influence.params` patterns each match a parameter; `solver.options` are accepted by the solver
(`solve_direct` keyword arguments; for `regression`, `{{direct: {{...}}, regression: {{..., score: {{...}}}}}}` for
`solve_direct`, `solve_regression` and `mixture_score_fn`), including bounds that no mixture can meet. A
target that reads the same file as a training domain gives a warning.

## Data sources

Each entry of `data.domains`, and each target of `data.targets` (or its `dev` and `test`), is a mapping with
exactly one of these keys.

{(chr(10) * 2).join(sources)}
"""

