"""tikmix inside a ``lightning.pytorch.Trainer`` (extra ``tikmix[lightning]``; lightning >= 2.2).

.. code-block:: python

    sampler = tikmix.MixtureSampler(train.domain_sizes, [1/3] * 3, batch_size=8 * 2 * world_size, seed=0)
    controller = tikmix.Controller(model, sampler, domains=..., targets=..., loss_fn=..., stages=[1000, 2000])
    loader = DataLoader(train, sampler=sampler, batch_size=8)
    trainer = L.Trainer(max_steps=3000, accumulate_grad_batches=2, use_distributed_sampler=False,
                        callbacks=[TikmixCallback(controller)])
    trainer.fit(module, loader)                       # resume: trainer.fit(module, loader, ckpt_path=...)

* The DataLoader takes the controller's :class:`tikmix.MixtureSampler` (``sampler=``). Pass
  ``use_distributed_sampler=False``: otherwise Lightning wraps it in a ``DistributedSampler`` under DDP and every rank
  would re-split indices the sampler already split (checked: the callback raises on a multi-process run without
  it). One sampler step is one optimizer step: the sampler's ``batch_size`` must be the DataLoader's ``batch_size ×
  accumulate_grad_batches × world_size`` (checked at ``on_train_start``), and ``max_steps`` decides the end of
  training.
* Boundaries: after every training batch the callback calls :func:`tikmix.integrations.advance` with
  ``trainer.global_step`` (optimizer steps), so a boundary is handled once, right after the optimizer step that
  reaches it, with the model in eval mode while influence is measured.
* Resume: the callback's ``state_dict`` (the controller's, the sampler's schedule and position at
  ``global_step`` inside) is saved in every Lightning checkpoint and restored by ``fit(..., ckpt_path=...)`` before
  the DataLoader is iterated, so the sampler continues the same stream.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tikmix.integrations.lightning needs lightning >= 2.2: pip install 'tikmix[lightning]'") from exc

from ._common import advance, check_controller

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
            per_step = bs * trainer.accumulate_grad_batches * trainer.world_size
            if sampler.batch_size != per_step:
                raise ValueError(
                    f"the sampler's batch_size ({sampler.batch_size}) must be the samples of one optimizer step: "
                    f"DataLoader batch_size ({bs}) x accumulate_grad_batches ({trainer.accumulate_grad_batches}) "
                    f"x world_size ({trainer.world_size}) = {per_step}"
                )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.records.extend(advance(self.controller, trainer.global_step))

    def state_dict(self) -> dict[str, Any]:
        step = self._trainer.global_step if self._trainer is not None else None
        return {"controller": self.controller.state_dict(step=step)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "controller" not in state_dict:
            raise ValueError("the checkpoint's tikmix callback state has no 'controller' entry")
        self.controller.load_state_dict(state_dict["controller"])
