"""Checks of user-given settings and values, shared by the config dataclasses, the search and the CLIs.

Each check raises :class:`InvalidInputError` (or the error class a caller passes) naming the setting,
the rule and the value, so a bad value is reported where it enters instead of crashing much later
(a NaN learning rate trains a NaN model; a string step count fails deep inside the search).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qrag_core.errors import CheckpointError, InvalidInputError, QRAGError


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int in Python, but never a count or an index)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not a ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    """``value`` is an integer ≥ 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value <= 0:  # type: ignore[operator]
        raise InvalidInputError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def check_finite(name: str, value: object, allow_none: bool = False) -> None:
    """``value`` is a finite real number (not NaN, not ±inf; or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if not is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidInputError(f"{name} must be a finite number{' or None' if allow_none else ''}, got {value!r}")


def check_non_negative(name: str, value: object, allow_none: bool = False) -> None:
    """``value`` is a finite number ≥ 0 (or None when ``allow_none``)."""
    check_finite(name, value, allow_none)
    if value is not None and value < 0:  # type: ignore[operator]
        raise InvalidInputError(f"{name} must be >= 0, got {value!r}")


def check_format_version(meta: Mapping[str, Any], supported: int, path: str | Path) -> None:
    """The ``format_version`` of a saved file's metadata (0 when absent) is one this qrag reads.

    A non-integer or negative version means the file is corrupt; a newer one that qrag must be upgraded.
    Either raises :class:`CheckpointError` naming ``path``.
    """
    version = meta.get("format_version", 0)
    if not is_int(version) or version < 0:
        raise CheckpointError(f"{path} is corrupt: format_version must be an integer >= 0, got {version!r}")
    if version > supported:
        raise CheckpointError(f"{path}: format {version} is newer than this qrag reads ({supported}); upgrade qrag")


def _allowed_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """The runtime types a field annotation admits, and whether it admits None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        inner = tuple(t for a in args if a is not type(None) for t in _allowed_types(a)[0])
        return inner, type(None) in args
    if typing.get_origin(annotation) is typing.Literal:
        return (str,), False
    return (annotation,), False


def check_field_types(obj: Any, error: type[QRAGError] = InvalidInputError, prefix: str = "") -> None:
    """Every scalar field of a dataclass instance has its annotated type, and every number is finite.

    ``bool`` fields take only booleans, ``int`` fields only non-boolean ints, ``float`` fields any
    non-boolean finite number; a field typed ``X | None`` also takes None. Fields of other types
    (nested dataclasses, lists) are left to the caller. The error names ``prefix + field``.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed, optional = _allowed_types(hints[f.name])
        if value is None and optional:
            continue
        name = prefix + f.name
        if allowed == (bool,):
            ok = isinstance(value, bool)
        elif allowed == (int,):
            ok = is_int(value)
        elif allowed == (float,):
            ok = is_number(value) and math.isfinite(value)
        elif allowed == (str,):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            wanted = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[allowed[0]]
            raise error(f"{name} must be {wanted}{' or None' if optional else ''}, got {value!r}")


def check_json_metadata(metadata: Mapping[Any, Any], what: str) -> None:
    """Every value of a document's ``metadata`` can be saved as JSON, as an index save writes it.

    The test is the save's own (:func:`json.dumps` after dataclasses became dicts, as
    :func:`dataclasses.asdict` turns them), so whatever saves is accepted; anything else (a datetime, a
    set, an object) raises :class:`InvalidInputError` naming ``what``, the key and the type, here where
    the document enters instead of at a later save.
    """
    culprits: list[object] = []

    def as_json(obj: object) -> object:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        culprits.append(obj)
        raise TypeError(type(obj).__name__)

    for key, value in metadata.items():
        culprits.clear()
        try:
            json.dumps({key: value}, default=as_json)
        except (TypeError, ValueError) as err:  # ValueError: a value that contains itself
            if culprits:
                where = "" if culprits[0] is value else " inside it"
                problem = f"holds an object of type {type(culprits[0]).__name__}{where}"
            else:
                problem = f"cannot be written ({err})"
            raise InvalidInputError(
                f"metadata of {what}: key {key!r} {problem}, which cannot be saved as JSON; convert it to a "
                "str, number, bool, None, list or dict first (e.g. str(value), a date's value.isoformat(), "
                "a set's sorted(value))"
            ) from None
