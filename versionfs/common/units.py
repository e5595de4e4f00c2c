"""Sizes and durations as people write them in config files and on the command line."""

from __future__ import annotations

import re

__all__ = ["UnitError", "parse_size", "format_size", "parse_duration", "format_duration"]


class UnitError(ValueError):
    """A size or duration that cannot be read; the message says what was expected."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like ``"10G"``, ``"512 MiB"``, ``"4096"``.

    Units are binary (1 G = 2**30): sizes here are cache and quota budgets,
    where the difference to powers of ten is only ever surprising.
    """
    if isinstance(value, bool):
        raise UnitError("a size, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise UnitError(f"not a size: {value!r} (use bytes or e.g. \"10G\", \"512MiB\")")


def format_size(n: int) -> str:
    """Human-readable binary size, e.g. ``1.5 GiB`` (for status output)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"30m"``, ``"12h"``, ``"1d12h"``, ``"2w"``."""
    s = str(text).strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UnitError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w or 1d12h)")
    return total


def format_duration(seconds: float) -> str:
    out, rest = [], int(seconds)
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"
