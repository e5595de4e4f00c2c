"""Regression tests for bugs that outside suites (pjdfstest, xfstests' fsx) found.

Each test is our own minimal reproduction of one failure, written from the
diagnosis in notes/fs-bugs.md; none of the outside suites' code is used.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import trio

from fsmount import vfs  # noqa: F401  (fixture)
from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.disk import DiskStore
from versionfs.fs import reading, sealing
from versionfs.fs.data import DataManager
from versionfs.fs.layers import FileData

K = 1024


def _no_persist(f, result) -> None:
    """Seals in these unit tests have no metadata store to write to."""


def _assert_disjoint(f: FileData) -> None:
    end = 0
    for e in f.extents:
        assert e.offset >= end, f"extent {e.offset}+{e.length} overlaps the one before (ends {end})"
        end = e.end
    assert end <= f.sealed_size


@pytest.mark.fuse
def test_seal_replaces_clean_extent_inside_rechunked_range(vfs):
    """fsx: a clean 8 KiB extent between two new writes stayed in the extent
    list under the chunk re-cut over it; reads went backwards (too-long replies,
    EIO) and returned zeros for the bytes after it."""
    p = vfs.path("f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"B" * 8 * K, 100 * K)
    os.pwrite(fd, b"D" * 8 * K, 200 * K)
    os.fsync(fd)
    os.pwrite(fd, b"A" * 8 * K, 92 * K)
    os.pwrite(fd, b"C" * 8 * K, 108 * K)
    os.fsync(fd)
    os.close(fd)
    want = bytes(92 * K) + b"A" * 8 * K + b"B" * 8 * K + b"C" * 8 * K + bytes(84 * K) + b"D" * 8 * K
    vfs.stop()
    vfs.start()                       # no page cache: every byte comes from the daemon
    with open(p, "rb") as f:
        assert f.read() == want
    with open(p, "rb") as f:          # page-sized reads too (no readahead reply to fall back on)
        got = b"".join(iter(lambda: f.read(4096), b""))
    assert got == want


def _model_run(dm: DataManager, seed: int, maxsize: int, ops: int) -> None:
    rnd = random.Random(seed)

    async def run():
        f = FileData(1, [], 0)
        model = bytearray()
        for _ in range(ops):
            op = rnd.random()
            if op < 0.5:
                off, n = rnd.randrange(maxsize), rnd.randrange(1, maxsize // 8)
                buf = rnd.randbytes(n) if rnd.random() < 0.8 else bytes(n)
                dm.write(f, off, buf)
                model.extend(bytes(max(0, off - len(model))))
                model[off:off + n] = buf
            elif op < 0.65:
                size = rnd.randrange(maxsize)
                dm.truncate(f, size)
                del model[size:]
                model.extend(bytes(size - len(model)))
            elif op < 0.85:
                await dm.seal(f, _no_persist)
                _assert_disjoint(f)
            else:
                off, n = rnd.randrange(maxsize), rnd.randrange(1, maxsize)
                assert await dm.read(f, off, n) == bytes(model[off:off + n]), f"seed {seed}"
        await dm.seal(f, _no_persist)
        _assert_disjoint(f)
        assert await dm.read(f, 0, len(model) + 1) == bytes(model), f"seed {seed}"

    trio.run(run)


def test_random_writes_truncates_and_seals_match_a_bytearray(tmp_path, monkeypatch):
    """The data path against a model, with chunk sizes shrunk so small files
    have many chunks and holes (the shape fsx produced)."""
    monkeypatch.setattr(sealing, "CHUNK_AVG", 4096)
    monkeypatch.setattr(sealing, "CHUNK_MIN", 1024)
    monkeypatch.setattr(sealing, "CHUNK_MAX", 16384)
    monkeypatch.setattr(sealing, "CDC_WINDOW", 32768)
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)), str(tmp_path / "dirty"))
    try:
        for seed in range(60):
            _model_run(dm, seed, 1 << 16, 60)
    finally:
        dm.close()


class _SlowChunks:
    """A real store whose get() takes a while for chunks starting with `slow`:
    the latency of a cold read from S3, which a local store cannot produce on cue."""

    def __init__(self, inner, slow: bytes):
        self.inner, self.slow = inner, slow

    def put(self, data):
        return self.inner.put(data)

    def get_buffer(self, pointer):
        data = self.inner.get_buffer(pointer)
        time.sleep(1.0 if data[:len(self.slow)] == self.slow else 0.1)
        return data


def test_read_waiting_for_store_survives_a_concurrent_seal(tmp_path):
    """A read that fetched a chunk in a worker thread used layer files that a
    seal finishing meanwhile had closed: EBADF, so EIO for the application."""
    blobs = _SlowChunks(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)), b"x")
    dm = DataManager(blobs, str(tmp_path / "dirty"))

    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, b"x" * 300 * K)
        await dm.seal(f, _no_persist)
        dm.write(f, 600 * K, b"z" * 300 * K)
        await dm.seal(f, _no_persist)
        dm.cache = reading.ChunkCache()         # cold, as after a remount
        dm.write(f, 700 * K, b"y" * 100)
        want = b"x" * 300 * K + bytes(300 * K) + b"z" * 100 * K + b"y" * 100 + b"z" * (100 * K - 100)
        got = []
        async with trio.open_nursery() as nursery:
            async def reader():
                got.append(await dm.read(f, 0, 800 * K))
            nursery.start_soon(reader)
            await trio.sleep(0.1)               # the read now waits for the slow chunk
            await dm.seal(f, _no_persist)       # and the layer it planned on is sealed
        assert got == [want]
        assert await dm.read(f, 0, 800 * K) == want

    try:
        trio.run(run)
    finally:
        dm.close()


def test_a_read_within_one_chunk_is_a_view_of_the_cached_chunk(tmp_path):
    """A cold read inside one chunk hands pyfuse3 a view of the verified chunk:
    no copy of it (each 1 MiB copy is a fresh mmap of zeroed pages); a read
    across chunks or layers is joined, and sealing still gets bytes."""
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)), str(tmp_path / "dirty"))
    first, second = os.urandom(300 * K), os.urandom(100 * K)     # an append: its own extent

    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, first)
        await dm.seal(f, _no_persist)
        dm.write(f, 300 * K, second)
        await dm.seal(f, _no_persist)
        assert len(f.extents) == 2
        dm.cache = reading.ChunkCache()         # cold, as after a remount
        inside = await dm.read(f, 1000, 200 * K)
        assert isinstance(inside, memoryview) and inside == first[1000:1000 + 200 * K]
        across = await dm.read(f, 200 * K, 200 * K)
        assert type(across) is bytes and across == first[200 * K:] + second
        assert type(dm._read_sync(f.extents, [], 1000, 2000)) is bytes

    try:
        trio.run(run)
    finally:
        dm.close()
