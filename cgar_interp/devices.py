"""Where a module computes, for the engine paths that call HF modules directly.

With ``device="auto"`` accelerate spreads a model over every visible GPU: each decoder block
sits whole on one device (blocks are never split), the embedding on the first one. When the
GPUs are too small it also *offloads* some modules to CPU RAM or disk: their parameters then
sit on the ``meta`` device and accelerate's hook loads them onto its execution device for each
call. So ``module.weight.device`` is not where a module computes, and a tensor built for one
block is not on the next block's device.

Engine paths that run blocks themselves (KV-cache prefix reuse, :meth:`ModelHandle.resume`,
:meth:`ModelHandle.decode_residual`) use :func:`module_device` and move their inputs before
each call; on one device every move is a no-op, so single-device results are bit-identical.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def _hooks(module: torch.nn.Module) -> tuple:
    hook = getattr(module, "_hf_hook", None)  # accelerate's AlignDevicesHook or SequentialHook
    if hook is None:
        return ()
    return tuple(getattr(hook, "hooks", (hook,)))


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on.

    Accelerate's execution device when a device map placed the module (also right for an
    offloaded module, whose parameters are on ``meta``), else the device of its first
    parameter or buffer, else the CPU.
    """
    for hook in _hooks(module):
        execution = getattr(hook, "execution_device", None)
        if execution is not None:
            return torch.device(execution)
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(value, device: torch.device):
    """``value`` (a tensor, a tuple of tensors, or ``None``) on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    return value


class PerDevice:
    """Inputs every block shares (mask, rotary cos/sin, position ids), copied once per device.

    ``PerDevice(attention_mask=mask, ...).on(device)`` gives the keyword arguments for a block
    on ``device``; the first block of each device pays for the copy, the others reuse it.
    """

    def __init__(self, **inputs):
        self._inputs = inputs
        self._copies: dict[torch.device, dict] = {}

    def on(self, device: torch.device) -> dict:
        if device not in self._copies:
            self._copies[device] = {k: to_device(v, device) for k, v in self._inputs.items()}
        return self._copies[device]


def resident_weight(module: torch.nn.Module, name: str, what: str) -> Tensor:
    """Parameter ``name`` of ``module`` as a real tensor, for code that reads weights itself.

    An offloaded module's parameter is on ``meta``; its real value is in accelerate's weights
    map (CPU RAM or a memory-mapped file), which is returned instead.

    Raises:
        ValueError: the weights are not held in this process at all (a model built on the
            meta device, e.g. for remote execution), naming ``what`` needed them.
    """
    weight = getattr(module, name)
    if not weight.is_meta:
        return weight
    for hook in _hooks(module):
        weights = getattr(hook, "weights_map", None)
        if weights is not None:
            return weights[name]
    raise ValueError(
        f"{what} reads the model's weights ({type(module).__name__}.{name}), which are not "
        "held in this process (the parameter is on the meta device with no offloaded copy, "
        "as for a remote model); run it on a model loaded with its weights (remote=False)"
    )


__all__ = ["PerDevice", "module_device", "resident_weight", "to_device"]
