"""Reading file contents: sealed chunks through a cache, under the dirty layers.

A read is planned on the trio thread over the file's layers (`plan_read`);
what the layers do not cover comes from the extents. Layers and cached chunks
are local and quick and are read right there; a chunk that must come from a
store is fetched in a worker thread, which also starts read-ahead of the next
chunks (`ChunkReader._read_ahead`). Fetching a chunk (read, decode, verify) is
the expensive part and never runs on the trio thread.

A cold sequential read, profiled (1 GiB, 1 MiB kernel requests): the FUSE
round trips themselves are cheap (a mount answering every read from one
buffer reads ~1.5 GiB/s here, 0.3 s of daemon CPU per GiB); what costs is
per MiB the store read into fresh memory, SHA-256 and, for the many requests
that span two chunks, joining the pieces into one reply. Those run on the
read-ahead workers, each chunk once; the join copies into one reused reply
buffer (`_reply`), not a fresh 1 MiB allocation (a new mmap of zeroed pages
per request, common/memory.py).
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
        self._reply = bytearray()           # see `_reply_from`
        self._loop_thread: int | None = None
        # What reads cost, for `status` and the tests: requests served, chunks
        # fetched (each read, decoded and verified: once per cold read), those
        # fetched on the trio thread (should stay 0), requests that had to wait
        # for a worker thread, and requests answered by joining pieces.
        self.read_requests = 0
        self.chunks_fetched = 0
        self.chunks_fetched_in_loop = 0
        self.reads_waiting = 0
        self.replies_joined = 0

    def close(self) -> None:
        self._ahead_pool.shutdown(wait=False, cancel_futures=True)

    def read_status(self) -> dict:
        """The read counters (above) for the mount's `status`."""
        return {"read_requests": self.read_requests,
                "read_chunks_fetched": self.chunks_fetched,
                "read_chunks_fetched_in_loop": self.chunks_fetched_in_loop,
                "read_requests_waiting": self.reads_waiting,
                "read_replies_joined": self.replies_joined}

    def _fetch(self, pointer: bytes) -> bytes | memoryview:
        """Read, decode and verify one chunk from the store into the cache (blocking)."""
        data = self.blobs.get_buffer(self._pointer(pointer))
        self.cache.put(pointer, data)
        with self._ahead_lock:
            self.chunks_fetched += 1
            if threading.get_ident() == self._loop_thread:
                self.chunks_fetched_in_loop += 1
        return data

    def _chunk_sync(self, pointer: bytes) -> bytes | memoryview:
        """The decoded chunk, from the cache, from a fetch already in flight, or
        fetched here; a fetch made here is in flight too, so concurrent requests
        for the same chunk (the kernel sends several at once) share it."""
        data = self.cache.get(pointer)
        if data is not None:
            return data
        with self._ahead_lock:
            pending = self._in_flight.get(pointer)
            if pending is None:
                data = self.cache.get(pointer)      # a fetch ended since we looked
                if data is not None:
                    return data
                mine = self._in_flight[pointer] = concurrent.futures.Future()
        if pending is not None:
            try:
                return pending.result()
            except Exception:              # noqa: BLE001 - fetch it ourselves, errors and all
                return self._fetch(pointer)
        try:
            data = self._fetch(pointer)
            mine.set_result(data)
            return data
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._ahead_lock:
                self._in_flight.pop(pointer, None)

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
            data = self._fetch(pointer)
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

    def _read_extents_sync(self, extents: list[Extent], a: int, b: int, parts: list,
                           pinned: dict | None = None) -> None:
        """Append the pieces of [a, b) from the extents to `parts`; with `pinned`
        (`_cached_chunks`) only from those chunks, never fetching one."""
        i = extent_index(extents, a)
        pos = a
        while pos < b:
            if i < len(extents) and extents[i].offset <= pos:
                ext = extents[i]
                end = min(b, ext.end)
                with self._ahead_lock:
                    streaming = ext.pointer in self._fetched_ahead
                    self._fetched_ahead.discard(ext.pointer)
                if streaming or (pinned is None and self.cache.get(ext.pointer) is None):
                    self._read_ahead(extents, i + 1)
                data = pinned[ext.pointer] if pinned is not None else self._chunk_sync(ext.pointer)
                at = pos - ext.offset + ext.skip
                parts.append(memoryview(data)[at:at + end - pos])
                i += 1
            else:
                end = min(b, extents[i].offset) if i < len(extents) else b
                parts.append(bytes(end - pos))
            pos = end

    def _read_sync(self, extents: list[Extent], layers: list[Layer], a: int, b: int) -> bytes:
        """Blocking read of [a, b) through `layers` onto `extents`."""
        return b"".join(self._read_pieces(extents, plan_read(layers, a, b)))

    def _read_pieces(self, extents: list[Extent], pieces: list,
                     pinned: dict | None = None) -> list[bytes | memoryview]:
        """Blocking read of planned (start, end, source) pieces, as a list of
        buffers: views of the cached chunks, not copies."""
        parts: list[bytes | memoryview] = []
        for s, e, src in pieces:
            if src is None:
                parts.append(bytes(e - s))
            elif src == "base":
                self._read_extents_sync(extents, s, e, parts, pinned)
            else:
                parts.append(src.pread(e - s, s))
        return parts

    def _cached_chunks(self, extents: list[Extent], a: int, b: int) -> dict | None:
        """The decoded chunks [a, b) needs, if all are in the cache (held here, so a
        worker's cache insert cannot evict one before we read it), else None."""
        chunks = {}
        i = extent_index(extents, a)
        while i < len(extents) and extents[i].offset < b:
            data = self.cache.get(extents[i].pointer)
            if data is None:
                return None
            chunks[extents[i].pointer] = data
            i += 1
        return chunks

    def _reply_from(self, parts: list, shared: bool) -> bytes | memoryview:
        """One buffer for a read's answer: a lone piece as it is; several joined,
        with `shared` into `_reply`, a buffer reused by every request (its copy
        costs no fresh 1 MiB allocation). Only a FUSE read handler may ask for
        `shared`: reuse is safe because it happens on the trio thread only and
        pyfuse3 writes the reply (fuse_reply_buf) as soon as the handler returns,
        before any other task runs. A caller that keeps the answer across an
        await (an fsync journaling several ranges) gets its own copy."""
        if len(parts) == 1:
            return parts[0]
        if not shared:
            return b"".join(parts)
        n = sum(len(p) for p in parts)
        if len(self._reply) < n:
            self._reply = bytearray(n)          # a new one: an old view may live on
        view = memoryview(self._reply)
        pos = 0
        for p in parts:
            view[pos:pos + len(p)] = p
            pos += len(p)
        self.replies_joined += 1
        return view[:n]

    async def _read_base(self, extents: list[Extent], pieces: list, a: int, b: int,
                         shared: bool, layers: tuple = ()) -> bytes | memoryview:
        """Answer a read whose `pieces` include sealed content: from the cached
        chunks right here, or else in a worker thread that fetches what is
        missing, with the `layers` it reads pinned so a seal finishing meanwhile
        cannot free them."""
        self._loop_thread = threading.get_ident()
        pinned = self._cached_chunks(extents, a, b)
        if pinned is not None:
            return self._reply_from(self._read_pieces(extents, pieces, pinned), shared)
        self.reads_waiting += 1
        for layer in layers:
            layer.readers += 1
        try:
            parts = await trio.to_thread.run_sync(self._read_pieces, extents, pieces)
        finally:
            for layer in layers:
                layer.readers -= 1
                if layer.retired:
                    layer.close()
        return self._reply_from(parts, shared)

    async def read(self, f: FileData, offset: int, size: int,
                   shared: bool = False) -> bytes | memoryview:
        """[offset, offset + size) of `f`; `shared` only for a FUSE reply (`_reply_from`)."""
        self.read_requests += 1
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        # Plan here on the trio thread: write() changes the live layer's ranges.
        pieces = plan_read(f.layers, offset, end)
        # Layers are local and quick: read them right here.
        if not any(src == "base" for _, _, src in pieces):
            return self._reply_from(self._read_pieces(f.extents, pieces), shared)
        layers = tuple({id(src): src for _, _, src in pieces if isinstance(src, Layer)}.values())
        return await self._read_base(f.extents, pieces, offset, end, shared, layers)

    async def read_extents(self, extents: list[Extent], size: int, offset: int,
                           size_req: int, shared: bool = False) -> bytes | memoryview:
        """Read sealed content only (snapshot views); `shared` as in `read`."""
        self.read_requests += 1
        end = min(offset + size_req, size)
        if offset >= end:
            return b""
        return await self._read_base(extents, [(offset, end, "base")], offset, end, shared)
