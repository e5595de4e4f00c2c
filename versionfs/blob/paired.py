"""Paired: a write-back cache from a fast local store to a slow (cloud) store.

put writes the fast store, then appends the key to a durable upload journal;
background threads upload journaled blobs to the slow store, retrying with
exponential backoff forever, and mark them done. get reads fast, else slow and
copies the blob back into fast. delete removes from slow first, then fast: in
the other order a concurrent get could refill fast from slow between the two
deletions and resurrect the blob (seed 002).

Invariants:
- A put that returned is listed in the fsynced journal until its upload is
  done, so kill -9 loses nothing; the journal is replayed on open.
- A blob is pinned (never evicted from fast) from before it is written to fast
  until its upload is durable on slow.
- Memory is bounded: at most ``max_pending`` blobs wait for upload; a put
  beyond that blocks (back-pressure) instead of growing a queue. A fast store
  full of not-yet-uploaded blobs makes put wait up to ``full_wait`` seconds
  for uploads to free space, then raise StoreFullError (ENOSPC to the user).
- With no journal the pair is read-only: put raises ReadOnlyError.
- ``put_many_deferred`` + ``sync_deferred`` (a barrier) let a writer store many
  blobs and pay for their durability once: the fast store stages them without
  fsync, and their journal records are written only by the barrier, after the
  fast store made them durable, so the journal never lists a blob the fast
  store could lose. Such blobs are pinned from the put and uploaded after the
  barrier; ``flush``, ``wait_durable`` and ``close`` run a barrier first.
- Nothing is uploaded that does not verify against its pointer: the pair keeps
  codec output it cannot judge, so BlobStore gives it the codec's verifier
  (``set_verifier``), which it hands on to the fast store. A fast copy that
  fails counts as absent: a WARNING, ``damaged_fast_copies`` in ``status``,
  replaced from slow on a read and by a re-put, never sent.
- A blob is marked done only once the slow store holds a good copy; without
  one to send it stays pending (retried, so writing the same content again
  repairs it) and is reported: ERROR, ``last_error``, ``unuploadable``.
- A slow store that is a directory on the fast store's file system gets hard
  links, not copies (linked.py says why that is safe): ``uploads_linked`` /
  ``uploads_copied`` in ``status``.
- Upload workers never die silently: an error no retry covers (a journal
  write) is an ERROR, ``last_error`` and ``upload_errors``; the worker goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from typing import Iterable, Iterator

from .copies import CopyCheck, Verifier
from .errors import (BlobError, CorruptBlobError, NotFoundError, ReadOnlyError,
                     StoreFullError, StoreUnavailableError)
from .journal import UploadJournal
from .linked import Uploader
from .pointer import Pointer, as_pointer
from .store import Buffer, Store
from .uploads import UploadLoop

log = logging.getLogger(__name__)


class Paired(UploadLoop, Store):
    """Fast store + slow store + upload journal. Blocking and thread-safe."""

    def __init__(self, fast: Store, slow: Store, journal_path: str | os.PathLike | None, *,
                 upload_threads: int = 4, max_pending: int = 100_000,
                 full_wait: float = 10.0, retry_max_wait: float = 30.0):
        self.fast = fast
        self.slow = slow
        self.upload_threads = upload_threads
        self.max_pending = max_pending
        self.full_wait = full_wait
        self.retry_max_wait = retry_max_wait
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._pending: OrderedDict[Pointer, int] = OrderedDict()  # pinned: key -> size
        self._journaled: set[Pointer] = set()
        self._queue: deque[Pointer] = deque()
        self._in_flight: set[Pointer] = set()
        self._deleting: set[Pointer] = set()      # delete_many waits for their uploads
        self._deferred: dict[Pointer, int] = {}   # put, not yet journaled (no barrier yet)
        self._barrier_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._uploaded = 0
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._copies = CopyCheck()
        self._uploader = Uploader(fast, slow)       # links instead of copying where it can
        self._errors = 0                           # worker errors outside the retries
        self._unuploadable: dict[Pointer, str] = {}  # pending, no good copy anywhere: why
        self._journal: UploadJournal | None = None
        if journal_path is not None:
            self._journal = UploadJournal(journal_path)
            for key, size in self._journal.replay().items():
                self._pending[key] = size
                self._journaled.add(key)
                self._queue.append(key)
        guard = getattr(fast, "set_eviction_guard", None)
        if guard is not None:
            guard(self.is_pending)

    def set_verifier(self, verify: Verifier) -> None:
        """``verify(key, stored)`` raises CorruptBlobError unless ``stored`` is a
        good copy of ``key``'s blob (``Codec.verify``); handed on to the fast
        store so that a re-put replaces a damaged copy instead of trusting it."""
        self._copies.verify = verify
        hand_on = getattr(self.fast, "set_verifier", None)
        if hand_on is not None:
            hand_on(verify, self._copies.note_replaced)

    def __repr__(self) -> str:
        return f"Paired({self.fast!r}, {self.slow!r})"

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start background uploads (seed: EnsureBackgroundPuts); idempotent."""
        with self._cond:
            if self._workers or self._stop.is_set() or self._journal is None:
                return
            for i in range(self.upload_threads):
                t = threading.Thread(target=self._worker, name=f"vfs-upload-{i}", daemon=True)
                self._workers.append(t)
                t.start()
            if self._journal.damaged:
                t = threading.Thread(target=self._reconcile, name="vfs-reconcile", daemon=True)
                self._workers.append(t)
                t.start()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every put so far is durable on the slow store."""
        self.sync_deferred()
        self.start()
        with self._cond:
            if not self._cond.wait_for(lambda: not self._pending or self._stop.is_set(), timeout):
                raise TimeoutError(f"flush: {len(self._pending)} uploads still pending after "
                                   f"{timeout}s (last error: {self._last_error})")
            if self._pending:
                raise _closed_error()

    def close(self) -> None:
        """Stop uploads (unfinished ones stay journaled) and close both stores."""
        if self._journal is not None and not self._stop.is_set():
            try:
                self.sync_deferred()
            except Exception:                    # noqa: BLE001 - closing anyway
                log.exception("barrier before close failed")
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._workers:
            t.join(timeout=30)
        if self._journal is not None:
            self._journal.close()
        self.fast.close()
        self.slow.close()

    # -- state ------------------------------------------------------------------
    def is_pending(self, key: Pointer) -> bool:
        """True while ``key`` is not yet known durable on the slow store."""
        return key in self._pending

    def pending_keys(self) -> list[Pointer]:
        """The blobs not yet durable on slow, now (a barrier for publishing metadata)."""
        with self._cond:
            return list(self._pending)

    def wait_durable(self, keys: Iterable[Pointer], timeout: float | None = None) -> bool:
        """Wait until none of ``keys`` is pending; False on timeout or close.

        Unlike ``flush`` this does not wait for puts made after ``keys`` were
        taken, so a writer that never pauses cannot hold it up forever.
        """
        keys = list(keys)
        pos = 0
        if self._journal is not None:
            self.sync_deferred()

        def done() -> bool:           # each key is looked at once it is done: O(n + wakeups)
            nonlocal pos
            while pos < len(keys) and keys[pos] not in self._pending:
                pos += 1
            return pos == len(keys)

        with self._cond:
            return self._cond.wait_for(lambda: done() or self._stop.is_set(), timeout) and done()

    def status(self) -> dict:
        with self._cond:
            return {
                "read_only": self._journal is None,
                "pending_count": len(self._pending),
                "pending_bytes": sum(self._pending.values()),
                "in_flight": len(self._in_flight),
                "uploaded_count": self._uploaded,
                "uploads_linked": self._uploader.linked,     # hard links (linked.py)
                "uploads_copied": self._uploader.copied,
                "last_upload_ok": self._last_ok,
                "last_error": self._last_error,
                "damaged_fast_copies": (self._copies.damaged
                                        + getattr(self.fast, "damaged_copies", 0)),
                "unuploadable": len(self._unuploadable),
                "upload_errors": self._errors,
                "fast_bytes": getattr(self.fast, "used_bytes", None),
                "fast_limit": getattr(self.fast, "max_bytes", None),
                "fast_scan": getattr(self.fast, "scan_state", None),
            }

    # -- Store ------------------------------------------------------------------
    def put(self, key: Pointer, data: Buffer) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        """Write to fast, journal, enqueue: one fast-store batch, one journal fsync."""
        if self._journal is None:
            raise ReadOnlyError("read-only store: this pair was opened without an upload journal")
        items = [(as_pointer(k), d) for k, d in items]
        if not items:
            return
        pinned = self._pin(items)
        try:
            self._fast_put(items)
            with self._cond:
                todo = [(k, self._pending[k]) for k in {k: None for k, _ in items}
                        if k not in self._journaled and k in self._pending]
            self._journal.add(todo)
        except BaseException:
            self._unpin(pinned)
            raise
        self._enqueue(todo)

    def _enqueue(self, journaled: list[tuple[Pointer, int]]) -> None:
        """Queue for upload the keys whose put records are now in the journal."""
        with self._cond:
            for key, _ in journaled:
                if key not in self._journaled and key in self._pending:
                    self._journaled.add(key)
                    self._queue.append(key)
            self._cond.notify_all()

    def put_many_deferred(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        """Like put_many, but durable (and journaled) only at the next ``sync_deferred``."""
        if self._journal is None:
            raise ReadOnlyError("read-only store: this pair was opened without an upload journal")
        stage = getattr(self.fast, "put_many_deferred", None)
        if stage is None:
            self.put_many(items)
            return
        items = [(as_pointer(k), d) for k, d in items]
        if not items:
            return
        pinned = self._pin(items)
        try:
            self._fast_put(items, stage)
        except BaseException:
            self._unpin(pinned)
            raise
        with self._cond:
            for key, _ in items:
                if key not in self._journaled and key in self._pending:
                    self._deferred[key] = self._pending[key]

    def sync_deferred(self) -> None:
        """Barrier: every blob put so far is durable in fast and journaled for upload."""
        with self._barrier_lock:
            with self._cond:
                records, self._deferred = self._deferred, {}
            try:
                sync = getattr(self.fast, "sync_deferred", None)
                if sync is not None:
                    sync()
                with self._cond:
                    todo = [(k, size) for k, size in records.items()
                            if k in self._pending and k not in self._journaled]
                if todo:
                    self._journal.add(todo)
            except BaseException:
                with self._cond:
                    for key, size in records.items():
                        self._deferred.setdefault(key, size)
                raise
            if todo:
                self._enqueue(todo)

    def _pin(self, items: list[tuple[Pointer, Buffer]]) -> list[Pointer]:
        """Mark new keys pending before they reach fast, waiting for room in the queue."""
        with self._cond:
            new = {k for k, _ in items if k not in self._pending}
            if len(self._pending) + len(new) > self.max_pending and new:
                if not self._workers:
                    raise StoreFullError(f"{len(self._pending)} blobs wait for upload and "
                                         "uploads are not started")
                self._cond.wait_for(lambda: self._stop.is_set() or
                                    len(self._pending) + len(new) <= self.max_pending)
                if self._stop.is_set():
                    raise _closed_error()
            for key, data in items:
                if key in new:
                    self._pending[key] = memoryview(data).nbytes
            return list(new)

    def _unpin(self, keys: list[Pointer]) -> None:
        with self._cond:
            for key in keys:
                if key not in self._journaled:
                    self._pending.pop(key, None)
            self._cond.notify_all()

    def _fast_put(self, items, put=None) -> None:
        deadline = time.monotonic() + self.full_wait
        while True:
            try:
                (put or self.fast.put_many)(items)
                return
            except StoreFullError:
                with self._cond:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._workers or self._stop.is_set():
                        raise
                    before = self._uploaded
                    self._cond.wait_for(lambda: self._uploaded != before or self._stop.is_set(),
                                        timeout=remaining)

    def get(self, key: Pointer) -> bytes:
        key = as_pointer(key)
        try:
            return self.fast.get(key)
        except NotFoundError:
            pass
        data = self._slow_get(key)
        self._cache(key, data)
        return data

    def _slow_get(self, key: Pointer) -> bytes:
        try:
            return self.slow.get(key)
        except (NotFoundError, StoreUnavailableError):
            raise
        except (BlobError, OSError) as exc:
            raise StoreUnavailableError(f"blob {key.hex()}: slow store failed: {exc}") from exc

    def _cache(self, key: Pointer, data: bytes, durable: bool = False) -> None:
        """Copy a blob fetched from slow into fast. A cache fill needs no fsync
        (DiskStore.cache_put says why), unless it replaces the copy of a pending
        blob, which its journal record relies on."""
        put = self.fast.put if durable else getattr(self.fast, "cache_put", self.fast.put)
        try:
            put(key, data)
        except (StoreFullError, OSError) as exc:
            log.debug("not caching %s: %s", key.hex(), exc)

    def refetch(self, key: Pointer) -> bytes:
        """The slow copy of a blob whose fast copy failed verification on a read
        (BlobStore.get): the fast copy counts as absent and is replaced by the
        slow one once that verifies (without a verifier, only if the blob is not
        pending: the fast copy may then be its only one)."""
        key = as_pointer(key)
        self._copies.note_damaged(key, "failed verification on a read")
        data = self._slow_get(key)
        problem = self._copies.problem(key, data)
        if problem is not None:
            self._fail(f"blob {key.hex()} is unreadable: its fast copy and the slow store's "
                       f"copy both fail verification ({problem})")
            raise CorruptBlobError(self._last_error, key.hex())
        if self._copies.verify is not None or not self.is_pending(key):
            self.fast.delete(key)
            self._cache(key, data, durable=self.is_pending(key))
        return data

    def _fail(self, message: str) -> None:
        """Report an error no retry covers: ``last_error``, an ERROR, a count."""
        with self._cond:
            self._last_error = message
            self._errors += 1
        log.error(message)

    def delete(self, key: Pointer) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Iterable[Pointer]) -> None:
        """Delete from slow first (one batch where the slow store has a batch API), then fast."""
        if self._journal is None:
            raise ReadOnlyError("read-only store: this pair was opened without an upload journal")
        keys = [as_pointer(k) for k in keys]
        self._unqueue(keys)
        self.slow.delete_many(keys)
        self.fast.delete_many(keys)

    def discard_unuploaded(self, keys: Iterable[Pointer]) -> list[Pointer]:
        """Of ``keys``, the blobs still waiting for upload: take them off the
        upload queue and delete them from fast, never touching slow (which may
        hold an older copy). Returns those; a key whose upload finished first
        is left alone. For garbage superseded before its upload."""
        if self._journal is None:
            raise ReadOnlyError("read-only store: this pair was opened without an upload journal")
        dropped = self._unqueue([as_pointer(k) for k in keys])
        self.fast.delete_many(dropped)
        return dropped

    def _unqueue(self, keys: list[Pointer]) -> list[Pointer]:
        """Stop uploading ``keys`` (an upload in flight is waited for); the keys
        that were still pending."""
        unqueued = []
        with self._cond:
            self._deleting.update(keys)         # an upload retrying one of them gives up
            self._cond.notify_all()
            try:
                for key in keys:
                    self._cond.wait_for(lambda: key not in self._in_flight)
                    self._copies.forget(key)
                    if self._pending.pop(key, None) is not None:
                        unqueued.append(key)
                        self._unuploadable.pop(key, None)
                        if key in self._journaled:
                            self._journaled.discard(key)
                            self._record_done(key)
                        self._cond.notify_all()
            finally:
                self._deleting.difference_update(keys)
        return unqueued

    def contains(self, key: Pointer) -> bool:
        key = as_pointer(key)
        return self.is_pending(key) or self.fast.contains(key) or self.slow.contains(key)

    def enumerate(self) -> Iterator[Pointer]:
        with self._cond:
            pending = list(self._pending)
        yield from pending
        seen = set(pending)
        for key in self.slow.enumerate():
            if key not in seen:
                yield key


def _closed_error() -> BlobError:
    return BlobError("the paired store is closed; pending uploads stay in the journal")
