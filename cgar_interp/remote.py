"""Remote execution on NDIF (nnsight's hosted models), behind the same probe API.

``load_model(hub_id, backend="nnsight", remote=True)`` builds the model on the meta device
from its config (no weights are downloaded) and sends every forward pass to NDIF: nnsight
serializes the traced block of :meth:`NNsightBackend.forward` (its source plus the variables
it reads: the sites, the reader and writer functions, the token ids) and the server runs it
against its own copy of the checkpoint. What stays local is what the client computes before
and after the trace (tokenization, positions, derived sites that need no weights).

Paths that run the model's modules in this process (KV-cache prefix reuse, ``resume``,
``decode_residual``, ``head_out``, probes that read weights) raise
:class:`RemoteUnsupportedError` under ``remote=True``. See ``docs/scale_out.md``.
"""

from __future__ import annotations

import os

API_KEY_ENV = "NDIF_API_KEY"

# What a remote handle can still do, for error messages.
REMOTE_SUPPORTED = (
    "capture, logits, run_with_patch(es), and capture_many without shared_prefix/keep_states"
)


class RemoteUnsupportedError(ValueError):
    """An operation needs the model's weights or modules in this process, which remote lacks."""


def remote_unsupported(what: str, model: str) -> RemoteUnsupportedError:
    return RemoteUnsupportedError(
        f"{what} runs the model's modules in this process, but model {model!r} was loaded "
        f"with remote=True (the weights live on the NDIF server). Remotely supported: "
        f"{REMOTE_SUPPORTED}. For {what}, load the model locally (remote=False, with "
        "device='auto' to spread it over several GPUs)."
    )


def ndif_api_key() -> str:
    """The NDIF API key: ``$NDIF_API_KEY``, else nnsight's config (``CONFIG.API.APIKEY``).

    nnsight reads ``NDIF_API_KEY`` once, at import; a key set in the environment later is
    copied into its config here, so the request nnsight builds carries it.

    Raises:
        ValueError: no key is configured, saying where to put one.
    """
    from nnsight import CONFIG

    key = os.environ.get(API_KEY_ENV) or CONFIG.API.APIKEY
    if not key:
        raise ValueError(
            f"remote=True needs an NDIF API key: set the {API_KEY_ENV} environment variable, "
            "or store one with nnsight.login() (it asks for the key and saves it in nnsight's "
            "config); keys are issued by NDIF (https://ndif.us)"
        )
    CONFIG.API.APIKEY = key  # what nnsight's RemoteBackend sends
    return key


def ship_by_value() -> None:
    """Make nnsight serialize ``cgar_interp`` functions and classes by value.

    The traced block calls cgar_interp code (site conversions, the reader and writer
    closures) and holds :class:`~cgar_interp.sites.Site` objects; NDIF's server does not
    have cgar_interp installed, so their source must travel with the request. nnsight only
    does this by itself for packages that are not pip-installed. The registration is
    cloudpickle's and process-wide: other cloudpickle users then also copy cgar_interp code.
    """
    import nnsight

    nnsight.register("cgar_interp")


__all__ = [
    "API_KEY_ENV",
    "RemoteUnsupportedError",
    "ndif_api_key",
    "remote_unsupported",
    "ship_by_value",
]
