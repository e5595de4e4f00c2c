"""The dirty journal: what fsync makes durable before a file is sealed.

Sealing a file (cutting its changed bytes into content-defined chunks, storing
them as blobs, recording the extents) costs a chunk or more and creates blobs
that must be uploaded. An fsync must cost only what was written since the last
one, so fsync does not seal: it appends the file's changed byte ranges (their
current content), its truncations, its size and its times to this journal and
fsyncs it: one disk sync, the metadata store is not synced. Sealing happens later, coalesced (see versionfs.fs.sealing).

The journal is a second write-ahead log (versionfs.meta.wal: framed records
with a chained CRC32C, torn-tail repair, segments released when no longer
needed), local to this machine and never published: the bucket receives the
sealed chunks and the metadata that refers to them, never the journal.

Records (msgpack lists)::

    [ino, "W", offset, data]        bytes [offset, offset+len(data)) are data
    [ino, "T", size]                truncated to size (before the W records after it)
    [ino, "A", size, mtime_ns, ctime_ns]
                                    the file's size and times at the fsync: replay
                                    restores the times unless the metadata holds a
                                    later change of the inode (a larger ctime)
    [ino, "S", index]               the file's seal that covers every record of
                                    it up to index is durable in the metadata
    [ino, "L", name, size, ranges]  a big write's bytes stay where they are: the
                                    dirty layer file `name` (in the dirty directory,
                                    frozen and fdatasynced) holds them at `ranges`
                                    ([[start, end], ...]); the file's size was `size`

An L record is how fsync of many megabytes costs one fdatasync of the layer
file instead of a second copy of the bytes (durability.py): the layer file is
kept until a durable seal covers the record (``DataManager.kept_files``), and
a mount replaying it adopts the file as a dirty layer again.

A mount replays the journal before it serves anything: for every file, the
W/T/A records its sealed content does not include yet, in order, on top of the
file as the metadata has it; then it seals what it replayed. Which records a
seal includes is stored with the seal, atomically, in the metadata: the
journal mark (schema.journal_mark_key: this journal's id and the last index
the seal covers). So the base replay starts from always matches the records it
skips, whichever of the seals reached the disk. S records, written once the
metadata holding a seal was synced, let the journal release segments.

A segment is released once every file with a record in it has a durable seal
past that record: the journal holds only what is not yet sealed.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid
from dataclasses import dataclass

import msgpack

from versionfs.meta.wal.segments import first_index
from versionfs.meta.wal.wal import WAL

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 << 20
WRITE, TRUNCATE, ATTRS, SEALED, LAYER = "W", "T", "A", "S", "L"


@dataclass
class Replayed:
    """What the journal holds for one file, to apply on top of its metadata."""

    ino: int
    ops: list       # (index, "W", offset, data) / (index, "T", size)
                    # / (index, "A", size, mtime, ctime) / (index, "L", name, size, ranges)

    def after(self, mark: bytes | None, journal_id: str) -> list:
        """The ops the file's sealed content does not include yet: those after
        the mark its last seal left in the metadata (``DirtyJournal.mark``)."""
        if mark is None:
            return self.ops
        mark_id, index = msgpack.unpackb(mark)
        if mark_id != journal_id:
            return self.ops
        return [op for op in self.ops if op[0] > index]


class DirtyJournal:
    """Append-only journal of fsynced, not yet sealed writes (see module doc).

    Appends happen on the caller's thread (a write() of the records: cheap, and
    it fixes their order against seals); ``sync`` is the fsync and blocks, so
    the fs runs it in a worker thread.
    """

    def __init__(self, dirpath: str):
        self.dir = dirpath
        if WAL.exist(dirpath):
            # After a release the oldest segment may hold no entry yet: indices
            # go on from the one its name gives.
            self._base = first_index(dirpath)
            self._wal = WAL.open_at_index(dirpath, self._base, segment_bytes=SEGMENT_BYTES,
                                          preallocate=True)
            metadata, _state, entries = self._wal.read_all()
            self.id = metadata.decode()
        else:
            self._base = 0
            self.id = uuid.uuid4().hex
            self._wal = WAL.create(dirpath, self.id.encode(), segment_bytes=SEGMENT_BYTES,
                                   preallocate=True)
            entries = []
        self._entries = entries
        self._lock = threading.Lock()
        # ino -> indices of its record batches not yet covered by a durable seal
        self._holds: dict[int, collections.deque[int]] = {}
        # (number, ino, index) of seals persisted in the metadata but not yet
        # synced there, numbered as noted (`seals_noted`)
        self._seals_pending: list[tuple[int, int, int]] = []
        self._seals_counted = 0
        self.bytes_logged = 0           # W payload bytes appended since the mount (metrics)
        self.unsynced_bytes = 0         # record bytes appended since the last sync began

    # -- replay ---------------------------------------------------------------

    def replay(self) -> list[Replayed]:
        """Per file, the records a mount must apply; call once, before any append."""
        entries, self._entries = self._entries, []
        sealed: dict[int, int] = {}
        for e in entries:
            rec = msgpack.unpackb(e.data)
            if rec[1] == SEALED:
                sealed[rec[0]] = max(sealed.get(rec[0], -1), rec[2])
        files: dict[int, Replayed] = {}
        for e in entries:
            rec = msgpack.unpackb(e.data)
            ino, kind = rec[0], rec[1]
            if kind == SEALED or e.index <= sealed.get(ino, -1):
                continue
            r = files.setdefault(ino, Replayed(ino, []))
            r.ops.append((e.index, kind, *rec[2:]))
            self._holds.setdefault(ino, collections.deque()).append(e.index)
        return list(files.values())

    # -- appends --------------------------------------------------------------

    def log(self, ino: int, truncated_to: int | None, writes: list[tuple[int, bytes]],
            size: int, mtime_ns: int, ctime_ns: int) -> int:
        """Append one fsync's records of a file; returns the index of the last one.
        Not durable until ``sync``."""
        ops = [] if truncated_to is None else [(TRUNCATE, truncated_to)]
        ops += [(WRITE, offset, data) for offset, data in writes]
        return self.log_layers(ino, ops, size, mtime_ns, ctime_ns)

    def log_layers(self, ino: int, ops: list[tuple], size: int, mtime_ns: int,
                   ctime_ns: int) -> int:
        """Append one fsync's records of a file journaled layer by layer, in order:
        ("T", size), ("W", offset, data) and ("L", name, layer_size, ranges) ops,
        then its size and times; returns the index of the last record. Not
        durable until ``sync``."""
        records = []
        for kind, *args in ops:
            if kind == LAYER:
                name, layer_size, ranges = args
                records.append(msgpack.packb([ino, LAYER, name, layer_size,
                                              [list(r) for r in ranges]]))
            else:
                records.append(msgpack.packb([ino, kind, *args]))
                if kind == WRITE:
                    self.bytes_logged += len(args[1])
        records.append(msgpack.packb([ino, ATTRS, size, mtime_ns, ctime_ns]))
        with self._lock:
            first = self._append(records)
            self._holds.setdefault(ino, collections.deque()).append(first)
            return first + len(records) - 1

    def layer_files(self) -> set[str]:
        """Names of the layer files the records not yet replayed refer to (call
        before ``replay``): what a mount must not discard as leftovers."""
        names = set()
        for e in self._entries:
            rec = msgpack.unpackb(e.data)
            if rec[1] == LAYER:
                names.add(rec[2])
        return names

    def covers(self, mark: bytes | None, index: int) -> bool:
        """Whether a seal that left `mark` (``mark``) includes record `index`."""
        if mark is None:
            return False
        mark_id, covered = msgpack.unpackb(mark)
        return mark_id == self.id and covered >= index

    def _append(self, records: list[bytes]) -> int:
        last = self._wal.last_index
        first = self._base if last is None else last + 1
        self._wal.save(None, [(first + i, data) for i, data in enumerate(records)])
        self.unsynced_bytes += sum(len(data) for data in records)
        return first

    def sync(self) -> None:
        """fdatasync what was appended (blocking): the segments are pre-zeroed
        (versionfs.meta.wal.spare), so it overwrites written blocks and commits
        no size or extent change."""
        self.unsynced_bytes = 0
        self._wal.sync()

    @property
    def segments_preallocated(self) -> int:
        """Segments zero-filled ahead of use since the mount (status)."""
        return self._wal.segments_preallocated

    @property
    def size_changing_syncs(self) -> int:
        """Syncs that extended a segment all the same (a record bigger than the
        room left; status): each cost a metadata commit too."""
        return self._wal.size_changing_syncs

    @property
    def last_index(self) -> int:
        """Index of the newest record (-1 when there is none); a seal that freezes
        a file's layers now covers every record of it up to here."""
        last = self._wal.last_index
        return self._base - 1 if last is None else last

    # -- seals ----------------------------------------------------------------

    def mark(self, covered_to: int) -> bytes:
        """The metadata value a seal covering records up to `covered_to` stores
        (schema.journal_mark_key): replay skips what it names."""
        return msgpack.packb([self.id, covered_to])

    def sealed(self, ino: int, covered_to: int) -> None:
        """A seal of `ino` that covers its records up to `covered_to` was written to
        the metadata (not yet synced there)."""
        with self._lock:
            if ino in self._holds:
                self._seals_counted += 1
                self._seals_pending.append((self._seals_counted, ino, covered_to))

    def forget(self, ino: int) -> None:
        """The file is gone for good (its deletion is durable): drop its holds."""
        with self._lock:
            self._holds.pop(ino, None)

    def seals_noted(self) -> int:
        """A mark of the seals noted now: pass it to ``metadata_synced`` after the
        metadata sync that makes them durable. A number, not a count of those
        pending: two syncs may run at once (the idle sealer's, an fsync's), and
        the first to end takes its seals away from under the other's count,
        which then took seals noted after it began, not durable yet."""
        with self._lock:
            return self._seals_counted

    def metadata_synced(self, noted: int) -> int:
        """The metadata was synced after ``seals_noted()`` returned `noted`: the
        seals noted up to it are durable. Record them, release what no file
        needs any more; returns segments released. Blocking."""
        with self._lock:
            done = [s for s in self._seals_pending if s[0] <= noted]
            self._seals_pending = self._seals_pending[len(done):]
            records = []
            for _, ino, covered in done:
                holds = self._holds.get(ino)
                if holds is None:
                    continue
                while holds and holds[0] <= covered:
                    holds.popleft()
                if not holds:
                    del self._holds[ino]
                records.append(msgpack.packb([ino, SEALED, covered]))
            if records:
                self._append(records)
            release = min((h[0] for h in self._holds.values()), default=self.last_index + 1)
        if not records:
            return 0
        self._wal.sync()
        return self._wal.release_to(release)

    def holds(self, ino: int) -> bool:
        """Whether a replay now would apply records of `ino`."""
        with self._lock:
            return ino in self._holds

    def held_files(self) -> int:
        with self._lock:
            return len(self._holds)

    def close(self) -> None:
        self._wal.close()



def open_journal(dirty_dir: str) -> DirtyJournal:
    """The journal of a mount whose dirty layers live in `dirty_dir`."""
    return DirtyJournal(os.path.join(dirty_dir, "journal"))
