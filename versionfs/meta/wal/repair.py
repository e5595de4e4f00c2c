"""Torn-tail repair: recognising the remains of an interrupted append, and cutting them off.

Why torn-tail repair is safe only at the end of the last segment: appends only
ever happen there, and a segment is fsynced before the next one is created, so
an incomplete frame (short header or short payload), an all-zero tail, or a
last record with a zeroed 512-byte sector (a page that never reached the disk)
can only be the remains of an interrupted append.  Anything else that does not
check out is reported as ``CRCMismatchError``.

The decoder (``decode._scan``) decides where the valid records end; the WAL
truncates the last segment there when it opens it for appending.
"""

from __future__ import annotations

import os

SECTOR = 512


def _has_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """True when a whole file sector inside [start, end) is all zero bytes."""
    first = (start + SECTOR - 1) // SECTOR * SECTOR
    zero = bytes(SECTOR)
    for off in range(first, end - SECTOR + 1, SECTOR):
        if buf[off : off + SECTOR] == zero:
            return True
    return False


def _truncate_file(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
