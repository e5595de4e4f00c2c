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

An append is all or nothing: ``os.write`` may write part of a record (a full
disk, a file size limit), and a part record left in place would misalign every
record after it, so the rest is written, and if that fails the file is cut
back to its last whole record before the error is raised.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections import OrderedDict
from typing import Iterable

import crc32c

from .files import _unlink_quietly, fsync_dir, write_temp
from .pointer import Pointer

OP_PUT = 1
OP_DONE = 2
_BODY = struct.Struct(">B32sQ")
_CRC = struct.Struct(">I")
RECORD_SIZE = _BODY.size + _CRC.size
COMPACT_MIN_RECORDS = 4096
# After a failed compaction the file is kept as it is this long before the next try.
COMPACT_RETRY_SECONDS = 30.0


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
        self._torn = False          # a failed append left a part record not yet cut off
        self._dir_unsynced = False  # a compaction's rename is not yet known durable
        self._compact_after = 0.0   # monotonic time of the next compaction attempt
        self._dir = os.path.dirname(os.path.abspath(self.path))
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size   # bytes in the file: whole records after replay
        if created:
            fsync_dir(self._dir)

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
        self._size = whole
        self._records = whole // RECORD_SIZE
        return pending

    def add(self, entries: Iterable[tuple[Pointer, int]]) -> None:
        """Record puts and return once they are on disk."""
        data = b"".join(_record(OP_PUT, key, size) for key, size in entries)
        if not data:
            return
        with self._write_lock:
            self._append(data)
            self._records += len(data) // RECORD_SIZE
            self._appended += 1
            mine = self._appended
        self._sync_upto(mine)

    def done(self, key: Pointer) -> None:
        """Record a finished upload (not fsynced: see the module docstring)."""
        with self._write_lock:
            self._append(_record(OP_DONE, key, 0))
            self._records += 1
            self._appended += 1

    def _append(self, data: bytes) -> None:
        """Append whole records or nothing (module doc); the write lock is held."""
        if self._torn:
            os.ftruncate(self._fd, self._size)
            self._torn = False
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                n = os.write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, f"{self.path}: write made no progress")
                written += n
        except OSError:
            if written:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._torn = True   # cut off before the next append, or that fails
            raise
        self._size += written

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
            if self._dir_unsynced:
                fsync_dir(self._dir)
                self._dir_unsynced = False
            self._synced = max(self._synced, target)

    def needs_compaction(self, live: int) -> bool:
        return (self._records >= COMPACT_MIN_RECORDS and self._records > 2 * live
                and time.monotonic() >= self._compact_after)

    def compact(self, live: Iterable[tuple[Pointer, int]]) -> None:
        """Rewrite the file with only ``live`` put records, atomically.

        The new file is opened before it is renamed into place, so appends never
        go to the replaced one. If this fails the old file stays in use and the
        next attempt waits COMPACT_RETRY_SECONDS.
        """
        data = b"".join(_record(OP_PUT, key, size) for key, size in live)
        with self._sync_lock, self._write_lock:
            try:
                temp, fd = write_temp(self._dir, data), -1
                try:
                    fd = os.open(temp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
                    os.replace(temp, self.path)
                except BaseException:
                    if fd >= 0:
                        os.close(fd)
                    _unlink_quietly(temp)
                    raise
                os.close(self._fd)
                self._fd, self._size, self._torn = fd, len(data), False
                self._records = len(data) // RECORD_SIZE
                self._synced = self._appended
                self._dir_unsynced = True       # until this fsync (or the next sync's)
                fsync_dir(self._dir)
                self._dir_unsynced = False
            except OSError:
                self._compact_after = time.monotonic() + COMPACT_RETRY_SECONDS
                raise

    def close(self) -> None:
        with self._sync_lock, self._write_lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
