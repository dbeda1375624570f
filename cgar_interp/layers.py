"""Layer specifications in suites: names that scale with the model, resolved at run time.

``"last"`` is ``n_layers`` (the residual before the final norm, the paper's ``q:32``);
``"paper"`` is the paper's context layers c = 20, 24, 28, 32 of 32 scaled to the model
(``round(n_layers * c / 32)``: 19, 22, 26, 30 on a 30-layer model — Python rounds 22.5 to
even); ``"upper_half"`` is every layer from ``n_layers // 2`` to ``n_layers``; ``"all"`` is
``0 .. n_layers``. Explicit integers are checked against ``0 .. n_layers``; negative integers
count from the end (``-1`` is ``n_layers``).
"""

from __future__ import annotations

PAPER_FRACTIONS = (20 / 32, 24 / 32, 28 / 32, 32 / 32)
NAMED = ("last", "paper", "upper_half", "all")


def resolve_layers(
    spec: str | int | tuple | list, n_layers: int, what: str = "layers"
) -> tuple[int, ...]:
    """Resolve a layer spec to sorted unique residual layers in ``0 .. n_layers``.

    Raises:
        ValueError: an unknown name or a layer out of range, naming it and the valid range.
    """
    if isinstance(spec, str):
        if spec == "last":
            return (n_layers,)
        if spec == "paper":
            return tuple(sorted({round(n_layers * f) for f in PAPER_FRACTIONS}))
        if spec == "upper_half":
            return tuple(range(n_layers // 2, n_layers + 1))
        if spec == "all":
            return tuple(range(n_layers + 1))
        raise ValueError(
            f"unknown {what} spec {spec!r}; valid names: {', '.join(NAMED)}, or a list of ints"
        )
    items = [spec] if isinstance(spec, int) else list(spec)
    out = set()
    for item in items:
        if isinstance(item, str):
            out.update(resolve_layers(item, n_layers, what))
            continue
        if not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(
                f"{what} entry {item!r} is not an integer or a name ({', '.join(NAMED)})"
            )
        layer = item + n_layers + 1 if item < 0 else item
        if not 0 <= layer <= n_layers:
            raise ValueError(
                f"{what} entry {item} is out of range for a model with {n_layers} layers: "
                f"valid residual layers are 0..{n_layers} (or -1..-{n_layers + 1} from the end)"
            )
        out.add(layer)
    if not out:
        raise ValueError(f"{what} is empty; give at least one layer")
    return tuple(sorted(out))
