"""Byte sizes as people write them: 64M, 1G, 512k, 4096."""

from __future__ import annotations

import re

from vsphere_replicator.checks import shown
from vsphere_replicator.errors import InvalidInput

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
# Far beyond any disk (vSphere's largest is 62 TiB) or transfer; each use bounds it further.
MAX_SIZE = 1 << 50
_MAX_TEXT = "1024T"


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
