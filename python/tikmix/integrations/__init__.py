"""Drop-in integrations with training frameworks. Each submodule imports its framework lazily (on first use of the
submodule), so ``import tikmix`` never imports ``transformers`` or ``lightning``.

* :mod:`tikmix.integrations.hf` -- ``transformers.Trainer``: :class:`~tikmix.integrations.hf.MixtureTrainer` and
  :class:`~tikmix.integrations.hf.TikmixCallback` (extra ``tikmix[hf]``).
* :mod:`tikmix.integrations.lightning` -- ``lightning.pytorch.Trainer``:
  :class:`~tikmix.integrations.lightning.TikmixCallback` (extra ``tikmix[lightning]``).

Both call :meth:`tikmix.Controller.step` after every optimizer step, which handles every boundary ``<= step`` not
yet handled, once, in order, under the controller's measurement policy (eval mode, training RNG untouched): the
integrations hold no policy of their own. They check the setup before step 1 (the trainer's ``max_steps`` against
the controller's ``total_steps``, the training dataset's domains against the controller's), call
:meth:`tikmix.Controller.finish` when training ends, and save and restore the controller (and the sampler inside
it) with the framework's checkpoints. :func:`advance` is ``controller.step`` returning the records it added.
"""
from __future__ import annotations

from ._common import advance

__all__ = ["advance"]
