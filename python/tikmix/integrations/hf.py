"""tikmix inside a Hugging Face ``transformers.Trainer`` (extra ``tikmix[hf]``; transformers >= 4.45, 5.x included).

.. code-block:: python

    sampler = tikmix.MixtureSampler(train.domain_sizes, [1/3] * 3, batch_size=8 * 2 * world_size, seed=0)
    controller = tikmix.Controller(model, sampler, domains=..., targets=..., loss_fn=causal_lm_loss,
                                   collate=collator, stages=[1000, 2000])
    trainer = MixtureTrainer(controller=controller, model=model, args=TrainingArguments(
        per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=3000, ...),
        train_dataset=train, data_collator=collator)
    trainer.train()                                   # or trainer.train(resume_from_checkpoint=True)

**How the sampler replaces the Trainer's.** :class:`MixtureTrainer` returns the controller's
:class:`tikmix.MixtureSampler` from ``_get_train_sampler``, so the Trainer's DataLoader draws indices from it
(``train_dataset`` must be the domains' concatenation, :func:`tikmix.concat_domains`). One sampler *step* is one
optimizer step: the sampler's global ``batch_size`` must equal ``per_device_train_batch_size ×
gradient_accumulation_steps × world_size`` (checked), so each rank's slice of a step is exactly the micro-batches of
one optimizer step. The sampler already gives each rank its own slice (``rank``/``world_size`` from
``torch.distributed``), so the re-sharding wrapper that ``accelerate`` puts around a prepared DataLoader is made a
pass-through (the same treatment ``transformers`` gives its own rank-aware samplers). The sampler's stream is
infinite (``exhaustion="wrap"``) or at least ``max_steps`` long: ``max_steps`` must be set and decides the end of
training; "epochs" do not exist for it.

**Boundaries.** :class:`TikmixCallback` calls :meth:`tikmix.Controller.step` after every optimizer step with
``state.global_step``; the controller handles every stage boundary ``<= global_step`` not yet handled, once, with
its measurement policy (eval mode, training RNG untouched; see :mod:`tikmix.controller`). The Trainer's DataLoader
fetches one batch ahead, so the new mixture applies from ``global_step + 2`` (``applies_from_step`` in the history).
At the end of training the callback calls :meth:`tikmix.Controller.finish` (``history["final"]``: realised counts,
the last evaluation's metrics when there is one).

**Checks before step 1.** The Trainer's ``max_steps`` becomes the controller's ``total_steps`` (a different
``total_steps`` or a boundary at or after ``max_steps`` is refused); ``train_dataset`` must hold the controller's
domains in its order and sizes (:func:`tikmix.concat_domains` of the same mapping carries the names). The
controller itself refuses token ids the model's input embedding cannot look up, when it is built.

**Resume.** On every checkpoint save the callback writes ``tikmix_controller.json`` (controller history, handled
boundaries, the sampler's schedule and position at ``global_step``) into the checkpoint folder; on
``train(resume_from_checkpoint=...)`` it loads it from that folder, so the resumed run continues the same sample
stream and mixture schedule as an uninterrupted one. The Trainer's own data skipping on resume is turned off
(``ignore_data_skip=True``): it would replay and discard batches of a sampler that already resumes itself. The train
DataLoader draws its worker base seed from its own generator (seeded by ``args.seed``), not from torch's global
one: the Trainer restores the checkpoint's RNG state before it creates the DataLoader iterator, so a draw from the
global generator there would shift every later dropout mask of a resumed run.

**torchrun.** The sampler and controller may be built before the process group exists (before
``TrainingArguments``): the sampler takes its rank and world size from ``torch.distributed`` at first use.
"""
from __future__ import annotations

import os
from typing import Any

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tikmix.integrations.hf needs transformers >= 4.45: pip install 'tikmix[hf]'") from exc

import torch

from ..losses import causal_lm_loss
from ._common import STATE_FILE, advance, check_controller, check_dataset, check_step_batch, load_state, save_state

__all__ = ["MixtureTrainer", "TikmixCallback", "causal_lm_loss", "own_generator", "unshard_dataloader"]


class TikmixCallback(TrainerCallback):
    """Runs a :class:`tikmix.Controller` at its stage boundaries inside ``transformers.Trainer``.

    Args:
        controller: the controller whose sampler feeds the Trainer (use :class:`MixtureTrainer`, or return
            ``controller.sampler`` from your own Trainer subclass's ``_get_train_sampler``).

    Attributes:
        records: history records of the boundaries handled in this process.
        resume_from: checkpoint folder to restore from at ``on_train_begin`` (set by :class:`MixtureTrainer`; when
            None and the Trainer resumed at ``global_step > 0``, ``<output_dir>/checkpoint-<global_step>`` is used).
    """

    def __init__(self, controller: Any) -> None:
        self.controller = check_controller(controller)
        self.records: list[dict[str, Any]] = []
        self.resume_from: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # the checks MixtureTrainer makes at construction, for a callback used with another Trainer subclass
        if args.max_steps is not None and args.max_steps > 0:
            self.controller.set_total_steps(args.max_steps)
        loader = kwargs.get("train_dataloader")
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__getitem__"):
            check_dataset(self.controller, dataset, "the Trainer's train dataset")
        if state.global_step > 0:
            folder = self.resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            load_state(self.controller, folder)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self.records.extend(advance(self.controller, state.global_step))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        evals = [row for row in state.log_history if any(str(k).startswith("eval_") for k in row)]
        last = {k: v for k, v in evals[-1].items() if isinstance(v, (int, float))} if evals else None
        self.controller.finish(state.global_step, eval=last)
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            save_state(self.controller, state.global_step, folder)
        return control


def unshard_dataloader(dataloader: Any, sampler: Any) -> Any:
    """Make ``accelerate``'s ``BatchSamplerShard`` around ``sampler`` a pass-through (the sampler is rank-aware).

    ``accelerator.prepare`` on more than one process wraps the batch sampler so that each process keeps every
    ``world_size``-th batch; :class:`tikmix.MixtureSampler` already yields only this rank's slice, so that second
    split would drop samples. Returns ``dataloader``.
    """
    shard = getattr(dataloader, "batch_sampler", None)
    inner = getattr(shard, "batch_sampler", None)
    if inner is not None and getattr(inner, "sampler", None) is sampler and hasattr(shard, "num_processes"):
        shard.num_processes = 1
        shard.process_index = 0
    return dataloader


def own_generator(dataloader: Any, seed: int) -> Any:
    """Give ``dataloader`` its own ``torch.Generator`` (seeded by ``seed``) for the base seed it draws when an
    iterator is created, so that creating one leaves torch's global generator (dropout's) untouched. Returns
    ``dataloader``."""
    target = getattr(dataloader, "base_dataloader", dataloader)  # accelerate's DataLoaderShard wraps a DataLoader
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    target.generator = generator
    return dataloader


class MixtureTrainer(Trainer):
    """``transformers.Trainer`` fed by a :class:`tikmix.Controller`'s sampler, with a :class:`TikmixCallback`.

    Args:
        controller: the :class:`tikmix.Controller` (its ``sampler`` is a :class:`tikmix.MixtureSampler` over
            ``train_dataset``, the concatenation of the domains in the controller's order).
        *args: as for ``transformers.Trainer``. ``args.max_steps`` must be > 0.
        **kwargs: as for ``transformers.Trainer``.

    The class docstring of this module explains the sampler, batch-size and resume rules.
    """

    def __init__(self, *args: Any, controller: Any, **kwargs: Any) -> None:
        self.tikmix_callback = TikmixCallback(controller)
        self.controller = controller
        callbacks = list(kwargs.pop("callbacks", None) or []) + [self.tikmix_callback]
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self._check_setup()
        # The sampler resumes itself from the checkpoint; the Trainer's batch skipping would discard real batches.
        self.args.ignore_data_skip = True

    def _check_setup(self) -> None:
        sampler = self.controller.sampler
        args = self.args
        if args.max_steps is None or args.max_steps <= 0:
            raise ValueError("MixtureTrainer needs TrainingArguments.max_steps > 0: the mixture stream has no "
                             "epochs, max_steps decides where training ends")
        if self.train_dataset is None or not hasattr(self.train_dataset, "__getitem__"):
            raise ValueError("MixtureTrainer needs a map-style train_dataset: the concatenation of the domains "
                             "(tikmix.concat_domains) that the controller's sampler indexes")
        check_step_batch(sampler, [("per_device_train_batch_size", args.per_device_train_batch_size),
                                   ("gradient_accumulation_steps", args.gradient_accumulation_steps),
                                   ("world_size", args.world_size)])
        if sampler.world_size != args.world_size:
            raise ValueError(f"the sampler was built for world_size={sampler.world_size}, the Trainer runs "
                             f"{args.world_size} processes: build the MixtureSampler without rank=/world_size= (it "
                             "then takes them from torch.distributed at first use, so it may be built before "
                             "TrainingArguments), or pass the Trainer's")
        end = getattr(sampler, "end_step", None)
        if end is not None and end < args.max_steps:
            raise ValueError(f"the sampler's stream ends at step {end}, before max_steps={args.max_steps}")
        check_dataset(self.controller, self.train_dataset, "train_dataset")
        self.controller.set_total_steps(args.max_steps)

    def _get_train_sampler(self, *args: Any, **kwargs: Any):
        return self.controller.sampler

    def get_train_dataloader(self):
        return own_generator(unshard_dataloader(super().get_train_dataloader(), self.controller.sampler),
                             self.args.seed)

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir!r} has no checkpoint")
        if resume_from_checkpoint:
            path = os.path.join(str(resume_from_checkpoint), STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} does not exist: the checkpoint was not saved by a MixtureTrainer, "
                                        "so the mixture schedule and sampler position cannot be restored")
            self.tikmix_callback.resume_from = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

