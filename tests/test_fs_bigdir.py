"""Directories of 100k+ entries are listed by streaming, not loaded whole."""

from __future__ import annotations

import os
import stat
import time

import pytest

from fsmount import Mount, new_mountpoint, new_state
from versionfs.tree import schema

pytestmark = pytest.mark.fuse


def populate(state_dir, count: int) -> None:
    """Write a directory `big` with `count` empty files straight into the
    metadata store, in the mount's own key format (creating 100k files one
    FUSE request at a time would dominate the test's time)."""
    from versionfs.meta.mvcc.store import MVCCStore
    meta = MVCCStore.open(state_dir / "meta")
    try:
        alloc = schema.InodeAllocator(meta)
        now = schema.now_ns()
        root = schema.Inode.unpack(schema.ROOT_INO, meta.get(schema.inode_key(schema.ROOT_INO)))
        big = schema.Inode(alloc.allocate(), stat.S_IFDIR | 0o755, 2, 0, 0, atime_ns=now,
                           mtime_ns=now, ctime_ns=now, parent=schema.ROOT_INO)
        root.nlink += 1
        with meta.write() as b:
            b.put(schema.inode_key(big.ino), big.pack())
            b.put(schema.dirent_key(schema.ROOT_INO, b"big"), schema.u64(big.ino))
            b.put(schema.inode_key(schema.ROOT_INO), root.pack())
        for start in range(0, count, 5000):
            with meta.write() as b:
                for i in range(start, min(count, start + 5000)):
                    f = schema.Inode(alloc.allocate(), stat.S_IFREG | 0o644, 1, 0, 0,
                                     atime_ns=now, mtime_ns=now, ctime_ns=now)
                    b.put(schema.inode_key(f.ino), f.pack())
                    b.put(schema.dirent_key(big.ino, b"file-%07d" % i), schema.u64(f.ino))
        meta.sync()
    finally:
        meta.close()


def test_listing_100k_entries(tmp_path):
    count = 100_000
    mnt = new_mountpoint()
    m = Mount(new_state(tmp_path), mnt)
    try:
        m.start()            # creates the root
        m.stop()
        populate(m.state_dir, count)
        m.start()
        t0 = time.monotonic()
        names = []
        with os.scandir(m.path("big")) as it:
            for entry in it:
                assert entry.stat(follow_symlinks=False).st_size == 0
                names.append(entry.name)
        elapsed = time.monotonic() - t0
        assert len(names) == count and len(set(names)) == count
        assert names == sorted(names)
        assert elapsed < 30, elapsed
        # changes during a listing neither skip nor repeat untouched entries
        seen = set()
        with os.scandir(m.path("big")) as it:
            for n, entry in enumerate(it):
                if n == 1000:
                    os.unlink(m.path("big", "file-0000000"))
                    open(m.path("big", "file-0000500x"), "w").close()
                seen.add(entry.name)
        assert {f"file-{i:07d}" for i in range(1, count)} <= seen
        assert os.stat(m.path("big")).st_nlink == 2
    finally:
        m.stop()
        os.rmdir(mnt)
