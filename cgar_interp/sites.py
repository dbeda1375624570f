"""The site registry: one name per probe site, resolved once per backend.

A *site* is a place in the forward pass a probe reads (or patches). Every site has one string
form, ``"<kind>.<layer>"`` (``resid.12``, ``attn_pattern.3``), and every table in the toolkit
stores ``site``/``layer``/``head`` columns, never backend strings. Names are parsed only at the
edge (:func:`parse_site`); inside the engine a site is a frozen :class:`Site`.

Layer convention (as in the paper's ``q:32`` for Llama-3-8B): ``resid.l`` is the residual stream
*after l blocks*; ``resid.0`` is the token embedding and ``resid.{n_layers}`` the final residual
before the final norm. All other kinds belong to block ``l`` with ``l = 0 .. n_layers-1``.

Every site has a canonical shape with the position axis second, so one position selection
serves them all (``batch, pos, n_heads, n_kv_heads, d_head, d_model`` as the vocabulary):

=================  ================================  =============================================
kind               canonical shape                   meaning
=================  ================================  =============================================
``resid``          ``[batch, pos, d_model]``         residual stream after ``l`` blocks
``resid_mid``      ``[batch, pos, d_model]``         residual after block ``l``'s attention
``attn_out``       ``[batch, pos, d_model]``         block ``l``'s attention output (after W_O)
``mlp_out``        ``[batch, pos, d_model]``         block ``l``'s MLP output
``attn_pattern``   ``[batch, pos, n_heads, k_pos]``  softmax attention of each query position
``q``              ``[batch, pos, n_heads, d_head]`` queries, RoPE applied as the model applies it
``k``              ``[batch, pos, n_kv_heads, d_head]`` keys per KV head, RoPE applied
``v``              ``[batch, pos, n_kv_heads, d_head]`` values per KV head
``k_rep``          ``[batch, pos, n_heads, d_head]`` keys expanded to query heads (GQA repeat_kv)
``v_rep``          ``[batch, pos, n_heads, d_head]`` values expanded to query heads
``z``              ``[batch, pos, n_heads, d_head]`` per-head attention result, input of W_O
``head_out``       ``[batch, pos, n_heads, d_model]`` per-head contribution to the residual
=================  ================================  =============================================

``k_rep``, ``v_rep`` and ``head_out`` are *derived*: the engine captures their base kind and
computes them (the same code for every backend). Patchable kinds are those whose tensor is a
module output that the forward pass uses directly: ``resid``, ``attn_out``, ``mlp_out``, ``z``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

HFPart = Literal["output", "output0", "output1", "input0"]
# the registered kinds' names, for type checkers (the registry below is the runtime truth)
SiteKindName = Literal[
    "resid",
    "resid_mid",
    "attn_out",
    "mlp_out",
    "attn_pattern",
    "q",
    "k",
    "v",
    "k_rep",
    "v_rep",
    "z",
    "head_out",
]


@dataclass(frozen=True)
class SiteKind:
    """How one kind of site is named, shaped, ordered and resolved on each backend.

    Attributes:
        name: the kind, the part of a site name before the dot.
        doc: one line, shown in ``cgar sites`` and in errors.
        shape: canonical shape with the position axis second.
        final_layer: True when the kind also exists at ``layer == n_layers`` (only ``resid``).
        stage: execution order inside a block (nnsight needs reads in execution order).
        patchable: whether ``run_with_patch`` may write to it.
        derived_from: the base kind a derived kind is computed from, else None.
        tl_hook: TransformerLens hook name template with ``{l}``, or None for derived kinds.
        hf_module: module path under the HF ``LlamaForCausalLM`` with ``{l}`` (shared by the
            plain-transformers and nnsight backends: nnsight's envoy tree mirrors the model).
        hf_part: which part of that module's call holds the tensor.
        tl_final_hook: TransformerLens hook template of the kind at ``layer == n_layers``
            (``final_layer`` kinds: the output of the last block, ``{l}`` its index).
    """

    name: str
    doc: str
    shape: str
    final_layer: bool = False
    stage: int = 0
    patchable: bool = False
    derived_from: str | None = None
    tl_hook: str | None = None
    hf_module: str | None = None
    hf_part: HFPart = "output"
    tl_final_hook: str | None = None


_KINDS: dict[str, SiteKind] = {}


def register_kind(kind: SiteKind) -> SiteKind:
    """Add a site kind to the registry; a duplicate name is refused."""
    if kind.name in _KINDS:
        raise ValueError(f"site kind {kind.name!r} is already registered")
    if kind.derived_from is None and (kind.tl_hook is None or kind.hf_module is None):
        raise ValueError(f"site kind {kind.name!r} needs a TL hook and an HF module path")
    if kind.final_layer and kind.derived_from is None and kind.tl_final_hook is None:
        raise ValueError(f"site kind {kind.name!r} exists at n_layers: it needs a tl_final_hook")
    _KINDS[kind.name] = kind
    return kind


for _kind in (
    SiteKind(
        "resid",
        "residual stream after l blocks (0 = embeddings, n_layers = before final norm)",
        "[batch, pos, d_model]",
        final_layer=True,
        stage=9,
        patchable=True,
        tl_hook="blocks.{l}.hook_resid_pre",
        tl_final_hook="blocks.{l}.hook_resid_post",  # resid.n_layers: after the last block
        hf_module="model.layers.{l}",  # output of block l-1; resid.0 is special-cased
    ),
    SiteKind(
        "q",
        "queries per head after RoPE",
        "[batch, pos, n_heads, d_head]",
        stage=1,
        tl_hook="blocks.{l}.attn.hook_rot_q",
        hf_module="model.layers.{l}.self_attn.q_proj",
    ),
    SiteKind(
        "k",
        "keys per KV head after RoPE",
        "[batch, pos, n_kv_heads, d_head]",
        stage=2,
        tl_hook="blocks.{l}.attn.hook_rot_k",
        hf_module="model.layers.{l}.self_attn.k_proj",
    ),
    SiteKind(
        "v",
        "values per KV head",
        "[batch, pos, n_kv_heads, d_head]",
        stage=3,
        tl_hook="blocks.{l}.attn.hook_v",
        hf_module="model.layers.{l}.self_attn.v_proj",
    ),
    SiteKind(
        "z",
        "per-head attention result (input of W_O)",
        "[batch, pos, n_heads, d_head]",
        stage=4,
        patchable=True,
        tl_hook="blocks.{l}.attn.hook_z",
        hf_module="model.layers.{l}.self_attn.o_proj",
        hf_part="input0",
    ),
    SiteKind(
        "attn_pattern",
        "softmax attention of each query position over key positions",
        "[batch, pos, n_heads, k_pos]",
        stage=5,
        tl_hook="blocks.{l}.attn.hook_pattern",
        hf_module="model.layers.{l}.self_attn",
        hf_part="output1",
    ),
    SiteKind(
        "attn_out",
        "attention output of block l (after W_O)",
        "[batch, pos, d_model]",
        stage=5,
        patchable=True,
        tl_hook="blocks.{l}.hook_attn_out",
        hf_module="model.layers.{l}.self_attn",
        hf_part="output0",
    ),
    SiteKind(
        "resid_mid",
        "residual after block l's attention, before its MLP",
        "[batch, pos, d_model]",
        stage=6,
        tl_hook="blocks.{l}.hook_resid_mid",
        hf_module="model.layers.{l}.post_attention_layernorm",
        hf_part="input0",
    ),
    SiteKind(
        "mlp_out",
        "MLP output of block l",
        "[batch, pos, d_model]",
        stage=7,
        patchable=True,
        tl_hook="blocks.{l}.hook_mlp_out",
        hf_module="model.layers.{l}.mlp",
    ),
    SiteKind(
        "k_rep",
        "keys expanded to query heads (GQA repeat_kv), RoPE applied",
        "[batch, pos, n_heads, d_head]",
        stage=2,
        derived_from="k",
    ),
    SiteKind(
        "v_rep",
        "values expanded to query heads (GQA repeat_kv)",
        "[batch, pos, n_heads, d_head]",
        stage=3,
        derived_from="v",
    ),
    SiteKind(
        "head_out",
        "per-head contribution to the residual, z_h @ W_O[:, h]^T",
        "[batch, pos, n_heads, d_model]",
        stage=4,
        derived_from="z",
    ),
):
    register_kind(_kind)


def site_kinds() -> dict[str, SiteKind]:
    """All registered kinds by name (a copy)."""
    return dict(_KINDS)


def get_kind(name: str) -> SiteKind:
    """The registered kind called ``name``; an unknown name suggests the closest ones."""
    try:
        return _KINDS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_KINDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown site kind {name!r}; {hint}known kinds: {', '.join(_KINDS)}"
        ) from None


@dataclass(frozen=True, order=True)
class Site:
    """One site: a kind at a layer. ``str(site)`` is its one name, e.g. ``resid.12``."""

    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"

    @property
    def spec(self) -> SiteKind:
        return get_kind(self.kind)

    @property
    def order(self) -> tuple[int, int]:
        """Execution order key: (block index, stage). ``resid.l`` is block ``l-1``'s output."""
        if self.kind == "resid":
            return (self.layer - 1, 9)
        return (self.layer, self.spec.stage)

    def validate(self, n_layers: int) -> Site:
        """Check the layer against a model with ``n_layers`` blocks; returns self."""
        top = n_layers if self.spec.final_layer else n_layers - 1
        if not isinstance(self.layer, int) or not 0 <= self.layer <= top:
            why = (
                "resid.l is the residual after l blocks"
                if self.kind == "resid"
                else f"{self.kind}.l belongs to block l"
            )
            raise ValueError(
                f"layer {self.layer!r} is out of range for site kind {self.kind!r} on a model "
                f"with {n_layers} layers: valid layers are 0..{top} ({why})"
            )
        return self

    def tl_hook_name(self, n_layers: int) -> str:
        """The TransformerLens (TransformerBridge) hook name of this (non-derived) site."""
        spec = self.spec
        if spec.tl_hook is None:
            raise ValueError(f"site {self} is derived from {spec.derived_from!r}; no TL hook")
        if spec.final_layer and self.layer == n_layers:
            return spec.tl_final_hook.format(l=n_layers - 1)
        return spec.tl_hook.format(l=self.layer)

    def hf_module_path(self) -> str:
        """Module path under ``LlamaForCausalLM`` (also the nnsight envoy path)."""
        spec = self.spec
        if spec.hf_module is None:
            raise ValueError(f"site {self} is derived from {spec.derived_from!r}; no module")
        if self.kind == "resid":
            if self.layer == 0:
                return "model.embed_tokens"
            return spec.hf_module.format(l=self.layer - 1)
        return spec.hf_module.format(l=self.layer)

    def base(self) -> Site:
        """The site actually captured: itself, or the base of a derived kind."""
        derived = self.spec.derived_from
        return Site(derived, self.layer) if derived else self


def site_name(kind: SiteKindName, layer: int) -> str:
    """The one name of the site ``kind`` at ``layer`` (``str(Site(kind, layer))``): how the
    engine and the probes spell a site, e.g. as a capture's key. An unknown kind is refused.

    >>> site_name("resid", 12), site_name("head_out", 3)
    ('resid.12', 'head_out.3')
    """
    get_kind(kind)
    return str(Site(kind, int(layer)))


def site_names(kind: SiteKindName, layers) -> tuple[str, ...]:
    """:func:`site_name` of ``kind`` at each of ``layers``, in their order.

    >>> site_names("q", (0, 2))
    ('q.0', 'q.2')
    """
    return tuple(site_name(kind, layer) for layer in layers)


def parse_site(name: str | Site, n_layers: int | None = None) -> Site:
    """Parse ``"kind.layer"`` into a :class:`Site`, validating the layer when ``n_layers`` is given.

    >>> parse_site("resid.3")
    Site(kind='resid', layer=3)
    """
    if isinstance(name, Site):
        site = name
    else:
        if not isinstance(name, str) or name.count(".") != 1:
            raise ValueError(
                f"site name {name!r} is not of the form '<kind>.<layer>' (e.g. 'resid.12'); "
                f"known kinds: {', '.join(_KINDS)}"
            )
        kind, layer_text = name.split(".")
        get_kind(kind)
        try:
            layer = int(layer_text)
        except ValueError:
            raise ValueError(
                f"site name {name!r} has layer {layer_text!r}, which is not an integer"
            ) from None
        site = Site(kind, layer)
    get_kind(site.kind)
    if n_layers is not None:
        site.validate(n_layers)
    return site


def all_sites(n_layers: int, kinds: list[str] | None = None) -> list[Site]:
    """Every site of the given kinds (default: all) on a model with ``n_layers`` blocks."""
    out = []
    for name in kinds or list(_KINDS):
        spec = get_kind(name)
        top = n_layers if spec.final_layer else n_layers - 1
        out.extend(Site(name, layer) for layer in range(top + 1))
    return sorted(out, key=lambda s: s.order)
