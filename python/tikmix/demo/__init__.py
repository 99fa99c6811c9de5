"""The self-contained demo: an embedded multi-domain corpus and the driver of ``tikmix demo`` (uniform vs staged
TiKMiX-D vs staged TiKMiX-M on the same token budget, each one run of :func:`tikmix.run.train`). The model it trains
is :class:`tikmix.models.GPT`."""

from .corpus import DOMAIN_ROLES, DemoCorpus, build_corpus
from .run import QUICK, DemoSettings, run_demo

__all__ = ["DemoCorpus", "build_corpus", "DOMAIN_ROLES", "DemoSettings", "QUICK", "run_demo"]
