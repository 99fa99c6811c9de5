"""The ``tikmix run`` training loop: AdamW with a cosine schedule, the Controller at stage boundaries."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tikmix._distributed import all_gather_objects, barrier, process_group_from_env
from tikmix._extras import progress_bar

from .checkpoint import checkpoint_dir, list_checkpoints, load_latest, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, RunConfig, TrainConfig, config_differences
from .model import build_model, check_model, import_callable
from .preflight import check_data
from .parallel import load_sharded, prune_sharded, save_sharded, wrap_model
from .sources import open_sources, split_targets

__all__ = ["train", "learning_rate", "evaluate", "evaluate_sequences", "write_eval", "EVAL_FORMAT"]


def _device(cfg: RunConfig, world: int, local_rank: int) -> torch.device:
    name = cfg.device
    if name == "cuda" and world > 1:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    log: Callable[..., Any] = print,
    on_boundary: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Train as the config says; returns the controller history.

    Args:
        cfg: a validated :class:`RunConfig` (:func:`tikmix.run.load_config`).
        resume: continue from the newest usable checkpoint in ``out`` if there is one (else start fresh); the
            model, optimizer, sampler, controller and RNG states are restored, so the run continues exactly as
            an uninterrupted one. A checkpoint written by a different config is refused (ConfigError naming the
            changed keys); an unreadable one is skipped for the one before it (CheckpointError if none is left).
        progress: show a tqdm bar (rank 0).
        stop_at: stop after this step, right after writing a checkpoint there -- an interruption on purpose
            (used by tests and to split long runs); ``resume=True`` continues from it.
        log: where one-line status messages go (rank 0).
        on_boundary: called on every rank with the controller's history record right after each stage boundary
            (the new weights, S, timings; see :class:`tikmix.Controller`), e.g. to log it elsewhere. Default: the
            config's ``on_boundary: "package.module:function"``, if any.

    With ``log: tensorboard`` in the config, rank 0 writes TensorBoard scalars under ``<out>/tensorboard``:
    ``loss/train`` every step, ``loss/target/<name>`` at every evaluation, ``weights/<domain>`` from step 0 and at
    every boundary, and ``S/<target>/<domain>`` at every boundary.

    Under a launcher such as ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group the environment
    describes, unless one is initialised already, and leaves a group it joined when it returns or raises.
    """
    with process_group_from_env(cfg.device) as (rank, world, local_rank):
        return _train(cfg, rank, world, local_rank, resume=resume, progress=progress, stop_at=stop_at, log=log,
                      on_boundary=on_boundary)


def _train(cfg: RunConfig, rank: int, world: int, local_rank: int, *, resume: bool, progress: bool,
           stop_at: int | None, log: Callable[..., Any],
           on_boundary: Callable[[dict[str, Any]], Any] | None) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from tikmix.controller import Controller
    from tikmix.data import MixtureSampler, concat_domains
    from tikmix.data.tokenizers import load_tokenizer

    t = cfg.train
    device = _device(cfg, world, local_rank)
    say = log if rank == 0 else (lambda *a, **k: None)
    if t.batch_size % world:
        raise ConfigError("train.batch_size", f"{t.batch_size} is not divisible by the world size {world}")
    out = cfg.out_dir
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    barrier()

    if on_boundary is None and cfg.on_boundary is not None:
        on_boundary = import_callable(cfg.on_boundary, "on_boundary")
    tokenizer = load_tokenizer(cfg.tokenizer)
    domains = open_sources(cfg, "domains", rank, tokenizer)
    targets = open_sources(cfg, "targets", rank, tokenizer)
    names = list(domains)
    vocab = check_data(cfg, tokenizer)
    dev_sets, test_sets = split_targets(cfg, targets, warn=say)

    seed = cfg.seed
    torch.manual_seed(seed)
    model, loss_fn = build_model(cfg, vocab, device)
    first = next(iter(domains.values()))
    check_model(cfg, model, loss_fn, torch.stack([first[i % len(first)] for i in range(2)]).to(device))
    wrapped = wrap_model(model, t.parallel, world)  # fsdp: shards model in place (before the optimizer sees it)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=t.weight_decay)
    fixed = cfg.solver.name in ("static", "proportional")
    if cfg.solver.name == "static":
        weights = list(cfg.solver.weights)  # type: ignore[arg-type]  (validated and normalised)
    elif cfg.solver.name == "proportional":
        sizes = [len(ds) for ds in domains.values()]
        weights = [n / sum(sizes) for n in sizes]
    else:
        weights = cfg.data.initial_weights or [1.0 / len(names)] * len(names)
    sampler = MixtureSampler([len(ds) for ds in domains.values()], weights, batch_size=t.batch_size, seed=seed,
                             tokens_per_sample=cfg.data.seq_len)
    dataset = concat_domains(list(domains.values()))
    infl = cfg.influence
    influence_options: dict[str, Any] = {"k": infl.k, "preconditioner": infl.preconditioner,
                                         "n_bootstrap": infl.n_bootstrap, "damping": infl.damping}
    if infl.params is not None:
        influence_options["params"] = infl.params
    if infl.preconditioner == "adam":
        influence_options["optimizer"] = opt
    controller = Controller(
        model, sampler,
        domains=domains, targets=dev_sets, loss_fn=loss_fn,
        stages=cfg.stages.boundaries, stage_unit=cfg.stages.unit, tokens_per_step=cfg.tokens_per_step,
        solver="direct" if fixed else cfg.solver.name, solver_options=cfg.solver.options, influence=influence_options,
        samples_per_domain=infl.samples_per_domain, target_samples=infl.target_samples, batch_size=infl.batch_size,
        device=device, history_path=out / "history.json", seed=seed, total_steps=t.steps, decision=cfg.solver.decision,
    )
    if fixed:  # no boundaries: the controller only records; say what the run is
        controller.history["solver"] = fixed_label(cfg.solver.name, weights)

    # Created before the RNG states are restored: creating it draws a random number.
    loader = iter(DataLoader(dataset, batch_size=sampler.local_batch_size, sampler=sampler))
    start = 0
    state = load_latest(out, device, log=say) if resume else None
    if state is not None:
        changed = config_differences(state.get("config"), cfg.comparable())
        if changed:
            raise ConfigError(changed[0], f"differs from the config of the checkpoint in {checkpoint_dir(out)} "
                                          f"(changed: {', '.join(changed)}); refusing to resume")
        if state.get("sharded") is not None:  # a DCP checkpoint (parallel: fsdp), written at any world size
            load_sharded(out, state["sharded"], model, opt)
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        controller.load_state_dict(state["controller"])
        rngs = state["rng"]
        if len(rngs) != world:
            say(f"[tikmix] the checkpoint was written by {len(rngs)} processes, now {world}: random streams "
                "(dropout) continue from rank 0's")
        # Last, after everything above that draws random numbers: the run continues exactly as it would have.
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        start = int(state["step"])
        say(f"[tikmix] resumed at step {start} from {checkpoint_dir(out)}")
    elif resume:
        say(f"[tikmix] --resume: no checkpoint in {checkpoint_dir(out)}; starting from step 0")

    bar = None
    if progress and rank == 0:
        bar = progress_bar(True, "tikmix run", total=t.steps, initial=start, unit="step", desc="tikmix run",
                           dynamic_ncols=True)

    def save(step: int) -> None:
        rngs = all_gather_objects(rng_state())  # one per rank: each has its own dropout stream
        common = {"config": cfg.comparable(), "controller": controller.state_dict(step=step), "rng": rngs}
        if t.parallel == "fsdp":  # every rank writes its shards (DCP); the checkpoint file names the folder
            folder = save_sharded(out, step, model, opt)
            barrier()
            if rank == 0:
                save_checkpoint(out, step, {"sharded": folder, **common})
                prune_sharded(out, [s for s, _ in list_checkpoints(out)])
        elif rank == 0:
            save_checkpoint(out, step, {"model": model.state_dict(), "optimizer": opt.state_dict(), **common})
        barrier()

    tb = None
    if cfg.log == "tensorboard" and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start + 1 if start else None)
        if start == 0:
            for n, w in zip(names, sampler.weights_at(0)):
                tb.add_scalar(f"weights/{n}", w, 0)
    end = t.steps if stop_at is None else min(stop_at, t.steps)
    wrapped.train()
    for step in range(start + 1, end + 1):
        lr = learning_rate(t, step - 1)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(loader).to(device)
        loss = loss_fn(wrapped, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(t.grad_clip))
        opt.step()
        rec = controller.step(step)
        if tb is not None:
            tb.add_scalar("loss/train", loss.detach().item(), step)
        if rec is not None:
            say(f"[tikmix] step {step}: new mixture " + ", ".join(
                f"{n}={w:.3f}" for n, w in zip(names, rec["weights"])))
            if tb is not None:
                _log_boundary(tb, rec, names, list(dev_sets))
            if on_boundary is not None:
                on_boundary(rec)
        if step % t.eval_every == 0 or step == t.steps:
            losses = evaluate(model, test_sets, device, loss_fn)
            if tb is not None:
                for k, v in losses.items():
                    tb.add_scalar(f"loss/target/{k}", v, step)
            controller.log_metrics(step, {"train_loss": loss.detach().item(),
                                          **{f"target/{k}": v for k, v in losses.items()}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.detach().item():.3f}", refresh=False)
        if step % t.checkpoint_every == 0 or step == end:
            save(step)
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    if end == t.steps:
        per_sequence = evaluate_sequences(model, test_sets, device, loss_fn)
        final = {k: float(v.mean()) for k, v in per_sequence.items()}
        controller.finish(t.steps, test_losses=final)
        if rank == 0:
            write_eval(out / "eval.json", per_sequence, test_sets, controller.history["solver"], t.steps,
                       cfg.tokens_per_step)
            from tikmix.report import format_tables, plot_all

            plots = plot_all(controller.history, out)
            say(format_tables(controller.history))
            say(f"[tikmix] history: {out / 'history.json'}; plots: {', '.join(str(p) for p in plots)}")
    return controller.history


def learning_rate(t: TrainConfig, step: int) -> float:
    """Learning rate of the 0-based ``step``: linear warm-up times cosine decay to ``min_lr_ratio``."""
    warm = min(1.0, (step + 1) / t.warmup) if t.warmup else 1.0
    cos = 0.5 * (1 + math.cos(math.pi * min(step, t.steps) / t.steps))
    return float(t.lr) * warm * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cos)


def _log_boundary(tb: Any, rec: Mapping[str, Any], domains: list[str], targets: list[str]) -> None:
    step = int(rec["step"])
    for n, w in zip(domains, rec["weights"]):
        tb.add_scalar(f"weights/{n}", w, step)
    for i, tname in enumerate(targets):
        for j, dname in enumerate(domains):
            tb.add_scalar(f"S/{tname}/{dname}", rec["S"][i][j], step)


@torch.no_grad()
def evaluate_sequences(model: torch.nn.Module, sets: Mapping[str, torch.Tensor], device: torch.device,
                       loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-sequence loss of each named set (float64 [rows] on the CPU; eval mode, restored afterwards)."""
    if loss_fn is None:
        from tikmix.demo.model import sequence_loss as loss_fn

    was = model.training
    model.eval()
    out = {}
    for name, rows in sets.items():
        losses = [loss_fn(model, rows[a : a + 128].to(device)) for a in range(0, rows.shape[0], 128)]
        out[name] = torch.cat(losses).detach().double().cpu()
    model.train(was)
    return out


def evaluate(model: torch.nn.Module, sets: Mapping[str, torch.Tensor], device: torch.device,
             loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None) -> dict[str, float]:
    """Mean per-sequence loss of each named set (eval mode, restored afterwards); default loss: the demo GPT's."""
    return {k: float(v.mean()) for k, v in evaluate_sequences(model, sets, device, loss_fn).items()}


def fixed_label(name: str, weights: list[float]) -> str:
    """The history's solver label of a fixed-mixture run: ``static (uniform)``, ``static`` or ``proportional``."""
    if name == "static" and max(weights) - min(weights) <= 1e-12:
        return "static (uniform)"
    return name


EVAL_FORMAT = "tikmix.eval/1"


def write_eval(path: Any, per_sequence: Mapping[str, torch.Tensor], test_sets: Mapping[str, torch.Tensor],
               solver: str, steps: int, tokens_per_step: int) -> None:
    """``eval.json``: the final per-sequence test losses, with a hash of each test set (``tikmix compare``)."""
    import hashlib
    import json
    from pathlib import Path

    doc = {
        "format": EVAL_FORMAT,
        "solver": solver,
        "steps": int(steps),
        "tokens_per_step": int(tokens_per_step),
        "tokens": int(steps) * int(tokens_per_step),
        "targets": {k: v.tolist() for k, v in per_sequence.items()},
        "test_sha1": {k: hashlib.sha1(test_sets[k].cpu().numpy().tobytes()).hexdigest() for k in per_sequence},
    }
    Path(path).write_text(json.dumps(doc))
