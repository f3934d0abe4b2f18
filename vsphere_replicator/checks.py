"""Argument checks for the public entry points: wrong types and values become InvalidInput.

The library raises only ReplicatorError subclasses on purpose; a caller who
passes `keep="3"` or `vm=None` gets an InvalidInput that names the argument,
before anything is sent to vCenter, instead of a TypeError from deep inside.
The frozen dataclasses call these from `__post_init__`, the resolvers
(`inventory.resolve_vm`) for VM references, and the few functions that take
loose numbers (`replicate(chunk=…)`) at their first line.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, TypeVar

from vsphere_replicator.errors import InvalidInput

# Longer than any retention, RPO or schedule means; datetime arithmetic stays far from its limits.
MAX_DURATION = timedelta(days=36500)
MAX_DURATION_TEXT = "36500d (100 years)"
C = TypeVar("C", bound=str)


def shown(value: object) -> str:
    """The value for an error message: repr, cut short (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def check_type(
    value: object, types: type | tuple[type, ...], what: str, *, optional: bool = False, secret: bool = False
) -> None:
    """Raise InvalidInput unless `value` is an instance of `types` (or None when `optional`).

    The message shows the value, cut short, unless it is a `secret`.
    """
    if value is None and optional:
        return
    # bool is an int to isinstance; a flag where a number is due is a mistake, not a 1.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types)):
        return
    expected = " or ".join(t.__name__ for t in _as_tuple(types)) + (" or None" if optional else "")
    given = type(value).__name__ + ("" if secret else f" {shown(value)}")
    raise InvalidInput(f"{what} must be {expected}, not {given}")


def check_text(value: object, what: str, *, optional: bool = False) -> None:
    """A non-empty string (or None when `optional`)."""
    check_type(value, str, what, optional=optional)
    if value is not None and not str(value).strip():
        raise InvalidInput(f"{what} must not be empty")


def check_choice(value: object, choices: tuple[C, ...], what: str) -> C:
    """`value` as the one of `choices` it equals (`choices` is a Literal's `get_args`); else InvalidInput."""
    for choice in choices:
        if isinstance(value, str) and value == choice:
            return choice
    raise InvalidInput(f"{what} must be one of {', '.join(choices)}, not {shown(value)}")


def check_int(value: object, what: str, low: int, high: int, *, unit: str = "") -> int:
    """A whole number in [low, high] (never a bool); returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number, not {type(value).__name__} {shown(value)}")
    if not low <= value <= high:
        suffix = f" {unit}" if unit else ""
        raise InvalidInput(f"{what} must be between {low} and {high}{suffix}, not {value}")
    return value


def check_fraction(value: object, what: str) -> float:
    """A real number in (0, 1]; NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number, not {type(value).__name__} {shown(value)}")
    if not (math.isfinite(value) and 0 < value <= 1):
        raise InvalidInput(f"{what} must be in (0, 1], not {value}")
    return float(value)


def check_duration(value: object, what: str, *, optional: bool = False, zero: bool = False) -> None:
    """A timedelta longer than zero (or >= 0 with `zero`) and at most MAX_DURATION."""
    check_type(value, timedelta, what, optional=optional)
    if value is None:
        return
    assert isinstance(value, timedelta)
    if value < timedelta(0) or (value == timedelta(0) and not zero):
        rule = "must not be negative" if zero else "must be positive"
        raise InvalidInput(f"{what} {rule}, not {value.total_seconds():g} seconds")
    if value > MAX_DURATION:
        raise InvalidInput(f"{what} must be at most {MAX_DURATION_TEXT}, not {value.days} days")


def check_callable(value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        raise InvalidInput(f"{what} must be callable, not {type(value).__name__} {shown(value)}")


def check_has(value: Any, methods: tuple[str, ...], what: str, kind: str) -> None:
    """Duck typing for protocols: `value` has each of `methods` (callable)."""
    if not all(callable(getattr(value, m, None)) for m in methods):
        raise InvalidInput(f"{what} must be a {kind}, not {type(value).__name__} {shown(value)}")
