"""The probe protocol: what every probe's config declares to the engine, with defaults.

A probe's config is a frozen dataclass that inherits :class:`ProbeConfig` (the registry refuses
one that does not, :func:`~cgar_interp.probes.base.register_probe`). The engine asks a config
only through these methods, never by probing for attributes, and names no probe kind: a new
probe overrides what it needs and inherits the rest.

==========================  =================================================================
declaration                 read by
==========================  =================================================================
``needed_layers``           the shared capture pass (residual layers at the last position)
``shared_reads``            the shared capture pass (other sites, :class:`SharedRead`)
``resumes_zero_shot``       the shared capture pass (keep the eval queries' zero-shot caches)
``prompt_kinds``            the task preparation (label-control prompts built only if asked)
``self_check_paths``        the run's self-check (:mod:`cgar_interp.selfcheck`)
``remote_unsupported``      a remote suite's parsing (why the probe cannot run on NDIF)
``check_suite``             a suite's parsing (probes that read another probe's table)
``compares_with_theory``    the runner (theory vs measurement after the tables)
``key_numbers``             the report (a probe's key numbers, computed from its tables)
==========================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .inputs import SharedRead, TaskInputs

PromptKind = Literal["zero", "icl", "icl_flipped", "icl_random", "icl_permuted"]

# the prompts every task has; each label control (the same demonstrations with other labels,
# cgar_interp.data.prompts) is built only for a suite with a probe that asks for it
BASE_PROMPT_KINDS: frozenset[str] = frozenset({"zero", "icl"})
FLIPPED = "icl_flipped"  # every label through one derangement of the classes
RANDOM_LABELS = "icl_random"  # every label uniform over the classes (Min et al., 2022)
PERMUTED = "icl_permuted"  # the prompt's labels permuted across its demonstrations (Todd et al.)

# the self-check paths of the suffix passes that resume the zero-shot prompts' KV caches
# (names from cgar_interp.selfcheck.PATHS)
RESUME_PATHS: frozenset[str] = frozenset({"kv_resume", "patch_lambda0"})


def ci_cell(row) -> str:
    """``value [ci_low, ci_high]`` of a tidy row, three decimals (the report's key numbers)."""
    return f"{row.value:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"


@dataclass(frozen=True)
class ProbeConfig:
    """Base of every probe's config: the probe's declarations, each with its default.

    The defaults describe a probe that reads nothing in the shared pass, intervenes nowhere,
    needs only the zero-shot and ICL prompts, runs anywhere and adds no key numbers.
    """

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position of every prompt (the shared pass)."""
        return ()

    def shared_reads(self, inputs: TaskInputs, n_layers: int) -> tuple[SharedRead, ...]:
        """Other sites read at the last position of some prompts, declared before any forward
        pass so that the suite's one capture pass per prompt kind reads them too."""
        return ()

    @property
    def resumes_zero_shot(self) -> bool:
        """Whether the probe intervenes at the last position of the eval queries' zero-shot
        prompts (the shared pass then keeps their KV caches)."""
        return False

    def prompt_kinds(self) -> frozenset[str]:
        """The prompt kinds (:data:`PromptKind`) the probe reads; a label control
        (:data:`FLIPPED`, :data:`RANDOM_LABELS`, :data:`PERMUTED`) asks the task preparation
        for those prompts."""
        return BASE_PROMPT_KINDS

    def self_check_paths(self) -> frozenset[str]:
        """The engine's fast paths this probe uses (names of
        :data:`cgar_interp.selfcheck.PATHS`): the run checks those against a plain forward
        before the first probe. By default the resume paths when it resumes zero-shot
        prompts."""
        return RESUME_PATHS if self.resumes_zero_shot else frozenset()

    def remote_unsupported(self) -> str | None:
        """Why the probe cannot run on a remote model (NDIF), or None when it can."""
        return None

    def check_suite(self, index: int, probes: Sequence) -> None:
        """Check the probe's place in a suite (``probes``: its ``ProbeEntry`` s, this one at
        ``index``); raise ValueError naming what to change. Nothing to check by default."""

    def compares_with_theory(self) -> bool:
        """Whether the run sets the theory's predictions beside this probe's tables."""
        return False

    @classmethod
    def key_numbers(cls, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """The report's compact tables of this probe's headline numbers (title -> frame),
        from a run's ``tables``; empty when the run has none of the probe's tables. A title
        begins with the probe's section name (its kind with spaces)."""
        return {}
