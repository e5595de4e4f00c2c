"""``MVCCStore``: opening the store, replaying the WAL, the backend hooks, checkpoints, closing.

The store is assembled from one mixin per responsibility: ``Writes``
(writes.py), ``RevisionCatalogue`` (revisions.py), ``Reads`` (reads.py),
``ChangeIndex`` (changes.py), ``Compaction`` (compaction.py) and ``Overlay``
(overlay.py); they share the state ``open`` sets up here.

Thread safety: one lock serialises overlay and metadata changes and every read
(py-lmdb holds the GIL anyway, so this costs no parallelism); LMDB write
transactions only ever run on the backend's writer thread.  Long reads stream
in chunks under the lock (see reads.py).
"""

from __future__ import annotations

import os
import threading

import msgpack

from ...blob.files import make_dirs
from ..backend.backend import Backend
from ..wal.wal import WAL
from .changes import ChangeIndex
from .compaction import Compaction
from .errors import ReplayError, StoreClosedError
from .layout import (_U64, CHANGES, FIRST_REVISION, HEAD_KEY, KV, OP_DELETE_REVISION, OP_SNAPSHOT,
                     OP_WRITE, REVS, STATE, WAL_METADATA, encode_key)
from .overlay import Overlay, _Gen
from .reads import Reads
from .revisions import RevisionCatalogue, RevisionInfo
from .writes import Writes

__all__ = ["MVCCStore"]


class MVCCStore(Writes, RevisionCatalogue, Reads, ChangeIndex, Compaction, Overlay):
    """Revisioned metadata store. Open with ``MVCCStore.open(dir)``."""

    def __init__(self):
        raise TypeError("use MVCCStore.open(dir, ...)")

    @classmethod
    def open(
        cls,
        dirpath: str,
        *,
        batch_interval: float = 0.05,
        batch_limit: int = 10000,
        quota_bytes: int = 2 * 1024**3,
        segment_bytes: int = 64 * 1024**2,
        map_size: int | None = None,
    ) -> "MVCCStore":
        self = object.__new__(cls)
        self._init(dirpath, batch_interval, batch_limit, quota_bytes, segment_bytes, map_size)
        return self

    def _init(self, dirpath, batch_interval, batch_limit, quota_bytes, segment_bytes, map_size):
        self.dir = os.path.abspath(dirpath)
        os.makedirs(self.dir, exist_ok=True)
        self._lock = threading.RLock()
        self._closed = False
        self._wal: WAL | None = None
        self._gen = _Gen()
        self._frozen: list[_Gen] = []
        self._seen_state = None
        self._backend = Backend(
            os.path.join(self.dir, "db"),
            batch_interval=batch_interval,
            batch_limit=batch_limit,
            quota_bytes=quota_bytes,
            buckets=(KV, CHANGES, REVS, STATE),
            before_commit=self._before_commit,
            after_commit=self._after_commit,
            map_size=map_size,
        )
        try:
            self._load(segment_bytes)
        except BaseException:
            self._backend.close()
            if self._wal is not None:
                self._wal.close()
            raise

    def _load(self, segment_bytes: int) -> None:
        b = self._backend
        self._kvdb = b.db(KV)
        self._chdb = b.db(CHANGES)
        applied = b.applied_index
        with b.read_snapshot() as snap:
            raw = snap.get(STATE, HEAD_KEY)
            self._head = _U64.unpack(raw)[0] if raw else FIRST_REVISION
            self._revs: dict[int, RevisionInfo] = {}
            for k, v in snap.range(REVS, b""):
                name, t = msgpack.unpackb(v)
                rev = _U64.unpack(k)[0]
                self._revs[rev] = RevisionInfo(rev, name, t)
        self._names = {i.name: i.rev for i in self._revs.values() if i.name is not None}
        waldir = os.path.join(self.dir, "wal")
        if not WAL.exist(waldir):
            if applied:
                raise ReplayError(
                    f"metadata database in {self.dir} has applied WAL index {applied} "
                    f"but the write-ahead log {waldir} is missing"
                )
            self._wal = WAL.create(waldir, WAL_METADATA, segment_bytes=segment_bytes)
            self._next_index = 1
            return
        self._wal = WAL.open_at_index(waldir, applied + 1, segment_bytes=segment_bytes)
        metadata, _state, entries = self._wal.read_all()
        if metadata != WAL_METADATA:
            raise ReplayError(f"{waldir} is not an MVCC store's log (metadata {metadata!r})")
        for entry in entries:
            self._replay(entry.index, msgpack.unpackb(entry.data))
        last = self._wal.last_index
        self._next_index = max(applied, last or 0) + 1

    def _replay(self, index: int, op: list) -> None:
        kind, rev = op[0], op[1]
        if kind == OP_WRITE:
            if rev != self._head:
                raise ReplayError(f"WAL entry {index} writes revision {rev} but head is {self._head}")
            flat = op[2]
            ops = [(flat[i], encode_key(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
            self._apply_write(ops, index, rev)
        elif kind == OP_SNAPSHOT:
            if rev != self._head:
                raise ReplayError(f"WAL entry {index} snapshots revision {rev} but head is {self._head}")
            self._apply_snapshot(index, RevisionInfo(rev, op[2], op[3]))
        elif kind == OP_DELETE_REVISION:
            self._apply_delete_revision(index, rev)
        else:
            raise ReplayError(f"WAL entry {index} has unknown operation {kind!r}")

    # ------------------------------------------------------------ backend hooks

    def _before_commit(self, index: int) -> None:
        # LMDB must never get ahead of the durable log (see backend docstring).
        wal = self._wal
        synced = wal.synced_index
        if synced is None or synced < index:
            wal.sync()

    def _after_commit(self, index: int) -> None:
        wal = self._wal
        if wal is not None and wal.segment_count() > 1:
            durable = self._backend.durable_applied_index()
            wal.release_to(durable + 1)

    # ------------------------------------------------------------------ state

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"metadata store {self.dir} is closed")

    def stats(self) -> dict:
        with self._lock:
            return {
                "head": self._head,
                "revisions": len(self._revs),
                "overlay_keys": sum(len(g.data) for g in self._gens()),
                "db_size": self._backend.size(),
                "db_in_use": self._backend.size_in_use(),
                "quota_bytes": self._backend.quota_bytes,
                "wal_segments": self._wal.segment_count(),
                "applied_index": self._backend.applied_index,
                "next_index": self._next_index,
            }

    # ------------------------------------------------------- checkpoints (publish)

    @property
    def wal_dir(self) -> str:
        """The write-ahead log's directory (``wal.decode.read_entries`` ships from it)."""
        return os.path.join(self.dir, "wal")

    @property
    def last_index(self) -> int:
        """The index of the newest WAL entry written (0 before the first)."""
        return self._next_index - 1

    def backup_to(self, stream) -> int:
        """Write a compact, consistent copy of the database to ``stream``.

        Returns a WAL index the copy covers at least: replaying the entries
        after it onto the restored copy (``restore``) gives the state as of
        any later index.  The copy may cover a little more (commits go on
        while it is taken); replay skips what it already holds.
        """
        self._check_open()
        self._backend.commit()
        index = self._backend.applied_index
        self._backend.backup_to(stream)
        return index

    @staticmethod
    def restore(dirpath: str, stream, entries) -> None:
        """Create a store in the new directory ``dirpath`` from a ``backup_to`` copy
        plus the WAL entries (``wal.record.Entry`` or (index, data), contiguous) that
        follow the index it returned.  ``open`` then replays them."""
        dirpath = os.path.abspath(dirpath)
        if os.path.exists(os.path.join(dirpath, "db")) or WAL.exist(os.path.join(dirpath, "wal")):
            raise FileExistsError(f"refusing to restore over the metadata store in {dirpath}")
        make_dirs(dirpath)
        Backend.restore(stream, os.path.join(dirpath, "db"))
        wal = WAL.create(os.path.join(dirpath, "wal"), WAL_METADATA)
        try:
            wal.save(None, entries)
            wal.sync()
        finally:
            wal.close()

    def flush(self) -> None:
        """Commit everything queued to LMDB now (tests, benchmarks, before backups)."""
        self._check_open()
        self._backend.commit()

    def close(self) -> None:
        """Commit what is queued, fsync the WAL and close everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._backend.close()
        finally:
            self._wal.close()

    def __enter__(self) -> "MVCCStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
