"""Multi-version key/value store: revisions over the LMDB backend, journaled by the WAL.

This is the only thing the filesystem needs from ``versionfs.meta``.

Model.  The store has a *head* revision that takes writes and any number of
frozen revisions (snapshots).  ``snapshot()`` freezes the head and opens the
next revision; reading revision ``r`` sees, for every key, its newest version
written at a revision ``<= r``.

Storage (LMDB buckets):

* ``kv``: ``escape(key) + be64(~rev)`` -> ``b"\\x01" + value`` or ``b"\\x00"``
  (tombstone).  ``escape`` doubles NULs as ``00 ff`` and ends with ``00 01``,
  so byte order of encoded keys equals byte order of keys and no key's
  encoding is a prefix of another's; the inverted revision sorts a key's
  versions newest first, so "newest version <= r" is one ``set_range`` seek
  to ``escape(key) + be64(~r)``.  Writing a key again in the same revision
  overwrites the same LMDB item: the store does not grow.
* ``changes``: ``be64(rev) + key`` -> ``b""``, one item per version, so
  ``changed_keys(a, b)`` walks only what changed.
* ``revs``: ``be64(rev)`` -> msgpack ``[name, time]`` for retained snapshots.
* ``mvcc``: ``b"head"`` -> ``be64(head)``.

Write path.  ``write()`` batches become one WAL entry (appended, fsynced only
by ``sync()`` or before the backend commits past it), then go into an
in-memory *overlay* (memtable generations) that reads consult first
(read-your-writes), and into the backend's current batch, which one writer
thread commits to LMDB per interval or per N operations.  A generation is
dropped once the backend reports a commit covering its last WAL index.  After
a crash the WAL is replayed past the index LMDB recorded in the same
transaction as the data, so nothing is lost or applied twice.

Snapshots are O(1): a WAL entry, one ``revs`` item and a new head number; no
key is copied.  ``compact()`` drops versions no retained revision (nor the
head) can see, plus tombstones with nothing older beneath them.

Thread safety: one lock serialises overlay and metadata changes and every read
(py-lmdb holds the GIL anyway, so this costs no parallelism); LMDB write
transactions only ever run on the backend's writer thread.  ``range`` and
``changed_keys`` stream in chunks, each read under the lock in its own LMDB
read transaction, so a 100k-entry listing never sits in memory and never pins
an old LMDB snapshot.
"""

from __future__ import annotations

import heapq
import logging
import os
import struct
import threading
import time
from bisect import bisect_left, bisect_right
from itertools import islice
from typing import Iterator, NamedTuple

import msgpack

from .backend.backend import Backend
from .wal.wal import WAL

__all__ = [
    "MVCCStore",
    "RevisionInfo",
    "WriteBatch",
    "MVCCError",
    "RevisionNotFoundError",
    "StoreClosedError",
    "KeyTooLongError",
    "ReplayError",
]

log = logging.getLogger(__name__)

KV = b"kv"
CHANGES = b"changes"
REVS = b"revs"
STATE = b"mvcc"
HEAD_KEY = b"head"
WAL_METADATA = b"versionfs-meta-mvcc/1"

PUT = b"\x01"
TOMB = b"\x00"
OP_WRITE = 1
OP_SNAPSHOT = 2
OP_DELETE_REVISION = 3

MAX_LMDB_KEY = 511
_U64 = struct.Struct(">Q")
_MASK = (1 << 64) - 1
_AFTER_VERSIONS = b"\xff" * 9  # sorts after every version of an encoded key
FIRST_REVISION = 1


def encode_key(key: bytes) -> bytes:
    return key.replace(b"\0", b"\0\xff") + b"\0\x01"


def decode_key(ek: bytes) -> bytes:
    return ek[:-2].replace(b"\0\xff", b"\0")


def _inv(rev: int) -> bytes:
    return _U64.pack(_MASK - rev)


class MVCCError(Exception):
    """Base class of MVCC store errors."""


class RevisionNotFoundError(MVCCError, LookupError):
    """No such revision (never made, deleted, or a name nobody gave)."""


class StoreClosedError(MVCCError):
    """The store was closed."""


class KeyTooLongError(MVCCError, ValueError):
    """The key does not fit LMDB's key size once encoded."""


class ReplayError(MVCCError):
    """A WAL entry does not fit the store's state: the log and database disagree."""


class RevisionInfo(NamedTuple):
    rev: int
    name: str | None
    time: float


class _Gen:
    """One overlay generation: key -> [(rev, value|None), ...] ascending by rev."""

    __slots__ = ("data", "keys", "sorted_upto", "min_index", "max_index", "min_rev", "max_rev")

    def __init__(self):
        self.data: dict[bytes, list] = {}
        self.keys: list[bytes] = []
        self.sorted_upto = 0
        self.min_index: int | None = None
        self.max_index: int | None = None
        self.min_rev: int | None = None   # revisions written here, so changed_keys
        self.max_rev: int | None = None   # can skip a generation outside its range

    def sorted_keys(self) -> list[bytes]:
        if self.sorted_upto < len(self.keys):
            self.keys.sort()  # timsort merges the sorted prefix with the new tail
            self.sorted_upto = len(self.keys)
        return self.keys


class WriteBatch:
    """Collects puts and deletes; applied atomically as one WAL entry on exit."""

    __slots__ = ("_store", "ops", "_done")

    def __init__(self, store: "MVCCStore"):
        self._store = store
        self.ops: list[tuple[bytes, bytes, bytes | None]] = []
        self._done = False

    def put(self, key: bytes, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        self.ops.append((*_check_key(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self.ops.append((*_check_key(key), None))

    def __enter__(self) -> "WriteBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._done:
            self._done = True
            if self.ops:
                self._store._commit_write(self.ops)


def _check_key(key) -> tuple[bytes, bytes]:
    if not isinstance(key, bytes):
        if isinstance(key, (bytearray, memoryview)):
            key = bytes(key)
        else:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
    ek = encode_key(key)
    if len(ek) + 8 > MAX_LMDB_KEY:
        raise KeyTooLongError(
            f"key of {len(key)} bytes is too long for the metadata store "
            f"(at most {MAX_LMDB_KEY - 10} bytes, NUL bytes count twice)"
        )
    return key, ek


def _split_visible(versions: list, retained: list[int], h0: int) -> tuple[list, list]:
    """Split one key's versions (``(rev, x)`` newest first; ``x[:1] == TOMB`` or
    ``x is True`` marks a tombstone) into (kept, dropped): a version is kept if
    it is at or above h0 or some revision in ``retained`` (which must include
    the head) sees it."""
    keep = []
    drop = []
    upper = None
    for rev, x in versions:
        if rev >= h0:
            keep.append((rev, x))
        else:
            i = bisect_left(retained, rev)
            visible = i < len(retained) and (upper is None or retained[i] < upper)
            (keep if visible else drop).append((rev, x))
        upper = rev
    while keep and _is_tomb(keep[-1][1]):  # a tombstone with nothing beneath it hides nothing
        drop.append(keep.pop())
    return keep, drop


def _is_tomb(x) -> bool:
    return x is True or (isinstance(x, bytes) and x[:1] == TOMB)


class MVCCStore:
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

    def _refresh(self) -> None:
        """Drop overlay generations the backend has committed (lazily, under the lock)."""
        state = self._backend.state
        if state is self._seen_state:
            return
        committed = state[1]
        if self._frozen:
            self._frozen = [g for g in self._frozen if g.max_index > committed]
        g = self._gen
        if g.max_index is not None and g.min_index <= committed:
            if g.max_index > committed:
                # Partly committed: everything in it is already queued, so the
                # next commit covers it; freeze it so it stops growing.
                self._frozen.append(g)
            self._gen = _Gen()
        self._seen_state = state

    def _read_rev(self, rev: int | None) -> int:
        if rev is None or rev == self._head:
            return self._head
        if rev in self._revs:
            return rev
        raise RevisionNotFoundError(f"revision {rev} does not exist (head is {self._head})")

    @property
    def head(self) -> int:
        return self._head

    # ----------------------------------------------------------------- writes

    def write(self) -> WriteBatch:
        """``with store.write() as b: b.put(k, v); b.delete(k2)`` — atomic, one WAL entry."""
        return WriteBatch(self)

    def put(self, key: bytes, value: bytes) -> None:
        with self.write() as b:
            b.put(key, value)

    def delete(self, key: bytes) -> None:
        with self.write() as b:
            b.delete(key)

    def _commit_write(self, ops: list) -> None:
        flat = []
        nbytes = 0
        has_put = False
        for key, ek, value in ops:
            flat.append(key)
            flat.append(value)
            if value is not None:
                has_put = True
                nbytes += 2 * len(ek) + len(value) + 48
        with self._lock:
            self._check_open()
            if has_put:
                self._backend.check_quota(nbytes)
            index = self._next_index
            rev = self._head
            self._wal.save_entry(index, msgpack.packb([OP_WRITE, rev, flat]))
            self._next_index = index + 1
            self._apply_write(ops, index, rev)

    def _apply_write(self, ops: list, index: int, rev: int) -> None:
        self._refresh()  # write-only workloads must shed committed generations too
        gen = self._gen
        data = gen.data
        for key, _ek, value in ops:
            vers = data.get(key)
            if vers is None:
                data[key] = [(rev, value)]
                gen.keys.append(key)
            elif vers[-1][0] == rev:
                vers[-1] = (rev, value)
            else:
                vers.append((rev, value))
        if gen.min_index is None:
            gen.min_index = index
        gen.max_index = index
        if gen.min_rev is None:
            gen.min_rev = rev
        gen.max_rev = rev
        rinv = _inv(rev)
        rbe = _U64.pack(rev)
        versions = []
        changes = []
        nbytes = 0
        for key, ek, value in ops:
            stored = TOMB if value is None else PUT + value
            versions.append((ek + rinv, stored))
            changes.append((rbe + key, b""))
            nbytes += 2 * len(ek) + len(stored) + 16
        with self._backend.batch_tx() as tx:
            tx.put_many(KV, versions, nbytes)
            tx.put_many(CHANGES, changes, 0)  # counted with the versions above
            tx.set_applied_index(index)

    def sync(self) -> None:
        """fsync the WAL: everything written so far survives a crash."""
        self._check_open()
        self._wal.sync()

    # -------------------------------------------------------------- revisions

    def snapshot(self, name: str | None = None) -> RevisionInfo:
        """Freeze the head as a read-only revision and open the next one. O(1)."""
        if name is not None:
            if not isinstance(name, str) or not name or "/" in name or "\0" in name:
                raise ValueError(f"snapshot name must be a non-empty str without '/' or NUL: {name!r}")
            if name.isdigit():
                raise ValueError(f"snapshot name {name!r} would be read as a revision number")
        with self._lock:
            self._check_open()
            if name is not None and name in self._names:
                raise ValueError(f"a snapshot named {name!r} already exists (revision {self._names[name]})")
            info = RevisionInfo(self._head, name, time.time())
            index = self._next_index
            self._wal.save_entry(index, msgpack.packb([OP_SNAPSHOT, info.rev, name, info.time]))
            self._next_index = index + 1
            self._apply_snapshot(index, info)
            return info

    def _apply_snapshot(self, index: int, info: RevisionInfo) -> None:
        self._revs[info.rev] = info
        if info.name is not None:
            self._names[info.name] = info.rev
        self._head = info.rev + 1
        self._mark_index(index)
        with self._backend.batch_tx() as tx:
            tx.put(REVS, _U64.pack(info.rev), msgpack.packb([info.name, info.time]))
            tx.put(STATE, HEAD_KEY, _U64.pack(self._head))
            tx.set_applied_index(index)

    def _mark_index(self, index: int) -> None:
        gen = self._gen
        if gen.min_index is None:
            gen.min_index = index
        gen.max_index = index

    def revisions(self) -> list[RevisionInfo]:
        """Retained snapshots, oldest first (the head is not one)."""
        with self._lock:
            return [self._revs[r] for r in sorted(self._revs)]

    def revision(self, rev_or_name: int | str) -> RevisionInfo:
        with self._lock:
            if isinstance(rev_or_name, str):
                rev = self._names.get(rev_or_name)
                if rev is None and rev_or_name.isdigit():
                    rev = int(rev_or_name)
            else:
                rev = rev_or_name
            info = self._revs.get(rev)
            if info is None:
                raise RevisionNotFoundError(f"no snapshot {rev_or_name!r}")
            return info

    def delete_revision(self, rev: int | str) -> None:
        """Forget a snapshot; ``compact()`` later reclaims what only it could see."""
        with self._lock:
            self._check_open()
            info = self.revision(rev)
            index = self._next_index
            self._wal.save_entry(index, msgpack.packb([OP_DELETE_REVISION, info.rev]))
            self._next_index = index + 1
            self._apply_delete_revision(index, info.rev)

    def _apply_delete_revision(self, index: int, rev: int) -> None:
        info = self._revs.pop(rev, None)
        if info is None:
            raise ReplayError(f"WAL entry {index} deletes revision {rev}, which does not exist")
        if info.name is not None:
            self._names.pop(info.name, None)
        self._mark_index(index)
        with self._backend.batch_tx() as tx:
            tx.delete(REVS, _U64.pack(rev))
            tx.set_applied_index(index)

    # ------------------------------------------------------------------ reads

    def _gens(self) -> list[_Gen]:
        if self._frozen:
            return [self._gen, *reversed(self._frozen)]
        return [self._gen]

    def get(self, key: bytes, rev: int | None = None) -> bytes | None:
        """The value of ``key`` at ``rev`` (None: head), or None if absent."""
        with self._lock:
            self._check_open()
            rev = self._read_rev(rev)
            self._refresh()
            for gen in self._gens():
                vers = gen.data.get(key)
                if vers:
                    for r, v in reversed(vers):
                        if r <= rev:
                            return v
            ek = encode_key(key)
            with self._backend.env.begin() as txn:
                cur = txn.cursor(self._kvdb)
                if cur.set_range(ek + _inv(rev)):
                    sk = cur.key()
                    if sk[:-8] == ek:
                        raw = cur.value()
                        return raw[1:] if raw[:1] == PUT else None
            return None

    def _mem_lookup(self, gens, key: bytes, rev: int):
        for gen in gens:
            vers = gen.data.get(key)
            if vers:
                for r, v in reversed(vers):
                    if r <= rev:
                        return True, v
        return False, None

    @staticmethod
    def _lmdb_visible(cur, start: bytes, rinv: bytes, end_ek: bytes | None):
        """(encoded key, raw value) of each key's newest version <= rev, in key order."""
        if not cur.set_range(start):
            return
        while True:
            sk = cur.key()
            ek = sk[:-8]
            if end_ek is not None and ek >= end_ek:
                return
            if sk[-8:] >= rinv:
                yield ek, cur.value()
                if not cur.set_range(ek + _AFTER_VERSIONS):
                    return
            elif not cur.set_range(ek + rinv):
                return

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        rev: int | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for start <= key < end at ``rev``, in key order, streaming."""
        if not isinstance(start, bytes) or (end is not None and not isinstance(end, bytes)):
            raise TypeError("range bounds must be bytes")
        with self._lock:
            self._check_open()
            rev = self._read_rev(rev)
        return self._range_iter(start, end, rev, limit)

    def _range_iter(self, start, end, rev, limit):
        pos, inclusive = start, True
        remaining = limit
        chunk = 64
        while remaining is None or remaining > 0:
            n = chunk if remaining is None else min(chunk, remaining)
            with self._lock:
                self._check_open()
                self._read_rev(rev)
                items, pos = self._range_chunk(pos, inclusive, end, rev, n)
            yield from items
            if remaining is not None:
                remaining -= len(items)
            if pos is None:
                return
            inclusive = False
            chunk = min(chunk * 2, 1024)

    def _range_chunk(self, lo: bytes, inclusive: bool, end: bytes | None, rev: int, n: int):
        self._refresh()
        gens = self._gens()
        iters = []
        for g in gens:
            ks = g.sorted_keys()
            i = bisect_left(ks, lo) if inclusive else bisect_right(ks, lo)
            j = len(ks) if end is None else bisect_left(ks, end)
            if i < j:
                iters.append(islice(ks, i, j))
        mit = iters[0] if len(iters) == 1 else heapq.merge(*iters)
        end_ek = None if end is None else encode_key(end)
        start_ek = encode_key(lo) if inclusive else encode_key(lo) + _AFTER_VERSIONS
        items = []
        budget = 4 * n + 64  # keys examined per chunk, tombstones included
        last = None
        with self._backend.env.begin() as txn:
            lit = self._lmdb_visible(txn.cursor(self._kvdb), start_ek, _inv(rev), end_ek)
            lk = next(lit, None)
            lkey = decode_key(lk[0]) if lk is not None else None
            mk = next(mit, None)
            while lk is not None or mk is not None:
                if len(items) >= n or budget <= 0:
                    return items, last
                budget -= 1
                if mk is None or (lk is not None and lkey < mk):
                    key, raw = lkey, lk[1]
                    value = raw[1:] if raw[:1] == PUT else None
                    lk = next(lit, None)
                    lkey = decode_key(lk[0]) if lk is not None else None
                else:
                    key = mk
                    found, value = self._mem_lookup(gens, mk, rev)
                    if lk is not None and lkey == mk:
                        if not found:
                            raw = lk[1]
                            value = raw[1:] if raw[:1] == PUT else None
                        lk = next(lit, None)
                        lkey = decode_key(lk[0]) if lk is not None else None
                    while mk is not None and mk == key:
                        mk = next(mit, None)
                last = key
                if value is not None:
                    items.append((key, value))
        return items, None

    def changed_keys(self, rev_from: int, rev_to: int) -> Iterator[bytes]:
        """Keys with a version in (rev_from, rev_to]; cost follows the change, not the store."""
        if rev_from > rev_to:
            raise ValueError(f"changed_keys needs rev_from <= rev_to, got {rev_from} > {rev_to}")
        return self._changed_iter(rev_from, rev_to)

    def _changed_iter(self, rev_from: int, rev_to: int):
        seen: set[bytes] = set()
        with self._lock:
            self._check_open()
            self._refresh()
            gens = [g for g in self._gens()
                    if g.max_rev is not None and g.max_rev > rev_from and g.min_rev <= rev_to]
            mem = sorted(
                {k for g in gens for k, vers in g.data.items() if any(rev_from < r <= rev_to for r, _ in vers)}
            )
        for k in mem:
            seen.add(k)
            yield k
        pos = _U64.pack(rev_from + 1)
        stop = _U64.pack(rev_to + 1) if rev_to < _MASK else None
        while pos is not None:
            batch = []
            with self._lock:
                self._check_open()
                with self._backend.env.begin() as txn:
                    cur = txn.cursor(self._chdb)
                    ok = cur.set_range(pos)
                    while ok:
                        k = cur.key()
                        if stop is not None and k >= stop:
                            ok = False
                            break
                        batch.append(k[8:])
                        if len(batch) >= 1024:
                            break
                        ok = cur.next()
                    pos = k + b"\0" if ok and batch else None
            for key in batch:
                if key not in seen:
                    seen.add(key)
                    yield key

    # ------------------------------------------------------------- compaction

    def _retained_and_commit(self) -> tuple[list[int], int]:
        """(retained revisions + the head, head), with every queued write in LMDB."""
        with self._lock:
            self._check_open()
            retained = sorted(self._revs)
            h0 = self._head
        retained.append(h0)
        self._backend.commit()
        return retained, h0

    def compact(self) -> int:
        """Drop versions no retained revision can see. Returns how many were dropped."""
        retained, h0 = self._retained_and_commit()
        dropped = 0
        pos = b""
        while pos is not None:
            pos, n = self._backend.run(lambda txn, dbs, p=pos: self._compact_chunk(txn, dbs, p, retained, h0))
            dropped += n
        return dropped

    def _compact_chunk(self, txn, dbs, start: bytes, retained: list[int], h0: int, budget: int = 5000):
        kvdb, chdb = dbs[KV], dbs[CHANGES]
        cur = txn.cursor(kvdb)
        if not cur.set_range(start):
            return None, 0
        dropped = 0
        seen = 0
        more = True
        while more and seen < budget:
            ek = cur.key()[:-8]
            versions = []  # (rev, tombstone), newest first
            while True:
                sk = cur.key()
                if sk[:-8] != ek:
                    break
                versions.append((_MASK - _U64.unpack(sk[-8:])[0], cur.value()[:1] == TOMB))
                if not cur.next():
                    more = False
                    break
            next_sk = cur.key() if more else None
            seen += len(versions)
            keep, drop = _split_visible(versions, retained, h0)
            if drop:
                key = decode_key(ek)
                for rev, _tomb in drop:
                    txn.delete(ek + _inv(rev), db=kvdb)
                    txn.delete(_U64.pack(rev) + key, db=chdb)
                dropped += len(drop)
                if more:
                    cur.set_range(next_sk)
        return (cur.key() if more else None), dropped

    def versions(self, start: bytes, end: bytes | None = None, *,
                 retained_only: bool = False) -> Iterator[tuple[bytes, int, bytes | None]]:
        """Every stored version ``(key, rev, value or None for a tombstone)`` of the
        keys in [start, end), key by key, newest version first, streaming.

        This is what garbage collection and fsck need: the union of what every
        retained revision and the head can see, without reading the tree once per
        revision.  With ``retained_only`` it yields only versions some retained
        revision or the head can see (exactly what ``compact()`` would keep);
        otherwise also versions only forgotten revisions saw.

        Everything written before the call is included (queued writes are
        committed first); versions written while the iteration runs may or may
        not appear, so a caller racing with writers must cover them itself.
        """
        if not isinstance(start, bytes) or (end is not None and not isinstance(end, bytes)):
            raise TypeError("versions bounds must be bytes")
        retained, h0 = self._retained_and_commit()
        return self._versions_iter(start, end, retained, h0, retained_only)

    def _versions_iter(self, start, end, retained, h0, retained_only):
        pos = encode_key(start)
        end_ek = None if end is None else encode_key(end)
        while pos is not None:
            with self._lock:
                self._check_open()
                groups, pos = self._versions_chunk(pos, end_ek)
            for ek, versions in groups:
                key = decode_key(ek)
                if retained_only:
                    versions, _ = _split_visible(versions, retained, h0)
                for rev, raw in versions:
                    yield key, rev, (raw[1:] if raw[:1] == PUT else None)

    def _versions_chunk(self, pos: bytes, end_ek: bytes | None, budget: int = 4096):
        """Whole version groups from ``pos`` (an encoded key) on; (groups, next pos)."""
        groups = []
        n = 0
        with self._backend.env.begin() as txn:
            cur = txn.cursor(self._kvdb)
            if not cur.set_range(pos):
                return groups, None
            while True:
                ek = cur.key()[:-8]
                if end_ek is not None and ek >= end_ek:
                    return groups, None
                if n >= budget:
                    return groups, ek
                versions = []
                more = True
                while True:
                    sk = cur.key()
                    if sk[:-8] != ek:
                        break
                    raw = cur.value()
                    versions.append((_MASK - _U64.unpack(sk[-8:])[0], raw if raw[:1] == PUT else TOMB))
                    if not cur.next():
                        more = False
                        break
                groups.append((ek, versions))
                n += len(versions)
                if not more:
                    return groups, None

    def check_indexes(self, repair: bool = False) -> list[str]:
        """Check the ``changes`` index against the versions in ``kv``.

        Every stored version must have its ``changes`` item (or ``changed_keys``
        misses it) and every ``changes`` item must name a stored version.
        Returns one line per problem.  ``repair`` rebuilds the wrong items from
        ``kv``, which is the source of truth, so repairing loses nothing.
        """
        with self._lock:
            self._check_open()
        self._backend.commit()
        return self._backend.run(lambda txn, dbs: self._check_indexes_txn(txn, dbs, repair))

    @staticmethod
    def _check_indexes_txn(txn, dbs, repair: bool) -> list[str]:
        kvdb, chdb = dbs[KV], dbs[CHANGES]
        problems = []
        missing = []
        for sk in txn.cursor(kvdb).iternext(keys=True, values=False):
            rev = _MASK - _U64.unpack(sk[-8:])[0]
            ch = _U64.pack(rev) + decode_key(sk[:-8])
            if txn.get(ch, db=chdb) is None:
                missing.append(ch)
                problems.append(f"changes index lacks revision {rev} of key {decode_key(sk[:-8])!r}")
        stale = []
        for ch in txn.cursor(chdb).iternext(keys=True, values=False):
            rev = _U64.unpack(ch[:8])[0]
            if txn.get(encode_key(ch[8:]) + _inv(rev), db=kvdb) is None:
                stale.append(ch)
                problems.append(f"changes index names revision {rev} of key {ch[8:]!r}, "
                                "which is not stored")
        if repair:
            for ch in missing:
                txn.put(ch, b"", db=chdb)
            for ch in stale:
                txn.delete(ch, db=chdb)
        return problems

    def defrag(self) -> None:
        """Compact the LMDB file itself (after ``compact()``, to return space to the disk)."""
        with self._lock:
            self._check_open()
            self._backend.defrag()
            self._kvdb = self._backend.db(KV)  # handles belong to the reopened environment
            self._chdb = self._backend.db(CHANGES)

    # ------------------------------------------------------------------ misc

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
        os.makedirs(dirpath, exist_ok=True)
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
