"""Models that ship with tikmix: a small byte-level GPT in plain torch and its per-sequence loss.

:class:`GPT` (sized by :class:`GPTConfig`) is the model ``tikmix run`` trains unless the config names a Hugging Face
model or a factory, and the model of ``tikmix demo``; :func:`sequence_loss` is its per-sequence loss in the
``loss_fn(model, batch) -> Tensor[B]`` protocol of :class:`tikmix.GroupInfluence` and :class:`tikmix.Controller`.
"""

from .gpt import GPT, GPTConfig, sequence_loss

__all__ = ["GPT", "GPTConfig", "sequence_loss"]
