"""Defaults shared by the Controller, the ``tikmix run`` config and the demo: each written once, here."""
from __future__ import annotations

__all__ = ["INFLUENCE"]

#: How the Controller measures Group Influence at a boundary unless told otherwise.
INFLUENCE = {
    "k": 1024,                  # sketch dimension
    "n_bootstrap": 200,         # bootstrap resamples for the confidence intervals
    "samples_per_domain": 64,   # rows drawn from each domain at every boundary
    "batch_size": 32,           # micro-batch size while measuring
}
