"""Drop-in integrations with training frameworks. Each submodule imports its framework lazily (on first use of the
submodule), so ``import tikmix`` never imports ``transformers`` or ``lightning``.

* :mod:`tikmix.integrations.hf` -- ``transformers.Trainer``: :class:`~tikmix.integrations.hf.MixtureTrainer` and
  :class:`~tikmix.integrations.hf.TikmixCallback` (extra ``tikmix[hf]``).
* :mod:`tikmix.integrations.lightning` -- ``lightning.pytorch.Trainer``:
  :class:`~tikmix.integrations.lightning.TikmixCallback` (extra ``tikmix[lightning]``).

Both run a :class:`tikmix.Controller` at its stage boundaries with the rule *every boundary ``b <= step`` not yet
handled is handled once, in order* (:func:`advance`), so a loop that jumps over a boundary between two calls still
triggers it exactly once, and both save and restore the controller (and the sampler inside it) with the framework's
checkpoints.
"""
from __future__ import annotations

from ._common import advance

__all__ = ["advance"]
