"""Garbage collection: delete blobs nothing can read any more.

What is live.  A blob is live if any of these refers to it:

* an extent version some retained snapshot or the head revision sees
  (``MVCCStore.versions(b"E", b"F", retained_only=True)``: one pass over the
  stored versions, not one walk of the tree per snapshot);
* an open file's extents and an open snapshot file's extents in the running
  daemon (the caller passes them as ``live``);
* an upload still pending in the Paired store's journal (never deleted: the
  seal that put it may not have written its metadata yet);
* a put or ``note_live`` made while this collection runs (see the race below).

Unsealed ("dirty") data is local layer files, not blobs, so it needs nothing.

What may be garbage.  The candidates are the blobs known to exist minus the
live ones.  "Known to exist" is a local index (``STATE_DIR/gc/known-blobs``)
so a collection never has to list the bucket: it is seeded once by listing
the slow store (the first collection, or ``--full``), and every collection
adds what it learns locally - every stored extent version *before* compaction
(so versions that only a now-forgotten snapshot could see are learnt just
before they become garbage), every blob in the fast store, every pending
upload - and removes what it deleted.  A blob written and superseded in the
same revision and already evicted from the fast store can escape the index;
it stays in the bucket (wasted space, never lost data) until ``gc --full``.

Deletion goes through ``Paired.delete``: slow store first, then fast, so a
concurrent read cannot copy the blob back into fast between the two.

The race with writers, and how it is designed out.  Content addressing
dedups: a seal that produces a chunk which already exists "puts" it (a no-op
for the bytes) and then writes extents pointing at it.  If that chunk were
referenced only by a forgotten snapshot, a collector that marked before the
extent was written and deletes after the put would destroy live data.  So:

1. The data path writes blobs through a ``GCGuard`` wrapped around its store.
   ``begin()`` opens a GC epoch; from then on every put (new or deduplicated)
   and every ``note_live`` records the pointer in the epoch's *recent* set.
2. Before marking, the daemon waits until every seal that was already running
   when the epoch opened has finished (``VersionFS.seal_all`` takes each
   file's seal lock in turn).  Such a seal did its puts before the epoch, but
   its extents are in the metadata before marking starts, so they are marked.
   Any seal that runs later does its puts inside the epoch, so they are recorded.
3. Sweeping deletes a candidate only if, under the guard's lock, it is not in
   the recent set, and marks it "being deleted"; a put of that pointer waits
   until the deletion is over and then writes the blob again (the writer has
   the bytes), so a put never returns while its blob is being removed.

Code that makes a blob live without putting it (e.g. a restore that copies
extent records from a snapshot) must write those records inside
``with referencing(blobstore, pointers):``; ``begin()`` waits for such
writes in flight, so each one either lands before marking or is noted in the
epoch. While no collection runs it costs nothing.  Offline
(``versionfs gc --state``) the state dir's lock keeps every writer out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import crc32c
import msgpack

from versionfs.blob.pointer import Pointer, as_pointer
from versionfs.blob.store import Buffer, Store
from versionfs.tree import schema

__all__ = ["GCGuard", "KnownBlobIndex", "GCResult", "GCError", "collect_garbage",
           "extent_pointers", "note_live", "referencing", "index_path_for", "fast_copy_size"]

log = logging.getLogger(__name__)

EXTENTS_START, EXTENTS_END = b"E", b"F"       # schema: b"E" ino offset -> [length, pointer(, skip)]
DELETE_WORKERS = 4          # batches in flight
DELETE_BATCH = 250          # blobs per batch (S3 DeleteObjects takes up to 1000)


class GCError(Exception):
    """A collection could not run or finish; ``str()`` says why."""


# --- references -------------------------------------------------------------------

def extent_pointers(meta: Any, *, retained_only: bool = True) -> set[bytes]:
    """Raw pointers of the stored extent versions (see MVCCStore.versions).

    An extent record that does not decode to ``[length, 32-byte pointer]``
    (or ``[..., skip]``: a partial extent uses its chunk like a whole one)
    is a GCError naming it: the blob it refers to cannot be known, so any
    blob might be live, and a collection that skipped it could delete data
    the damaged record still needs.  gc refuses to run until fsck has dealt
    with it.
    """
    refs: set[bytes] = set()
    for key, rev, value in meta.versions(EXTENTS_START, EXTENTS_END, retained_only=retained_only):
        if value is None:
            continue
        try:
            _offset, length, pointer, _skip = schema.unpack_extent(key, value)
        except (ValueError, TypeError, struct.error, msgpack.UnpackException) as exc:
            raise GCError(_damaged(key, rev, value, f"does not decode ({exc})")) from None
        if not isinstance(pointer, bytes) or len(pointer) != 32 or not isinstance(length, int):
            raise GCError(_damaged(key, rev, value, "is not [length, 32-byte pointer, skip]"))
        refs.add(pointer)
    return refs


def _damaged(key: bytes, rev: int, value: bytes, what: str) -> str:
    where = (f"inode {schema.from_u64(key[1:9])} offset {schema.from_u64(key[9:17])}"
             if len(key) == 17 else f"key {key.hex()}")
    return (f"extent record of {where} at revision {rev} {what}: {value[:40].hex()}; gc "
            f"refuses to run, since it cannot tell which blob that record needs. Run "
            f"`versionfs fsck` on the unmounted state dir")


# --- the guard in the data path ---------------------------------------------------

class GCGuard(Store):
    """A Store wrapper that lets a collection run alongside writers (module doc).

    Delegates everything to ``inner``; only puts, ``note_live`` and the
    collector's deletes take its lock.
    """

    def __init__(self, inner: Store):
        self.inner = inner
        self._cond = threading.Condition()
        self._epoch_open = False
        self._recent: set[bytes] = set()
        self._deleting: set[bytes] = set()
        self.running = threading.Lock()         # one collection at a time
        self._referencing = 0                   # writers inside referencing()

    @classmethod
    def install(cls, blobstore: Any) -> "GCGuard":
        """Wrap ``blobstore.store`` (a BlobStore's) in a guard, once; returns the guard.

        Installing while writers run is safe: a put through the old store object
        belongs to a seal that started before the epoch, which the daemon waits
        for before marking (step 2 of the module doc).
        """
        store = blobstore.store
        if isinstance(store, cls):
            return store
        guard = cls(store)
        blobstore.store = guard
        return guard

    # epoch
    def begin(self) -> None:
        with self._cond:
            if self._epoch_open:
                raise GCError("a garbage collection is already running")
            # A writer inside referencing() either finishes its metadata write
            # before the epoch opens (so marking sees it) or notes its pointers
            # inside the epoch: there is no gap between the two.
            self._cond.wait_for(lambda: self._referencing == 0)
            self._epoch_open = True
            self._recent = set()

    @contextlib.contextmanager
    def referencing(self, pointers: Iterable[Any]):
        """Around a metadata write that references existing blobs without a put."""
        with self._cond:
            self._referencing += 1
        try:
            self.note_live(pointers)
            yield
        finally:
            with self._cond:
                self._referencing -= 1
                self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._epoch_open = False
            self._recent = set()

    def note_live(self, pointers: Iterable[Any]) -> None:
        """These blobs just became referenced without a put: keep them this epoch."""
        with self._cond:
            if self._epoch_open:
                self._recent.update(as_pointer(p).bytes for p in pointers)

    def recent(self) -> set[bytes]:
        with self._cond:
            return set(self._recent)

    def delete_unless_recent(self, keys: Iterable[Pointer],
                             delete: Callable[[list[Pointer]], Any] | None = None) -> list[Pointer]:
        """Delete the keys not put or noted live this epoch (one batch); returns
        those. ``delete`` replaces ``inner.delete_many``; when it returns a
        list, that is what it deleted."""
        with self._cond:
            doomed = [k for k in keys if k.bytes not in self._recent]
            self._deleting.update(k.bytes for k in doomed)
        try:
            if doomed:
                done = (delete or self.inner.delete_many)(doomed)
                if done is not None:
                    return list(done)
        finally:
            with self._cond:
                self._deleting.difference_update(k.bytes for k in doomed)
                self._cond.notify_all()
        return doomed

    # Store
    def _record(self, keys: list[bytes]) -> None:
        with self._cond:
            if self._epoch_open:
                self._recent.update(keys)
            self._cond.wait_for(lambda: not self._deleting.intersection(keys))

    def put(self, key: Pointer, data: Buffer) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        items = [(as_pointer(k), d) for k, d in items]
        self._record([k.bytes for k, _ in items])
        self.inner.put_many(items)

    def put_many_deferred(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        items = [(as_pointer(k), d) for k, d in items]
        self._record([k.bytes for k, _ in items])
        getattr(self.inner, "put_many_deferred", self.inner.put_many)(items)

    def get(self, key: Pointer) -> bytes:
        return self.inner.get(key)

    def delete(self, key: Pointer) -> None:
        self.inner.delete(key)

    def contains(self, key: Pointer) -> bool:
        return self.inner.contains(key)

    def enumerate(self) -> Iterator[Pointer]:
        return self.inner.enumerate()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # refetch, is_pending, flush, status, fast, slow ... of the wrapped Paired.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def note_live(blobstore: Any, pointers: Iterable[Any]) -> None:
    """For writers that reference existing blobs without putting them (module doc)."""
    store = getattr(blobstore, "store", None)
    if isinstance(store, GCGuard):
        store.note_live(pointers)


def referencing(blobstore: Any, pointers: Iterable[Any]):
    """Context manager around a metadata write that makes existing blobs live
    without putting them (a restore copying extents): safe against a concurrent
    collection whenever the write happens (module doc)."""
    store = getattr(blobstore, "store", None)
    if isinstance(store, GCGuard):
        return store.referencing(pointers)
    return contextlib.nullcontext()


# --- the index of blobs known to exist ----------------------------------------------

_MAGIC = b"versionfs-known-blobs/1\n"
_HEADER = struct.Struct(">QI")          # count, crc32c of the pointer bytes


def index_path_for(meta: Any) -> Path:
    """``STATE_DIR/gc/known-blobs`` for the metadata store at ``STATE_DIR/meta``."""
    return Path(meta.dir).parent / "gc" / "known-blobs"


class KnownBlobIndex:
    """Sorted raw pointers in one checksummed file, replaced atomically.

    A lost or damaged index only costs one listing of the slow store.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> set[bytes] | None:
        """The known blobs, or None when there is no usable index."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        n = len(_MAGIC) + _HEADER.size
        if not data.startswith(_MAGIC) or len(data) < n:
            log.warning("%s is not a known-blobs index; rebuilding it from a listing", self.path)
            return None
        count, crc = _HEADER.unpack_from(data, len(_MAGIC))
        body = data[n:]
        if len(body) != 32 * count or crc32c.crc32c(body) != crc:
            log.warning("%s is damaged; rebuilding it from a listing", self.path)
            return None
        return {body[i:i + 32] for i in range(0, len(body), 32)}

    def save(self, known: Iterable[bytes]) -> None:
        body = b"".join(sorted(known))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC + _HEADER.pack(len(body) // 32, crc32c.crc32c(body)) + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --- the collection ---------------------------------------------------------------------

@dataclass
class GCResult:
    dry_run: bool
    listed_slow_store: bool = False
    known: int = 0
    live: int = 0
    pending: int = 0
    candidates: int = 0
    deleted: int = 0
    kept_recent: int = 0
    failed: int = 0
    first_error: str | None = None
    fast_bytes_freed: int = 0
    versions_dropped: int = 0
    seconds: float = 0.0
    deleted_pointers: list[str] = field(default_factory=list, repr=False)

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"known blobs: {self.known}" + (" (slow store listed)" if self.listed_slow_store else ""),
               f"live blobs: {self.live}",
               f"pending uploads kept: {self.pending}",
               f"{verb}: {self.candidates if self.dry_run else self.deleted} blob(s)"]
        if not self.dry_run:
            out += [f"fast store bytes freed: {self.fast_bytes_freed}",
                    f"kept (written during gc): {self.kept_recent}",
                    f"metadata versions compacted: {self.versions_dropped}"]
        if self.failed:
            out.append(f"failed: {self.failed} (first error: {self.first_error})")
        out.append(f"seconds: {self.seconds:.2f}")
        return out


def fast_copy_size(paired: Any, key: Pointer) -> int:
    """Bytes the fast store holds for ``key`` (0 when absent or unknown)."""
    fast_path = getattr(paired.fast, "path_for", None)
    try:
        return os.stat(fast_path(key)).st_size if fast_path is not None else 0
    except OSError:
        return 0


def _pointers(it: Iterable[Any]) -> set[bytes]:
    return {as_pointer(p).bytes for p in it}


def collect_garbage(meta: Any, paired: Any, index_path: str | os.PathLike[str], *,
                    guard: GCGuard | None = None, live: Iterable[bytes] = (),
                    full: bool = False, dry_run: bool = False,
                    progress: bool = False, workers: int = DELETE_WORKERS) -> GCResult:
    """One collection (blocking).  ``paired`` is the Paired store; ``guard`` the
    GCGuard the data path writes through, with its epoch already open (None when
    nothing else can write, i.e. offline).  See the module doc."""
    from tqdm import tqdm
    t0 = time.monotonic()
    result = GCResult(dry_run=dry_run)
    index = KnownBlobIndex(index_path)
    # Learn everything stored, including versions only forgotten snapshots see.
    seen = extent_pointers(meta, retained_only=False)
    live_set = extent_pointers(meta, retained_only=True) | set(live)
    known = None if full else index.load()
    if known is None:
        result.listed_slow_store = True
        known = set()
        with tqdm(desc="gc: listing slow store", unit=" blobs", disable=not progress) as bar:
            for p in paired.slow.enumerate():
                known.add(p.bytes)
                bar.update()
    known |= seen
    known |= _pointers(paired.fast.enumerate())
    is_pending = paired.is_pending
    candidates = []
    for raw in known:
        if raw in live_set:
            continue
        if is_pending(Pointer.from_bytes(raw)):
            result.pending += 1
            continue
        candidates.append(raw)
    candidates.sort()
    result.known, result.live, result.candidates = len(known), len(live_set), len(candidates)
    if dry_run:
        result.seconds = time.monotonic() - t0
        return result
    result.versions_dropped = meta.compact()
    deleted = _sweep(paired, guard, candidates, result, progress, workers)
    index.save(known - deleted)
    result.seconds = time.monotonic() - t0
    return result


def _sweep(paired: Any, guard: GCGuard | None, candidates: list[bytes], result: GCResult,
           progress: bool, workers: int) -> set[bytes]:
    """Delete in batches (one S3 DeleteObjects request each), a few batches at a time."""
    from tqdm import tqdm

    def delete_batch(raws: list[bytes]) -> tuple[list[bytes], int]:
        keys = [Pointer.from_bytes(raw) for raw in raws]
        sizes = {k.bytes: fast_copy_size(paired, k) for k in keys}
        if guard is not None:
            done = guard.delete_unless_recent(keys)
        else:
            paired.delete_many(keys)
            done = keys
        return [k.bytes for k in done], sum(sizes[k.bytes] for k in done)

    deleted: set[bytes] = set()
    batches = [candidates[i:i + DELETE_BATCH] for i in range(0, len(candidates), DELETE_BATCH)]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="vfs-gc") as pool, \
            tqdm(total=len(candidates), desc="gc: deleting", unit=" blobs",
                 disable=not progress) as bar:
        futures = {pool.submit(delete_batch, raws): raws for raws in batches}
        for fut in as_completed(futures):
            raws = futures[fut]
            bar.update(len(raws))
            try:
                done, freed = fut.result()
            except Exception as exc:        # noqa: BLE001 - counted, reported, retried next time
                result.failed += len(raws)
                result.first_error = result.first_error or f"{raws[0].hex()}...: {exc}"
                continue
            deleted.update(done)
            result.fast_bytes_freed += freed
            result.kept_recent += len(raws) - len(done)
    result.deleted = len(deleted)
    return deleted
