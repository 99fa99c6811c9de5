"""The self-contained demo: a small byte-level GPT, an embedded multi-domain corpus and the driver of
``tikmix demo`` (uniform vs staged TiKMiX-D vs staged TiKMiX-M on the same token budget)."""

from .corpus import DOMAIN_ROLES, DemoCorpus, build_corpus
from .model import GPT, GPTConfig, sequence_loss
from .run import QUICK, DemoSettings, run_demo

__all__ = ["GPT", "GPTConfig", "sequence_loss", "DemoCorpus", "build_corpus", "DOMAIN_ROLES", "DemoSettings",
           "QUICK", "run_demo"]
