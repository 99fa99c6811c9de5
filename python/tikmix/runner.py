"""``tikmix run CONFIG.yaml``: staged TiKMiX training of the demo GPT on the user's own data.

The config is a YAML mapping, validated completely before anything is built or trained; every problem
raises :class:`ConfigError` (a ValueError) whose message starts with the dotted key, e.g.
``data.domains.web.token_file: file not found: data/web.bin``.

.. code-block:: yaml

    out: runs/exp1                  # required: checkpoints, history.json, plots go here
    seed: 0                         # model init, sampler, influence samples, sketch
    device: cpu                     # or cuda, cuda:1 (under torchrun: cuda -> cuda:LOCAL_RANK)
    data:
      seq_len: 64                   # required: tokens per training sequence
      domains:                      # required: name -> exactly one of token_file / text_folder
        web:  {token_file: data/web.tokens}
        code: {text_folder: data/code, pattern: "**/*.py"}
      targets:                      # required: name -> source; first half -> influence, second -> eval
        qa:   {token_file: data/qa.tokens, max_sequences: 512}
      initial_weights: {web: 0.7, code: 0.3}   # optional (list in domain order, or mapping); default uniform
      vocab_size: 257               # optional; default: from the token-file headers, else 256
    model: {n_layer: 2, n_head: 4, d_model: 64, dropout: 0.0}
    train:
      steps: 2000                   # required
      batch_size: 32                # global (all ranks); divisible by the world size
      lr: 0.003
      warmup: 50
      min_lr_ratio: 0.1
      weight_decay: 0.01
      grad_clip: 1.0                # null = off
      eval_every: 100
      checkpoint_every: 500         # a checkpoint is also written at the end
    stages:
      unit: steps                   # or tokens
      boundaries: [500, 1000, 1500] # each < the budget
    solver:
      name: direct                  # direct (TiKMiX-D) | regression (TiKMiX-M)
      options: {}                   # solve_direct kwargs; for regression {direct: {...}, regression: {...}}
    influence:
      k: 1024
      samples_per_domain: 64
      batch_size: 32
      preconditioner: identity      # identity | adam | gauss_newton
      n_bootstrap: 200

Text folders are tokenised once with the byte-level tokenizer into ``<out>/data/<name>.tokens``.
Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on CUDA),
the model is wrapped in DistributedDataParallel, every rank reads its slice of each global batch from
the :class:`tikmix.MixtureSampler`, and influence sketches are all-reduced.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["ConfigError", "RunConfig", "load_config", "validate_config", "train"]


class ConfigError(ValueError):
    """A bad ``tikmix run`` config; ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


# key -> (type(s), required, default). Nested dicts have their own schema.
_SOURCE_KEYS = {"token_file", "text_folder", "pattern", "dtype", "max_sequences"}
_SCHEMA: dict[str, Any] = {
    "out": (str, True, None),
    "seed": (int, False, 0),
    "device": (str, False, "cpu"),
    "data": {
        "seq_len": (int, True, None),
        "domains": ("sources", True, None),
        "targets": ("sources", True, None),
        "initial_weights": ((list, dict), False, None),
        "vocab_size": (int, False, None),
    },
    "model": {
        "n_layer": (int, False, 2),
        "n_head": (int, False, 4),
        "d_model": (int, False, 64),
        "dropout": ((int, float), False, 0.0),
    },
    "train": {
        "steps": (int, True, None),
        "batch_size": (int, False, 32),
        "lr": ((int, float), False, 3e-3),
        "warmup": (int, False, 50),
        "min_lr_ratio": ((int, float), False, 0.1),
        "weight_decay": ((int, float), False, 0.01),
        "grad_clip": ((int, float, type(None)), False, 1.0),
        "eval_every": (int, False, 100),
        "checkpoint_every": (int, False, 500),
    },
    "stages": {
        "unit": (str, False, "steps"),
        "boundaries": (list, True, None),
    },
    "solver": {
        "name": (str, False, "direct"),
        "options": (dict, False, None),
    },
    "influence": {
        "k": ((int, type(None)), False, 1024),
        "samples_per_domain": (int, False, 64),
        "batch_size": (int, False, 32),
        "target_samples": ((int, type(None)), False, None),
        "preconditioner": (str, False, "identity"),
        "n_bootstrap": (int, False, 200),
        "damping": ((int, float), False, 0.1),
        "params": ((str, list, type(None)), False, None),
    },
}
_REQUIRED_SECTIONS = ("data", "train", "stages")


@dataclass
class RunConfig:
    """A validated config: plain nested dicts with defaults filled in, plus the resolved base directory."""

    raw: dict[str, Any]
    base_dir: Path

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def out(self) -> Path:
        return _resolve(self.base_dir, self.raw["out"])


def _resolve(base: Path, p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else base / path


def _type_name(t: Any) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def _check_type(key: str, value: Any, types: Any) -> None:
    ts = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in ts:
        raise ConfigError(key, f"expected {_type_name(types)}, got a bool ({value!r})")
    if not isinstance(value, ts):
        raise ConfigError(key, f"expected {_type_name(types)}, got {type(value).__name__} ({value!r})")


def _fill(section: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, base: Path) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        raise ConfigError(prefix.rstrip("."), f"expected a mapping, got {type(section).__name__}")
    out: dict[str, Any] = {}
    unknown = [k for k in section if k not in schema]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known keys here: {', '.join(schema)})")
    for key, spec in schema.items():
        full = f"{prefix}{key}"
        if isinstance(spec, dict):
            if key not in section and key in _REQUIRED_SECTIONS:
                raise ConfigError(full, "required section is missing")
            out[key] = _fill(section.get(key) or {}, spec, full + ".", base)
            continue
        types, required, default = spec
        if key not in section:
            if required:
                raise ConfigError(full, "required key is missing")
            out[key] = default
            continue
        value = section[key]
        if types == "sources":
            out[key] = _sources(value, full, base)
        else:
            _check_type(full, value, types)
            out[key] = value
    return out


def _sources(value: Any, key: str, base: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(key, "expected a non-empty mapping name -> {token_file: ...} or {text_folder: ...}")
    out = {}
    for name, src in value.items():
        k = f"{key}.{name}"
        if not isinstance(src, Mapping):
            raise ConfigError(k, f"expected a mapping with token_file or text_folder, got {type(src).__name__}")
        unknown = [x for x in src if x not in _SOURCE_KEYS]
        if unknown:
            raise ConfigError(f"{k}.{unknown[0]}", f"unknown key (known keys here: {', '.join(sorted(_SOURCE_KEYS))})")
        kinds = [x for x in ("token_file", "text_folder") if x in src]
        if len(kinds) != 1:
            raise ConfigError(k, "give exactly one of token_file or text_folder")
        kind = kinds[0]
        _check_type(f"{k}.{kind}", src[kind], str)
        path = _resolve(base, src[kind])
        if kind == "token_file" and not path.is_file():
            raise ConfigError(f"{k}.token_file", f"file not found: {path}")
        if kind == "text_folder":
            if not path.is_dir():
                raise ConfigError(f"{k}.text_folder", f"folder not found: {path}")
            pattern = src.get("pattern", "**/*.txt")
            if not any(p.is_file() for p in path.glob(pattern)):
                raise ConfigError(f"{k}.text_folder", f"no files matching {pattern!r} in {path}")
        entry = {"kind": kind, "path": str(path)}
        for opt, types in (("pattern", str), ("dtype", str), ("max_sequences", int)):
            if opt in src:
                _check_type(f"{k}.{opt}", src[opt], types)
                entry[opt] = src[opt]
        if entry.get("max_sequences", 1) < 1:
            raise ConfigError(f"{k}.max_sequences", "must be >= 1")
        out[str(name)] = entry
    return out


def validate_config(raw: Any, base_dir: str | Path = ".") -> RunConfig:
    """Check a parsed config completely (keys, types, files, weights, stages vs budget); fill defaults."""
    base = Path(base_dir)
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", f"the config must be a YAML mapping, got {type(raw).__name__}")
    cfg = _fill(raw, _SCHEMA, "", base)
    d, t, st, m = cfg["data"], cfg["train"], cfg["stages"], cfg["model"]
    for key, value in (("data.seq_len", d["seq_len"]), ("train.steps", t["steps"]),
                       ("train.batch_size", t["batch_size"]), ("train.eval_every", t["eval_every"]),
                       ("train.checkpoint_every", t["checkpoint_every"]), ("model.n_layer", m["n_layer"]),
                       ("model.n_head", m["n_head"]), ("model.d_model", m["d_model"]),
                       ("influence.samples_per_domain", cfg["influence"]["samples_per_domain"]),
                       ("influence.batch_size", cfg["influence"]["batch_size"])):
        if value < 1:
            raise ConfigError(key, f"must be >= 1, got {value}")
    if t["warmup"] < 0:
        raise ConfigError("train.warmup", f"must be >= 0, got {t['warmup']}")
    if not t["lr"] > 0:
        raise ConfigError("train.lr", f"must be > 0, got {t['lr']}")
    if m["d_model"] % m["n_head"]:
        raise ConfigError("model.d_model", f"{m['d_model']} is not divisible by model.n_head={m['n_head']}")
    if d["vocab_size"] is not None and d["vocab_size"] < 2:
        raise ConfigError("data.vocab_size", f"must be >= 2, got {d['vocab_size']}")
    names = list(d["domains"])
    w = d["initial_weights"]
    if w is not None:
        if isinstance(w, list):
            if len(w) != len(names):
                raise ConfigError("data.initial_weights",
                                  f"has {len(w)} entries but there are {len(names)} domains ({', '.join(names)})")
            weights = w
        else:
            extra = [k for k in w if k not in names]
            if extra:
                raise ConfigError(f"data.initial_weights.{extra[0]}", f"not a domain (domains: {', '.join(names)})")
            weights = [w.get(n, 0.0) for n in names]
        for i, x in enumerate(weights):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise ConfigError("data.initial_weights", f"entry {i} must be a finite number >= 0, got {x!r}")
        if sum(weights) <= 0:
            raise ConfigError("data.initial_weights", "the weights sum to 0")
        d["initial_weights"] = [float(x) / sum(weights) for x in weights]
    if st["unit"] not in ("steps", "tokens"):
        raise ConfigError("stages.unit", f"must be 'steps' or 'tokens', got {st['unit']!r}")
    tokens_per_step = t["batch_size"] * d["seq_len"]
    budget = t["steps"] if st["unit"] == "steps" else t["steps"] * tokens_per_step
    prev = 0
    for i, b in enumerate(st["boundaries"]):
        key = f"stages.boundaries[{i}]"
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ConfigError(key, f"must be a positive int, got {b!r}")
        if b <= prev:
            raise ConfigError(key, f"boundaries must be strictly increasing ({b} after {prev})")
        step = b if st["unit"] == "steps" else -(-b // tokens_per_step)
        if step >= t["steps"]:
            raise ConfigError(key, f"{b} {st['unit']} is at or beyond the training budget ({budget} {st['unit']}"
                                   f" = train.steps {t['steps']})")
        prev = b
    if cfg["solver"]["name"] not in ("direct", "regression"):
        raise ConfigError("solver.name", f"must be 'direct' or 'regression', got {cfg['solver']['name']!r}")
    cfg["solver"]["options"] = dict(cfg["solver"]["options"] or {})
    if cfg["influence"]["preconditioner"] not in ("identity", "adam", "gauss_newton"):
        raise ConfigError("influence.preconditioner",
                          f"must be identity, adam or gauss_newton, got {cfg['influence']['preconditioner']!r}")
    k = cfg["influence"]["k"]
    if k is not None and k < 1:
        raise ConfigError("influence.k", f"must be >= 1 or null (exact), got {k}")
    return RunConfig(cfg, base)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file (relative paths inside are relative to the file's folder)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError("<file>", f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{p} is not valid YAML: {exc}") from None
    return validate_config(raw, p.parent)


# ---------------------------------------------------------------------------------------------- data
def _datasets(cfg: RunConfig, kind: str, rank: int) -> dict[str, Any]:
    from tikmix.data import TokenFileDataset, build_token_file_from_texts

    seq_len = cfg["data"]["seq_len"]
    out = {}
    for name, src in cfg["data"][kind].items():
        path = Path(src["path"])
        if src["kind"] == "text_folder":
            path = cfg.out / "data" / f"{kind}_{name}.tokens"
            if rank == 0 and not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                build_token_file_from_texts(src["path"], path, pattern=src.get("pattern", "**/*.txt"))
            _barrier()
        try:
            ds = TokenFileDataset(path, seq_len, with_targets=True, dtype=src.get("dtype"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"data.{kind}.{name}", str(exc)) from None
        out[name] = ds
    return out


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _stack(ds: Any, idx: range) -> torch.Tensor:
    return torch.stack([ds[i] for i in idx])


# ---------------------------------------------------------------------------------------------- training
def _init_distributed(device: str) -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", "0")))
    return 0, 1, 0


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Train as the config says; returns the controller history.

    Args:
        cfg: a validated :class:`RunConfig` (:func:`load_config`).
        resume: continue from ``<out>/checkpoint.pt`` if it exists (else start fresh).
        progress: show a tqdm bar (rank 0).
        stop_at: stop after this step, right after writing a checkpoint there -- an interruption on purpose
            (used by tests and to split long runs); ``--resume`` continues from it.
        log: where one-line status messages go (rank 0).
    """
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from tikmix.controller import Controller
    from tikmix.data import MixtureSampler, concat_domains
    from tikmix.demo.model import GPT, GPTConfig, sequence_loss

    d, t = cfg["data"], cfg["train"]
    device_name = cfg["device"]
    rank, world, local_rank = _init_distributed(device_name)
    if device_name == "cuda" and world > 1:
        device_name = f"cuda:{local_rank}"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    say = log if rank == 0 else (lambda *a, **k: None)
    if t["batch_size"] % world:
        raise ConfigError("train.batch_size", f"{t['batch_size']} is not divisible by the world size {world}")
    out = cfg.out
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()

    domains = _datasets(cfg, "domains", rank)
    targets = _datasets(cfg, "targets", rank)
    names = list(domains)
    vocab = d["vocab_size"] or max([ds.vocab_size or 0 for ds in [*domains.values(), *targets.values()]] + [256])
    dev_sets, test_sets = {}, {}
    for name, ds in targets.items():
        n = min(len(ds), cfg["data"]["targets"][name].get("max_sequences", len(ds)))
        half = max(1, (n + 1) // 2)
        dev_sets[name] = _stack(ds, range(0, half))
        test_sets[name] = _stack(ds, range(half, n)) if n > half else dev_sets[name]

    seed = cfg["seed"]
    torch.manual_seed(seed)
    m = cfg["model"]
    model = GPT(GPTConfig(vocab_size=vocab, seq_len=d["seq_len"], n_layer=m["n_layer"], n_head=m["n_head"],
                          d_model=m["d_model"], dropout=float(m["dropout"]))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=(0.9, 0.98), weight_decay=t["weight_decay"])
    weights = d["initial_weights"] or [1.0 / len(names)] * len(names)
    sampler = MixtureSampler([len(ds) for ds in domains.values()], weights, batch_size=t["batch_size"], seed=seed,
                             tokens_per_sample=d["seq_len"])
    dataset = concat_domains(list(domains.values()))
    infl = dict(cfg["influence"])
    samples_per_domain = infl.pop("samples_per_domain")
    micro = infl.pop("batch_size")
    target_samples = infl.pop("target_samples")
    if infl["preconditioner"] == "adam":
        infl["optimizer"] = opt
    if infl.get("params") is None:
        infl.pop("params")
    solver_options = cfg["solver"]["options"]
    controller = Controller(
        model, sampler,
        domains=domains, targets=dev_sets, loss_fn=sequence_loss,
        stages=cfg["stages"]["boundaries"], stage_unit=cfg["stages"]["unit"],
        tokens_per_step=t["batch_size"] * d["seq_len"],
        solver=cfg["solver"]["name"], solver_options=solver_options, influence=infl,
        samples_per_domain=samples_per_domain, target_samples=target_samples, batch_size=micro,
        device=device, history_path=out / "history.json", seed=seed, total_steps=t["steps"],
    )
    ddp = DistributedDataParallel(model) if world > 1 else model

    ckpt_path = out / "checkpoint.pt"
    start = 0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("config") != _comparable(cfg):
            raise ConfigError("<resume>", f"{ckpt_path} was written by a different config; refusing to resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        controller.load_state_dict(state["controller"])
        start = int(state["step"])
        say(f"[tikmix] resumed from {ckpt_path} at step {start}")
    elif resume:
        say(f"[tikmix] --resume: no checkpoint at {ckpt_path}; starting from step 0")

    loader = iter(DataLoader(dataset, batch_size=sampler.local_batch_size, sampler=sampler))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=t["steps"], initial=start, unit="step", desc="tikmix run", dynamic_ncols=True)

    def save(step: int) -> None:
        if rank == 0:
            state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "controller": controller.state_dict(step=step), "config": _comparable(cfg)}
            tmp = ckpt_path.with_suffix(".pt.tmp")
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
        _barrier()

    end = t["steps"] if stop_at is None else min(stop_at, t["steps"])
    ddp.train()
    for step in range(start + 1, end + 1):
        lr = _lr(t, step - 1)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(loader).to(device)
        loss = sequence_loss(ddp, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(t["grad_clip"]))
        opt.step()
        rec = controller.step(step)
        if rec is not None:
            say(f"[tikmix] step {step}: new mixture " + ", ".join(
                f"{n}={w:.3f}" for n, w in zip(names, rec["weights"])))
        if step % t["eval_every"] == 0 or step == t["steps"]:
            losses = _evaluate(model, test_sets, device)
            controller.log_metrics(step, {"train_loss": loss.detach().item(), **{f"target/{k}": v for k, v in losses.items()}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.detach().item():.3f}", refresh=False)
        if step % t["checkpoint_every"] == 0 or step == end:
            save(step)
    if bar is not None:
        bar.close()
    if end == t["steps"]:
        final = _evaluate(model, test_sets, device)
        controller.finish(t["steps"], test_losses=final)
        if rank == 0:
            from tikmix.report import format_tables, plot_all

            plots = plot_all(controller.history, out)
            say(format_tables(controller.history))
            say(f"[tikmix] history: {out / 'history.json'}; plots: {', '.join(str(p) for p in plots)}")
    return controller.history


def _comparable(cfg: RunConfig) -> Any:
    """The parts of the config a checkpoint must match to be resumed (all but the eval/checkpoint frequency)."""
    raw = json.loads(json.dumps(cfg.raw))
    raw["train"].pop("checkpoint_every", None)
    raw["train"].pop("eval_every", None)
    return raw


def _lr(t: Mapping[str, Any], step: int) -> float:
    warm = min(1.0, (step + 1) / t["warmup"]) if t["warmup"] else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(step, t["steps"]) / t["steps"]))
    return float(t["lr"]) * warm * (t["min_lr_ratio"] + (1 - t["min_lr_ratio"]) * cos)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, sets: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    from tikmix.demo.model import sequence_loss

    was = model.training
    model.eval()
    out = {}
    for name, rows in sets.items():
        losses = [sequence_loss(model, rows[a : a + 128].to(device)) for a in range(0, rows.shape[0], 128)]
        out[name] = float(torch.cat(losses).mean())
    model.train(was)
    return out
