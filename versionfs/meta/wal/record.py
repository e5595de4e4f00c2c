"""The WAL record frame and its chained checksum; encoding a record.

Record frame (little endian)::

    u32 length   u32 type   u32 crc   u32 header_crc   payload[length]

``crc`` is CRC32C of ``type || payload`` *continued* from the previous
record's crc, so the chain runs across records and segments and a dropped,
reordered or altered record breaks it.  ``header_crc`` (CRC32C of the first
12 header bytes) protects the length: a flipped length bit must read as
corruption, never as "record runs past the end of file" (which is what a torn
write looks like and is repaired silently).

An entry record's payload is ``u64 index || data``.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import crc32c

__all__ = ["Entry", "MAX_RECORD_BYTES"]

MAX_RECORD_BYTES = 256 * 1024 * 1024

_HEADER = struct.Struct("<IIII")  # length, type, crc, header_crc
_HEADER_PREFIX = struct.Struct("<III")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

TYPE_CRC = 1
TYPE_METADATA = 2
TYPE_STATE = 3
TYPE_ENTRY = 4
_TYPES = (TYPE_CRC, TYPE_METADATA, TYPE_STATE, TYPE_ENTRY)


class Entry(NamedTuple):
    index: int
    data: bytes


def _frame(rtype: int, payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    crc = crc32c.crc32c(payload, crc32c.crc32c(_U32.pack(rtype), prev_crc))
    prefix = _HEADER_PREFIX.pack(len(payload), rtype, crc)
    return prefix + _U32.pack(crc32c.crc32c(prefix)) + payload, crc
