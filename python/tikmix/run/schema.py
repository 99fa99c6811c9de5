"""The ``tikmix run`` config schema: pydantic v2 declarations of keys, types, defaults, bounds and cross-field rules.

Declarations only: nothing here reads a file, loads a tokenizer or imports a model. Relative paths are resolved
against the ``base_dir`` of the validation context (string operations only). Reading YAML, the checks against the
machine and the data, and the translation of pydantic's errors into :class:`ConfigError` live in
:mod:`tikmix.run.config`; the reference page is rendered by :mod:`tikmix.run.reference`.

Each section is its own model, and every data source kind its own model in the :data:`Source` union, so a
new section, option or source kind is a local addition.
"""

from __future__ import annotations

import math
import os
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from tikmix.defaults import ADAPTIVE_SAMPLING, INFLUENCE

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "SchemaError",
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "StagesConfig",
    "SolverConfig",
    "InfluenceConfig",
    "AdaptiveSamplingConfig",
    "TokenFileSource",
    "DevTestSource",
    "TextFolderSource",
    "JsonlSource",
    "ParquetSource",
    "HFModelConfig",
    "Source",
    "SOURCE_KINDS",
    "NAME_PATTERN",
    "source_path",
    "section_model",
    "config_differences",
]


class ConfigError(ValueError):
    """A bad ``tikmix run`` config; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self):  # rebuilt from both arguments, so it survives a worker process (pickling)
        return type(self), (self.key, self.message)


class SchemaError(ValueError):
    """Raised inside the schema's validators: ``parts`` locate the bad entry relative to the validated object, so
    the loader names the dotted key from pydantic's location plus ``parts`` (never from the message text)."""

    def __init__(self, parts: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.parts = parts
        self.message = message

    def __reduce__(self):  # rebuilt from both arguments, so it survives a worker process (pickling)
        return type(self), (self.parts, self.message)


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
class _FileSource(_Section):
    """Common part of every source: the path under the key named by ``_kind`` (resolved against the config's folder)
    and ``max_sequences``."""

    _kind: ClassVar[str]  # the key naming the file or folder: also the format it is read as

    max_sequences: PositiveInt | None = Field(None, description="use at most this many sequences (targets: split in halves)")

    @model_validator(mode="after")
    def _resolved(self, info: ValidationInfo) -> "_FileSource":
        setattr(self, self._kind, str(_resolve(_base_dir(info), getattr(self, self._kind))))
        return self


class TokenFileSource(_FileSource):
    """A token file written by `tikmix.write_token_file` (or a headerless array of token ids with `dtype`)."""

    _kind: ClassVar[str] = "token_file"
    token_file: str = Field(description="path of the token file (relative to the config's folder)")
    dtype: str | None = Field(None, description="element type of a headerless file (e.g. uint16); null = from the header")


class TextFolderSource(_FileSource):
    """A folder of text files, tokenised once with the run's `tokenizer` into `<out>/data`."""

    _kind: ClassVar[str] = "text_folder"
    text_folder: str = Field(description="folder of text files (relative to the config's folder)")
    pattern: str = Field("**/*.txt", description="glob of the files to read inside the folder")


class _RecordsSource(_FileSource):
    """Common part of the record-file sources: the text field."""

    field: str = Field("text", description="the record field (jsonl) or column (parquet) holding the text")


class JsonlSource(_RecordsSource):
    """A JSON-lines file, one document per line in ``field``; streamed and tokenised once into ``<out>/data``."""

    _kind: ClassVar[str] = "jsonl"
    jsonl: str = Field(description="path of the .jsonl file (relative to the config's folder)")


class ParquetSource(_RecordsSource):
    """A parquet file with a string column ``field``; streamed by record batch and tokenised once into ``<out>/data``."""

    _kind: ClassVar[str] = "parquet"
    parquet: str = Field(description="path of the .parquet file (relative to the config's folder)")


# One entry per source kind: the key that selects it -> its model. A new kind is one model and one line here.
SOURCE_KINDS: dict[str, type[_FileSource]] = {m._kind: m for m in (TokenFileSource, TextFolderSource, JsonlSource,
                                                                   ParquetSource)}
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
    domains: Sources = Field(description="name -> source (exactly one of token_file / text_folder / jsonl / parquet); the mixture's domains")
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
                raise SchemaError((name,), "a name must not contain '..'")
        return v

    @field_validator("initial_weights", mode="before")
    @classmethod
    def _weights_by_name(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict) or "domains" not in info.data:
            return v
        names = list(info.data["domains"])
        extra = [k for k in v if k not in names]
        if extra:
            raise SchemaError((str(extra[0]),), f"not a domain (domains: {', '.join(names)})")
        return [v.get(n, 0.0) for n in names]

    @model_validator(mode="after")
    def _weights_match_domains(self) -> "DataConfig":
        w = self.initial_weights
        if w is None:
            return self
        names = list(self.domains)
        if len(w) != len(names):
            raise SchemaError(("initial_weights",), f"has {len(w)} entries but there are {len(names)} domains ({', '.join(names)})")
        total = math.fsum(w)
        if total <= 0:
            raise SchemaError(("initial_weights",), "the weights sum to 0")
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
            raise SchemaError((), "give exactly one of config or path")
        if self.config is not None:
            if not isinstance(self.config.get("model_type"), str):
                raise SchemaError(("config", "model_type"), "required: the architecture name (llama, gpt2, qwen2, ...)")
            return self
        self.path = str(_resolve(_base_dir(info), str(self.path)))
        return self


_GPT_FIELDS = ("n_layer", "n_head", "d_model", "dropout")


class ModelConfig(_Section):
    """The model: the built-in GPT (default, sized by n_layer/n_head/d_model/dropout), ``hf`` or ``factory``."""

    n_layer: Annotated[int, Field(ge=1, le=1024)] = Field(2, description="built-in GPT: transformer blocks")
    n_head: Annotated[int, Field(ge=1, le=1024)] = Field(4, description="built-in GPT: attention heads")
    d_model: Annotated[int, Field(ge=1, le=2**16)] = Field(64, description="built-in GPT: width; divisible by n_head")
    dropout: Annotated[FiniteFloat, Field(ge=0, lt=1)] = Field(0.0, description="built-in GPT: dropout probability")
    hf: HFModelConfig | None = Field(None, description="a Hugging Face causal LM: {config: {...}} or {path: folder}")
    factory: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = Field(
        None, description="'package.module:function' called as function(vocab_size=V, seq_len=T) -> (model, loss_fn)")

    @model_validator(mode="after")
    def _one_model(self) -> "ModelConfig":
        if self.hf is not None and self.factory is not None:
            raise SchemaError(("factory",), "give model.hf or model.factory, not both")
        if self.hf is not None or self.factory is not None:
            demo = [f for f in _GPT_FIELDS if f in self.model_fields_set]
            if demo:
                raise SchemaError((demo[0],), f"sizes the built-in GPT; it has no effect with model."
                                           f"{'hf' if self.hf is not None else 'factory'}")
            return self
        if self.d_model % self.n_head:
            raise SchemaError(("d_model",), f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        return self

    @property
    def kind(self) -> str:
        """``"builtin"``, ``"hf"`` or ``"factory"``."""
        return "hf" if self.hf is not None else "factory" if self.factory is not None else "builtin"


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
                raise SchemaError(("boundaries", i), f"boundaries must be strictly increasing ({b} after {prev})")
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
        "its options (objective, shrink, ema, max_shift, min_r2, safe, trust_region)")


class AdaptiveSamplingConfig(_Section):
    """Influence rows measured in rounds until stable (:mod:`tikmix.influence.adaptive`)."""

    tolerance: Annotated[FiniteFloat, Field(ge=0)] = Field(
        ADAPTIVE_SAMPLING["tolerance"], description="a domain or target stops once its stability value (bootstrap "
        "half-width, or the last round's move of S, relative to its row's max |S|) is below this; 0 = never early")
    min_samples: PositiveInt = Field(ADAPTIVE_SAMPLING["min_samples"],
                                     description="rows a domain or target takes before it may stop")
    round_samples: PositiveInt = Field(ADAPTIVE_SAMPLING["round_samples"],
                                       description="rows added per round (group mode: rounded up to whole micro-batches)")


class InfluenceConfig(_Section):
    """Group Influence measurement (:class:`tikmix.GroupInfluence`) at each boundary."""

    k: PositiveInt | None = Field(INFLUENCE["k"], description="sketch dimension; null = exact gradients")
    samples_per_domain: PositiveInt = Field(INFLUENCE["samples_per_domain"], description="rows drawn from each domain at every boundary")
    batch_size: PositiveInt = Field(INFLUENCE["batch_size"], description="micro-batch size while measuring influence")
    target_samples: PositiveInt | None = Field(None, description="at most this many examples per target; null = all")
    preconditioner: Literal["identity", "adam", "gauss_newton"] = Field("identity", description="gradient preconditioner")
    n_bootstrap: NonNegativeInt = Field(INFLUENCE["n_bootstrap"], description="bootstrap resamples for confidence intervals")
    damping: Annotated[FiniteFloat, Field(gt=0)] = Field(0.1, description="preconditioner damping")
    params: list[str] | None = Field(
        None, description="parameter names (fnmatch patterns) whose gradients are used; a string or a list; null = all"
    )
    adaptive: AdaptiveSamplingConfig | None = Field(
        None, description="measure in rounds, each domain and target up to samples_per_domain / target_samples rows, "
        "until stable; null = every row of the draw")

    @model_validator(mode="after")
    def _adaptive_fits(self) -> "InfluenceConfig":
        ad = self.adaptive
        if ad is not None:
            if self.preconditioner == "gauss_newton":
                raise SchemaError(("adaptive",), "is not available with preconditioner gauss_newton (fitted on every "
                                  "measured row); use identity or adam, or adaptive: null")
            if self.n_bootstrap < 1:
                raise SchemaError(("adaptive",), "needs n_bootstrap >= 1 (a domain stops when its bootstrap interval "
                                  "is narrow enough)")
        return self

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
    def _resolve_tokenizer(cls, v: str, info: ValidationInfo) -> str:
        return v if v == "bytes" else str(_resolve(_base_dir(info), v))

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
                raise SchemaError(("solver", "weights"), "required with solver static: 'uniform', a list in domain order "
                                                    f"or a mapping name -> weight (domains: {', '.join(names)})")
            if w == "uniform":
                w = [1.0] * len(names)
            elif isinstance(w, dict):
                extra = [k for k in w if k not in names]
                if extra:
                    raise SchemaError(("solver", "weights", str(extra[0])), f"not a domain (domains: {', '.join(names)})")
                w = [float(w.get(n, 0.0)) for n in names]
            if len(w) != len(names):
                raise SchemaError(("solver", "weights"), f"has {len(w)} entries but there are {len(names)} domains "
                                                    f"({', '.join(names)})")
            total = math.fsum(w)
            if total <= 0:
                raise SchemaError(("solver", "weights"), "the weights sum to 0")
            sv.weights = [x / total for x in w]
        elif sv.weights is not None:
            raise SchemaError(("solver", "weights"), f"only for solver static (this is solver {sv.name})")
        if fixed:
            if self.stages.boundaries:
                raise SchemaError(("stages", "boundaries"), f"solver {sv.name} keeps one mixture for the whole run: "
                                                       "leave stages out (or give boundaries: [])")
            if self.data.initial_weights is not None:
                raise SchemaError(("data", "initial_weights"), f"solver {sv.name} sets the mixture; leave initial_weights "
                                                          "out")
            for key in ("options", "decision"):
                if getattr(sv, key):
                    raise SchemaError(("solver", key), f"has no effect with solver {sv.name}")
        elif not self.stages.boundaries:
            raise SchemaError(("stages", "boundaries"), f"solver {sv.name} re-chooses the mixture at stage boundaries; give "
                                                   "at least one (for a fixed mixture use solver static)")
        elif sv.decision is not None:
            from tikmix.decision import Decision, DecisionOptionError

            try:
                Decision.from_options(sv.decision)
            except DecisionOptionError as exc:
                raise SchemaError(("solver", "decision", *exc.option), exc.detail) from None
            except (TypeError, ValueError) as exc:
                raise SchemaError(("solver", "decision"), str(exc)) from None
        return self

    @model_validator(mode="after")
    def _stages_fit_budget(self) -> "RunConfig":
        t, st = self.train, self.stages
        tokens_per_step = t.batch_size * self.data.seq_len
        budget = t.steps if st.unit == "steps" else t.steps * tokens_per_step
        for i, b in enumerate(st.boundaries):
            step = b if st.unit == "steps" else -(-b // tokens_per_step)
            if step >= t.steps:
                raise SchemaError(
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
        """The parts a checkpoint must match to be resumed: everything that changes results.

        Left out: ``out`` (a run folder can be moved or renamed and resumed there) and the eval/checkpoint cadence.
        """
        raw = self.model_dump(mode="json")
        raw.pop("out", None)
        raw["train"].pop("checkpoint_every", None)
        raw["train"].pop("eval_every", None)
        return raw




def section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field's annotation holds (``X``, ``X | None``, ...), or None."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def source_path(src: Any) -> str:
    """The file or folder a source reads (its ``token_file``, ``text_folder``, ``jsonl`` or ``parquet``)."""
    return str(getattr(src, src._kind))


def config_differences(saved: Any, current: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain (JSON-like) config dumps."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            out += config_differences(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if saved == current else [path or "config"]
