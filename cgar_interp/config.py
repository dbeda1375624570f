"""Strict construction of frozen config dataclasses from user mappings (TOML, CLI, Python).

User input is strict: an unknown key is an error listing the valid ones, a wrong type names the
key, the expected type and what was given. Old run manifests are read tolerantly elsewhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that is not valid; the message names it and what is valid."""


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is not None and len(options) == 1:  # `X | None` given a value: an X's error
            return _coerce(value, options[0], where)
        errors = []
        for option in args:
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            f"{where} must be {' or '.join(_type_name(a) for a in args)}; got {value!r}"
        )
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be None; got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}; got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list; got {value!r} ({type(value).__name__})")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer; got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where} must be a finite number; got {value!r}")
            return value
        raise ConfigError(f"{where} must be a number; got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string; got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def build(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Construct dataclass ``cls`` from ``data``, strictly.

    Raises:
        ConfigError: unknown key (with the closest valid one), wrong type, or a value the
            dataclass's own ``__post_init__`` rejects.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table of keys; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"key {name!r} in {where}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {name!r} in {where}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_dict(obj) -> dict:
    """A JSON-ready dict of a (nested) config dataclass, tuples as lists."""

    def convert(value):
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        return value

    return convert(obj)
