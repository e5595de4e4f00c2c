"""Backend on real LMDB files: batching, snapshots, hash/size/defrag, quota, backup, full disk."""

import errno
import io
import os
import subprocess
import time

import pytest

from versionfs.meta.backend.backend import Backend
from versionfs.meta.backend.errors import (
    BackendLockedError,
    DiskFullError,
    QuotaExceededError,
)
from versionfs.meta.mvcc.store import MVCCStore

B = b"data"


def open_backend(path, **kw):
    kw.setdefault("buckets", (B,))
    return Backend(str(path), **kw)


def put_many(b, n, prefix=b"k", size=50, index=None):
    with b.batch_tx() as tx:
        for i in range(n):
            tx.put(B, prefix + b"%08d" % i, b"v" * size)
        if index is not None:
            tx.set_applied_index(index)


def count(b):
    with b.read_snapshot() as s:
        return sum(1 for _ in s.range(B, b""))


def test_batches_commit_by_limit_and_by_interval(tmp_path):
    b = open_backend(tmp_path / "a", batch_interval=3600, batch_limit=100)
    try:
        put_many(b, 99, index=1)
        time.sleep(0.1)
        assert count(b) == 0  # neither limit nor interval reached
        put_many(b, 1, prefix=b"x", index=2)
        deadline = time.time() + 5
        while count(b) != 100 and time.time() < deadline:
            time.sleep(0.01)
        assert count(b) == 100 and b.applied_index == 2
    finally:
        b.close()
    b = open_backend(tmp_path / "b", batch_interval=0.05, batch_limit=10**9)
    try:
        put_many(b, 5, index=7)
        time.sleep(0.3)
        assert count(b) == 5 and b.applied_index == 7
    finally:
        b.close()
    b = open_backend(tmp_path / "b")
    assert b.applied_index == 7  # recorded in the same transaction as the data
    b.close()


def test_snapshot_is_consistent_while_writes_go_on(tmp_path):
    b = open_backend(tmp_path / "a", batch_interval=0.001)
    try:
        put_many(b, 1000)
        b.commit()
        with b.read_snapshot() as snap:
            put_many(b, 2000, prefix=b"z")
            b.commit()
            assert sum(1 for _ in snap.range(B, b"")) == 1000
            assert snap.get(B, b"z00000001") is None
        assert count(b) == 3000
    finally:
        b.close()


def test_hash_size_defrag(tmp_path):
    a = open_backend(tmp_path / "a")
    c = open_backend(tmp_path / "c")
    try:
        put_many(a, 5000, index=3)
        put_many(c, 5000, index=99)
        a.commit()
        c.commit()
        assert a.hash() == c.hash()  # applied index is ignored
        with c.batch_tx() as tx:
            tx.put(B, b"k00000001", b"different")
        c.commit()
        assert a.hash() != c.hash()
        # delete most of it: the file keeps its size until defrag
        with a.batch_tx() as tx:
            for i in range(100, 5000):
                tx.delete(B, b"k%08d" % i)
        a.commit()
        h = a.hash()
        before = a.size()
        in_use = a.size_in_use()
        assert in_use < before
        a.defrag()
        assert a.size() < before / 4
        assert a.hash() == h and count(a) == 100
        put_many(a, 10, prefix=b"after")  # still writable after the swap
        a.commit()
        assert count(a) == 110
    finally:
        a.close()
        c.close()
    with pytest.raises(BackendLockedError):
        x = open_backend(tmp_path / "a")
        open_backend(tmp_path / "a")
    x.close()


def test_backup_round_trip(tmp_path):
    a = open_backend(tmp_path / "a")
    try:
        put_many(a, 3000, index=42)
        a.commit()
        buf = io.BytesIO()
        n = a.backup_to(buf)
        assert n == len(buf.getvalue()) > 0
        h = a.hash()
    finally:
        a.close()
    buf.seek(0)
    Backend.restore(buf, str(tmp_path / "r"))
    r = open_backend(tmp_path / "r")
    try:
        assert r.hash() == h and r.applied_index == 42 and count(r) == 3000
    finally:
        r.close()
    with pytest.raises(FileExistsError):
        Backend.restore(io.BytesIO(b""), str(tmp_path / "r"))
    with pytest.raises(Exception, match="not a valid LMDB"):
        Backend.restore(io.BytesIO(b"garbage" * 1000), str(tmp_path / "bad"))


def test_quota_fails_writes_cleanly(tmp_path):
    path = str(tmp_path / "m")
    s = MVCCStore.open(path, quota_bytes=1 << 20, batch_interval=0.01)
    stored = 0
    with pytest.raises(QuotaExceededError) as info:
        for i in range(100000):
            s.put(b"key%08d" % i, b"x" * 200)
            stored = i + 1
    err = info.value
    assert err.errno == errno.ENOSPC and "quota" in str(err)
    assert stored > 100
    # nothing half-written: the failed put is absent, everything before is there
    assert s.get(b"key%08d" % stored) is None
    assert s.get(b"key%08d" % (stored - 1)) == b"x" * 200
    s.delete(b"key00000000")  # deletions still go through
    s.snapshot("still-works")
    s.close()
    s = MVCCStore.open(path, quota_bytes=1 << 20)
    try:
        assert s.get(b"key%08d" % (stored - 1)) == b"x" * 200
        assert s.get(b"key00000000") is None
        assert sum(1 for _ in s.range(b"key", b"kez")) == stored - 1
        with pytest.raises(QuotaExceededError):
            s.put(b"more", b"x" * 200)
    finally:
        s.close()
    s = MVCCStore.open(path, quota_bytes=64 << 20)  # a bigger quota lets writes through again
    s.put(b"more", b"x" * 200)
    s.close()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real, really small filesystem (tmpfs) to run out of space on."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk(tiny_fs, tmp_path):
    path = str(tiny_fs / "m")
    s = MVCCStore.open(path, quota_bytes=1 << 30, batch_interval=0.01)
    stored = 0
    with pytest.raises(DiskFullError) as info:
        for i in range(10**6):
            with s.write() as b:
                b.put(b"key%08d" % i, b"y" * 300)
            stored = i + 1
            if i % 100 == 0:
                s.sync()
    assert info.value.errno == errno.ENOSPC and "no space" in str(info.value)
    assert stored > 100
    assert s.get(b"key%08d" % (stored - 1)) == b"y" * 300  # reads go on
    try:
        s.close()
    except DiskFullError:
        pass  # the last batch could not reach LMDB; the WAL still has it
    # Reopen on the still-full disk: it opens and every write made is readable.
    s = MVCCStore.open(path, quota_bytes=1 << 30)
    try:
        assert s.get(b"key%08d" % (stored - 1)) == b"y" * 300
        assert s.get(b"key%08d" % stored) is None
        assert sum(1 for _ in s.range(b"key", b"kez")) == stored
    finally:
        try:
            s.close()
        except DiskFullError:
            pass
