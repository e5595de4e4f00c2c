"""File contents: sealed content-defined chunks plus a local dirty overlay.

A regular file's sealed content is a sorted list of `Extent`s, each one whole
content-defined chunk (pyfastcdc, average ~1 MiB) stored as a blob; gaps
between extents are holes and read as zeros, so sparse files cost nothing.

Writes never touch blobs. They land in a *layer*: memory for small layers, a
sparse local file under the dirty directory for big ones, plus the set of byte
ranges written (`Intervals`) and the
lowest size the file was truncated to while the layer was live. Reading walks
the layers newest first, then the extents. Sealing freezes the layers (new
writes open a fresh layer on top, so writers never wait for a seal), re-chunks
only what changed and swaps the result in:

* Re-chunking of a changed region starts at the boundary of the first extent
  it touches and stops as soon as a CDC cut lands on the start of an untouched
  old extent: from there on FastCDC would cut exactly as before, because each
  cut depends only on the bytes after the previous cut. Inserting one byte at
  the start of a 64 MiB file therefore re-hashes a chunk or two beyond the
  insert; when an application rewrites the whole file the chunks that come out
  are the old ones again and content addressing stores nothing new for them.
* Chunks that are all zeros are not stored: they become holes.
* The CPU work (CDC, hashing, compression, encryption, store writes) runs in
  worker threads, so the trio thread keeps serving requests and both cores
  work; a writer that streams a big file gets it sealed in the background in
  slices (`STREAM_SEAL_BYTES`), so fsync of a 1 GiB file only seals the tail.

Crash policy for the dirty area: unsealed layers are discarded when a mount
starts (`DataManager.discard_leftovers`). The metadata never refers to a dirty
file — extents, size and inode record change together in one atomic MVCC
batch after the chunks are stored — so the file simply reverts to its last
sealed state, like a page cache that was not synced. Everything fsync'ed, closed
or sealed by the idle timer (2 s by default) survives.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pyfastcdc
import trio

log = logging.getLogger(__name__)

CHUNK_AVG = 1 << 20
CHUNK_MIN = 256 << 10
CHUNK_MAX = 4 << 20
# Bytes of content handed to FastCDC at a time while sealing.
CDC_WINDOW = 16 << 20
# A live layer with this many dirty bytes is sealed in the background while
# the writer keeps going.
STREAM_SEAL_BYTES = 64 << 20
# Layers are kept in memory up to this size (see Layer).
MEMORY_LAYER_BYTES = 1 << 20
# Decoded chunks kept in memory for reads.
CHUNK_CACHE_BYTES = 96 << 20
# Chunk uploads (hash + compress + encrypt + store) in flight per seal.
PUT_WORKERS = 2
PUTS_IN_FLIGHT = 2 * CDC_WINDOW // CHUNK_AVG
READ_AHEAD_CHUNKS = 16       # chunks fetched ahead of a sequential read that missed the cache
READ_AHEAD_WORKERS = 8


@dataclass(frozen=True, slots=True)
class Extent:
    """One stored chunk: file bytes [offset, offset+length) are the blob at pointer."""

    offset: int
    length: int
    pointer: bytes

    @property
    def end(self) -> int:
        return self.offset + self.length


class Intervals:
    """Sorted, disjoint, half-open byte ranges; adjacent ranges are merged."""

    __slots__ = ("starts", "ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for a, b in ranges:
            self.add(a, b)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends)

    def copy(self) -> "Intervals":
        c = Intervals()
        c.starts, c.ends = list(self.starts), list(self.ends)
        return c

    def total(self) -> int:
        return sum(b - a for a, b in self)

    def add(self, a: int, b: int) -> None:
        if a >= b:
            return
        # First range whose end >= a (touching ranges merge).
        i = bisect.bisect_left(self.ends, a)
        j = i
        while j < len(self.starts) and self.starts[j] <= b:
            a = min(a, self.starts[j])
            b = max(b, self.ends[j])
            j += 1
        self.starts[i:j] = [a]
        self.ends[i:j] = [b]

    def clip(self, limit: int) -> None:
        """Forget everything at or beyond `limit`."""
        i = bisect.bisect_left(self.ends, limit + 1)
        del self.starts[i + 1:], self.ends[i + 1:]
        if i < len(self.starts):
            if self.starts[i] >= limit:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = limit

    def split(self, a: int, b: int) -> Iterator[tuple[int, int, bool]]:
        """Cover [a, b) with pieces (start, end, inside-a-range)."""
        i = bisect.bisect_right(self.ends, a)
        pos = a
        while pos < b:
            if i < len(self.starts) and self.starts[i] <= pos:
                end = min(b, self.ends[i])
                yield pos, end, True
                i += 1
            else:
                end = min(b, self.starts[i]) if i < len(self.starts) else b
                yield pos, end, False
            pos = end

    def overlaps(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self.ends, a)
        return i < len(self.starts) and self.starts[i] < b


class Layer:
    """Unsealed writes of one file since a point in time (see module doc).

    The bytes live in memory while the layer spans at most MEMORY_LAYER_BYTES
    (small files never cost a file create and unlink), and in a sparse file
    under the dirty directory beyond that.
    """

    __slots__ = ("path", "fd", "mem", "dirty", "trunc", "size", "frozen", "readers", "retired")

    def __init__(self, path: str, size: int):
        self.path = path
        self.fd = -1
        self.mem: bytearray | None = bytearray()
        self.dirty = Intervals()
        self.trunc: int | None = None
        self.size = size
        self.frozen = False
        self.readers = 0          # reads in worker threads using this layer
        self.retired = False

    def pwrite(self, buf: bytes, offset: int) -> int:
        end = offset + len(buf)
        if self.mem is not None and end > MEMORY_LAYER_BYTES:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.pwrite(self.fd, self.mem, 0)
            self.mem = None
        if self.mem is None:
            return os.pwrite(self.fd, buf, offset)
        if end > len(self.mem):
            self.mem.extend(bytes(end - len(self.mem)))
        self.mem[offset:end] = buf
        return len(buf)

    def pread(self, n: int, offset: int) -> bytes:
        if self.mem is None:
            data = os.pread(self.fd, n, offset)
        else:
            data = bytes(self.mem[offset:offset + n])
        if len(data) < n:                 # sparse tail
            data += bytes(n - len(data))
        return data

    def truncate(self, size: int) -> None:
        if self.mem is None:
            os.ftruncate(self.fd, size)
        elif len(self.mem) > size:
            del self.mem[size:]

    def close(self) -> None:
        """Free the layer, or leave that to the last read still using it (a seal
        can finish while a read waits in a worker thread for a chunk)."""
        if self.readers > 0:
            self.retired = True
            return
        self.mem = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class FileData:
    """Content state of one regular file while it is open or dirty."""

    def __init__(self, ino: int, extents: list[Extent], size: int):
        self.ino = ino
        self.extents = extents
        self.size = size              # live size, including unsealed writes
        self.sealed_size = size       # size that goes with `extents` in the store
        self.layers: list[Layer] = []
        self.seal_lock = trio.Lock()
        self.last_write = 0.0
        self.deleted = False
        self._seq = 0

    @property
    def dirty(self) -> bool:
        return bool(self.layers)

    def live_bytes(self) -> int:
        return self.layers[-1].dirty.total() if self.layers and not self.layers[-1].frozen else 0


class ChunkCache:
    """Small thread-safe LRU of decoded chunks, keyed by pointer bytes."""

    def __init__(self, limit: int = CHUNK_CACHE_BYTES):
        self._limit = limit
        self._used = 0
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: bytes, data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._used += len(data)
            while self._used > self._limit and self._items:
                _, old = self._items.popitem(last=False)
                self._used -= len(old)


@dataclass(slots=True)
class SealResult:
    """What a seal changed: the store gets `removed` deleted and `added` put."""

    size: int
    extents: list[Extent]
    removed: list[Extent]
    added: list[Extent]
    new_chunks: int


def _extent_index(extents: list[Extent], pos: int) -> int:
    """Index of the first extent whose end is beyond pos."""
    lo, hi = 0, len(extents)
    while lo < hi:
        mid = (lo + hi) // 2
        if extents[mid].end <= pos:
            lo = mid + 1
        else:
            hi = mid
    return lo


class DataManager:
    """Reads and writes file contents; turns dirty layers into chunks.

    `blobs` is a `BlobStore` (blocking, thread-safe); `dirty_dir` holds the
    layer files of this mount and nothing else.
    """

    def __init__(self, blobs, dirty_dir: str):
        self.blobs = blobs
        self.dirty_dir = dirty_dir
        os.makedirs(dirty_dir, exist_ok=True)
        self.cache = ChunkCache()
        self._pool = concurrent.futures.ThreadPoolExecutor(PUT_WORKERS, thread_name_prefix="vfs-put")
        self._ahead_pool = concurrent.futures.ThreadPoolExecutor(READ_AHEAD_WORKERS,
                                                                 thread_name_prefix="vfs-ahead")
        self._ahead_lock = threading.Lock()
        self._in_flight: dict[bytes, concurrent.futures.Future] = {}
        self._fetched_ahead: set[bytes] = set()
        self._cdc = threading.local()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)

    def discard_leftovers(self) -> int:
        """Delete layer files a crashed mount left behind; returns how many."""
        n = 0
        for name in os.listdir(self.dirty_dir):
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
        layer = Layer(os.path.join(self.dirty_dir, f"{f.ino}.{f._seq}"), f.size)
        f.layers.append(layer)
        return layer

    def write(self, f: FileData, offset: int, buf: bytes) -> int:
        layer = self._live_layer(f)
        n = layer.pwrite(buf, offset)
        layer.dirty.add(offset, offset + n)
        f.size = max(f.size, offset + n)
        layer.size = f.size
        f.last_write = time.monotonic()
        return n

    def truncate(self, f: FileData, size: int) -> list[Extent] | None:
        """Set the file size.

        Returns the extents to delete from the store when the change is pure
        metadata (no chunk is cut); returns None when it went into a layer and
        the file must be sealed later.
        """
        if not f.layers:
            if size >= f.size:
                f.size = f.sealed_size = size
                return []
            i = _extent_index(f.extents, size)
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

    # -- reads ----------------------------------------------------------------

    def _plan(self, layers: list[Layer], level: int, a: int, b: int, out: list) -> None:
        """Append (start, end, source) pieces for [a, b); source is a Layer,
        None for zeros, or "base" for the extents."""
        if level < 0:
            out.append((a, b, "base"))
            return
        layer = layers[level]
        for s, e, inside in layer.dirty.split(a, b):
            if inside:
                out.append((s, e, layer))
            elif layer.trunc is not None and e > layer.trunc:
                if s < layer.trunc:
                    self._plan(layers, level - 1, s, layer.trunc, out)
                out.append((max(s, layer.trunc), e, None))
            else:
                self._plan(layers, level - 1, s, e, out)

    def _chunk_sync(self, pointer: bytes) -> bytes:
        data = self.cache.get(pointer)
        if data is None:
            with self._ahead_lock:
                pending = self._in_flight.get(pointer)
            if pending is not None:
                try:
                    return pending.result()
                except Exception:          # noqa: BLE001 - fetch it ourselves, errors and all
                    pass
            data = self.blobs.get(self._pointer(pointer))
            self.cache.put(pointer, data)
        return data

    def _read_ahead(self, extents: list[Extent], start: int) -> None:
        """Fetch the next chunks in the background.  Called when a read had to go to a
        store (or reached a chunk fetched ahead), so a file read sequentially from
        the slow store — a fresh clone's — costs one round trip per few chunks, not
        one per chunk; reads served from the cache start nothing."""
        with self._ahead_lock:
            for ext in extents[start:start + READ_AHEAD_CHUNKS]:
                p = ext.pointer
                if p in self._in_flight or self.cache.get(p) is not None:
                    continue
                self._in_flight[p] = self._ahead_pool.submit(self._fetch_ahead, p)

    def _fetch_ahead(self, pointer: bytes) -> bytes:
        try:
            data = self.blobs.get(self._pointer(pointer))
            self.cache.put(pointer, data)
            with self._ahead_lock:
                if len(self._fetched_ahead) > 4096:     # read ahead but never read: forget
                    self._fetched_ahead.clear()
                self._fetched_ahead.add(pointer)
            return data
        finally:
            with self._ahead_lock:
                self._in_flight.pop(pointer, None)

    @staticmethod
    def _pointer(raw: bytes):
        from versionfs.blob.pointer import Pointer
        return Pointer.from_bytes(raw)

    def _read_extents_sync(self, extents: list[Extent], a: int, b: int, parts: list) -> None:
        i = _extent_index(extents, a)
        pos = a
        while pos < b:
            if i < len(extents) and extents[i].offset <= pos:
                ext = extents[i]
                end = min(b, ext.end)
                with self._ahead_lock:
                    streaming = ext.pointer in self._fetched_ahead
                    self._fetched_ahead.discard(ext.pointer)
                if streaming or self.cache.get(ext.pointer) is None:
                    self._read_ahead(extents, i + 1)
                data = self._chunk_sync(ext.pointer)
                parts.append(data[pos - ext.offset:end - ext.offset])
                i += 1
            else:
                end = min(b, extents[i].offset) if i < len(extents) else b
                parts.append(bytes(end - pos))
            pos = end

    def _read_sync(self, extents: list[Extent], layers: list[Layer], a: int, b: int) -> bytes:
        """Blocking read of [a, b) through `layers` onto `extents`."""
        pieces: list = []
        self._plan(layers, len(layers) - 1, a, b, pieces)
        return self._read_pieces(extents, pieces)

    def _read_pieces(self, extents: list[Extent], pieces: list) -> bytes:
        """Blocking read of planned (start, end, source) pieces."""
        parts: list[bytes] = []
        for s, e, src in pieces:
            if src is None:
                parts.append(bytes(e - s))
            elif src == "base":
                self._read_extents_sync(extents, s, e, parts)
            else:
                parts.append(src.pread(e - s, s))
        return b"".join(parts)

    def _cached(self, extents: list[Extent], a: int, b: int) -> bool:
        i = _extent_index(extents, a)
        while i < len(extents) and extents[i].offset < b:
            if self.cache.get(extents[i].pointer) is None:
                return False
            i += 1
        return True

    async def read(self, f: FileData, offset: int, size: int) -> bytes:
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        extents = f.extents
        # Plan here on the trio thread: write() changes the live layer's ranges.
        pieces: list = []
        self._plan(f.layers, len(f.layers) - 1, offset, end, pieces)
        # Layers and cached chunks are local and quick: read them here; a chunk
        # that must come from a store is fetched in a worker thread, with the
        # layers it reads pinned so a seal finishing meanwhile cannot free them.
        if not any(src == "base" for _, _, src in pieces) or self._cached(extents, offset, end):
            return self._read_pieces(extents, pieces)
        pinned = list({id(src): src for _, _, src in pieces if isinstance(src, Layer)}.values())
        for layer in pinned:
            layer.readers += 1
        try:
            return await trio.to_thread.run_sync(self._read_pieces, extents, pieces)
        finally:
            for layer in pinned:
                layer.readers -= 1
                if layer.retired:
                    layer.close()

    async def read_extents(self, extents: list[Extent], size: int, offset: int, size_req: int) -> bytes:
        """Read sealed content only (snapshot views)."""
        end = min(offset + size_req, size)
        if offset >= end:
            return b""
        if self._cached(extents, offset, end):
            return self._read_sync(extents, [], offset, end)
        return await trio.to_thread.run_sync(self._read_sync, extents, [], offset, end)

    # -- sealing --------------------------------------------------------------

    async def seal(self, f: FileData, persist: Callable[[FileData, SealResult], None]) -> bool:
        """Turn all current layers of `f` into chunks.

        `persist(f, result)` is called on the trio thread after the chunks are
        stored and must write the change to the metadata store atomically.
        Returns True when something was sealed.
        """
        async with f.seal_lock:
            if not f.layers or f.deleted:
                return False
            layers = list(f.layers)
            for layer in layers:
                layer.frozen = True
            result = await trio.to_thread.run_sync(self._seal_sync, f.extents, layers)
            if not f.deleted:
                persist(f, result)
                f.extents = result.extents
                f.sealed_size = result.size
            del f.layers[:len(layers)]
            for layer in layers:
                layer.close()
            return True

    async def seal_small(self, files: list[FileData],
                         persist: Callable[[list[tuple[FileData, SealResult]]], None]) -> int:
        """Seal many small files (each at most one chunk) in one go.

        A file no bigger than CHUNK_MIN is exactly one CDC chunk, so no cut is
        needed: the contents of all files are stored with one `put_many` (one
        round of fsyncs) and `persist` writes all results in one MVCC batch.
        Files that are busy or too big are left for `seal`. Returns how many
        files were sealed.
        """
        taken: list[FileData] = []
        for f in files:
            if f.layers and not f.deleted and f.size <= CHUNK_MIN and not f.seal_lock.locked():
                f.seal_lock.acquire_nowait()
                taken.append(f)
        if not taken:
            return 0
        try:
            frozen = []
            for f in taken:
                layers = list(f.layers)
                for layer in layers:
                    layer.frozen = True
                frozen.append((f, f.extents, layers))
            results = await trio.to_thread.run_sync(self._seal_small_sync, frozen)
            persist([(f, r) for (f, _, _), r in zip(frozen, results) if not f.deleted])
            for (f, _, layers), r in zip(frozen, results):
                if not f.deleted:
                    f.extents = r.extents
                    f.sealed_size = r.size
                del f.layers[:len(layers)]
                for layer in layers:
                    layer.close()
        finally:
            for f in taken:
                f.seal_lock.release()
        return len(taken)

    def _seal_small_sync(self, frozen) -> list[SealResult]:
        contents = []
        for _, extents, layers in frozen:
            size = layers[-1].size
            data = self._read_sync(extents, layers, 0, size) if size else b""
            contents.append(None if not data or data == bytes(len(data)) else data)
        pointers = iter(self._put_many([c for c in contents if c is not None]))
        self._barrier()
        results = []
        for (_, extents, layers), data in zip(frozen, contents):
            new = [] if data is None else [Extent(0, len(data), next(pointers).bytes)]
            if data is not None:
                self.cache.put(new[0].pointer, data)
            old = set(extents)
            results.append(SealResult(layers[-1].size, new, [e for e in extents if e not in set(new)],
                                      [e for e in new if e not in old],
                                      len({e.pointer for e in new} - {e.pointer for e in extents})))
        return results

    def drop(self, f: FileData) -> None:
        """Forget a deleted file's layers."""
        f.deleted = True
        if not f.seal_lock.locked():
            for layer in f.layers:
                layer.close()
            f.layers.clear()

    def _seal_sync(self, extents: list[Extent], layers: list[Layer]) -> SealResult:
        size = layers[-1].size
        # Where base content is still visible: below every truncation point.
        tmin = min((l.trunc for l in layers if l.trunc is not None), default=None)
        visible = Intervals()
        base_limit = size if tmin is None else min(tmin, size)
        for e in extents:
            if e.offset >= base_limit:
                break
            visible.add(e.offset, min(e.end, base_limit))
        touched = Intervals()       # positions whose content may differ from base
        for i, layer in enumerate(layers):
            limit = min((l.trunc for l in layers[i + 1:] if l.trunc is not None), default=size)
            for a, b in layer.dirty:
                b = min(b, limit, size)
                if a < b:
                    visible.add(a, b)
                    touched.add(a, b)
        clean = [e for e in extents
                 if e.end <= base_limit and not touched.overlaps(e.offset, e.end)]
        clean_starts = {e.offset: e for e in clean}
        clean_ends = {e.end: e for e in clean}
        base_starts = {e.offset for e in extents}
        dropped: set[Extent] = set()
        rechunked = Intervals()     # ranges the new chunks cover
        futures: list[tuple[int, int, concurrent.futures.Future]] = []
        cdc = self._chunker()

        def read(a, b):
            return self._read_sync(extents, layers, a, b)

        for ra, rb in visible:
            pos = ra
            while pos < rb:
                ext = clean_starts.get(pos)
                if ext is not None:         # untouched chunk: keep it
                    pos = ext.end
                    continue
                start = pos
                # A chunk that ended where its data ended (an append point) was
                # cut by end-of-data, not by content: re-chunk it with the new
                # bytes so appends produce the same chunks as one big write.
                prev = clean_ends.get(start)
                if prev is not None and start not in base_starts and prev.offset >= ra:
                    dropped.add(prev)
                    start = prev.offset
                pos = self._rechunk(cdc, read, start, rb, clean_starts, futures)
                rechunked.add(start, pos)
        added: list[Extent] = []
        for off, length, fut in futures:
            ptr = fut.result()
            if ptr is not None:             # all-zero chunks become holes
                added.append(Extent(off, length, ptr))
        self._barrier()                     # chunks durable before the caller persists
        old_set = set(extents)
        # Re-chunking stops early only where a cut lands on a clean extent's
        # start; a clean extent it ran over is replaced by the new chunks.
        kept = [e for e in clean if e not in dropped and not rechunked.overlaps(e.offset, e.end)]
        result_exts = sorted(kept + added, key=lambda e: e.offset)
        result_set = set(result_exts)
        removed = [e for e in extents if e not in result_set]
        added = [e for e in added if e not in old_set]
        old_ptrs = {e.pointer for e in extents}
        new_chunks = len({e.pointer for e in added} - old_ptrs)
        return SealResult(size, result_exts, removed, added, new_chunks)

    def _chunker(self) -> pyfastcdc.FastCDC:
        cdc = getattr(self._cdc, "cdc", None)
        if cdc is None:
            cdc = self._cdc.cdc = pyfastcdc.FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
        return cdc

    def _rechunk(self, cdc, read, start: int, stop: int, clean_starts: dict, futures: list) -> int:
        """Chunk [start, ...) until a cut re-aligns with a clean extent or `stop`.

        Returns the position where chunking stopped.
        """
        pos = start
        pending: list[concurrent.futures.Future] = []
        while pos < stop:
            wend = min(stop, pos + CDC_WINDOW)
            buf = read(pos, wend)
            chunks = list(cdc.cut_buf(buf))
            if wend < stop and len(chunks) > 1:
                chunks.pop()          # the last cut was forced by the window end
            for ch in chunks:
                data = bytes(ch.data)
                off = pos + ch.offset
                fut = self._pool.submit(self._store_chunk, data)
                futures.append((off, ch.length, fut))
                pending.append(fut)
                end = off + ch.length
                if end in clean_starts:
                    return end
            pos = pos + chunks[-1].offset + chunks[-1].length
            # Bound memory (about two windows of chunks in flight) without draining
            # the queue: the put workers keep working while the next window is read.
            pending = [fu for fu in pending if not fu.done()]
            if len(pending) > PUTS_IN_FLIGHT:
                concurrent.futures.wait(pending[:len(pending) - PUTS_IN_FLIGHT // 2])
        return stop

    def _store_chunk(self, data: bytes) -> bytes | None:
        """Store one chunk; its pointer bytes, or None for an all-zero chunk."""
        if (data[:1] == b"\0" and data[-1:] == b"\0") and data == bytes(len(data)):
            return None
        put = getattr(self.blobs, "put_deferred", None) or self.blobs.put
        raw = put(data).bytes
        self.cache.put(raw, data)
        return raw

    # Chunks are stored without waiting for them to be durable; one barrier per
    # seal (a batch of fsyncs side by side) makes them durable before the seal
    # returns, so the metadata that refers to them is written after they are safe.
    def _put_many(self, contents: list[bytes]) -> list:
        put = getattr(self.blobs, "put_many_deferred", None) or self.blobs.put_many
        return put(contents)

    def _barrier(self) -> None:
        barrier = getattr(self.blobs, "barrier", None)
        if barrier is not None:
            barrier()
