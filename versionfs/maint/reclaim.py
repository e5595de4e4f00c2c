"""Reclaiming superseded chunks as they are superseded: no garbage, no full walk.

Every extent in the live tree has a reverse reference ``b"R" pointer ino
offset`` written in the same MVCC batch as the extent (``schema.put_extent``);
deleting an extent deletes its reference and queues the chunk as a candidate
``b"G" pointer`` in that batch too (``schema.delete_extent``). A crash can
therefore never separate an extent from its reference or lose a candidate
whose extent is gone: they are one WAL record. A seal that finds its file
deleted when it is done queues the chunks it stored instead (no extent will
ever name them; versionfs.fs.lifecycle).

A drain (``Reclaimer.drain``, run in the background by the mount every few
seconds) looks at each candidate, newest knowledge only, at a cost
proportional to the candidates:

* still referenced at the head (another file, or the same file at another
  offset: dedup) -> not garbage, dropped from the queue;
* referenced only by retained snapshots (``MVCCStore.versions`` of its
  ``b"R"`` keys, retained only) -> parked as ``b"W" pointer``; when a
  snapshot is forgotten (by ``forget``, retention or automatic snapshots)
  the parked candidates go back to the queue;
* held by an open file or an open snapshot file in the daemon -> kept;
* otherwise garbage. If its upload is still pending and no publish is running,
  it is taken off the upload queue and deleted from the fast store at once:
  it never reaches the slow store (``Paired.discard_unuploaded``). A chunk in
  the slow store is deleted there (slow, then fast: ``Paired.delete_many``)
  only once every head record the bucket still keeps (the head and its
  ``HEAD_COPIES_KEPT`` copies, versionfs.bucket.publish) was published after
  the drain first saw the candidate: a clone restores one of those, and none
  of them refers to the chunk any more. Both halves outlive a remount: the
  head record lists the index of each kept copy, and a drain records when it
  first saw a candidate (``b"Y" pointer``: the candidate's token and that
  index; a new token means superseded again, seen afresh).

Why it is safe:

* Local metadata first: the metadata is synced before anything is deleted, so
  a power cut can only lose writes made after the deletion decision, which
  never refer to a deleted chunk (see the next point); a candidate key that a
  crash keeps after its chunk was deleted is just checked and deleted again.
  (tests/test_reclaim.py cuts power after a discard with every other sync
  held off.)
* A writer that makes the chunk live again (a seal producing the same bytes,
  a restore copying extents) does so through the ``GCGuard`` the collector
  uses: the mount opens a guard epoch, waits for seals already running, and
  deletes only candidates not put or noted live since (``gc.py``'s protocol;
  a concurrent ``gc`` and a drain exclude each other through ``guard.running``).
* A chunk is not deleted until it has been a candidate for ``MIN_AGE`` seconds,
  so a read that started before its extent was replaced has finished.
* Filesystems from before the reverse references exist get them at their first
  mount (``ensure_extent_refs``; ``b"C" extent_refs`` says from which revision);
  while a snapshot older than that is retained nothing is reclaimed (they
  cannot be asked), which ``gc`` still covers.

``versionfs gc`` stays the full verifier: it marks from every retained extent
version; in the stores it finds nothing more to delete than what is still
queued here, plus chunks no metadata ever named (a seal that failed half-way,
or a crash between a seal's puts and its metadata), which only it collects.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable

from versionfs.blob.pointer import Pointer
from versionfs.tree import schema

from .gc import fast_copy_size

__all__ = ["Reclaimer", "ensure_extent_refs", "MIN_AGE"]

log = logging.getLogger(__name__)

MIN_AGE = 2.0                # seconds a candidate waits before its chunk may go
BATCH = 250                  # chunks per delete request / metadata batch
_G_END = schema.prefix_end(schema.RECLAIM_PREFIX)
_W_END = schema.prefix_end(schema.WAITING_PREFIX)


def ensure_extent_refs(meta: Any) -> bool:
    """Give every live extent its reverse reference, once per filesystem (its
    first mount with reclamation); True when it had to. Durable on return."""
    if meta.get(schema.EXTENT_REFS_KEY) is not None:
        return False
    pending: list[tuple[bytes, bytes]] = []

    def write() -> None:
        with meta.write() as b:
            for key, value in pending:
                schema.put_extent_record(b, key, value)
        pending.clear()

    for key, value in meta.range(b"E", b"F"):
        pending.append((key, value))
        if len(pending) >= 4 * BATCH:
            write()
    write()
    meta.put(schema.EXTENT_REFS_KEY, schema.u64(meta.head))
    meta.sync()
    return True


def chunk_users(meta: Any, pointer: bytes, snapshots: bool = True) -> str | None:
    """'live' when the head uses the chunk, 'snapshot' when only retained
    snapshots do, None when nothing retained does. ``snapshots=False``: none
    is retained, so their versions are not asked for (that read commits the
    queued metadata to LMDB first, a round trip to its writer per chunk)."""
    start = schema.extent_ref_prefix(pointer)
    end = schema.prefix_end(start)
    if any(True for _ in meta.range(start, end, limit=1)):
        return "live"
    if snapshots and any(value is not None
                         for _k, _r, value in meta.versions(start, end, retained_only=True)):
        return "snapshot"
    return None


@dataclass
class _Seen:
    token: bytes           # the candidate key's value: it changes when the chunk is superseded again
    time: float            # when a drain first saw it so (monotonic)
    index: int             # the metadata's last WAL index then: the supersession is at or before it
    discarded: bool = False
    recorded: bool = False  # it has a b"Y" key (`Reclaimer._record`), to delete with it


@dataclass
class ReclaimStats:
    reclaimed_blobs: int = 0
    reclaimed_bytes: int = 0            # fast-store bytes freed
    before_upload: int = 0              # of those, chunks that never reached the slow store
    backlog: int = 0                    # candidates in the queue after the last drain
    waiting: int = 0                    # candidates only retained snapshots still use
    drains: int = 0
    last_error: str | None = None
    deleted: list[bytes] = field(default_factory=list, repr=False)   # last drain's, for tests


class Reclaimer:
    """Drains the candidate queue of one mounted filesystem (module doc).
    Blocking; one drain at a time, under the caller's guard epoch."""

    def __init__(self, meta: Any, paired: Any, *, min_age: float = MIN_AGE,
                 clock: Callable[[], float] = time.monotonic):
        self.meta = meta
        self.paired = paired
        self.min_age = min_age
        self.clock = clock
        self.stats = ReclaimStats()
        self._seen: dict[bytes, _Seen] = {}
        self._revs: set[int] | None = None
        raw = meta.get(schema.EXTENT_REFS_KEY)
        self.refs_from = schema.from_u64(raw) if raw else None

    def drain(self, guard: Any, held: Iterable[bytes], published_floor: int | None,
              uploads_awaited: Callable[[], ContextManager[tuple[int, frozenset] | None]] = (
                  lambda: contextlib.nullcontext((0, frozenset())))) -> ReclaimStats:
        """One pass over the queue. ``guard``: the GCGuard with an open epoch;
        ``held``: chunks open files hold; ``published_floor``: the oldest WAL
        index a head record in the bucket covers (None: nothing is published);
        ``uploads_awaited()``: holds off publishing, yields the WAL index a running
        publish ships and the pending blobs it waits for (None: unknown, keep
        every pending blob)."""
        st = self.stats
        st.deleted = []
        if self.refs_from is None:
            return st
        held = set(held)
        self._requeue_if_forgotten()
        now = self.clock()
        fresh: list[tuple[bytes, _Seen]] = []
        old_snapshots = any(r < self.refs_from for r in self._revs or ())
        ready: list[bytes] = []
        settled: list[tuple[bytes, str | None]] = []
        backlog = 0
        for key, token in self.meta.range(schema.RECLAIM_PREFIX, _G_END):
            p = key[1:]
            backlog += 1
            seen = self._seen.get(p)
            if seen is None or seen.token != token:
                seen = self._seen[p] = self._recall(p, token, now)
                if seen.index < 0:
                    fresh.append((p, seen))
            if now - seen.time < self.min_age or p in held:
                continue
            users = chunk_users(self.meta, p, snapshots=bool(self._revs))
            if users is None and old_snapshots:
                users = "snapshot"
            if users is None:
                ready.append(p)
            else:
                settled.append((p, users))
        # Superseded (again) at or before this index, and not used since unless
        # the head uses it when a later drain looks: no metadata from here on names it.
        index = self.meta.last_index
        for _p, seen in fresh:
            seen.index = index
        if settled:
            with self.meta.write() as b:
                for p, users in settled:
                    self._drop_candidate(b, p)
                    if users == "snapshot":
                        b.put(schema.waiting_key(p), b"")
            parked = sum(1 for _, u in settled if u == "snapshot")
            st.waiting += parked
            backlog -= len(settled)
        if ready:
            self._discard_unuploaded(guard, ready, uploads_awaited)
            due = [p for p in ready if (published_floor is None or self._seen[p].index <= published_floor)
                   and not self.paired.is_pending(Pointer.from_bytes(p))]
            backlog -= self._delete(guard, due)
        self._record([p for p, seen in fresh if self._seen.get(p) is seen])
        st.backlog = backlog
        st.drains += 1
        return st

    def _drop_candidate(self, batch: Any, pointer: bytes) -> None:
        """Dequeue a candidate this drain has dealt with, unless it was queued
        again meanwhile (a new token): that supersession is the next drain's."""
        seen = self._seen.pop(pointer)
        if self.meta.get(schema.reclaim_key(pointer)) == seen.token:
            batch.delete(schema.reclaim_key(pointer))
        if seen.recorded:
            batch.delete(schema.seen_key(pointer))

    def _recall(self, pointer: bytes, token: bytes, now: float) -> _Seen:
        """What a drain of an earlier mount recorded of this candidate (when the
        token still matches: not superseded again since), else a fresh sight."""
        record = self.meta.get(schema.seen_key(pointer))
        if record is not None and record[:-8] == token:
            return _Seen(token, now - self.min_age, schema.from_u64(record[-8:]), recorded=True)
        return _Seen(token, now, -1, recorded=record is not None)   # a stale record goes too

    def _record(self, waiting: list[bytes]) -> None:
        """Keep, for a remount, when a drain first saw the candidates it has not
        dealt with (b"Y"): a later mount then knows which heads are past them
        instead of waiting for as many publishes again."""
        for i in range(0, len(waiting), 4 * BATCH):
            with self.meta.write() as b:
                for p in waiting[i:i + 4 * BATCH]:
                    seen = self._seen[p]
                    b.put(schema.seen_key(p), seen.token + schema.u64(seen.index))
                    seen.recorded = True

    def _requeue_if_forgotten(self) -> None:
        """Parked candidates go back to the queue when a snapshot was forgotten
        (and once per mount: this process may not have seen it happen)."""
        revs = {r.rev for r in self.meta.revisions()}
        if self._revs is None or self._revs - revs:
            moved = 0
            keys = [k for k, _ in self.meta.range(schema.WAITING_PREFIX, _W_END)]
            for i in range(0, len(keys), 4 * BATCH):
                with self.meta.write() as b:
                    for k in keys[i:i + 4 * BATCH]:
                        b.delete(k)
                        schema.queue_candidate(b, k[1:])
                moved += len(keys[i:i + 4 * BATCH])
            if moved:
                log.info("%d reclamation candidate(s) requeued: a snapshot was forgotten", moved)
            self.stats.waiting = 0
        self._revs = revs

    def _discard_unuploaded(self, guard: Any, ready: list[bytes], uploads_awaited: Callable[
            [], ContextManager[tuple[int, frozenset] | None]]) -> None:
        """Garbage still waiting for upload: off the queue and out of the fast store now.

        Except what a running publish waits for if it ships metadata from
        before the drain saw the candidate: that may still name the chunk.
        While ``uploads_awaited`` is held no publish can pick older metadata
        than what is written now."""
        with uploads_awaited() as awaited:
            if awaited is None:
                return
            target, keys = awaited
            pending = [Pointer.from_bytes(p) for p in ready if not self._seen[p].discarded]
            pending = [k for k in pending if self.paired.is_pending(k)
                       and (k not in keys or self._seen[k.bytes].index <= target)]
            if not pending:
                return
            self.meta.sync()
            for i in range(0, len(pending), BATCH):
                batch = pending[i:i + BATCH]
                sizes = {k: fast_copy_size(self.paired, k) for k in batch}
                dropped = guard.delete_unless_recent(batch, self.paired.discard_unuploaded)
                for k in dropped:
                    self._seen[k.bytes].discarded = True
                    self.stats.reclaimed_blobs += 1
                    self.stats.before_upload += 1
                    self.stats.reclaimed_bytes += sizes[k]
                    self.stats.deleted.append(k.bytes)

    def _delete(self, guard: Any, due: list[bytes]) -> int:
        """Delete due chunks from slow and fast, then their candidate keys; how many."""
        if not due:
            return 0
        self.meta.sync()
        done_total = 0
        for i in range(0, len(due), BATCH):
            keys = [Pointer.from_bytes(p) for p in due[i:i + BATCH]]
            sizes = {k: fast_copy_size(self.paired, k) for k in keys}
            done = guard.delete_unless_recent(keys)
            seen = {k: self._seen[k.bytes] for k in done}
            with self.meta.write() as b:
                for k in done:
                    self._drop_candidate(b, k.bytes)
            for k in done:
                if not seen[k].discarded:
                    self.stats.reclaimed_blobs += 1
                    self.stats.reclaimed_bytes += sizes[k]
                    self.stats.deleted.append(k.bytes)
            done_total += len(done)
        return done_total
