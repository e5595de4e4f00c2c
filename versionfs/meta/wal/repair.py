"""Torn-tail repair: recognising the remains of an interrupted append, and cutting them off.

Why torn-tail repair is safe only at the end of the last segment: appends only
ever happen there, and a segment is fsynced before the next one is created, so
an incomplete frame (short header or short payload), an all-zero tail, or a
last record with a zeroed 512-byte sector (a page that never reached the disk)
can only be the remains of an interrupted append.  Anything else that does not
check out is reported as ``CRCMismatchError``.

A segment may end in zeros in any case: a pre-zeroed segment (spare.py) is
written full of zeros before use, so its unused tail is zeros, and a zeroed
frame header is the end of the log, never a record.  In a segment that is not
the last one that is safe too: had records been lost there, the CRC carried
into the next segment would not match.  In a pre-zeroed segment an interrupted
append is a last record that runs into the zeroed tail (the file's size does
not say where the append ended).

The decoder (``decode._scan``) decides where the valid records end; the WAL
truncates the last segment there when it opens it for appending, or, in a
pre-zeroed segment, writes zeros over the torn bytes.
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


def _runs_into_zeros(tail: int, off: int, end: int) -> bool:
    """True when the frame at [off, end) runs into the zeroed tail of its
    segment (every byte from `tail` on is zero): from a sector boundary inside
    it on (the sectors of an interrupted append that never reached the disk)."""
    boundary = (max(tail, off + 1) + SECTOR - 1) // SECTOR * SECTOR
    return boundary < end


def _truncate_file(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
