"""Reading file contents: sealed chunks through a cache, under the dirty layers.

A read is planned on the trio thread over the file's layers (`plan_read`);
what the layers do not cover comes from the extents. Layers and cached chunks
are local and quick and are read right there; a chunk that must come from a
store is fetched in a worker thread, which also starts read-ahead of the next
chunks (`ChunkReader._read_ahead`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time

import trio

from versionfs.common.memory import give_back_free_memory

from .extents import Extent, extent_index
from .layers import FileData, Layer, plan_read

# Decoded chunks kept in memory for reads (config mount.read_cache_bytes; part
# of the daemon's memory budget, common/memory.py).
CHUNK_CACHE_BYTES = 64 << 20
# The cache is emptied after this long unused (mount.read_cache_idle_seconds), so
# an idle daemon holds little; the kernel's page cache still has hot files.
CACHE_IDLE_SECONDS = 30.0
READ_AHEAD_CHUNKS = 16       # chunks fetched ahead of a sequential read that missed the cache
READ_AHEAD_WORKERS = 8


class ChunkCache:
    """Small thread-safe LRU of decoded chunks, keyed by pointer bytes."""

    def __init__(self, limit: int = CHUNK_CACHE_BYTES):
        self._limit = limit
        self._used = 0
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._last_use = time.monotonic()

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def last_use(self) -> float:
        """time.monotonic() of the last get or put."""
        return self._last_use

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            self._last_use = time.monotonic()
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: bytes, data: bytes) -> None:
        with self._lock:
            self._last_use = time.monotonic()
            if key in self._items:
                return
            self._items[key] = data
            self._used += len(data)
            while self._used > self._limit and self._items:
                _, old = self._items.popitem(last=False)
                self._used -= len(old)


    def release_if_idle(self, idle_seconds: float = CACHE_IDLE_SECONDS) -> int:
        """Empty the cache if nothing used it for idle_seconds; returns bytes dropped."""
        with self._lock:
            if not self._items or time.monotonic() - self._last_use < idle_seconds:
                return 0
            dropped, self._used = self._used, 0
            self._items.clear()
        give_back_free_memory()
        return dropped


class ChunkReader:
    """Reads a file's bytes through its layers onto its extents.

    `blobs` is a `BlobStore` (blocking, thread-safe); `cache` holds decoded
    chunks, also the ones a seal just stored.
    """

    def __init__(self, blobs, cache_bytes: int = CHUNK_CACHE_BYTES):
        self.blobs = blobs
        self.cache = ChunkCache(cache_bytes)
        self._ahead_pool = concurrent.futures.ThreadPoolExecutor(READ_AHEAD_WORKERS,
                                                                 thread_name_prefix="vfs-ahead")
        self._ahead_lock = threading.Lock()
        self._in_flight: dict[bytes, concurrent.futures.Future] = {}
        self._fetched_ahead: set[bytes] = set()

    def close(self) -> None:
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)

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
            data = self.blobs.get_buffer(self._pointer(pointer))
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
            data = self.blobs.get_buffer(self._pointer(pointer))
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
        i = extent_index(extents, a)
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
                at = pos - ext.offset + ext.skip
                parts.append(memoryview(data)[at:at + end - pos])
                i += 1
            else:
                end = min(b, extents[i].offset) if i < len(extents) else b
                parts.append(bytes(end - pos))
            pos = end

    def _read_sync(self, extents: list[Extent], layers: list[Layer], a: int, b: int) -> bytes:
        """Blocking read of [a, b) through `layers` onto `extents`."""
        return bytes(self._read_pieces(extents, plan_read(layers, a, b)))

    def _read_pieces(self, extents: list[Extent], pieces: list) -> bytes | memoryview:
        """Blocking read of planned (start, end, source) pieces. A read within one
        chunk is a view of the cached chunk, not a copy: pyfuse3 replies from any
        buffer, and a 1 MiB copy costs a fresh mmap of zeroed pages."""
        parts: list[bytes | memoryview] = []
        for s, e, src in pieces:
            if src is None:
                parts.append(bytes(e - s))
            elif src == "base":
                self._read_extents_sync(extents, s, e, parts)
            else:
                parts.append(src.pread(e - s, s))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _cached(self, extents: list[Extent], a: int, b: int) -> bool:
        i = extent_index(extents, a)
        while i < len(extents) and extents[i].offset < b:
            if self.cache.get(extents[i].pointer) is None:
                return False
            i += 1
        return True

    async def read(self, f: FileData, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        extents = f.extents
        # Plan here on the trio thread: write() changes the live layer's ranges.
        pieces = plan_read(f.layers, offset, end)
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

    async def read_extents(self, extents: list[Extent], size: int, offset: int,
                           size_req: int) -> bytes | memoryview:
        """Read sealed content only (snapshot views)."""
        end = min(offset + size_req, size)
        if offset >= end:
            return b""
        pieces = [(offset, end, "base")]
        if self._cached(extents, offset, end):
            return self._read_pieces(extents, pieces)
        return await trio.to_thread.run_sync(self._read_pieces, extents, pieces)
