"""Unsealed writes of an open file: its dirty *layers* and how reads see them.

Writes never touch blobs. They land in a *layer*: memory for small layers, a
sparse local file under the dirty directory for big ones, plus the set of byte
ranges written (`Intervals`) and the lowest size the file was truncated to
while the layer was live. Sealing freezes the layers (new writes open a fresh
layer on top, so writers never wait for a seal); reading walks the layers
newest first, then the extents (`plan_read`).
"""

from __future__ import annotations

import os
import time

import trio

from versionfs.blob.files import start_writeback

from .extents import Extent, Intervals

# Layers are kept in memory up to this size (see Layer).
MEMORY_LAYER_BYTES = 1 << 20
# All the memory layers of a mount together hold at most this much (LayerMemory).
MEMORY_LAYERS_TOTAL_BYTES = 16 << 20
# A layer file asks the kernel to start writing back after this many bytes.
WRITEBACK_BYTES = 8 << 20


class LayerMemory:
    """The bytes all memory layers of a mount hold, kept under `limit` (part of
    the daemon's memory budget, common/memory.py): a burst of small files that
    outruns sealing (an untar, a git commit) moves further layers to their
    files instead of growing the daemon by the burst. Changed on the trio
    thread only (writes, truncates, closes)."""

    __slots__ = ("limit", "used", "peak", "spilled")

    def __init__(self, limit: int = MEMORY_LAYERS_TOTAL_BYTES):
        self.limit = limit
        self.used = 0
        self.peak = 0          # the most held at once (counter for tests/status)
        self.spilled = 0       # layers moved to their file because the total was reached

    def grow(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)


class Layer:
    """Unsealed writes of one file since a point in time (see module doc).

    The bytes live in memory while the layer spans at most MEMORY_LAYER_BYTES
    and the mount's memory layers fit their total (`LayerMemory`): small files
    never cost a file create and unlink. Beyond that they live in a sparse file
    under the dirty directory.
    """

    __slots__ = ("path", "fd", "mem", "memory", "dirty", "trunc", "size", "frozen", "readers",
                 "retired", "created", "keep", "unflushed")

    def __init__(self, path: str, size: int, memory: LayerMemory):
        self.path = path
        self.fd = -1
        self.mem: bytearray | None = bytearray()
        self.memory = memory
        self.dirty = Intervals()
        self.trunc: int | None = None
        self.size = size
        self.frozen = False
        self.readers = 0          # reads in worker threads using this layer
        self.retired = False
        self.created = time.monotonic()
        # Set once the dirty journal refers to the layer file (an fsync's L
        # record, data.KeptFile): closing then keeps the file for it.
        self.keep = None
        self.unflushed = 0        # bytes written since writeback was last started

    @classmethod
    def adopt(cls, path: str, size: int, ranges) -> "Layer":
        """A frozen layer over an existing layer file holding `ranges` (a
        journal replay's L record)."""
        layer = cls(path, size, LayerMemory(0))
        layer.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        layer.mem = None
        for a, b in ranges:
            layer.dirty.add(a, b)
        layer.frozen = True
        return layer

    def pwrite(self, buf: bytes, offset: int) -> int:
        end = offset + len(buf)
        if self.mem is not None:
            growth = max(0, end - len(self.mem))
            if end > MEMORY_LAYER_BYTES:
                self._move_to_file()
            elif self.memory.used + growth > self.memory.limit:
                self.memory.spilled += 1
                self._move_to_file()
        if self.mem is None:
            n = os.pwrite(self.fd, buf, offset)
            self.unflushed += n
            if self.unflushed >= WRITEBACK_BYTES:
                # The disk starts on a big write's pages while more arrive, so
                # its fsync (durability.py) finds little left to write.
                self.unflushed = 0
                start_writeback(self.fd)
            return n
        if end > len(self.mem):
            self.memory.grow(end - len(self.mem))
            self.mem.extend(bytes(end - len(self.mem)))
        self.mem[offset:end] = buf
        return len(buf)

    def _move_to_file(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.pwrite(self.fd, self.mem, 0)
        self.memory.grow(-len(self.mem))
        self.mem = None

    def pread(self, n: int, offset: int) -> bytes:
        mem = self.mem        # a worker thread's read: the trio thread may move it to the file
        if mem is None:
            data = os.pread(self.fd, n, offset)
        else:
            data = bytes(mem[offset:offset + n])
        if len(data) < n:                 # sparse tail
            data += bytes(n - len(data))
        return data

    def truncate(self, size: int) -> None:
        if self.mem is None:
            os.ftruncate(self.fd, size)
        elif len(self.mem) > size:
            self.memory.grow(size - len(self.mem))
            del self.mem[size:]

    def close(self) -> None:
        """Free the layer, or leave that to the last read still using it (a seal
        can finish while a read waits in a worker thread for a chunk)."""
        if self.readers > 0:
            self.retired = True
            return
        if self.mem is not None:
            self.memory.grow(-len(self.mem))
        self.mem = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.keep is not None:
                self.keep.closed = True
                return
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
        self.sync_lock = trio.Lock()      # one fsync of the file at a time (durability.py)
        self.last_write = 0.0
        self.deleted = False
        self._seq = 0
        # Written since the last fsync (what the next fsync journals, journal.py),
        # less what a seal froze since (`freeze_unsynced`):
        self.unsynced = Intervals()
        self.unsynced_trunc: int | None = None
        # What the seal in flight froze of it: journaled too by an fsync before
        # that seal is stored, given back to `unsynced` if the seal fails.
        self.sealing = Intervals()
        self.sealing_trunc: int | None = None
        # The last journal index of this file the seal in flight holds (None
        # when none is in flight): see `freeze_unsynced` and `journaled`.
        self.seal_covers: int | None = None
        self._took_frozen_only = False

    @property
    def dirty(self) -> bool:
        return bool(self.layers)

    @property
    def dirty_since(self) -> float:
        """monotonic time of the oldest write not yet sealed (0 when clean)."""
        return self.layers[0].created if self.layers else 0.0

    @property
    def has_unsynced(self) -> bool:
        """Whether an fsync now has anything to journal."""
        return bool(self.unsynced or self.sealing or self.unsynced_trunc is not None
                    or self.sealing_trunc is not None)

    def unsynced_bytes(self) -> int:
        return self.unsynced.total() + self.sealing.total()

    def take_unsynced(self) -> tuple[list[tuple[int, int]], int | None]:
        """The ranges and truncation the next fsync journals, now cleared; call
        `journaled` with the index of its last record once it is logged."""
        self._took_frozen_only = (self.seal_covers is not None and not self.unsynced
                                  and self.unsynced_trunc is None)
        ranges, trunc = self.unsynced, _lowest(self.unsynced_trunc, self.sealing_trunc)
        for a, b in self.sealing:
            ranges.add(a, b)
        self.unsynced, self.sealing = Intervals(), Intervals()
        self.unsynced_trunc = self.sealing_trunc = None
        return list(ranges), trunc

    def freeze_unsynced(self, covered: int) -> None:
        """A seal froze every layer: what was written since the last fsync is in
        them, so once the seal is stored the next fsync journals only what is
        written after this (and syncs the metadata holding the seal,
        durability.py) — O(bytes written), not the file again. The seal holds
        every journal record of the file up to `covered` (the last index now)."""
        self.sealing, self.sealing_trunc = self.unsynced, self.unsynced_trunc
        self.unsynced, self.unsynced_trunc = Intervals(), None
        self.seal_covers = covered

    def journaled(self, index: int) -> None:
        """The records of the last `take_unsynced` were logged, the last at
        `index`. When that take held nothing but what the seal in flight froze
        (no write or truncation since the freeze: the bytes, the size and the
        times the record gives are the seal's), that seal holds the record
        too, and its durable mark lets the journal release it; otherwise a
        later seal must, which the write since the freeze makes sure of.
        The caller keeps the take, the logging and the seal's freeze and
        persist apart (`sync_lock`, data.py)."""
        if self._took_frozen_only and self.seal_covers is not None:
            self.seal_covers = max(self.seal_covers, index)
        self._took_frozen_only = False

    def seal_ended(self, stored: bool) -> None:
        """The seal that froze `sealing` is stored, or failed: then the next
        fsync must journal those ranges after all."""
        if not stored:
            for a, b in self.sealing:
                self.unsynced.add(a, b)
            self.unsynced_trunc = _lowest(self.unsynced_trunc, self.sealing_trunc)
        self.sealing, self.sealing_trunc = Intervals(), None
        self.seal_covers = None

    def live_bytes(self) -> int:
        return self.layers[-1].dirty.total() if self.layers and not self.layers[-1].frozen else 0


def _lowest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def plan_read(layers: list[Layer], a: int, b: int) -> list:
    """(start, end, source) pieces covering [a, b): source is a Layer, None
    for zeros, or "base" for the extents under the layers."""
    pieces: list = []
    _plan(layers, len(layers) - 1, a, b, pieces)
    return pieces


def _plan(layers: list[Layer], level: int, a: int, b: int, out: list) -> None:
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
                _plan(layers, level - 1, s, layer.trunc, out)
            out.append((max(s, layer.trunc), e, None))
        else:
            _plan(layers, level - 1, s, e, out)
