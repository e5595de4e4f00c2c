"""UploadJournal: the durable list of blobs written locally but not yet uploaded.

Fixed-size records, appended to one file::

    op u8 (1 = put, 2 = done) | pointer[32] | size u64 | CRC32C u32 of the rest

A put record is fsynced before ``Paired.put`` returns, so after kill -9 or a
power cut every acknowledged blob is still listed. Done records are appended
without fsync: losing one only means uploading that blob again (uploads are
idempotent). Several threads adding at once share one fsync (group commit).
A torn record at the end (a crash mid-append) is cut off; a damaged record
elsewhere is skipped and reported via ``damaged`` so the owner can reconcile
the fast store against the slow one rather than silently lose an entry.
When dead records outnumber live ones the file is rewritten with only the
live ones (temp file, fsync, rename, directory fsync).
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from typing import Iterable

import crc32c

from .files import atomic_write, fsync_dir
from .pointer import Pointer

OP_PUT = 1
OP_DONE = 2
_BODY = struct.Struct(">B32sQ")
_CRC = struct.Struct(">I")
RECORD_SIZE = _BODY.size + _CRC.size
COMPACT_MIN_RECORDS = 4096


def _record(op: int, key: Pointer, size: int) -> bytes:
    body = _BODY.pack(op, key.bytes, size)
    return body + _CRC.pack(crc32c.crc32c(body))


class UploadJournal:
    """Append-only upload journal; thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.damaged = 0            # records skipped because their CRC was wrong
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._appended = 0          # sequence of the last append
        self._synced = 0            # sequence known to be on disk
        self._records = 0           # records in the file (for compaction)
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if created:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def replay(self) -> "OrderedDict[Pointer, int]":
        """Blobs still waiting for upload, oldest first; repairs a torn tail."""
        with open(self.path, "rb") as f:
            raw = f.read()
        pending: OrderedDict[Pointer, int] = OrderedDict()
        whole = len(raw) - len(raw) % RECORD_SIZE
        for off in range(0, whole, RECORD_SIZE):
            body = raw[off:off + _BODY.size]
            (crc,) = _CRC.unpack_from(raw, off + _BODY.size)
            if crc32c.crc32c(body) != crc:
                self.damaged += 1
                continue
            op, key, size = _BODY.unpack(body)
            pointer = Pointer(key)
            if op == OP_PUT:
                pending[pointer] = size
                pending.move_to_end(pointer)
            elif op == OP_DONE:
                pending.pop(pointer, None)
            else:
                self.damaged += 1
        if whole != len(raw):       # torn tail: an append that never completed
            os.ftruncate(self._fd, whole)
            os.fsync(self._fd)
        self._records = whole // RECORD_SIZE
        return pending

    def add(self, entries: Iterable[tuple[Pointer, int]]) -> None:
        """Record puts and return once they are on disk."""
        data = b"".join(_record(OP_PUT, key, size) for key, size in entries)
        if not data:
            return
        with self._write_lock:
            os.write(self._fd, data)
            self._records += len(data) // RECORD_SIZE
            self._appended += 1
            mine = self._appended
        self._sync_upto(mine)

    def done(self, key: Pointer) -> None:
        """Record a finished upload (not fsynced: see the module docstring)."""
        with self._write_lock:
            os.write(self._fd, _record(OP_DONE, key, 0))
            self._records += 1
            self._appended += 1

    def sync(self) -> None:
        with self._write_lock:
            mine = self._appended
        self._sync_upto(mine)

    def _sync_upto(self, seq: int) -> None:
        with self._sync_lock:
            if self._synced >= seq:
                return          # another thread's fsync covered this append
            with self._write_lock:
                target = self._appended
                fd = self._fd
            os.fdatasync(fd)
            self._synced = max(self._synced, target)

    def needs_compaction(self, live: int) -> bool:
        return self._records >= COMPACT_MIN_RECORDS and self._records > 2 * live

    def compact(self, live: Iterable[tuple[Pointer, int]]) -> None:
        """Rewrite the file with only ``live`` put records, atomically."""
        data = b"".join(_record(OP_PUT, key, size) for key, size in live)
        with self._sync_lock, self._write_lock:
            atomic_write(self.path, data)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            os.close(self._fd)
            self._fd = fd
            self._records = len(data) // RECORD_SIZE
            self._synced = self._appended

    def close(self) -> None:
        with self._sync_lock, self._write_lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
