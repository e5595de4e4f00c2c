"""File contents: sealed content-defined chunks plus a local dirty overlay.

A regular file's sealed content is a sorted list of `Extent`s, each a
content-defined chunk (pyfastcdc, average ~1 MiB, keyed when encrypted), or
the bytes of an append, stored as a blob (sealing.py); gaps between extents
are holes and read as zeros, so sparse files cost nothing.

Writes never touch blobs: they land in the file's dirty layers (layers.py).
Reading walks the layers newest first, then the extents (reading.py). Sealing
freezes the layers (new writes open a fresh layer on top, so writers never
wait for a seal), re-chunks only what changed in a worker thread (sealing.py)
and swaps the result in. A writer that streams a big file gets it sealed in
the background in slices of more than `STREAM_SEAL_BYTES`; fsync never waits
for a seal (durability.py journals a big dirty area where it is). `DataManager`
is the whole data path; this module holds its trio-thread side: a file's
layers and extents change only here.

Crash policy for the dirty area: unsealed layers are discarded when a mount
starts (`DataManager.discard_leftovers`), except the layer files the dirty
journal names (a big fsync's L records), which replay adopts. The metadata never refers to a dirty
file — extents, size and inode record change together in one atomic MVCC
batch after the chunks are stored — so the file reverts to its last sealed
state, like a page cache that was not synced, and then gets back what fsync
put in the dirty journal (journal.py, replayed by durability.py). Everything
fsynced or sealed survives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Callable

import trio

from .extents import Extent, extent_index
from .layers import FileData, Layer, LayerMemory
from .reading import CHUNK_CACHE_BYTES
from .sealing import CHUNK_MIN, SealResult, Sealer

log = logging.getLogger(__name__)

# A live layer with more dirty bytes than this is sealed in the background
# while the writer keeps going. It bounds the dirty area of one streaming writer
# (about twice this on disk: one slice sealing, the next filling) without
# making a writer that stops below it wait for seals: fsync makes a big
# dirty area durable where it is (durability.py), sealing follows.
STREAM_SEAL_BYTES = 1 << 30

# For tests only: while the file this names exists, a seal that has stored its
# chunks waits before it persists them, having created NAME.reached, so a test
# can change the file meanwhile; deleting NAME.reached lets that seal go on
# (the next one creates it again), deleting NAME lets every seal go on. Read
# once, when the DataManager is made: unset, a seal does not even look.
SEAL_PAUSE_ENV = "VERSIONFS_TEST_SEAL_PAUSE"


@dataclass(slots=True)
class KeptFile:
    """A layer file the dirty journal's L record `index` (None until logged)
    refers to; `closed` once its layer is gone (sealed or dropped)."""

    name: str
    ino: int
    index: int | None = None
    closed: bool = False


class DataManager(Sealer):
    """Reads and writes file contents; turns dirty layers into chunks.

    `blobs` is a `BlobStore` (blocking, thread-safe); `dirty_dir` holds the
    layer files of this mount and nothing else; `chunking_seed` keys the
    chunker (`Codec.chunking_seed()`: None on unencrypted filesystems).
    """

    def __init__(self, blobs, dirty_dir: str, journal_index: Callable[[], int] = lambda: -1,
                 chunking_seed: int | None = None, cache_bytes: int = CHUNK_CACHE_BYTES):
        self.dirty_dir = dirty_dir
        os.makedirs(dirty_dir, exist_ok=True)
        # The dirty journal's newest index; a seal records it at freeze time.
        self.journal_index = journal_index
        # Layer files of mounts that share this directory are told apart by a tag.
        self._tag = secrets.token_hex(4)
        # Layer files an fsync's L record refers to: deleted once closed and a
        # durable seal covers the record (durability.py).
        self.kept_files: list[KeptFile] = []
        self._seal_pause = os.environ.get(SEAL_PAUSE_ENV) or None       # tests only
        self.layer_memory = LayerMemory()
        super().__init__(blobs, chunking_seed, cache_bytes)

    def discard_leftovers(self, keep: set[str] = frozenset()) -> int:
        """Delete layer files a crashed mount left behind, except those named in
        `keep` (the dirty journal still refers to them); returns how many."""
        n = 0
        for name in os.listdir(self.dirty_dir):
            if name in keep:
                continue
            try:
                os.unlink(os.path.join(self.dirty_dir, name))
                n += 1
            except (IsADirectoryError, FileNotFoundError):
                pass
        if n:
            log.warning("discarded %d unsealed dirty file(s) left by an unclean shutdown", n)
        return n

    # -- writes ---------------------------------------------------------------

    def _live_layer(self, f: FileData) -> Layer:
        if f.layers and not f.layers[-1].frozen:
            return f.layers[-1]
        f._seq += 1
        layer = Layer(os.path.join(self.dirty_dir, f"{f.ino}.{self._tag}.{f._seq}"), f.size,
                      self.layer_memory)
        f.layers.append(layer)
        return layer

    def adopt_layer(self, f: FileData, name: str, size: int, ranges, index: int) -> None:
        """Put a layer file an fsync left (the journal's L record `index`) back on
        top of `f`, frozen, as replay found it."""
        if f.layers:
            f.layers[-1].frozen = True
        layer = Layer.adopt(os.path.join(self.dirty_dir, name), size, ranges)
        self.keep_file(layer, f.ino).index = index
        f.layers.append(layer)
        f.size = size
        f.last_write = time.monotonic()

    def keep_file(self, layer: Layer, ino: int) -> "KeptFile":
        """The journal is about to refer to `layer`'s file: it outlives the layer
        until a durable seal covers the record (its `index`, once logged)."""
        kept = KeptFile(os.path.basename(layer.path), ino)
        self.kept_files.append(kept)
        layer.keep = kept
        return kept

    def write(self, f: FileData, offset: int, buf: bytes) -> int:
        layer = self._live_layer(f)
        n = layer.pwrite(buf, offset)
        layer.dirty.add(offset, offset + n)
        f.unsynced.add(offset, offset + n)
        f.size = max(f.size, offset + n)
        layer.size = f.size
        f.last_write = time.monotonic()
        return n

    def truncate(self, f: FileData, size: int, metadata_only: bool = True) -> list[Extent] | None:
        """Set the file size.

        Returns the extents to delete from the store when the change is pure
        metadata (no chunk is cut); returns None when it went into a layer and
        the file must be sealed later. `metadata_only=False` always takes the
        layer: the caller must keep the change in order with the dirty journal.
        """
        f.unsynced.clip(size)
        f.unsynced_trunc = size if f.unsynced_trunc is None else min(f.unsynced_trunc, size)
        if not f.layers and metadata_only:
            if size >= f.size:
                f.size = f.sealed_size = size
                return []
            i = extent_index(f.extents, size)
            if i == len(f.extents) or f.extents[i].offset >= size:
                removed = f.extents[i:]
                f.extents = f.extents[:i]
                f.size = f.sealed_size = size
                return removed
        layer = self._live_layer(f)
        layer.dirty.clip(size)
        layer.trunc = size if layer.trunc is None else min(layer.trunc, size)
        layer.truncate(size)
        f.size = layer.size = size
        f.last_write = time.monotonic()
        return None

    # -- sealing --------------------------------------------------------------

    async def seal(self, f: FileData, persist: Callable[[FileData, SealResult], None],
                   merge_small: bool = False) -> bool:
        """Turn all current layers of `f` into chunks; with `merge_small`, also
        re-chunk its `merge_ranges` (sealing.py), even if it has no layers.

        `persist(f, result)` is called on the trio thread after the chunks are
        stored and must write the change to the metadata store atomically;
        also when `f` was deleted meanwhile (`f.deleted`), so that it queues
        the chunks no extent will name for reclamation. Returns True when
        something was sealed.
        """
        async with f.seal_lock:
            # The freeze and the persist never fall between an fsync's take of
            # what it journals and the logging of its record (`sync_lock`):
            # which records the seal holds is known when it persists them
            # (FileData.journaled).
            async with f.sync_lock:
                if not (f.layers or merge_small) or f.deleted:
                    self._close_if_dropped(f)
                    return False
                layers = list(f.layers)
                for layer in layers:
                    layer.frozen = True
                f.freeze_unsynced(self.journal_index())
            size = layers[-1].size if layers else f.sealed_size
            stored = False
            try:
                result = await trio.to_thread.run_sync(self.seal_layers, f.extents, layers,
                                                       size, merge_small)
                if self._seal_pause is not None:
                    await _test_pause(self._seal_pause)
                async with f.sync_lock:
                    result.covered = f.seal_covers
                    persist(f, result)
                if not f.deleted:
                    f.extents = result.extents
                    f.sealed_size = result.size
                stored = True
            finally:
                f.seal_ended(stored)
                if not stored:
                    self._close_if_dropped(f)
            del f.layers[:len(layers)]
            for layer in layers:
                layer.close()
            self._close_if_dropped(f)
            return True

    async def seal_small(self, files: list[FileData],
                         persist: Callable[[list[tuple[FileData, SealResult]]], None]) -> int:
        """Seal many small files (each at most one chunk) in one go.

        A file no bigger than CHUNK_MIN is exactly one CDC chunk, so no cut is
        needed: the contents of all files are stored with one `put_many` (one
        round of fsyncs) and `persist` writes all results in one MVCC batch.
        Files that are busy or too big are left for `seal`, and so are files
        with stored extents: `seal` stores only what changed (an append to a
        small log costs the appended bytes, not the file). Returns how many
        files were sealed.
        """
        taken: list[FileData] = []
        for f in files:
            # Not in an fsync (`seal` says why): frozen below with no await between.
            if (f.layers and not f.deleted and f.size <= CHUNK_MIN and not f.extents
                    and not f.seal_lock.locked() and not f.sync_lock.locked()):
                f.seal_lock.acquire_nowait()
                taken.append(f)
        if not taken:
            return 0
        stored = False
        try:
            frozen = []
            covered = self.journal_index()
            for f in taken:
                layers = list(f.layers)
                for layer in layers:
                    layer.frozen = True
                f.freeze_unsynced(covered)
                frozen.append((f, f.extents, layers))
            results = await trio.to_thread.run_sync(self.seal_small_layers, frozen)
            async with contextlib.AsyncExitStack() as fsyncs_held_off:
                for f, r in zip(taken, results):
                    await fsyncs_held_off.enter_async_context(f.sync_lock)
                    r.covered = f.seal_covers
                persist([(f, r) for (f, _, _), r in zip(frozen, results)])
            stored = True
            for (f, _, layers), r in zip(frozen, results):
                if not f.deleted:
                    f.extents = r.extents
                    f.sealed_size = r.size
                del f.layers[:len(layers)]
                for layer in layers:
                    layer.close()
        finally:
            for f in taken:
                f.seal_ended(stored)
                self._close_if_dropped(f)
                f.seal_lock.release()
        return len(taken)

    def drop(self, f: FileData) -> None:
        """Forget a deleted file's layers; a seal running on it closes them
        when it ends (`_close_if_dropped`)."""
        f.deleted = True
        if not f.seal_lock.locked():
            self._close_if_dropped(f)

    @staticmethod
    def _close_if_dropped(f: FileData) -> None:
        """Close every layer of a deleted file, those written while a seal ran
        included (left open, their layer files would outlive the mount)."""
        if f.deleted:
            for layer in f.layers:
                layer.close()
            f.layers.clear()


async def _test_pause(path: str) -> None:
    """The test hook of `SEAL_PAUSE_ENV`."""
    if os.path.exists(path):
        reached = path + ".reached"
        open(reached, "w").close()
        while os.path.exists(path) and os.path.exists(reached):
            await trio.sleep(0.05)
