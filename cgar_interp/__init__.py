"""cgar_interp: is in-context learning context-gated associative retrieval inside a Llama?

The public entry points are importable from here; heavy libraries load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .embedded import EmbeddedModelMissing, ensure_embedded
from .models import Architecture, ModelHandle, Patch, RunResult, load_model
from .remote import RemoteUnsupportedError
from .sites import Site, all_sites, parse_site, site_kinds
from .tokens import TokenBatch


def run_suite(suite, out=None, *, resume=False, force=False, **overrides):
    """Run a suite (a SuiteConfig, a TOML path, or a shipped name like ``"paper"``).

    ``overrides`` replace suite keys (``model=``, ``n_eval=``, ``tasks=[...]``, ...). Returns a
    :class:`~cgar_interp.runner.RunResults` with ``.tables`` (pandas) and ``.figure(name)``.
    """
    from dataclasses import replace
    from pathlib import Path

    from .config import build
    from .runner import run_suite as _run
    from .suite import SuiteConfig, load_suite

    if isinstance(suite, SuiteConfig):
        if overrides:
            data = {k: v for k, v in suite.to_dict().items() if k != "probes"}
            data.update(overrides)
            suite = replace(build(SuiteConfig, data, "suite overrides"), probes=suite.probes)
    else:
        suite = load_suite(suite, **overrides)
    return _run(suite, out or Path("runs") / suite.name, resume=resume, force=force)


__all__ = [
    "Architecture",
    "EmbeddedModelMissing",
    "ModelHandle",
    "Patch",
    "RemoteUnsupportedError",
    "RunResult",
    "Site",
    "TokenBatch",
    "__version__",
    "all_sites",
    "ensure_embedded",
    "load_model",
    "parse_site",
    "run_suite",
    "site_kinds",
]
