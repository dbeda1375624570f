"""cgar_interp: is in-context learning context-gated associative retrieval inside a Llama?

The public entry points are importable from here; heavy libraries load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .embedded import EmbeddedModelMissing, ensure_embedded
from .models import Architecture, ModelHandle, Patch, RunResult, load_model
from .sites import Site, all_sites, parse_site, site_kinds
from .tokens import TokenBatch

__all__ = [
    "Architecture",
    "EmbeddedModelMissing",
    "ModelHandle",
    "Patch",
    "RunResult",
    "Site",
    "TokenBatch",
    "__version__",
    "all_sites",
    "ensure_embedded",
    "load_model",
    "parse_site",
    "site_kinds",
]
