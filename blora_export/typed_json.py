"""A small typed JSON mapping for the dataclasses of the project's JSON files (checkpoint.json, audit.json,
deploy.json): `Record.to_dict` writes, `from_json` / `parse_json` read, every field type-checked and every error
naming the field at fault. A class with a JSON shape of its own sets OWN_JSON_SHAPE and writes its own
to_dict/from_dict."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import UserError


class JsonShapeError(UserError, ValueError):
    """A JSON file that does not have the shape this version writes."""


def as_json_value(value: Any) -> Any:
    if getattr(value, "OWN_JSON_SHAPE", False):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        omit = getattr(value, "OMIT_IF_NONE", ())
        return {f.name: as_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.name in omit and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: as_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json_value(v) for v in value]
    return value


def _at(where: str, name: Any) -> str:
    return f"{where}.{name}" if where else str(name)


def parse_json(value: Any, kind: Any, where: str) -> Any:
    """`value` (parsed JSON) as the annotated type `kind`; a JsonShapeError names the field at fault (`where`:
    its path, '' at the top level)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return parse_json(value, option, where)
            except JsonShapeError:
                continue
        raise JsonShapeError(f"{where} has an unexpected value {value!r:.60}")
    if getattr(kind, "OWN_JSON_SHAPE", False):
        return kind.from_dict(value, where)
    if dataclasses.is_dataclass(kind):
        return from_json(kind, value, where)
    if origin in (list, tuple):  # tuple[int, ...]: a JSON list
        if not isinstance(value, list):
            raise JsonShapeError(f"{where} must be a list")
        return [parse_json(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise JsonShapeError(f"{where} must be an object")
        return {str(k): parse_json(v, args[1], _at(where, k)) for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # Python's json reads NaN and Infinity; no field of ours holds them
            raise JsonShapeError(f"{where} must be a finite number, got {value!r}")
        return value  # JSON writes 2.0 as 2.0 and 2 as 2: keep what was written
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and type(value) is kind:
        return value
    raise JsonShapeError(f"{where} must be of type {getattr(kind, '__name__', kind)}, got {value!r:.60}")


def from_json(cls: type, data: Any, where: str) -> Any:
    """The dataclass `cls` from a parsed JSON object, every field type-checked (`where`: as in parse_json)."""
    if not isinstance(data, dict):
        raise JsonShapeError(f"{where or 'the file'} must be an object")
    hints = typing.get_type_hints(cls)
    kwargs, known = {}, set()
    for f in dataclasses.fields(cls):
        known.add(f.name)
        if f.name in data:
            kwargs[f.name] = parse_json(data[f.name], hints[f.name], _at(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise JsonShapeError(f"{where or 'the file'} has no field {f.name!r}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise JsonShapeError(f"{where or 'the file'} has unknown fields {unknown[:3]}")
    return cls(**kwargs)


class Record:
    """to_dict/from_dict for a dataclass of JSON values (or of other Records)."""

    def to_dict(self) -> dict:
        return as_json_value(self)

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None):
        return from_json(cls, data, where or cls.__name__)
