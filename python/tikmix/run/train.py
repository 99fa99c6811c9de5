"""The ``tikmix run`` training loop: AdamW with a cosine schedule, the Controller at stage boundaries.

:func:`train` is the one training loop of tikmix: ``tikmix run``, ``tikmix demo`` and the mixing-quality benchmark
all train through it. It reads as setup (model, optimizer, sampler, Controller) -> resume (a checkpoint, if asked)
-> stages (the optimizer steps; the Controller re-solves the mixture at each boundary) -> finish (final evaluation,
``eval.json``, tables and plots).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from tikmix._distributed import all_gather_objects, all_reduce_sum_, barrier, process_group_from_env
from tikmix._extras import progress_bar
from tikmix.formats import EVAL

from .checkpoint import checkpoint_dir, list_checkpoints, load_latest, rng_state, save_checkpoint, set_rng_state
from .schema import ConfigError, RunConfig, TrainConfig, config_differences
from .model import build_model, check_model, import_callable
from .parallel import load_sharded, prune_sharded, save_sharded, wrap_model
from .prepare import PreparedRun, prepare

__all__ = ["train", "make_optimizer", "learning_rate", "evaluate", "evaluate_sequences", "write_eval", "fixed_label"]

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def train(
    cfg: RunConfig | PreparedRun,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    log: Callable[..., Any] = print,
    on_boundary: Callable[[dict[str, Any]], Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Train as the config says; returns the controller history.

    Args:
        cfg: a validated :class:`RunConfig` (:func:`tikmix.run.load_config`), or a :class:`PreparedRun`
            (:func:`tikmix.run.prepare.prepare`: the same config with its data already opened).
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
        plots: write the PNG plots at the end (rank 0); ``history.json`` and ``eval.json`` are written either way.

    The training loss it shows, logs and records (``history["metrics"]`` ``train_loss``) is the mean over the
    whole global batch, as one process would compute it, whatever the number of processes.

    With ``log: tensorboard`` in the config, rank 0 writes TensorBoard scalars under ``<out>/tensorboard``:
    ``loss/train`` every step, ``loss/target/<name>`` at every evaluation, ``weights/<domain>`` from step 0 and at
    every boundary, and ``S/<target>/<domain>`` at every boundary.

    Under a launcher such as ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group the environment
    describes, unless one is initialised already, and leaves a group it joined when it returns or raises.
    """
    config = cfg.config if isinstance(cfg, PreparedRun) else cfg
    if not isinstance(config, RunConfig):
        raise TypeError(f"cfg must be a RunConfig (tikmix.run.load_config) or a PreparedRun (tikmix.run.prepare), "
                        f"got {type(cfg).__name__}")
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
        raise ValueError(f"stop_at must be a positive int or None, got {stop_at!r}")
    with process_group_from_env(config.device) as (rank, world, local_rank):
        loop = _Loop(cfg, rank, world, local_rank, progress=progress, log=log, on_boundary=on_boundary, plots=plots)
        if resume:
            loop.resume()
        elif list_checkpoints(loop.out):
            loop.say(f"[tikmix] warning: {checkpoint_dir(loop.out)} holds checkpoints of an earlier run; this run "
                     "starts at step 0 and replaces them (tikmix run --resume, or train(resume=True), continues it)")
        end = loop.run_stages(stop_at)
        if end == config.train.steps:
            loop.finish()
        return loop.controller.history


def _device(cfg: RunConfig, world: int, local_rank: int) -> torch.device:
    name = cfg.device
    if name == "cuda" and world > 1:
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of every tikmix training run: AdamW, betas (0.9, 0.98), ``t.lr`` and ``t.weight_decay``
    (the learning rate is then set every step by :func:`learning_rate`)."""
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(0.9, 0.98), weight_decay=t.weight_decay)


def _initial_weights(cfg: RunConfig, sizes: list[int]) -> list[float]:
    if cfg.solver.name == "static":
        return list(cfg.solver.weights)  # type: ignore[arg-type]  (validated and normalised)
    if cfg.solver.name == "proportional":
        return [n / sum(sizes) for n in sizes]
    return list(cfg.data.initial_weights or [1.0 / len(sizes)] * len(sizes))


def boundary_lines(rec: dict[str, Any], names: Sequence[str]) -> list[str]:
    """What the console says of a boundary's record: the mixture, then what shaped it when that is not the plain
    solver's answer (a safe step that held or shortened it, the trust region's step limit, adaptive rows)."""
    mixture = ", ".join(f"{n}={w:.3f}" for n, w in zip(names, rec["weights"]))
    decision = rec.get("decision") or {}
    safe, limit = decision.get("safe"), decision.get("trust_region")
    head = "new mixture"
    if safe and safe.get("t", 1.0) <= 0.0:
        head = "mixture kept"
    lines = [f"[tikmix] step {rec['step']}: {head} {mixture}"]
    if safe and safe.get("t", 1.0) < 1.0:
        worse = ", ".join(safe.get("violated") or []) or "no target"
        lines.append(f"[tikmix]   safe step t={safe['t']:.2f} of the solver's move ({worse} predicted worse than "
                     f"tolerance {safe['tolerance']:g})")
    if limit:
        lines.append(f"[tikmix]   step limit (L1) {limit['max_shift']:.2f}: {limit['reason']}")
    sampling = rec.get("influence_sampling")
    if sampling:
        parts = []
        for kind in ("domains", "targets"):
            taken = sampling.get(kind) or {}
            if taken:
                rows = sum(s["rows"] for s in taken.values())
                ceiling = sum(s["ceiling"] for s in taken.values())
                stable = sum(s["stop"] == "stable" for s in taken.values())
                parts.append(f"{kind} {rows}/{ceiling} rows ({stable}/{len(taken)} stable)")
        rounds = sampling["rounds"]
        lines.append(f"[tikmix]   adaptive sampling, {rounds} round{'s' if rounds != 1 else ''}: " + "; ".join(parts))
    return lines


class _Loop:
    """One run: :meth:`__init__` sets it up, then :meth:`resume`, :meth:`run_stages` and :meth:`finish`."""

    def __init__(self, run: RunConfig | PreparedRun, rank: int, world: int, local_rank: int, *, progress: bool,
                 log: Callable[..., Any], on_boundary: Callable[[dict[str, Any]], Any] | None,
                 plots: bool = True) -> None:
        from torch.utils.data import DataLoader

        from tikmix.controller import Controller
        from tikmix.data import MixtureSampler, concat_domains

        cfg = run.config if isinstance(run, PreparedRun) else run
        t = cfg.train
        self.cfg, self.rank, self.world, self.progress, self.plots = cfg, rank, world, progress, plots
        self.say: Callable[..., Any] = log if rank == 0 else (lambda *a, **k: None)
        self.device = _device(cfg, world, local_rank)
        if t.batch_size % world:
            raise ConfigError("train.batch_size", f"{t.batch_size} is not divisible by the world size {world}")
        self.out = cfg.out_dir
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier()
        if on_boundary is None and cfg.on_boundary is not None:
            on_boundary = import_callable(cfg.on_boundary, "on_boundary")
        self.on_boundary = on_boundary
        data = run if isinstance(run, PreparedRun) else prepare(cfg, rank=rank, log=self.say)
        self.names = list(data.domains)
        self.dev, self.test = data.dev, data.test

        torch.manual_seed(cfg.seed)
        self.model, self.loss_fn = build_model(cfg, data.vocab_size, self.device)
        first = next(iter(data.domains.values()))
        check_model(cfg, self.model, self.loss_fn, torch.stack([first[i % len(first)] for i in range(2)]).to(self.device))
        self.wrapped = wrap_model(self.model, t.parallel, world)  # fsdp: shards in place, before the optimizer
        self.opt = make_optimizer(self.model, t)
        sizes = [len(ds) for ds in data.domains.values()]
        self.sampler = MixtureSampler(sizes, _initial_weights(cfg, sizes), batch_size=t.batch_size, seed=cfg.seed,
                                      tokens_per_sample=cfg.data.seq_len)
        self.controller = Controller(
            self.model, self.sampler,
            domains=data.domains, targets=self.dev, loss_fn=self.loss_fn,
            stages=cfg.stages.boundaries, stage_unit=cfg.stages.unit, tokens_per_step=cfg.tokens_per_step,
            solver="direct" if self.fixed else cfg.solver.name, solver_options=cfg.solver.options,
            influence=self._influence_options(), samples_per_domain=cfg.influence.samples_per_domain,
            target_samples=cfg.influence.target_samples, batch_size=cfg.influence.batch_size, device=self.device,
            history_path=self.out / "history.json", seed=cfg.seed, total_steps=t.steps, decision=cfg.solver.decision,
            sampling=None if cfg.influence.adaptive is None else cfg.influence.adaptive.model_dump(),
        )
        if self.fixed:  # no boundaries: the controller only records; say what the run is
            self.controller.history["solver"] = fixed_label(cfg.solver.name, _initial_weights(cfg, sizes))
        # Created before the RNG states are restored: creating it draws a random number.
        self.loader = iter(DataLoader(concat_domains(list(data.domains.values())),
                                      batch_size=self.sampler.local_batch_size, sampler=self.sampler))
        self.start = 0
        self.eval_s = 0.0

    @property
    def fixed(self) -> bool:
        return self.cfg.solver.name in ("static", "proportional")

    def _influence_options(self) -> dict[str, Any]:
        infl = self.cfg.influence
        options: dict[str, Any] = {"k": infl.k, "preconditioner": infl.preconditioner,
                                   "n_bootstrap": infl.n_bootstrap, "damping": infl.damping}
        if infl.params is not None:
            options["params"] = infl.params
        if infl.preconditioner == "adam":
            options["optimizer"] = self.opt
        return options

    # ---------------------------------------------------------------------------------------------- resume
    def resume(self) -> None:
        """Restore the newest usable checkpoint in ``out`` (if any): model, optimizer, controller, RNG streams."""
        out, cfg = self.out, self.cfg
        state = load_latest(out, self.device, log=self.say)
        if state is None:
            self.say(f"[tikmix] --resume: no checkpoint in {checkpoint_dir(out)}; starting from step 0")
            return
        changed = config_differences(state.get("config"), cfg.comparable())
        if changed:
            raise ConfigError(changed[0], f"differs from the config of the checkpoint in {checkpoint_dir(out)} "
                                          f"(changed: {', '.join(changed)}); refusing to resume")
        if state.get("sharded") is not None:  # a DCP checkpoint (parallel: fsdp), written at any world size
            load_sharded(out, state["sharded"], self.model, self.opt)
        else:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        self.controller.load_state_dict(state["controller"])
        rngs = state["rng"]
        if len(rngs) != self.world:
            self.say(f"[tikmix] the checkpoint was written by {len(rngs)} processes, now {self.world}: random "
                     "streams (dropout) continue from rank 0's")
        # Last, after everything above that draws random numbers: the run continues exactly as it would have.
        set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        self.start = int(state["step"])
        self.say(f"[tikmix] resumed at step {self.start} from {checkpoint_dir(out)}")

    def _save(self, step: int) -> None:
        rngs = all_gather_objects(rng_state())  # one per rank: each has its own dropout stream
        common = {"config": self.cfg.comparable(), "controller": self.controller.state_dict(step=step), "rng": rngs}
        if self.cfg.train.parallel == "fsdp":  # every rank writes its shards (DCP); the checkpoint names the folder
            folder = save_sharded(self.out, step, self.model, self.opt)
            barrier()
            if self.rank == 0:
                save_checkpoint(self.out, step, {"sharded": folder, **common})
                prune_sharded(self.out, [s for s, _ in list_checkpoints(self.out)])
        elif self.rank == 0:
            save_checkpoint(self.out, step, {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                                             **common})
        barrier()

    # ---------------------------------------------------------------------------------------------- stages
    def _train_step(self, step: int) -> float:
        """One optimizer step; returns the global mean training loss of the step's batch."""
        t = self.cfg.train
        for g in self.opt.param_groups:
            g["lr"] = learning_rate(t, step - 1)
        batch = next(self.loader).to(self.device)
        loss = self.loss_fn(self.wrapped, batch).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t.grad_clip))
        self.opt.step()
        # Every rank holds the same number of rows, so the mean of the ranks' means is the global batch's mean.
        total = loss.detach().double().reshape(1).clone()
        all_reduce_sum_([total])
        return float(total.item()) / self.world

    def run_stages(self, stop_at: int | None) -> int:
        """Train from the current step to ``stop_at`` (or the end); returns the last step trained."""
        cfg, t = self.cfg, self.cfg.train
        rank0 = self.rank == 0
        bar = progress_bar(True, "tikmix run", total=t.steps, initial=self.start, unit="step", desc="tikmix run",
                           dynamic_ncols=True) if self.progress and rank0 else None
        tb = self._tensorboard() if cfg.log == "tensorboard" and rank0 else None
        end = t.steps if stop_at is None else min(stop_at, t.steps)
        if self.start == 0:  # the curves start where training starts
            self._evaluate(0, None, tb)
        self.wrapped.train()
        for step in range(self.start + 1, end + 1):
            loss = self._train_step(step)
            rec = self.controller.step(step)
            if tb is not None:
                tb.add_scalar("loss/train", loss, step)
            if rec is not None:
                self._boundary(rec, tb)
            if step % t.eval_every == 0 or step == t.steps:
                self._evaluate(step, loss, tb)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if step % t.checkpoint_every == 0 or step == end:
                self._save(step)
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        return end

    def _evaluate(self, step: int, train_loss: float | None, tb: Any) -> None:
        """Target test losses at ``step`` into the history's metrics (and TensorBoard), with the step's training
        loss when there is one (not at step 0)."""
        t0 = time.perf_counter()
        losses = evaluate(self.model, self.test, self.device, self.loss_fn)
        self.eval_s += time.perf_counter() - t0
        if tb is not None:
            for k, v in losses.items():
                tb.add_scalar(f"loss/target/{k}", v, step)
        row = {} if train_loss is None else {"train_loss": train_loss}
        self.controller.log_metrics(step, {**row, **{f"target/{k}": v for k, v in losses.items()}})

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=self.start + 1 if self.start else None)
        if self.start == 0:
            for n, w in zip(self.names, self.sampler.weights_at(0)):
                tb.add_scalar(f"weights/{n}", w, 0)
        return tb

    def _boundary(self, rec: dict[str, Any], tb: Any) -> None:
        for line in boundary_lines(rec, self.names):
            self.say(line)
        if tb is not None:
            _log_boundary(tb, rec, self.names, list(self.dev))
        if self.on_boundary is not None:
            self.on_boundary(rec)

    # ---------------------------------------------------------------------------------------------- finish
    def finish(self) -> None:
        """Final evaluation; rank 0 writes ``eval.json``, the tables and the plots."""
        cfg, steps = self.cfg, self.cfg.train.steps
        t0 = time.perf_counter()
        per_sequence = evaluate_sequences(self.model, self.test, self.device, self.loss_fn)
        # the dev halves too: what a user (or a benchmark) may choose by; the test halves are for reporting only
        dev = {k: float(v.mean()) for k, v in evaluate_sequences(self.model, self.dev, self.device,
                                                                 self.loss_fn).items()}
        self.eval_s += time.perf_counter() - t0
        final = {k: float(v.mean()) for k, v in per_sequence.items()}
        self.controller.finish(steps, test_losses=final, dev_losses=dev)
        if self.rank != 0:
            return
        history = self.controller.history
        write_eval(self.out / "eval.json", per_sequence, self.test, history["solver"], steps, cfg.tokens_per_step,
                   eval_s=self.eval_s, dev_losses=dev)
        from tikmix.report import format_tables, plot_all

        plots = plot_all(history, self.out) if self.plots else []
        self.say(format_tables(history))
        self.say(f"[tikmix] history: {self.out / 'history.json'}; plots: {', '.join(str(p) for p in plots) or 'none'}")


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
                       loss_fn: LossFn, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Per-sequence loss of each named set of rows (float64 ``[rows]`` on the CPU, in row order), ``batch_size``
    rows at a time; in eval mode, the model's mode restored afterwards."""
    was = model.training
    model.eval()
    out = {}
    try:
        for name, rows in sets.items():
            losses = [loss_fn(model, rows[a : a + batch_size].to(device)) for a in range(0, rows.shape[0], batch_size)]
            out[name] = torch.cat(losses).detach().double().cpu()
    finally:
        model.train(was)
    return out


def evaluate(model: torch.nn.Module, sets: Mapping[str, torch.Tensor], device: torch.device,
             loss_fn: LossFn) -> dict[str, float]:
    """Mean per-sequence loss of each named set (:func:`evaluate_sequences`)."""
    return {k: float(v.mean()) for k, v in evaluate_sequences(model, sets, device, loss_fn).items()}


def fixed_label(name: str, weights: list[float]) -> str:
    """The history's solver label of a fixed-mixture run: ``static (uniform)``, ``static`` or ``proportional``."""
    if name == "static" and max(weights) - min(weights) <= 1e-12:
        return "static (uniform)"
    return name


def write_eval(path: Any, per_sequence: Mapping[str, torch.Tensor], test_sets: Mapping[str, torch.Tensor],
               solver: str, steps: int, tokens_per_step: int, eval_s: float | None = None,
               dev_losses: Mapping[str, float] | None = None) -> None:
    """``eval.json``: the final per-sequence test losses, with a hash of each test set (``tikmix compare``), the
    mean final loss on each target's dev rows (``dev_losses``: what to choose settings by, leaving the test halves for
    reporting; None if not measured) and the wall-clock seconds this process spent evaluating (``eval_s``)."""
    import hashlib
    import json
    from pathlib import Path

    doc = {
        "format": EVAL,
        "solver": solver,
        "steps": int(steps),
        "tokens_per_step": int(tokens_per_step),
        "tokens": int(steps) * int(tokens_per_step),
        "targets": {k: v.tolist() for k, v in per_sequence.items()},
        "test_sha1": {k: hashlib.sha1(test_sets[k].cpu().numpy().tobytes()).hexdigest() for k in per_sequence},
        "eval_s": None if eval_s is None else float(eval_s),
        "dev_losses": None if dev_losses is None else {k: float(v) for k, v in dev_losses.items()},
    }
    Path(path).write_text(json.dumps(doc))
