"""tikmix — influence-driven dynamic data mixtures for LLM pre-training (TiKMiX, arXiv 2508.17677)."""
from __future__ import annotations

__version__ = "0.1.0"
