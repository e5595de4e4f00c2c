"""Power cuts (issue 11): the harness in tests/powercut.py.

A power cut, unlike kill -9, also loses the kernel's page cache: whatever was
not fsynced.  What survives a cut of the harness, and what does not.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from powercut import PowerCutDisk
from versionfs.blob.files import fsync_dir

pytestmark = pytest.mark.fuse


@pytest.fixture
def disk(tmp_path):
    d = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt").start()
    try:
        yield d
    finally:
        d.stop()


def write(path: Path, data: bytes, sync: bool = True, offset: int | None = None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if offset is None else 0), 0o644)
    try:
        os.pwrite(fd, data, offset or 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def reboot(disk: PowerCutDisk) -> dict:
    report = disk.cut()
    disk.start()
    return report


# ---------------------------------------------------------------- the harness

def test_fsynced_write_survives_and_unsynced_write_is_lost(disk):
    m = disk.mountpoint
    write(m / "a", b"A" * 10_000)
    write(m / "b", b"B" * 10_000)
    fsync_dir(m)
    write(m / "a", b"x" * 100, sync=False, offset=5000)          # overwrite, lost
    write(m / "a", b"y" * 100, sync=False, offset=20_000)        # extension, lost
    write(m / "b", b"z" * 3, offset=9_999)                       # fsynced, kept
    os.truncate(m / "b", 10_001)                                 # unsynced shrink, lost
    assert (m / "a").stat().st_size == 20_100
    report = reboot(disk)
    assert (m / "a").read_bytes() == b"A" * 10_000
    assert (m / "b").read_bytes() == b"B" * 9_999 + b"zzz"
    assert report["reverted"]["a"] == {"writes": 2, "size": [20_100, 10_000], "durable name": True}
    assert report["lost"] == report["back"] == []


def test_unsynced_rename_is_lost(disk):
    m = disk.mountpoint
    (m / "d").mkdir()
    write(m / "d" / "old", b"content")
    write(m / "target", b"replaced?")
    fsync_dir(m / "d")
    fsync_dir(m)
    os.rename(m / "d" / "old", m / "target")
    os.rename(m / "target", m / "elsewhere")
    report = reboot(disk)
    assert (m / "d" / "old").read_bytes() == b"content"
    assert (m / "target").read_bytes() == b"replaced?"
    assert not (m / "elsewhere").exists()
    assert report["lost"] == ["elsewhere"] and report["back"] == ["d/old", "target"]


def test_synced_directory_entry_survives(disk):
    m = disk.mountpoint
    write(m / "new", b"data")                   # file fsynced, directory not: gone
    (m / "sub").mkdir()
    write(m / "sub" / "kept", b"kept")
    fsync_dir(m / "sub")
    fsync_dir(m)                                # now sub, sub/kept and new are all durable
    write(m / "sub" / "late", b"late")          # synced file, unsynced entry
    write(m / "sub" / "kept2", b"never synced", sync=False)
    fsync_dir(m / "sub")                        # entry durable, data not: empty file
    os.unlink(m / "new")                        # unsynced unlink: it comes back
    reboot(disk)
    assert (m / "new").read_bytes() == b"data"
    assert (m / "sub" / "kept").read_bytes() == b"kept"
    assert (m / "sub" / "late").read_bytes() == b"late"
    assert (m / "sub" / "kept2").read_bytes() == b""
    assert sorted(os.listdir(m)) == ["new", "sub"]


def test_a_rename_between_directories_is_one_change(disk):
    m = disk.mountpoint
    (m / "a").mkdir()
    (m / "b").mkdir()
    write(m / "a" / "f", b"f")
    fsync_dir(m / "a")
    fsync_dir(m)
    os.rename(m / "a" / "f", m / "b" / "g")
    fsync_dir(m / "b")                          # both sides commit, never two names
    reboot(disk)
    assert os.listdir(m / "a") == [] and (m / "b" / "g").read_bytes() == b"f"


def test_strict_names_need_the_directory_fsync(disk):
    m = disk.mountpoint
    write(m / "synced-file-unsynced-name", b"x")
    (m / "dir").mkdir()
    assert reboot(disk)["lost"] == ["dir", "synced-file-unsynced-name"]
    assert os.listdir(m) == []


def test_ext4_names_commit_with_the_file_in_log_order(tmp_path):
    d = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt", names="ext4").start()
    m = d.mountpoint
    try:
        (m / "dir").mkdir()
        write(m / "dir" / "first", b"1", sync=False)
        write(m / "dir" / "second", b"2")       # commits mkdir, both creates; first's data not
        write(m / "third", b"3")                # fsync below commits it too (log order)
        os.rename(m / "dir" / "second", m / "dir" / "renamed")   # after the last fsync: lost
        reboot(d)
        assert sorted(os.listdir(m)) == ["dir", "third"]
        assert (m / "dir" / "first").read_bytes() == b""
        assert (m / "dir" / "second").read_bytes() == b"2"
        assert (m / "third").read_bytes() == b"3"
    finally:
        d.stop()


def test_shared_mmap_and_msync(disk):
    m = disk.mountpoint
    write(m / "map", b"\0" * 8192)
    fsync_dir(m)
    with open(m / "map", "r+b") as f, mmap.mmap(f.fileno(), 8192) as mm:
        mm[0:5] = b"hello"
        mm.flush()                              # msync: durable
        mm[4096:4101] = b"never"                # written back maybe, never synced
    reboot(disk)
    data = (m / "map").read_bytes()
    assert data[:5] == b"hello" and data[4096:4101] == b"\0" * 5


def test_lmdb_works_and_keeps_committed_transactions(disk):
    import lmdb
    path = disk.mountpoint / "db"
    env = lmdb.open(str(path), map_size=1 << 24, metasync=False, sync=True)
    for i in range(50):
        with env.begin(write=True) as txn:
            txn.put(b"k%d" % i, b"v%d" % i * 100)
    env.close()
    fsync_dir(path)
    fsync_dir(disk.mountpoint)
    env = lmdb.open(str(path), map_size=1 << 24, sync=False)
    with env.begin(write=True) as txn:          # never synced: lost
        txn.put(b"unsynced", b"x")
    env.close()
    reboot(disk)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin() as txn:
        # NOMETASYNC may lose the last transaction, never corrupt; the unsynced one is gone
        assert txn.get(b"unsynced") is None
        assert [txn.get(b"k%d" % i) for i in range(49)] == [b"v%d" % i * 100 for i in range(49)]
    env.close()
