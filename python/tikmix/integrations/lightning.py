"""tikmix inside a ``lightning.pytorch.Trainer`` (extra ``tikmix[lightning]``; lightning >= 2.2).

.. code-block:: python

    train = tikmix.concat_domains(domains)            # the same mapping name -> dataset as the controller's
    sampler = tikmix.MixtureSampler(train.domain_sizes, [1/3] * 3, batch_size=8 * 2 * world_size, seed=0)
    controller = tikmix.Controller(model, sampler, domains=domains, targets=..., loss_fn=..., stages=[1000, 2000])
    loader = DataLoader(train, sampler=sampler, batch_size=8)
    trainer = L.Trainer(max_steps=3000, accumulate_grad_batches=2, use_distributed_sampler=False,
                        callbacks=[TikmixCallback(controller)])
    trainer.fit(module, loader)                       # resume: trainer.fit(module, loader, ckpt_path=...)

* The DataLoader takes the controller's :class:`tikmix.MixtureSampler` (``sampler=``). Pass
  ``use_distributed_sampler=False``: otherwise Lightning wraps it in a ``DistributedSampler`` under DDP and every rank
  would re-split indices the sampler already split (checked: the callback raises on a multi-process run without
  it). One sampler step is one optimizer step: the sampler's ``batch_size`` must be the DataLoader's ``batch_size ×
  accumulate_grad_batches × world_size`` (checked at ``on_train_start``), and ``max_steps`` decides the end of
  training. The sampler and controller may be built before the process group exists (under torchrun, before
  ``Trainer.fit``): the sampler takes its rank and world size from ``torch.distributed`` at first use.
* Checks at ``on_train_start``, before step 1: ``max_steps`` becomes the controller's ``total_steps`` (a different
  ``total_steps`` or a boundary at or after ``max_steps`` is refused); the DataLoader's dataset must hold the
  controller's domains in its order and sizes.
* Boundaries: after every training batch the callback calls :meth:`tikmix.Controller.step` with
  ``trainer.global_step`` (optimizer steps): each boundary is handled once, right after the optimizer step that
  reaches it, with the controller's measurement policy (eval mode, training RNG untouched). At the end of training
  the callback calls :meth:`tikmix.Controller.finish` (``history["final"]``, with ``trainer.callback_metrics``).
* Resume: the callback's ``state_dict`` (the controller's, the sampler's schedule and position at ``global_step``
  inside, and every rank's RNG states: torch CPU and CUDA, Python ``random``, numpy) is saved in every Lightning
  checkpoint and restored by ``fit(..., ckpt_path=...)``; Lightning itself does not restore the RNG, so the callback
  puts each rank's states back right before the first training batch after the resume (after Lightning has created
  the DataLoader iterator), and a run with dropout continues exactly as the uninterrupted one.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tikmix.integrations.lightning needs lightning >= 2.2: pip install 'tikmix[lightning]'") from exc

from .. import _distributed, _rng
from ._common import advance, check_controller, check_dataset, check_step_batch

__all__ = ["TikmixCallback"]


class TikmixCallback(Callback):
    """Runs a :class:`tikmix.Controller` at its stage boundaries inside ``lightning.pytorch.Trainer``.

    Args:
        controller: the controller whose sampler feeds the training DataLoader.

    Attributes:
        records: history records of the boundaries handled in this process.
    """

    def __init__(self, controller: Any) -> None:
        self.controller = check_controller(controller)
        self.records: list[dict[str, Any]] = []
        self._trainer: Any = None
        self._pending_rng: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "tikmix.TikmixCallback"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        sampler = self.controller.sampler
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", True):
            raise ValueError("lightning.pytorch.Trainer(use_distributed_sampler=False) is required with tikmix: the "
                             "MixtureSampler already gives every rank its own slice of each step")
        if trainer.max_steps is None or trainer.max_steps <= 0:
            raise ValueError("lightning.pytorch.Trainer(max_steps=...) must be set: the mixture stream has no "
                             "epochs, max_steps decides where training ends")
        loader = trainer.train_dataloader
        bs = getattr(loader, "batch_size", None)
        if bs is not None:
            check_step_batch(sampler, [("DataLoader batch_size", bs),
                                       ("accumulate_grad_batches", trainer.accumulate_grad_batches),
                                       ("world_size", trainer.world_size)])
        if sampler.world_size != trainer.world_size:
            raise ValueError(f"the sampler runs with world_size={sampler.world_size}, the Trainer with "
                             f"{trainer.world_size} processes: build the MixtureSampler without rank=/world_size= "
                             "(it then takes them from torch.distributed at first use)")
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            check_dataset(self.controller, dataset, "the training DataLoader's dataset")
        self.controller.set_total_steps(trainer.max_steps)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            _rng.set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.records.extend(advance(self.controller, trainer.global_step))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = {}
        for k, v in trainer.callback_metrics.items():
            try:
                metrics[str(k)] = float(v)
            except (TypeError, ValueError):  # a non-scalar metric has no place in the final record
                continue
        self.controller.finish(trainer.global_step, metrics=metrics or None)

    def state_dict(self) -> dict[str, Any]:
        step = self._trainer.global_step if self._trainer is not None else None
        # every rank's streams: Lightning writes rank 0's checkpoint, but every rank draws its own dropout masks
        rng = _distributed.all_gather_objects(_rng.portable_rng(_rng.rng_state()))
        return {"controller": self.controller.state_dict(step=step), "rng": rng}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "controller" not in state_dict:
            raise ValueError("the checkpoint's tikmix callback state has no 'controller' entry")
        self.controller.load_state_dict(state_dict["controller"])
        rng = state_dict.get("rng")
        if rng:
            rank, world = _distributed.rank(), _distributed.world_size()
            if len(rng) != world:
                raise ValueError(f"the checkpoint holds the RNG states of {len(rng)} processes, this run has "
                                 f"{world}: resume with the same number of processes for an exact continuation")
            self._pending_rng = _rng.native_rng(rng[rank])
