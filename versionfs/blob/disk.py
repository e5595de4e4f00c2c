"""DiskStore: the fast local store, with an optional size limit and LRU eviction."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

from .errors import CorruptBlobError, NotFoundError, StoreFullError
from .files import FanOutStore, _io_pool, _unlink_quietly, fdatasync_path, fsync_dir, read_file
from .pointer import Pointer, as_pointer
from .store import Buffer

log = logging.getLogger(__name__)

# A temp file older than this was left by a crash, not by a writer still at work.
STALE_TEMP_SECONDS = 600


class DiskStore(FanOutStore):
    """Blobs in fan-out directories on local disk; atomic, durable writes.

    With ``max_bytes`` the store is a cache: when a put would go over the limit
    it evicts least-recently-used blobs first. A Paired store installs an
    eviction guard so that a blob not yet safe on the slow store is never
    evicted; if only such blobs remain, put raises StoreFullError and writes
    nothing. Recency is tracked in memory and seeded from file mtimes at open,
    which is good enough for a cache and costs no extra write per read.

    The index (size and recency per blob) is built by a background thread, so
    that opening the store (and a mount) does not wait for a listing of every
    blob: 0.1 s per 10,000 blobs, seconds for a large home directory. Until it
    has finished, reads open the file as always, ``contains`` of a key not yet
    indexed looks at the disk, puts and deletes go to the index at once and the
    scan, merging under the lock, skips the keys they touched; ``used_bytes``
    is None (unknown), and a put into a store with ``max_bytes`` waits for the
    scan so that eviction never picks on a partial view. A scan that fails is
    logged at ERROR and shown by ``scan_state``; ``close`` stops it.

    The store keeps raw codec output and does not know the codec, so a read is
    verified one level up: BlobStore.get decodes against the pointer (hash or
    AEAD tag) and, under a Paired store, replaces a bad fast copy from slow.

    A file under a blob's name is not trusted to be the blob (a copy cached
    without fsync may be short after a power cut; a disk may rot): a put of a
    blob the store already has checks the stored copy with the verifier the
    Paired store hands on (``set_verifier``; without one, by its size) and
    replaces a copy that fails, logged at WARNING and counted in
    ``damaged_copies``. Otherwise a re-put would keep the damaged copy, and
    the upload that follows would send it over the slow store's good one.

    Deferred durability (``put_many_deferred`` + ``sync_deferred``): a writer
    that stores many blobs before it needs any of them durable (a seal of a
    64 MiB slice) writes each to its temp file without fsync, and one barrier
    later fdatasyncs all the temps side by side, renames them into place and
    fsyncs each touched directory once. Until the barrier a blob is readable
    from its temp file, but its final name does not exist yet, so a crash can
    never leave a torn blob under a real name (which a later put of the same
    content would trust). A durable put of a key that is still staged runs the
    barrier before it returns.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        super().__init__(path)
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._guard: Callable[[Pointer], bool] = lambda key: False
        self._verify: Callable[[Pointer, Buffer], None] | None = None
        self._on_replaced: Callable[[Pointer], None] = lambda key: None
        self.damaged_copies = 0     # stored copies found damaged by a re-put, and replaced
        self._index: OrderedDict[Pointer, int] = OrderedDict()
        self._used = 0
        self._staged: dict[Pointer, str] = {}     # key -> temp path, until sync_deferred
        self._barrier_lock = threading.Lock()
        # The index scan (class doc): keys put, deleted or evicted while it runs,
        # which its results must not undo or count twice; None once merged.
        self._touched: set[Pointer] | None = set()
        self.scan_error: str | None = None
        self._scanned = threading.Event()
        self._closing = threading.Event()
        self._scanner = threading.Thread(target=self._index_blobs, daemon=True,
                                         name=f"vfs-fast-scan {self.root}")
        self._scanner.start()

    @property
    def used_bytes(self) -> int | None:
        """Bytes of blobs stored; None until the index scan has finished (unknown)."""
        with self._lock:
            return None if self._touched is not None or self.scan_error else self._used

    @property
    def scan_state(self) -> str:
        """``pending``, ``done``, ``stopped`` (closed first) or ``failed: why`` (for status)."""
        if self.scan_error:
            return f"failed: {self.scan_error}"
        if not self._scanned.is_set():
            return "pending"
        return "stopped" if self._touched is not None else "done"

    def wait_scanned(self, timeout: float | None = None) -> bool:
        """Wait for the index scan to end (done, failed or stopped by close)."""
        return self._scanned.wait(timeout)

    def _index_blobs(self) -> None:
        """The scan thread: list every blob, then merge the listing into the index
        under the lock, older than anything used since open and skipping keys
        put, deleted or evicted meanwhile."""
        start = time.monotonic()
        try:
            found = []
            for entry in self._scan():
                if self._closing.is_set():
                    return
                found.append(entry)
            found.sort(key=lambda t: t[2])
            with self._lock:
                merged: OrderedDict[Pointer, int] = OrderedDict()
                for key, size, _mtime in found:
                    if key not in self._touched and key not in self._index:
                        merged[key] = size
                        self._used += size
                merged.update(self._index)
                self._index = merged
                self._touched = None
            log.debug("fast store %s: indexed %d blobs in %.3f s",
                      self.root, len(found), time.monotonic() - start)
        except Exception as exc:    # noqa: BLE001 - reported in status, never silent
            with self._lock:
                self.scan_error = f"{type(exc).__name__}: {exc}"
                self._touched = None
            log.error("fast store %s: the index scan failed (%s); used bytes stay unknown "
                      "and eviction sees only blobs stored since open",
                      self.root, self.scan_error, exc_info=True)
        finally:
            self._scanned.set()

    def _forget(self, key: Pointer) -> None:
        """Drop ``key`` from the index (deleted or gone); called with the lock held."""
        size = self._index.pop(key, None)
        if size is not None:
            self._used -= size
        if self._touched is not None:
            self._touched.add(key)

    def _remember(self, key: Pointer, size: int) -> None:
        """Index a blob just stored; called with the lock held."""
        self._index[key] = size
        if self._touched is not None:
            self._touched.add(key)

    def _found_unindexed(self, items: list[tuple[Pointer, Buffer]],
                         keys: list[Pointer]) -> dict[Pointer, Buffer]:
        """Of ``keys`` (re-put while the scan runs, not yet indexed), those whose
        copy is on disk: they are indexed now and checked like indexed ones, so
        a re-put never trusts an unchecked copy nor writes a good one again."""
        sizes = {}
        for key in keys:
            try:
                sizes[key] = os.stat(self.path_for(key)).st_size
            except FileNotFoundError:
                pass
        with self._lock:
            for key, size in sizes.items():
                if key not in self._index:
                    self._remember(key, size)
                    self._used += size
        return {key: data for key, data in items if key in sizes}

    def close(self) -> None:
        """Stop an unfinished index scan (it ends at its next blob)."""
        self._closing.set()
        if self._scanner is not threading.current_thread():
            self._scanner.join()
        super().close()

    def set_eviction_guard(self, keep: Callable[[Pointer], bool]) -> None:
        """``keep(key)`` true means: never evict this blob (e.g. upload pending)."""
        self._guard = keep

    def set_verifier(self, verify: Callable[[Pointer, Buffer], None],
                     on_replaced: Callable[[Pointer], None] | None = None) -> None:
        """``verify(key, stored)`` raises CorruptBlobError unless ``stored`` is a
        good copy of ``key``'s blob; a re-put checks the stored copy with it, and
        calls ``on_replaced(key)`` before it replaces a damaged one."""
        self._verify = verify
        if on_replaced is not None:
            self._on_replaced = on_replaced

    def _remove_stale_temp(self, path: str) -> None:
        try:
            if time.time() - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                os.unlink(path)
        except FileNotFoundError:
            pass

    # -- Store ----------------------------------------------------------------
    def get(self, key: Pointer) -> bytes:
        key = as_pointer(key)
        temp = self._staged.get(key)
        if temp is not None:
            try:
                return read_file(temp)
            except NotFoundError:
                pass                        # renamed into place (or deleted) meanwhile
        try:
            data = super().get(key)
        except NotFoundError:
            with self._lock:
                self._forget(key)
            raise
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
        return data

    def contains(self, key: Pointer) -> bool:
        key = as_pointer(key)
        with self._lock:
            if key in self._index:
                return True
        return super().contains(key)

    def put_many(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        self._put(items, sync=True)

    def put_many_deferred(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        """Store blobs now, durable only after the next ``sync_deferred`` (class doc)."""
        self._put(items, sync=False, defer=True)

    def sync_deferred(self) -> None:
        """Make every blob put with ``put_many_deferred`` so far durable under its name.

        Barriers run one at a time: a barrier that found nothing staged must
        not return while another is still between a rename and its directory
        fsync.
        """
        with self._barrier_lock:
            with self._lock:
                batch = dict(self._staged)
            if not batch:
                return
            pool = _io_pool()
            if len(batch) == 1:
                fdatasync_path(next(iter(batch.values())))
            else:
                list(pool.map(fdatasync_path, batch.values()))
            dirs = set()
            with self._lock:
                for key, temp in batch.items():
                    if self._staged.get(key) != temp:
                        continue                # deleted meanwhile
                    final = self.path_for(key)
                    os.replace(temp, final)
                    del self._staged[key]
                    dirs.add(os.path.dirname(final))
            if len(dirs) > 1:
                list(pool.map(fsync_dir, dirs))
            elif dirs:
                fsync_dir(dirs.pop())

    def _put(self, items: Iterable[tuple[Pointer, Buffer]], sync: bool,
             defer: bool = False) -> None:
        items = [(as_pointer(key), data) for key, data in items]
        damaged = self._drop_damaged(items)
        if self.max_bytes is not None:
            self._scanned.wait()                # never evict on a partial index
        new: dict[Pointer, Buffer] = {}
        barrier = False
        with self._lock:
            for key, data in items:
                if key in self._index:
                    self._index.move_to_end(key)
                    barrier = barrier or (sync and key in self._staged)
                elif key not in new:
                    new[key] = data
            if new:
                need = sum(memoryview(d).nbytes for d in new.values())
                victims = self._make_room(need, set(new))
                self._used += need  # reserved until written
        if not new:
            if barrier:                         # durable put of a blob still staged
                self.sync_deferred()
            return
        self._unlink_victims(victims)
        try:
            if defer:
                staged = self._write_temps(self._jobs(new.items()), sync=False, writeback=True)
            else:
                self._write_files(new.items(), sync)
        except BaseException:
            with self._lock:
                self._used -= need
            raise
        with self._lock:
            for key, data in new.items():
                size = memoryview(data).nbytes
                if key in self._index:      # a concurrent put of the same blob won
                    self._used -= size
                else:
                    self._remember(key, size)
            if defer:
                temps = dict(zip(new, (temp for temp, _ in staged)))
                for key, temp in temps.items():
                    if key in self._staged:
                        _unlink_quietly(temp)   # staged by a concurrent put
                    elif key not in damaged and os.path.exists(self.path_for(key)):
                        _unlink_quietly(temp)   # a durable concurrent put won
                    else:
                        self._staged[key] = temp
        if barrier:
            self.sync_deferred()

    def cache_put(self, key: Pointer, data: Buffer) -> None:
        """Put a copy of a blob that is safe elsewhere, without fsync.

        Cache fills are verified on use rather than made durable: every read
        from the bucket (all of them after a clone) would otherwise pay an
        fsync, and a torn copy left by a power cut is harmless because nothing
        trusts a fast copy unverified: a read decodes it (and refetches it),
        a re-put checks it (and replaces it), an upload verifies it (and never
        sends it).
        """
        self._put(((key, data),), sync=False)

    def _drop_damaged(self, items: list[tuple[Pointer, Buffer]]) -> set[Pointer]:
        """The keys of ``items`` whose copy under the final name is damaged or
        gone; they leave the index, so the put writes them anew (class doc)."""
        with self._lock:
            stored = {key: data for key, data in items
                      if key in self._index and key not in self._staged}
            unindexed = [key for key, _ in items if self._touched is not None
                         and key not in self._index and key not in self._staged]
        stored.update(self._found_unindexed(items, unindexed))
        damaged = {}
        for key, data in stored.items():
            problem = self._copy_problem(key, data)
            if problem is not None:
                damaged[key] = problem
        if not damaged:
            return set()
        with self._lock:
            for key in damaged:
                self._forget(key)
            self.damaged_copies += len(damaged)
        for key, problem in damaged.items():
            log.warning("fast store %s: the stored copy of blob %s is damaged (%s); "
                        "replacing it with the copy being put", self.root, key.hex(), problem)
            self._on_replaced(key)
        return set(damaged)

    def _copy_problem(self, key: Pointer, data: Buffer) -> str | None:
        """Why the stored copy of ``key`` cannot be trusted, or None if it can."""
        path = self.path_for(key)
        try:
            if self._verify is None:
                size = os.stat(path).st_size
                want = memoryview(data).nbytes
                return None if size == want else f"{size} bytes stored, {want} put"
            self._verify(key, read_file(path))
            return None
        except (FileNotFoundError, NotFoundError):
            return "missing"
        except CorruptBlobError as exc:
            return str(exc)

    def _unstage(self, keys: list[Pointer]) -> None:
        """Drop staged blobs (deleted before their barrier): their temps go too."""
        with self._lock:
            temps = [self._staged.pop(k) for k in keys if k in self._staged]
        for temp in temps:
            _unlink_quietly(temp)

    def delete(self, key: Pointer) -> None:
        key = as_pointer(key)
        self._unstage([key])
        super().delete(key)
        with self._lock:
            self._forget(key)

    def delete_many(self, keys: Iterable[Pointer]) -> None:
        keys = [as_pointer(k) for k in keys]
        self._unstage(keys)
        super().delete_many(keys)
        with self._lock:
            for key in keys:
                self._forget(key)

    # -- eviction ---------------------------------------------------------------
    def _make_room(self, need: int, incoming: set[Pointer]) -> list[Pointer]:
        """Pick LRU victims so ``need`` more bytes fit; called with the lock held."""
        if self.max_bytes is None or self._used + need <= self.max_bytes:
            return []
        if need > self.max_bytes:
            raise StoreFullError(
                f"fast store {self.root}: {need} bytes cannot fit in a {self.max_bytes}-byte limit")
        victims, freed = [], 0
        excess = self._used + need - self.max_bytes
        for key, size in self._index.items():
            if freed >= excess:
                break
            if key in incoming or key in self._staged or self._guard(key):
                continue
            victims.append(key)
            freed += size
        if freed < excess:
            raise StoreFullError(
                f"fast store {self.root} is full: {self._used} of {self.max_bytes} bytes used "
                f"by blobs not yet uploaded; cannot add {need} bytes")
        for key in victims:
            self._used -= self._index.pop(key)
        return victims

    def _unlink_victims(self, victims: list[Pointer]) -> None:
        # No directory fsync: an eviction lost in a crash just leaves a cached blob.
        for key in victims:
            try:
                os.unlink(self.path_for(key))
            except FileNotFoundError:
                pass
