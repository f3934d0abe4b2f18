"""Sizes, durations and rates as people write them: "64M", "1h30m", "100MiB/s".

One module at the bottom of the library, so the CLI, policy files, the
library's own arguments and the lab read the same text the same way. Units
are binary everywhere: "1K" is 1024 bytes and "50MB/s" is 50 MiB/s, the
same as a size of "50M". Durations are whole d/h/m/s, largest first.

Every parser raises InvalidInput (a ValueError) naming the text; callers that
know which setting they are reading (a policy file's key, a CLI option) add
that name to the message.
"""

from __future__ import annotations

import re
from datetime import timedelta

from vsphere_replicator.checks import MAX_DURATION, MAX_DURATION_TEXT, shown
from vsphere_replicator.errors import InvalidInput

__all__ = ["MAX_SIZE", "format_duration", "format_size", "parse_duration", "parse_rate", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
# Far beyond any disk (vSphere's largest is 62 TiB) or transfer; each use bounds it further.
MAX_SIZE = 1 << 50
_MAX_TEXT = "1024T"

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_DURATION_HINT = 'use whole numbers with d, h, m, s units, largest first, e.g. "90s", "15m", "1h30m", "2d"'
_RATE_HINT = 'write a size per second with binary units, e.g. "100MiB/s" or "50M/s"'


def parse_size(text: str | int) -> int:
    """Bytes in `text`; suffixes are binary (1K = 1024), at most 1024T.

    Raises InvalidInput (a ValueError) naming the text.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise InvalidInput(f"not a size: {shown(text)} (use bytes or a K, M, G, T suffix, e.g. 64M)")
    if isinstance(text, int):
        if text < 0:
            raise InvalidInput(f"size must not be negative: {text}")
        value = text
    else:
        match = _SIZE.match(text)
        if match is None:
            raise InvalidInput(f"not a size: {shown(text)} (use bytes or a K, M, G, T suffix, e.g. 64M)")
        number, unit, _ = match.groups()
        # int() of thousands of digits is itself an error (and slow): anything that long is too large.
        value = int(number) * _UNITS[unit.upper()] if len(number) <= 20 else MAX_SIZE + 1
    if value > MAX_SIZE:
        raise InvalidInput(f"size too large: {shown(text)} (at most {_MAX_TEXT})")
    return value


def format_size(count: int) -> str:
    """The shortest exact text `parse_size` reads back as `count`: 64M, 1536K, 4097."""
    for unit in ("T", "G", "M", "K"):
        if count and count % _UNITS[unit] == 0:
            return f"{count // _UNITS[unit]}{unit}"
    return str(count)


def parse_duration(text: object) -> timedelta:
    """A positive timedelta from "90s", "15m", "1h30m", "2d" (at most 100 years).

    A bare number is refused rather than guessed at (seconds? minutes?), and
    so is a YAML sexagesimal like 1:30, which arrives here as the int 90.
    Raises InvalidInput naming the text.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"not a duration: {shown(text)} ({_DURATION_HINT})")
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or not any(match.groups()):
        raise InvalidInput(f"not a duration: {shown(text)} ({_DURATION_HINT})")
    # Beyond 12 digits every unit is past the bound; int() of thousands of digits is an error of its own.
    if any(v and len(v.lstrip("0")) > 12 for v in match.groups()):
        raise InvalidInput(f"a duration must be at most {MAX_DURATION_TEXT}: {shown(text)}")
    seconds = sum(int(v) * s for v, s in zip(match.groups(), _UNIT_SECONDS.values(), strict=True) if v)
    if seconds == 0:
        raise InvalidInput(f"a duration must be longer than zero: {shown(text)}")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(f"a duration must be at most {MAX_DURATION_TEXT}: {shown(text)}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest text `parse_duration` reads back as `value` (whole seconds), for summaries and logs."""
    remaining = int(value.total_seconds())
    parts = []
    for unit, seconds in _UNIT_SECONDS.items():
        count, remaining = divmod(remaining, seconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_rate(text: object) -> int:
    """Bytes per second from "100MiB/s", "50MB/s", "512K/s"; raise InvalidInput naming the text."""
    if not isinstance(text, str) or not text.strip().lower().endswith("/s"):
        raise InvalidInput(f"not a rate: {shown(text)} ({_RATE_HINT})")
    try:
        rate = parse_size(text.strip()[:-2])
    except InvalidInput as exc:
        reason = str(exc) if str(exc).startswith("size too large") else _RATE_HINT
        raise InvalidInput(f"not a rate: {shown(text)} ({reason})") from None
    if rate <= 0:
        raise InvalidInput(f"a rate must be more than zero bytes per second: {shown(text)}")
    return rate
