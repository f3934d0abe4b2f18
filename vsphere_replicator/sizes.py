"""Byte sizes as people write them: 64M, 1G, 512k, 4096."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in `text`; suffixes are binary (1K = 1024). Raises ValueError naming the text."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (use bytes or a K, M, G, T suffix, e.g. 64M)")
    number, unit, _ = match.groups()
    return int(number) * _UNITS[unit.upper()]
