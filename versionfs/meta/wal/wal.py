"""The WAL itself: create or open a segment directory, read it back, append, sync, cut and release segments.

Appends go to the end of the last segment only; ``read_all`` cuts a torn tail
off it first (see ``repair``).  A new segment's head (CRC, metadata and state
records) is written under a temporary name, fsynced and renamed into place, so
a segment on disk always starts complete.

With ``preallocate`` a segment is zero-filled to ``segment_bytes`` before use
(spare.py; the first one of a new log to FIRST_SEGMENT_ZEROED), appends
overwrite those zeros in place, and a segment is cut before an append would
extend its file: a sync is then an
fdatasync with no size or extent change to commit. ``size_changing_syncs``
counts the syncs that did extend a file all the same (a record bigger than
the room left).
"""

from __future__ import annotations

import errno
import os
import threading

from ...blob.files import fsync_dir
from ..backend.errors import DiskFullError
from .decode import _scan
from .errors import (CRCMismatchError, IndexNotFoundError, MetadataConflictError,
                     WALBrokenError, WALError, WALFileNotFoundError, WALModeError)
from .record import (_HEADER, _U32, _U64, MAX_RECORD_BYTES, TYPE_CRC, TYPE_ENTRY,
                     TYPE_METADATA, TYPE_STATE, Entry, _frame)
from .repair import _truncate_file
from .segments import _list_segments, segment_name
from .spare import SpareSegment, write_zeros, zeroed_file

__all__ = ["WAL", "DEFAULT_SEGMENT_BYTES"]

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# Zeros written for the first segment of a new pre-zeroed log, synchronously
# (later segments are prepared full-sized in the background).
FIRST_SEGMENT_ZEROED = 1 << 20


class WAL:
    """Append-only log of (index, bytes) entries plus opaque state and metadata.

    Thread-safe: appends are serialised by an internal lock; ``sync`` fsyncs a
    duplicate of the segment descriptor outside that lock so appends are not
    held up by the disk. Syncs are serialised by a lock of their own: a
    sync returns only once what was appended before it is durable, also when
    another sync's fdatasync is the one that covers it.
    """

    def __init__(self, dirpath: str, segment_bytes: int, preallocate: bool = False):
        self.dir = dirpath
        self.segment_bytes = segment_bytes
        self.preallocate = preallocate
        self._spare: SpareSegment | None = None
        self._allocated = 0     # size of the current segment's file
        self._grew = False      # an append since the last sync extended the file
        self.segments_preallocated = 0
        self.size_changing_syncs = 0
        self.tails_repaired = 0     # torn tails removed when the log was opened
        self._lock = threading.Lock()
        # One sync at a time: a sync that finds nothing dirty while another's
        # fdatasync runs must wait for it (what it covers is not durable yet).
        self._sync_lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._size = 0  # bytes in the current segment
        self._head_size = 0  # bytes of the current segment's head records
        self._crc = 0
        self._metadata = b""
        self._state = b""
        self._last_index: int | None = None
        self._synced_index: int | None = None
        self._dirty = False
        self._mode = "read"
        self._start_index = 0
        self._segments: list[tuple[int, int, str]] = []
        self._broken: str | None = None

    # ------------------------------------------------------------------ open

    @staticmethod
    def exist(dirpath: str) -> bool:
        try:
            return bool(_list_segments(dirpath))
        except WALError:
            return True

    @classmethod
    def create(
        cls, dirpath: str, metadata: bytes, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        preallocate: bool = False,
    ) -> "WAL":
        """A new WAL in append mode; refuses a directory that already has one."""
        if cls.exist(dirpath):
            raise FileExistsError(f"wal: {dirpath} already holds a write-ahead log")
        os.makedirs(dirpath, exist_ok=True)
        w = cls(dirpath, segment_bytes, preallocate)
        w._metadata = bytes(metadata)
        w._mode = "append"
        w._open_new_segment(0, 0, FIRST_SEGMENT_ZEROED)
        fsync_dir(os.path.dirname(os.path.abspath(dirpath)))
        return w

    @classmethod
    def open_at_index(
        cls, dirpath: str, index: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        preallocate: bool = False,
    ) -> "WAL":
        """Open for reading from ``index``; call ``read_all`` before appending."""
        segs = _list_segments(dirpath)
        if not segs:
            raise WALFileNotFoundError(f"wal: no segment files in {dirpath}")
        start = None
        for i, (_seq, first, _name) in enumerate(segs):
            if first <= index:
                start = i
        if start is None:
            raise IndexNotFoundError(
                f"wal: index {index} precedes the oldest segment {segs[0][2]} in {dirpath}"
            )
        for name in os.listdir(dirpath):
            if name.endswith(".wal.tmp"):
                os.unlink(os.path.join(dirpath, name))
        w = cls(dirpath, segment_bytes, preallocate)
        w._segments = segs[start:]
        w._start_index = index
        return w

    def read_all(self) -> tuple[bytes, bytes, list[Entry]]:
        """(metadata, state, entries with index >= the open index); then append mode."""
        with self._lock:
            if self._mode != "read":
                raise WALModeError("wal: read_all() is only valid right after open_at_index()")
            entries: list[Entry] = []
            metadata: bytes | None = None
            state = b""
            running: int | None = None
            last_index: int | None = None
            first_entry: int | None = None
            index = self._start_index
            found = False
            first_in_start = self._segments[0][1]
            for pos, (seq, _first, name) in enumerate(self._segments):
                path = os.path.join(self.dir, name)
                with open(path, "rb") as f:
                    buf = f.read()
                is_last = pos == len(self._segments) - 1
                records, valid_end, running = _scan(buf, path, running, is_last)
                if is_last and valid_end < len(buf):
                    self._repair(path, buf, valid_end)
                if not records:
                    # Only the last segment can be empty (a torn first write of
                    # a segment created by a cut is impossible: cut renames a
                    # complete file into place).
                    raise CRCMismatchError(f"wal: segment {path} holds no records")
                for rec in records:
                    if rec.rtype == TYPE_METADATA:
                        if metadata is not None and rec.payload != metadata:
                            raise MetadataConflictError(
                                f"wal: metadata in {path} differs from earlier segments"
                            )
                        metadata = rec.payload
                    elif rec.rtype == TYPE_STATE:
                        state = rec.payload
                    elif rec.rtype == TYPE_ENTRY:
                        eidx = _U64.unpack_from(rec.payload)[0]
                        if last_index is not None and eidx != last_index + 1:
                            raise CRCMismatchError(
                                f"wal: entry index {eidx} follows {last_index} in {path}"
                            )
                        last_index = eidx
                        if first_entry is None:
                            first_entry = eidx
                        if eidx >= index:
                            if eidx == index:
                                found = True
                            entries.append(Entry(eidx, rec.payload[8:]))
                self._seq = seq
                self._size = valid_end
                self._head_size = records[min(2, len(records) - 1)].end
            if not found:
                # Fine when the log simply ends just before ``index``, or when
                # it is the original first segment and begins after ``index``.
                ok = (last_index is not None and last_index == index - 1) or (
                    first_in_start == 0 and (first_entry is None or first_entry > index)
                ) or (last_index is None and first_in_start == index)
                if not ok:
                    raise IndexNotFoundError(
                        f"wal: index {index} not found in {self.dir} (last index {last_index})"
                    )
            if metadata is None:
                raise CRCMismatchError(f"wal: no metadata record in {self.dir}")
            self._metadata = metadata
            self._state = state
            self._crc = running or 0
            self._last_index = last_index
            self._synced_index = last_index
            path = os.path.join(self.dir, self._segments[-1][2])
            self._fd = os.open(path, os.O_WRONLY)
            self._allocated = os.fstat(self._fd).st_size
            self._mode = "append"
            self._prepare_spare()
            return metadata, state, entries

    def _repair(self, path: str, buf: bytes, valid_end: int) -> None:
        """Remove a torn tail: zeros over it in a pre-zeroed segment (the
        allocation stays), else truncate. A pre-zeroed segment whose bytes
        after the log are all zeros (every clean close) has nothing torn: no
        write, no sync (one fdatasync less at every mount)."""
        if not self.preallocate:
            self.tails_repaired += 1
            _truncate_file(path, valid_end)
            return
        torn_end = len(buf.rstrip(b"\0"))
        if torn_end <= valid_end:
            return
        self.tails_repaired += 1
        fd = os.open(path, os.O_WRONLY)
        try:
            write_zeros(fd, valid_end, torn_end)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _prepare_spare(self) -> None:
        """Start zero-filling the segment after the current one (spare.py)."""
        if self.preallocate and self._spare is None:
            self._spare = SpareSegment(self.dir, self._seq + 1, self.segment_bytes)

    # ---------------------------------------------------------------- append

    @property
    def last_index(self) -> int | None:
        return self._last_index

    @property
    def metadata(self) -> bytes:
        return self._metadata

    def _check_append(self) -> None:
        if self._broken:
            raise WALBrokenError(self._broken)
        if self._mode != "append":
            raise WALModeError(
                "wal: read_all() must consume the log before appending"
                if self._mode == "read"
                else "wal: closed"
            )

    def _write(self, data: bytes) -> None:
        """Append to the current segment; on failure leave it exactly as it was."""
        start = self._size
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], start + written)
        except OSError as exc:
            try:
                if start < self._allocated:
                    write_zeros(self._fd, start, min(self._allocated, start + len(data)))
                os.ftruncate(self._fd, max(start, self._allocated))
            except OSError as exc2:
                self._broken = f"wal: write failed ({exc}) and could not be undone ({exc2})"
                raise WALBrokenError(self._broken) from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"metadata write-ahead log: no space left on device in {self.dir}"
                ) from exc
            raise
        self._size = start + len(data)
        if self._size > self._allocated:
            self._allocated = self._size
            self._grew = True
        self._dirty = True

    def save_entry(self, index: int, data: bytes) -> None:
        with self._lock:
            self._check_append()
            self._save_entries([(index, data)])

    def save_state(self, state: bytes) -> None:
        with self._lock:
            self._check_append()
            self._maybe_cut()
            frame, crc = _frame(TYPE_STATE, bytes(state), self._crc)
            self._write(frame)
            self._crc = crc
            self._state = bytes(state)

    def save(self, state: bytes | None, entries) -> None:
        """Append entries (iterable of ``Entry`` or (index, data)) then the state."""
        with self._lock:
            self._check_append()
            self._save_entries(list(entries))
            if state is not None:
                frame, crc = _frame(TYPE_STATE, bytes(state), self._crc)
                self._write(frame)
                self._crc = crc
                self._state = bytes(state)

    def _save_entries(self, entries) -> None:
        if not entries:
            return
        self._maybe_cut(sum(_HEADER.size + _U64.size + len(data) for _index, data in entries))
        parts = []
        crc = self._crc
        last = self._last_index
        for index, data in entries:
            if last is not None and index != last + 1:
                raise ValueError(f"wal: entry index {index} does not follow {last}")
            if len(data) > MAX_RECORD_BYTES:
                raise ValueError(f"wal: entry of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
            frame, crc = _frame(TYPE_ENTRY, _U64.pack(index) + data, crc)
            parts.append(frame)
            last = index
        self._write(b"".join(parts) if len(parts) > 1 else parts[0])
        self._crc = crc
        self._last_index = last

    # ------------------------------------------------------------ durability

    def sync(self) -> int | None:
        """fsync everything appended so far; returns the last index now durable."""
        with self._sync_lock:
            return self._sync()

    def _sync(self) -> int | None:
        with self._lock:
            self._check_append()
            if not self._dirty:
                return self._synced_index
            target = self._last_index
            fd = os.dup(self._fd)
            self._dirty = False
            if self._grew:
                self.size_changing_syncs += 1
                self._grew = False
        try:
            os.fdatasync(fd)
        except OSError as exc:
            with self._lock:
                self._broken = f"wal: fsync failed: {exc}"
            raise WALBrokenError(self._broken) from exc
        finally:
            os.close(fd)
        with self._lock:
            if target is not None and (self._synced_index is None or target > self._synced_index):
                self._synced_index = target
            return self._synced_index

    @property
    def synced_index(self) -> int | None:
        return self._synced_index

    def _maybe_cut(self, incoming: int = 0) -> None:
        """Cut when the segment is full, or, pre-zeroed, when `incoming` more
        bytes would extend its file (past its zeros) and it holds more than its
        head."""
        if self._size >= self.segment_bytes or (
                self.preallocate and self._size + incoming > self._allocated
                and self._size > self._head_size):
            self._cut()

    def cut(self) -> None:
        """Close the current segment and start a new one."""
        with self._lock:
            self._check_append()
            self._cut()

    def _cut(self) -> None:
        # The old segment must be complete on disk before a newer one exists:
        # torn-tail repair assumes only the last segment can be torn.
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._broken = f"wal: fsync failed: {exc}"
            raise WALBrokenError(self._broken) from exc
        first = 0 if self._last_index is None else self._last_index + 1
        old = self._fd
        self._open_new_segment(self._seq + 1, first)
        os.close(old)
        self._synced_index = self._last_index

    def _open_new_segment(self, seq: int, first_index: int,
                          zeroed: int | None = None) -> None:
        """Write a complete segment head under a temporary name, then rename it in.
        Pre-zeroed, the segment gets `zeroed` bytes of zeros (default: a whole
        segment, the spare prepared ahead if there is one)."""
        name = segment_name(seq, first_index)
        path = os.path.join(self.dir, name)
        tmp = path + ".tmp"
        frame1, crc = _frame(TYPE_CRC, _U32.pack(self._crc), self._crc)
        frame2, crc = _frame(TYPE_METADATA, self._metadata, crc)
        frame3, crc = _frame(TYPE_STATE, self._state, crc)
        head = frame1 + frame2 + frame3
        if self.preallocate:
            self._zeroed_segment_file(tmp, zeroed)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | (0 if self.preallocate else os.O_TRUNC),
                     0o600)
        try:
            try:
                os.pwrite(fd, head, 0)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                fd = None
                os.unlink(tmp)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(
                        f"metadata write-ahead log: no space left on device for a new segment in {self.dir}"
                    ) from exc
                raise
            os.rename(tmp, path)
            fsync_dir(self.dir)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        os.close(fd)
        self._fd = os.open(path, os.O_WRONLY)
        self._seq = seq
        self._size = self._head_size = len(head)
        self._allocated = os.fstat(self._fd).st_size
        self._grew = False
        self._crc = crc
        self._segments.append((seq, first_index, name))
        self._dirty = False
        self._prepare_spare()

    def _zeroed_segment_file(self, tmp: str, size: int | None = None) -> None:
        """Put a zero-filled, fsynced file of segment_bytes at `tmp`: the spare
        prepared ahead (spare.py), or, when there is none or it failed (logged
        there), one written now. With `size`, a file of that many zeros
        written now (the first segment of a new log: small, so that creating
        the log, at every mount for the dirty journal, does not wait for a
        whole segment of zeros; the spare is full-sized)."""
        spare = None
        if size is None:
            spare, self._spare = self._spare, None
        if spare is not None:
            try:
                os.rename(spare.take(), tmp)
                self.segments_preallocated += 1
                return
            except OSError:
                pass                        # logged by the spare's thread; try here
        zeroed_file(tmp, min(size or self.segment_bytes, self.segment_bytes))
        self.segments_preallocated += 1

    def release_to(self, index: int) -> int:
        """Delete segments holding only entries below ``index`` (never the current one).

        Call only once everything below ``index`` is durably applied elsewhere.
        Returns the number of segments removed.
        """
        with self._lock:
            segs = _list_segments(self.dir)
            removed = 0
            for cur, nxt in zip(segs, segs[1:]):
                if nxt[1] <= index:
                    os.unlink(os.path.join(self.dir, cur[2]))
                    removed += 1
                else:
                    break
            if removed:
                fsync_dir(self.dir)
            self._segments = [s for s in self._segments if s in segs[removed:]]
            return removed

    def segment_count(self) -> int:
        """Segments on disk from the oldest still needed to the current one."""
        return len(self._segments)

    def close(self) -> None:
        with self._lock:
            if self._spare is not None:
                self._spare.discard()
                self._spare = None
            if self._fd is not None:
                try:
                    if self._dirty and not self._broken:
                        os.fdatasync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
            self._mode = "closed"
