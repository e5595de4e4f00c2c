"""Small rewrites inside a chunk cost only the rewritten bytes (issue 10,
versionfs/fs/sealing.py): the untouched parts of the old chunk stay as partial
extents (`[length, pointer, skip]`), only the new bytes are stored. Counters,
not timings; contents checked by SHA-256 after remount, in snapshots, after a
clone from a real bucket; the old chunk is kept while any part of it is used;
fsck is clean; the quiet merge bounds the extent count."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time

import pytest
import trio

from cli_util import ok, run_cli
from cloud_util import machines, wait_for  # noqa: F401  (fixture)
from fsmount import Mount, new_mountpoint, new_state, vfs  # noqa: F401  (fixture)
from maint_util import fast_blobs, file_ino, open_meta, slow_blobs
from test_fs_append import sha256, store_use
from test_fs_journal import small_and_big_files, status
from test_reclaim import publish_past

pytestmark = pytest.mark.fuse


def extents_of(state, path: str, rev=None) -> list[tuple[int, int, bytes, int]]:
    """(offset, length, pointer, skip) of the file's stored extents."""
    from versionfs.tree import schema
    meta = open_meta(state)
    try:
        prefix = schema.extent_prefix(file_ino(meta, path, rev))
        return [schema.unpack_extent(k, v)
                for k, v in meta.range(prefix, schema.prefix_end(prefix), rev)]
    finally:
        meta.close()


def rewrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def snapshot_path(mnt, name: str, *parts):
    return os.path.join(mnt, ".versionfs", "snapshots", name, *parts)


def test_a_4k_rewrite_costs_the_same_in_a_1mib_and_a_200mib_file(vfs):
    """The same 4 KiB rewrite in the middle of a 1 MiB and a 200 MiB file
    chunks 4 KiB and stores one 4 KiB blob per seal; the contents are exact
    live, in snapshots taken before and after, after a remount and restored
    from the snapshot; diff counts 4 KiB of new data."""
    small_and_big_files(vfs)
    before = {n: sha256(vfs.path(n)) for n in ("small", "big")}
    snap_before = vfs.ok("snapshot before").strip()
    costs, expected = {}, {}
    for name in ("small", "big"):
        size = os.path.getsize(vfs.path(name))
        middle = size // 2 + 4096                 # inside a chunk, page aligned
        page = os.urandom(4096)
        with open(vfs.path(name), "rb") as f:
            content = bytearray(f.read())
        content[middle:middle + 4096] = page
        expected[name] = hashlib.sha256(content).hexdigest()
        st, (blobs, stored) = status(vfs), store_use(vfs.state_dir / "fast")
        rewrite(vfs.path(name), middle, page)
        vfs.ok("flush")
        st2, (blobs2, stored2) = status(vfs), store_use(vfs.state_dir / "fast")
        costs[name] = (st2["sealed_bytes"] - st["sealed_bytes"], blobs2 - blobs, stored2 - stored)
        assert sha256(vfs.path(name)) == expected[name]
    assert costs["small"][:2] == costs["big"][:2] == (4096, 1), costs
    assert costs["small"][2] < 2 * 4096 and costs["big"][2] < 2 * 4096, costs
    snap_after = vfs.ok("snapshot after").strip()
    # diff counts the new bytes, not what the partial extents keep of old chunks
    doc = json.loads(vfs.ok("diff --json before after"))
    assert sorted((c["path"], c["bytes"]) for c in doc["changes"]) == [("big", 4096), ("small", 4096)]
    vfs.stop()
    for name in ("small", "big"):               # partial extents around the new one
        skips = [skip for _o, _n, _p, skip in extents_of(vfs.state_dir, name)]
        assert any(skip > 0 for skip in skips), skips
    vfs.start()
    for name in ("small", "big"):
        assert sha256(vfs.path(name)) == expected[name]
        assert sha256(snapshot_path(vfs.mountpoint, snap_before, name)) == before[name]
        assert sha256(snapshot_path(vfs.mountpoint, snap_after, name)) == expected[name]
        vfs.ok(f"restore --to {name}-restored after {name}")      # copies the partial extents
        assert sha256(vfs.path(f"{name}-restored")) == expected[name]


def test_a_rewrite_of_more_than_half_a_chunk_rechunks_it(vfs):
    """Partial extents only for small rewrites: rewriting most of a file
    re-chunks it and leaves no partial extent (so a whole-file rewrite still
    dedups with the old chunks, test_fs_data.py)."""
    data = os.urandom(1 << 20)
    with open(vfs.path("f"), "wb") as f:
        f.write(data)
    vfs.ok("flush")
    rewrite(vfs.path("f"), 4096, os.urandom((1 << 20) - 8192))
    vfs.ok("flush")
    vfs.stop()
    assert all(skip == 0 for *_, skip in extents_of(vfs.state_dir, "f"))
    vfs.start()


def test_the_quiet_merge_bounds_the_extents_after_1000_random_4k_rewrites(tmp_path, monkeypatch):
    """1,000 random 4 KiB rewrites, sealed as they come, each store about 4 KiB
    (a rewritten small extent is re-stored alone: re-chunking cannot re-align
    with extents CDC did not cut) and would leave about two extents each; once
    the file is quiet the merge leaves at most
    MERGE_MIN_EXTENTS per CHUNK_MIN bytes (sealing.py), with the content exact
    after a remount."""
    from versionfs.fs.sealing import CHUNK_MIN, MERGE_MIN_EXTENTS
    monkeypatch.setenv("VFS_MERGE_QUIET", "5.0")
    mnt = new_mountpoint()
    m = Mount(new_state(tmp_path), mnt).start()
    size = 16 << 20
    rng = random.Random(10)
    content = bytearray(rng.randbytes(size))
    try:
        path = m.mountpoint / "db"
        path.write_bytes(content)
        m.ok("flush")
        sealed = json.loads(m.ok("status --json"))["sealed_bytes"]
        fd = os.open(path, os.O_RDWR)
        try:
            for i in range(1000):
                off = rng.randrange(size // 4096) * 4096
                page = rng.randbytes(4096)
                content[off:off + 4096] = page
                os.pwrite(fd, page, off)
                if i % 4 == 3:
                    m.ok("flush")
        finally:
            os.close(fd)
        m.ok("flush")
        st = json.loads(m.ok("status --json"))
        if st["merged_extents"] == 0:           # a rewrite re-stores at most a small extent
            assert st["sealed_bytes"] - sealed <= 2 * 1000 * 4096, st["sealed_bytes"] - sealed
        deadline = time.monotonic() + 120
        while (st := json.loads(m.ok("status --json")))["merged_extents"] < 1000:
            assert time.monotonic() < deadline, f"the fragmented file was not merged: {st}"
            time.sleep(0.5)
        assert sha256(path) == hashlib.sha256(content).hexdigest()
    finally:
        m.stop()
    extents = extents_of(m.state_dir, "db")
    assert len(extents) <= MERGE_MIN_EXTENTS * (size // CHUNK_MIN + 1), len(extents)
    m.start()
    try:
        assert sha256(m.mountpoint / "db") == hashlib.sha256(content).hexdigest()
    finally:
        m.stop()
        os.rmdir(mnt)


def test_new_bytes_of_a_split_are_cut_by_the_keyed_chunker(tmp_path):
    """On an encrypted filesystem the rewritten bytes stored beside partial
    extents are cut under the key, as every new byte is (chunking.py)."""
    from versionfs.blob.blobstore import BlobStore
    from versionfs.blob.codec import Codec
    from versionfs.blob.disk import DiskStore
    from versionfs.blob.keys import new_master_key
    from versionfs.fs.chunking import Chunker
    from versionfs.fs.data import DataManager
    from versionfs.fs.extents import Extent
    from versionfs.fs.layers import FileData
    from versionfs.fs.sealing import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN
    codec = Codec(new_master_key())
    blobs = BlobStore(DiskStore(tmp_path / "blobs"), codec)
    dm = DataManager(blobs, str(tmp_path / "dirty"), chunking_seed=codec.chunking_seed())
    old = random.Random(1).randbytes(4 << 20)
    new = random.Random(2).randbytes(2 << 20)       # half the chunk: still split
    pointer = blobs.put(old).bytes                  # one 4 MiB chunk (CHUNK_MAX)

    async def run():
        f = FileData(1, [Extent(0, len(old), pointer)], len(old))
        dm.write(f, 1 << 20, new)
        await dm.seal(f, lambda f, r: None)
        inner = [(e.offset - (1 << 20), e.length) for e in f.extents if e.pointer != pointer]
        assert inner == Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX, codec.chunking_seed()).cuts(new)
        assert inner != Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX).cuts(new)
        assert [(e.offset, e.length, e.skip) for e in f.extents if e.pointer == pointer] == [
            (0, 1 << 20, 0), (3 << 20, 1 << 20, 3 << 20)]
        assert await dm.read(f, 0, len(old)) == old[:1 << 20] + new + old[3 << 20:]

    try:
        trio.run(run)
    finally:
        dm.close()


def test_a_chunk_partly_used_is_kept_and_reads_back_from_the_bucket(machines, s3_url,
                                                                    s3_server, s3_bucket):
    """A rewrite splits a chunk; truncating the file drops its second half, which
    queues the chunk for reclamation while the first half still uses it: the
    drain keeps it (live per b"R" key) and reclaims the dropped new chunk; fsck
    is clean; a clone from the bucket reads partial extents exactly."""
    m = machines("laptop")
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 1.0})
    m.mount_ok()
    path, other = m.mnt / "db", m.mnt / "other"
    data = os.urandom(200_000)                      # one chunk (< CHUNK_MIN)
    old = hashlib.sha256(data).digest()             # unencrypted: the pointer is its SHA-256
    other_data = bytearray(os.urandom(3 << 20))
    path.write_bytes(data)
    other.write_bytes(other_data)
    m.ctl("flush")
    cut, page = 24 * 4096, b"x" * 4096
    rewrite(path, cut, page)
    other_page = b"y" * 4096                        # not the same blob as `page`
    rewrite(other, 3 << 19, other_page)
    other_data[3 << 19:(3 << 19) + 4096] = other_page
    m.ctl("flush")
    assert old in fast_blobs(m.state)
    os.truncate(path, cut)                          # the rest of the old chunk is gone
    m.ctl("flush")
    publish_past(m)
    st = wait_for(m, lambda st: st["reclaim_backlog"] == 0 and st["dirty_files"] == 0
                  and hashlib.sha256(page).digest() not in fast_blobs(m.state),
                  "the dropped new chunk to be reclaimed")
    assert st["reclaim_error"] is None and st["reclaimed_blobs"] >= 1, st
    assert old in fast_blobs(m.state) and old in slow_blobs(s3_server, s3_bucket)
    m.ctl("snapshot", "kept")
    expected = {"db": hashlib.sha256(data[:cut]).hexdigest(),
                "other": hashlib.sha256(other_data).hexdigest()}
    assert {n: sha256(m.mnt / n) for n in expected} == expected
    m.umount()
    assert any(skip > 0 for *_, skip in extents_of(m.state, "other"))
    r = run_cli("fsck", m.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr

    clone = machines("clone")
    ok(run_cli("clone", s3_url, clone.state, "-q"))
    clone.mount_ok("--steal-lease")
    try:
        assert {n: sha256(clone.mnt / n) for n in expected} == expected
        assert {n: sha256(snapshot_path(clone.mnt, "kept", n)) for n in expected} == expected
    finally:
        clone.umount()


def test_the_quiet_merge_restores_partial_extents_of_a_mostly_unused_chunk(tmp_path):
    """Two rewrites leave a quarter of a 4 MiB chunk in use, as one partial
    extent of it: no run of small extents, yet the merge (`merge_ranges`)
    re-stores that quarter and drops the chunk from the file, which queues it
    for reclamation (lifecycle.py). A chunk used for more than half stays."""
    from versionfs.blob.blobstore import BlobStore
    from versionfs.blob.codec import Codec
    from versionfs.blob.disk import DiskStore
    from versionfs.fs.data import DataManager
    from versionfs.fs.extents import Extent
    from versionfs.fs.layers import FileData
    from versionfs.fs.sealing import merge_ranges, small_runs
    mib = 1 << 20
    blobs = BlobStore(DiskStore(tmp_path / "blobs"), Codec(None))
    dm = DataManager(blobs, str(tmp_path / "dirty"))
    rng = random.Random(3)
    old = rng.randbytes(4 * mib)
    pointer = blobs.put(old).bytes                  # one 4 MiB chunk (CHUNK_MAX)
    content = bytearray(old)

    async def run():
        f = FileData(1, [Extent(0, len(old), pointer)], len(old))
        for a, b in [(mib, 3 * mib), (0, mib)]:     # half of it, then all of the first part
            new = rng.randbytes(b - a)
            content[a:b] = new
            dm.write(f, a, new)
            await dm.seal(f, lambda f, r: None)
        assert [(e.offset, e.length, e.skip) for e in f.extents if e.pointer == pointer] == [
            (3 * mib, mib, 3 * mib)]
        assert small_runs(f.extents) == [] and merge_ranges(f.extents) == [(3 * mib, 4 * mib)]
        removed = []
        await dm.seal(f, lambda f, r: removed.extend(r.removed), merge_small=True)
        assert pointer in {e.pointer for e in removed}
        assert pointer not in {e.pointer for e in f.extents}
        assert merge_ranges(f.extents) == []
        assert await dm.read(f, 0, len(old)) == content
        kept = [Extent(0, mib, pointer), Extent(2 * mib, 2 * mib, pointer, 2 * mib)]
        assert merge_ranges(kept) == []             # three quarters of it used

    try:
        trio.run(run)
    finally:
        dm.close()


def test_a_chunk_left_mostly_unused_by_rewrites_is_merged_away_and_reclaimed(
        machines, s3_url, s3_server, s3_bucket):
    """The biggest chunk of a file loses its middle, then its first part, to
    rewrites: a quarter of it stays in use as a partial extent. Once the file
    is quiet the merge re-stores that quarter, and the chunk leaves both stores
    without gc; the content is exact."""
    from versionfs.fs.chunking import Chunker
    from versionfs.fs.sealing import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN
    m = machines("laptop")
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 1.0, "mount.merge_quiet_seconds": 3.0})
    m.mount_ok()
    path = m.mnt / "db"
    rng = random.Random(5)
    data = bytearray(rng.randbytes(8 << 20))
    off, length = max(Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX).cuts(bytes(data)),
                      key=lambda cut: cut[1])
    old = hashlib.sha256(data[off:off + length]).digest()   # unencrypted: the pointer
    path.write_bytes(data)
    m.ctl("flush")
    assert old in fast_blobs(m.state)
    page = 4096
    first = -(-off // page) * page
    a = -(-(off + length // 4) // page) * page
    b = (off + 3 * length // 4) // page * page
    for start, end in [(a, b), (first, a)]:        # the middle, then the first part
        new = rng.randbytes(end - start)
        data[start:end] = new
        rewrite(path, start, new)
        m.ctl("flush")
    wait_for(m, lambda st: st["merged_extents"] > 0 and st["dirty_files"] == 0,
             "the quiet merge of the partial extents")
    m.ctl("flush")
    publish_past(m)
    wait_for(m, lambda st: st["reclaim_backlog"] == 0 and old not in fast_blobs(m.state),
             "the mostly unused chunk to be reclaimed")
    assert old not in slow_blobs(s3_server, s3_bucket)
    assert sha256(path) == hashlib.sha256(data).hexdigest()
    m.umount()
    assert all(pointer != old for _, _, pointer, _ in extents_of(m.state, "db"))
