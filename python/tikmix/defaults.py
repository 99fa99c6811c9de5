"""Defaults shared by the Controller, the ``tikmix run`` config and the demo: each written once, here."""
from __future__ import annotations

__all__ = ["INFLUENCE", "ADAPTIVE_SAMPLING"]

#: How the Controller measures Group Influence at a boundary unless told otherwise.
INFLUENCE = {
    "k": 1024,                  # sketch dimension
    "n_bootstrap": 200,         # bootstrap resamples for the confidence intervals
    "samples_per_domain": 64,   # rows drawn from each domain at every boundary
    "batch_size": 32,           # micro-batch size while measuring
}

#: Adaptive sampling of influence rows (``Controller(sampling={...})``, ``influence.adaptive`` in a run config): the
#: options a partial dict leaves out. Chosen on the mixing-quality benchmark (5 seeds, 2 target sets, dev loss):
#: tolerance 0.1 in rounds of 64 kept TiKMiX-D's and TiKMiX-M's quality at a lower controller share, where
#: tolerance 0.2 in rounds of 32 lost quality.
ADAPTIVE_SAMPLING = {
    "tolerance": 0.1,           # stop once the stability value (relative to the row's max |S|) is below this
    "min_samples": 16,          # rows a domain or target takes before it may stop
    "round_samples": 64,        # rows added per round (group mode: rounded up to whole micro-batches)
}
