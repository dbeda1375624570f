"""What every probe reads of a task: its aligned prompts (:class:`TaskInputs`) and the
last-position sites it declares before any forward pass (:class:`SharedRead`).

A leaf of the probes package: the protocol (:mod:`.protocol`) and the engine (:mod:`.base`)
both name these types, and neither is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.prompts import CONTROL_KINDS
from ..tokens import TokenBatch


@dataclass(frozen=True)
class TaskInputs:
    """One task's prompts, aligned by query: row ``i`` of every batch is query ``i``.

    Attributes:
        task: task name. ``classes``: class names; ``label_ids``: ``[K]`` first label tokens.
        gold: ``[n]`` gold class per query. ``fit`` / ``eval``: disjoint query indices.
        zero: ``[n]`` zero-shot prompts; ``icl``: ``[n]`` prompts with demonstrations;
        icl_flipped, icl_random, icl_permuted: ``[n]`` the same demonstrations under a label
            control (or None when no probe asked for it; ``data.prompts``): labels sent
            through one derangement of the classes, labels drawn uniformly at random (Min et
            al., 2022), the prompt's labels permuted across its demonstrations (Todd et al.,
            2024).
    """

    task: str
    classes: tuple[str, ...]
    label_ids: Tensor
    gold: Tensor
    fit: Tensor
    eval: Tensor
    zero: TokenBatch
    icl: TokenBatch
    icl_flipped: TokenBatch | None = None
    icl_random: TokenBatch | None = None
    icl_permuted: TokenBatch | None = None


# the label controls (data.prompts.CONTROL_KINDS), each built only when a probe asks for it
# (ProbeConfig.prompt_kinds)
CONTROL_PROMPT_KINDS = CONTROL_KINDS
PROMPT_KINDS_SHARED = ("zero", "icl", *CONTROL_PROMPT_KINDS)


@dataclass(frozen=True)
class SharedRead:
    """Sites a probe reads at the last position of some of a task's prompts.

    A probe declares its reads before any forward pass (its config's ``shared_reads(inputs,
    n_layers)``); the runner hands them to the :class:`ProbeContext`, whose one capture pass per
    prompt kind reads them beside the shared residuals, so no prompt runs twice in a suite.
    :meth:`ProbeContext.read` returns them; a read nobody declared runs its own capture there.

    Attributes:
        kind: one of :data:`PROMPT_KINDS_SHARED` (``"zero"``, ``"icl"`` or a label control).
        rows: query indices, in the order the probe reads them.
        sites: site names read at each prompt's last position.
        keep_states: also keep the prompts' KV caches (``RunResult.states``), for probes that
            resume them or read their keys.
        local_only: a read the probe makes on a local model only (it takes another path on a
            remote one, e.g. a grad pass instead of resuming kept caches): a remote context
            drops it.
        cache_reads: :class:`~cgar_interp.capture.CacheRead` s (``"<kind>.<layer>"``)
            computed from each batch's KV cache in the pass, kept instead of the cache (e.g.
            the keys' scores a Hopfield-heads read needs); skipped on a remote model.
    """

    kind: str
    rows: tuple[int, ...]
    sites: tuple[str, ...]
    keep_states: bool = False
    local_only: bool = False
    cache_reads: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in PROMPT_KINDS_SHARED:
            raise ValueError(
                f"shared read of prompt kind {self.kind!r}: valid kinds are "
                f"{', '.join(PROMPT_KINDS_SHARED)}"
            )
        if len(set(self.rows)) != len(self.rows) or not self.rows:
            raise ValueError(f"a shared read needs distinct query rows; got {self.rows[:8]}...")

    @classmethod
    def of(
        cls,
        kind: str,
        rows,
        sites,
        keep_states: bool = False,
        local_only: bool = False,
        cache_reads=(),
    ) -> SharedRead:
        """From a tensor (or list) of rows and any iterable of sites."""
        rows = torch.as_tensor(rows).tolist() if not isinstance(rows, tuple) else rows
        return cls(
            kind,
            tuple(int(r) for r in rows),
            tuple(str(s) for s in sites),
            keep_states,
            local_only,
            tuple(str(c) for c in cache_reads),
        )
