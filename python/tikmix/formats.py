"""The on-disk formats tikmix writes, with their versions: one place for every ``"format"`` tag.

A file's ``"format"`` names its schema and version (``"tikmix.<kind>/<version>"``); readers refuse a tag they do
not know instead of guessing. The version goes up when a field changes meaning or disappears.
"""
from __future__ import annotations

__all__ = ["VERSION", "HISTORY", "HISTORY_READABLE", "CONTROLLER_STATE", "MIXTURE_STATE", "EVAL", "DEMO", "SEARCH"]

#: The tikmix package version.
VERSION = "0.1.0"
#: ``history.json``: a run's stage records (weights, S, decision, timings), metrics and final summary.
#: Version 2: ``applies_from_step`` is 1-based (the first optimizer step whose batch is drawn with the new mixture).
HISTORY = "tikmix.history/2"
#: History versions the readers (``tikmix report``, ``tikmix compare``) accept; in version 1 ``applies_from_step``
#: was the 0-based sampler step, one less.
HISTORY_READABLE = ("tikmix.history/1", HISTORY)
#: :meth:`tikmix.Controller.state_dict`: handled boundaries, the history and the sampler's state.
CONTROLLER_STATE = "tikmix.controller/1"
#: :meth:`tikmix.MixtureSampler.state_dict`: the mixture schedule and the stream position.
MIXTURE_STATE = "tikmix.mixture/2"
#: ``eval.json``: a finished run's per-sequence test losses and a hash of each test set.
EVAL = "tikmix.eval/1"
#: ``report.json`` of ``tikmix demo``: several runs on the same budget and their comparison.
DEMO = "tikmix.demo/1"
#: ``search.json``, ``proxies/settings.json`` and ``proxies/<i>/proxy.json`` of ``tikmix search``: the proxy runs,
#: the surrogate fit, the chosen static mixture and the compute spent.
SEARCH = "tikmix.search/1"
