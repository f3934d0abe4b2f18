"""Durations and transfer rates as people write them in a policy file: "1h30m", "100MiB/s".

Sizes in rates reuse the library's `parse_size`, so units are binary
everywhere: "50MB/s" is 50 MiB/s, the same as a size of "50M" elsewhere.
"""

from __future__ import annotations

import re
from datetime import timedelta

from vsphere_replicator.checks import MAX_DURATION, MAX_DURATION_TEXT, shown
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.policies.base import PolicyError
from vsphere_replicator.sizes import parse_size

__all__ = ["format_duration", "parse_duration", "parse_rate"]

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_HINT = 'use whole numbers with d, h, m, s units, largest first, e.g. "90s", "15m", "1h30m", "2d"'


def parse_duration(text: object) -> timedelta:
    """A positive timedelta from "90s", "15m", "1h30m", "2d" (at most 100 years); PolicyError names the text.

    A bare number is refused rather than guessed at (seconds? minutes?), and
    so is a YAML sexagesimal like 1:30, which arrives here as the int 90.
    """
    if not isinstance(text, str):
        raise PolicyError(f"not a duration: {shown(text)} ({_HINT})")
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or not any(match.groups()):
        raise PolicyError(f"not a duration: {shown(text)} ({_HINT})")
    # Beyond 12 digits every unit is past the bound; int() of thousands of digits is an error of its own.
    if any(v and len(v.lstrip("0")) > 12 for v in match.groups()):
        raise PolicyError(f"a duration must be at most {MAX_DURATION_TEXT}: {shown(text)}")
    seconds = sum(int(v) * s for v, s in zip(match.groups(), _UNIT_SECONDS.values(), strict=True) if v)
    if seconds == 0:
        raise PolicyError(f"a duration must be longer than zero: {shown(text)}")
    if seconds > MAX_DURATION.total_seconds():
        raise PolicyError(f"a duration must be at most {MAX_DURATION_TEXT}: {shown(text)}")
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
    """Bytes per second from "100MiB/s", "50MB/s", "512K/s"; raise PolicyError naming the text."""
    hint = 'write a size per second with binary units, e.g. "100MiB/s" or "50M/s"'
    if not isinstance(text, str) or not text.strip().lower().endswith("/s"):
        raise PolicyError(f"not a rate: {shown(text)} ({hint})")
    try:
        rate = parse_size(text.strip()[:-2])
    except InvalidInput as exc:
        reason = str(exc) if str(exc).startswith("size too large") else hint
        raise PolicyError(f"not a rate: {shown(text)} ({reason})") from None
    if rate <= 0:
        raise PolicyError(f"a rate must be more than zero bytes per second: {shown(text)}")
    return rate
