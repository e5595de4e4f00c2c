"""Decoding WAL segments: one segment's records, checked along the CRC chain; entries read beside a live writer."""

from __future__ import annotations

import os
from typing import NamedTuple

import crc32c

from .errors import CRCMismatchError, IndexNotFoundError
from .record import _HEADER, _TYPES, _U32, _U64, TYPE_CRC, TYPE_ENTRY, Entry
from .repair import _has_zero_sector, _runs_into_zeros
from .segments import _list_segments

__all__ = ["read_entries"]


class _Record(NamedTuple):
    rtype: int
    payload: bytes
    crc: int
    end: int


def _scan(buf: bytes, path: str, running: int | None, is_last: bool):
    """Decode one segment. Returns (records, valid_end, running_crc).

    ``running`` is None for the first segment read (its CRC record seeds the
    chain) or the crc the previous segment ended with.  A zeroed tail ends any
    segment; a torn tail is tolerated only when ``is_last`` (repair.py);
    ``valid_end`` < len(buf) means repair.
    """
    records: list[_Record] = []
    off = 0
    n = len(buf)
    hsize = _HEADER.size
    tail = len(buf.rstrip(b"\0"))     # from here on every byte is zero
    while off < n:
        if off >= tail:
            return records, off, running  # zero-filled tail: never written
        if off + hsize > n:
            if is_last:
                return records, off, running
            raise CRCMismatchError(f"wal: short header at offset {off} of {path}")
        length, rtype, crc, hcrc = _HEADER.unpack_from(buf, off)
        if crc32c.crc32c(buf[off : off + 12]) != hcrc or rtype not in _TYPES:
            if is_last and _runs_into_zeros(tail, off, off + hsize):
                return records, off, running  # header only partly on disk
            raise CRCMismatchError(f"wal: bad record header at offset {off} of {path}")
        end = off + hsize + length
        if end > n:
            if is_last:
                return records, off, running
            raise CRCMismatchError(f"wal: record at offset {off} of {path} runs past end")
        payload = buf[off + hsize : end]
        if not records:
            if rtype != TYPE_CRC or length != 4:
                raise CRCMismatchError(f"wal: {path} does not start with a crc record")
            carried = _U32.unpack(payload)[0]
            if running is None:
                running = carried
            elif carried != running:
                raise CRCMismatchError(
                    f"wal: crc chain broken between segments at {path}"
                )
        expect = crc32c.crc32c(payload, crc32c.crc32c(_U32.pack(rtype), running))
        if expect != crc:
            if is_last and end >= tail and (
                    _has_zero_sector(buf, off, end) or _runs_into_zeros(tail, off, end)):
                return records, off, running  # last record only partly on disk
            raise CRCMismatchError(f"wal: crc mismatch in record at offset {off} of {path}")
        running = crc
        records.append(_Record(rtype, payload, crc, end))
        off = end
    return records, off, running


def read_entries(dirpath: str, first_index: int, last_index: int) -> list[Entry]:
    """Entries ``first_index..last_index`` of a WAL that may be open for appending elsewhere.

    Read-only: nothing is truncated or repaired, so it is safe beside a live
    writer as long as ``last_index`` was already appended when this is called
    (a record is complete in the page cache before ``last_index`` moves past
    it).  Used to ship the log to a bucket.  ``IndexNotFoundError`` when the
    segments no longer (or do not yet) hold the whole range — a segment the
    writer released meanwhile counts as that.
    """
    if last_index < first_index:
        return []
    segs = _list_segments(dirpath)
    start = None
    for i, (_seq, first, _name) in enumerate(segs):
        if first <= first_index:
            start = i
    if start is None:
        raise IndexNotFoundError(f"wal: index {first_index} is no longer in {dirpath}")
    out: list[Entry] = []
    running: int | None = None
    want = first_index
    for pos, (_seq, _first, name) in enumerate(segs[start:], start):
        path = os.path.join(dirpath, name)
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise IndexNotFoundError(f"wal: segment {name} was released while reading") from None
        records, _end, running = _scan(buf, path, running, pos == len(segs) - 1)
        for rec in records:
            if rec.rtype != TYPE_ENTRY:
                continue
            eidx = _U64.unpack_from(rec.payload)[0]
            if eidx < want:
                continue
            if eidx != want:
                raise CRCMismatchError(f"wal: entry {eidx} where {want} was expected in {path}")
            out.append(Entry(eidx, rec.payload[8:]))
            want += 1
            if eidx == last_index:
                return out
    raise IndexNotFoundError(f"wal: {dirpath} holds entries only up to {want - 1}, "
                             f"not {last_index}")

