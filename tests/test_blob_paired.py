"""Paired fast/slow store: journal, background uploads, eviction, faults.

Real parts throughout: DiskStore on tmp_path, DirectoryStore or the SeaweedFS
server as the slow store, a real subprocess killed with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from versionfs.blob import journal as journal_mod
from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.errors import (NotFoundError, ReadOnlyError, StoreFullError,
                                   StoreUnavailableError)
from versionfs.blob.paired import Paired
from versionfs.blob.pointer import Pointer
from versionfs.blob.s3 import S3Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_pair(tmp_path, slow=None, journal=True, **kw):
    fast = DiskStore(tmp_path / "fast", max_bytes=kw.pop("max_bytes", None))
    slow = slow if slow is not None else DirectoryStore(tmp_path / "slow")
    return Paired(fast, slow, tmp_path / "upload.journal" if journal else None, **kw)


def blobs(n, size=1000):
    return [(Pointer.random(), os.urandom(size)) for _ in range(n)]


def test_put_uploads_in_background_and_flush_waits(tmp_path):
    pair = make_pair(tmp_path)
    items = blobs(50)
    pair.put_many(items[:10])
    for key, data in items[10:]:
        pair.put(key, data)
    st = pair.status()
    assert st["pending_count"] == 50 and st["pending_bytes"] == 50_000
    assert all(pair.is_pending(k) for k, _ in items)
    pair.flush(timeout=30)
    st = pair.status()
    assert st["pending_count"] == 0 and st["last_upload_ok"] and st["uploaded_count"] == 50
    assert all(pair.slow.get(k) == d for k, d in items)
    assert all(pair.get(k) == d for k, d in items)
    assert set(pair.enumerate()) == {k for k, _ in items}
    pair.close()
    assert os.path.getsize(tmp_path / "upload.journal") > 0
    reopened = make_pair(tmp_path)
    assert reopened.status()["pending_count"] == 0
    reopened.close()


def test_without_journal_the_pair_is_read_only_but_reads_and_copies_back(tmp_path):
    slow = DirectoryStore(tmp_path / "slow")
    key, data = blobs(1)[0]
    slow.put(key, data)
    pair = make_pair(tmp_path, slow=slow, journal=False)
    with pytest.raises(ReadOnlyError):
        pair.put(Pointer.random(), b"x")
    assert not pair.fast.contains(key)
    assert pair.get(key) == data
    assert pair.fast.contains(key)
    with pytest.raises(NotFoundError):
        pair.get(Pointer.random())
    assert pair.status()["read_only"]


def test_delete_removes_from_slow_then_fast_and_cancels_pending(tmp_path):
    pair = make_pair(tmp_path)
    (k1, d1), (k2, d2) = blobs(2)
    pair.put(k1, d1)
    pair.flush(timeout=30)
    pair.put(k2, d2)                     # pending: never started uploading
    pair.close()
    pair = make_pair(tmp_path)
    assert pair.is_pending(k2)
    pair.delete(k1)
    pair.delete(k2)
    assert not pair.is_pending(k2)
    for store in (pair.fast, pair.slow):
        assert not store.contains(k1) and not store.contains(k2)
    pair.flush(timeout=30)
    pair.close()
    assert make_pair(tmp_path).status()["pending_count"] == 0


def test_journal_replay_torn_tail_and_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "COMPACT_MIN_RECORDS", 16)
    pair = make_pair(tmp_path)
    items = blobs(30)
    pair.put_many(items)
    pair.close()
    with open(tmp_path / "upload.journal", "ab") as f:
        f.write(b"\x01" + b"torn" * 5)       # a crash in the middle of an append
    pair = make_pair(tmp_path)
    assert pair.status()["pending_count"] == 30
    pair.flush(timeout=30)
    assert all(pair.slow.get(k) == d for k, d in items)
    more = blobs(5)
    pair.put_many(more)
    pair.flush(timeout=30)
    size = os.path.getsize(tmp_path / "upload.journal")
    assert size < 10 * journal_mod.RECORD_SIZE, "journal was not compacted"
    pair.close()
    assert make_pair(tmp_path).status()["pending_count"] == 0


def test_damaged_journal_record_triggers_reconcile_not_loss(tmp_path):
    pair = make_pair(tmp_path)
    items = blobs(3)
    pair.put_many(items)
    pair.close()
    path = tmp_path / "upload.journal"
    raw = bytearray(path.read_bytes())
    raw[journal_mod.RECORD_SIZE + 5] ^= 0xFF    # damage the second put record
    path.write_bytes(bytes(raw))
    pair = make_pair(tmp_path)
    assert pair.status()["pending_count"] == 2
    pair.start()
    deadline = time.monotonic() + 30
    while not all(pair.slow.contains(k) for k, _ in items):
        assert time.monotonic() < deadline, "reconcile did not upload the unlisted blob"
        time.sleep(0.05)
    pair.flush(timeout=30)
    pair.close()


def test_fast_store_never_evicts_pending_blobs_and_reports_full(tmp_path):
    pair = make_pair(tmp_path, max_bytes=10_000, full_wait=0.2)
    items = blobs(10)
    pair.put_many(items)
    with pytest.raises(StoreFullError):
        pair.put(Pointer.random(), os.urandom(1000))    # uploads not started
    pair.start()
    with pytest.raises(StoreFullError):
        pair.put(Pointer.random(), os.urandom(20_000))  # larger than the whole cache
    assert pair.status()["fast_bytes"] <= 10_000
    more = blobs(10)
    for key, data in more:                              # waits for uploads to free room
        pair.put(key, data)
    pair.flush(timeout=30)
    assert all(pair.slow.get(k) == d for k, d in items + more)
    assert all(pair.get(k) == d for k, d in items + more)
    st = pair.status()
    assert st["fast_bytes"] <= st["fast_limit"] == 10_000
    pair.close()


def test_bounded_queue_applies_back_pressure(tmp_path):
    pair = make_pair(tmp_path, max_pending=4)
    items = blobs(5)
    pair.put_many(items[:4])
    with pytest.raises(StoreFullError, match="not started"):
        pair.put(*items[4])
    pair.start()
    for key, data in blobs(40):
        pair.put(key, data)
        assert pair.status()["pending_count"] <= 4
    pair.flush(timeout=30)
    pair.close()


def test_corrupt_fast_copy_is_repaired_from_slow(tmp_path, shm_dir):
    # The slow store on another file system (tmpfs), so that it holds a second
    # physical copy: on the fast store's own file system uploads are hard links
    # to the same inode (test_blob_linked.py covers damage there).
    pair = make_pair(tmp_path, slow=DirectoryStore(shm_dir))
    store = BlobStore(pair, Codec(None))
    data = os.urandom(5000)
    p = store.put(data)
    pair.flush(timeout=30)
    path = pair.fast.path_for(p)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 10)
    assert store.get(p) == data
    assert store.get(p) == data and pair.fast.get(p) == pair.slow.get(p)
    pair.close()


@pytest.mark.s3
def test_unreachable_slow_store_is_store_unavailable(tmp_path, monkeypatch):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    slow = S3Store(f"s3://nobucket/p?endpoint=http://127.0.0.1:{port}")
    pair = make_pair(tmp_path, slow=slow)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        pair.get(Pointer.random())
    pair.close()


@pytest.mark.s3
def test_s3_outage_while_uploads_pending_everything_arrives(tmp_path, s3_server, s3_url):
    pair = make_pair(tmp_path, slow=S3Store(s3_url), retry_max_wait=0.5)
    pair.start()
    items = blobs(20, size=20_000)
    try:
        pair.put_many(items[:5])
        s3_server.stop()
        for key, data in items[5:]:             # keep writing while the bucket is gone
            pair.put(key, data)
        assert all(pair.get(k) == d for k, d in items)   # reads come from fast
        time.sleep(1.0)
        st = pair.status()
        assert st["pending_count"] > 0 and "retrying" in st["last_error"]
    finally:
        if s3_server.proc is None:
            s3_server.start()
    pair.flush(timeout=60)
    check = S3Store(s3_url)
    assert all(check.get(k) == d for k, d in items)
    pair.close()


KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from versionfs.blob.disk import DiskStore
    from versionfs.blob.paired import Paired
    from versionfs.blob.s3 import S3Store
    from versionfs.blob.pointer import Pointer
    base, url = sys.argv[1], sys.argv[2]
    pair = Paired(DiskStore(base + "/fast"), S3Store(url), base + "/upload.journal")
    with open(base + "/expected", "w") as out:
        for i in range(40):
            data = os.urandom(3000)
            key = Pointer.random()
            pair.put(key, data)         # uploads never started: all stay journaled
            out.write(key.hex() + " " + data.hex() + "\\n")
            out.flush()
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.mark.s3
def test_kill_9_with_non_empty_journal_then_restart_uploads_everything(tmp_path, s3_url):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER.format(root=ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), s3_url],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    expected = [line.split() for line in (tmp_path / "expected").read_text().splitlines()]
    assert len(expected) == 40
    assert os.path.getsize(tmp_path / "upload.journal") > 0
    pair = make_pair(tmp_path, slow=S3Store(s3_url))
    assert pair.status()["pending_count"] == 40
    pair.flush(timeout=60)
    check = S3Store(s3_url)
    for key_hex, data_hex in expected:
        assert check.get(Pointer.from_hex(key_hex)) == bytes.fromhex(data_hex)
    pair.close()


def test_concurrent_puts_of_same_and_different_blobs(tmp_path):
    pair = make_pair(tmp_path, max_bytes=200_000)
    pair.start()
    shared = blobs(5)
    errors = []

    def writer():
        try:
            for key, data in shared + blobs(30):
                pair.put(key, data)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pair.flush(timeout=30)
    assert pair.status()["pending_count"] == 0
    assert all(pair.slow.get(k) == d for k, d in shared)
    pair.close()
