"""Where the libraries we wrap changed their interfaces, and how we speak to each version.

Every shim here is decided by *inspecting the installed library*, never by comparing version
strings, so a release that moves again is met by the same code (and, where it is not, by the
run-time self-check of :mod:`cgar_interp.selfcheck`, which compares every fast path with a
plain forward before a run trusts it).

The KV cache's keyword (transformers 5.24)
    transformers 5.24 renamed the KV-cache argument of every model, decoder layer, attention
    module and ``create_causal_mask`` from ``past_key_values`` to ``cache``. The old name is
    still accepted at the model's entry point (with a deprecation warning, until 5.40), but a
    decoder layer now hands the cache to its attention module as ``cache=``.
    TransformerLens 4.3's ``TransformerBridge`` re-implements attention (to expose
    ``hook_pattern``) and looks the cache up as ``past_key_values`` (or ``layer_past``) only.
    On 5.24 it therefore never saw the cache: a pass over a cached prefix attended to its own
    new tokens alone, and a capture pass never filled the cache that suffix passes resume
    from. Patch mode and task vectors were silently wrong; decode mode (no cache) was not.
    nnsight 0.8.1 has the same blind spot one level up: unless it sees ``past_key_values``
    among a trace's keywords it builds an all-ones attention mask as wide as the *new* tokens,
    and the model then attends to none of the cached slots. Passing ``cache=`` there was
    0.24 off in the logits; the nnsight backend therefore passes its own mask over the
    cached slots and the new tokens.
    :func:`cache_kwargs` passes the cache under the name each callee accepts, and
    :func:`bridge_attention_sees_cache` hands it to the bridge's attention under the name the
    bridge reads.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _parameters(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins, C extensions: no signature to read
        return ()


def cache_keyword(fn: Callable) -> str:
    """The name under which ``fn`` takes a KV cache: ``"cache"`` (transformers >= 5.24) or
    ``"past_key_values"`` (earlier releases, and callees that take ``**kwargs`` only).

    >>> def new(hidden, cache=None): ...
    >>> def old(hidden, past_key_values=None, **kwargs): ...
    >>> cache_keyword(new), cache_keyword(old)
    ('cache', 'past_key_values')
    """
    target = getattr(fn, "forward", fn) if isinstance(fn, torch.nn.Module) else fn
    params = _parameters(getattr(target, "__func__", target))
    for name in CACHE_NAMES:
        if name in params:
            return name
    return "past_key_values"


def cache_kwargs(fn: Callable, cache) -> dict:
    """``{keyword: cache}`` for ``fn`` (empty when ``cache`` is None).

    >>> def new(hidden, cache=None): ...
    >>> cache_kwargs(new, "KV"), cache_kwargs(new, None)
    ({'cache': 'KV'}, {})
    """
    return {} if cache is None else {cache_keyword(fn): cache}


def _alias_cache(module, args, kwargs):
    """Forward pre-hook: the cache a decoder layer passed as ``cache=`` also as
    ``past_key_values=`` (the name TransformerLens' attention bridge reads)."""
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs
    return None


def bridge_attention_modules(bridge) -> list[torch.nn.Module]:
    """The attention components of a ``TransformerBridge`` (``blocks[i].attn``)."""
    return [block.attn for block in bridge.blocks]


@contextmanager
def _bridge_attention_hook(bridge, hook) -> Iterator[None]:
    """``hook`` as a kwargs pre-hook on every attention component of ``bridge``, while active."""
    handles = [
        module.register_forward_pre_hook(hook, with_kwargs=True)
        for module in bridge_attention_modules(bridge)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def bridge_attention_sees_cache(bridge):
    """While active, the bridge's attention components find a ``cache=`` argument.

    Both names are then present, so a bridge that reads either one updates the cache once;
    a bridge that reads neither is caught by the self-check and by ``tests/test_prefix.py``.
    The hooks are removed on exit.
    """
    return _bridge_attention_hook(bridge, _alias_cache)


def _drop_cache(module, args, kwargs):
    return args, {k: v for k, v in kwargs.items() if k not in CACHE_NAMES}


def bridge_attention_without_cache(bridge):
    """The transformers 5.24 failure, staged on any version: the bridge's attention gets no
    KV cache at all. For tests and benchmarks that show the self-check catches it
    (monkeypatch the backend's ``bridge_attention_sees_cache`` with this)."""
    return _bridge_attention_hook(bridge, _drop_cache)
