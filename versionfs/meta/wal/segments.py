"""Segment files: their names (``%016x-%016x.wal``: sequence number, first index) and listing them in order."""

from __future__ import annotations

import os
import re

from .errors import CRCMismatchError

__all__ = ["segment_name", "first_index"]

_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


def segment_name(seq: int, index: int) -> str:
    return "%016x-%016x.wal" % (seq, index)


def _parse_name(name: str) -> tuple[int, int] | None:
    m = _NAME_RE.match(name)
    if not m:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def _list_segments(dirpath: str) -> list[tuple[int, int, str]]:
    """(seq, first_index, name) of every segment, in sequence order."""
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return []
    segs = []
    for name in names:
        parsed = _parse_name(name)
        if parsed is not None:
            segs.append((parsed[0], parsed[1], name))
    segs.sort()
    for a, b in zip(segs, segs[1:]):
        if b[0] != a[0] + 1 or b[1] < a[1]:
            raise CRCMismatchError(
                f"wal: segments out of order in {dirpath}: {a[2]} then {b[2]}"
            )
    return segs


def first_index(dirpath: str) -> int:
    """The first index the oldest segment in ``dirpath`` may hold: where a reader
    of everything still kept (``WAL.open_at_index``) starts."""
    segs = _list_segments(dirpath)
    return segs[0][1] if segs else 0
