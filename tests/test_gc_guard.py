"""GCGuard and the known-blobs index, on real stores (DiskStore + DirectoryStore in a Paired)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.paired import Paired
from versionfs.maint.gc import GCError, GCGuard, KnownBlobIndex, note_live


class GatedSlow(DirectoryStore):
    """A real directory store whose delete waits for a gate, and whose put waits
    for ``put_gate`` (open unless a test closes it): they only make the
    interleaving of a put with an in-progress delete, or with an upload,
    deterministic."""

    def __init__(self, path):
        super().__init__(path)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.put_gate = threading.Event()
        self.put_gate.set()

    def put(self, key, data):
        assert self.put_gate.wait(10)
        super().put(key, data)

    def delete_many(self, keys):
        self.entered.set()
        assert self.gate.wait(10)
        super().delete_many(keys)


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """The thread is blocked in a Condition wait called from ``function``
    (its live stack, as the interpreter has it)."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return function in names and "wait" in names


@pytest.fixture
def stores(tmp_path):
    slow = GatedSlow(tmp_path / "slow")
    paired = Paired(DiskStore(tmp_path / "fast"), slow, tmp_path / "journal")
    paired.start()
    blobs = BlobStore(paired, Codec(None))
    yield blobs, paired, slow
    paired.close()


def test_install_is_idempotent_and_delegates(stores):
    blobs, paired, slow = stores
    guard = GCGuard.install(blobs)
    assert GCGuard.install(blobs) is guard and blobs.store is guard
    slow.put_gate.clear()                      # the upload cannot finish yet
    p = blobs.put(b"hello")
    assert blobs.get(p) == b"hello"
    assert guard.is_pending(p) is True and guard.status()["pending_count"] == 1
    slow.put_gate.set()
    paired.flush(10)
    assert guard.is_pending(p) is False and guard.status()["pending_count"] == 0
    assert slow.contains(p)


def test_a_put_during_the_epoch_protects_its_blob(stores):
    blobs, paired, slow = stores
    slow.gate.set()
    guard = GCGuard.install(blobs)
    p = blobs.put(b"old content")
    paired.flush(10)
    guard.begin()
    with pytest.raises(GCError, match="already running"):
        guard.begin()
    assert blobs.put(b"old content") == p          # a dedup put: no bytes written
    assert guard.delete_unless_recent([p]) == []
    assert blobs.get(p) == b"old content"
    q = blobs.put(b"other")
    paired.flush(10)
    guard.end()
    guard.begin()                                  # a new epoch starts with nothing recent
    assert guard.delete_unless_recent([q]) == [q]
    assert not paired.contains(q)
    guard.end()


def test_note_live_protects_without_a_put(stores):
    blobs, paired, slow = stores
    slow.gate.set()
    p = blobs.put(b"restored from a snapshot")
    paired.flush(10)
    guard = GCGuard.install(blobs)
    note_live(blobs, [p])                          # no epoch: costs nothing, keeps nothing
    guard.begin()
    note_live(blobs, [p])
    assert guard.delete_unless_recent([p]) == []
    guard.end()


def test_a_put_waits_for_a_delete_in_progress_and_then_rewrites_the_blob(stores):
    blobs, paired, slow = stores
    guard = GCGuard.install(blobs)
    p = blobs.put(b"contended")
    paired.flush(10)
    guard.begin()
    deleter = threading.Thread(target=guard.delete_unless_recent, args=([p],))
    deleter.start()
    assert slow.entered.wait(10)                   # the delete has started
    done = threading.Event()
    threading.Thread(target=lambda: (blobs.put(b"contended"), done.set())).start()
    # The put has noted its blob (under the guard's lock, which it gives up only
    # to wait for the delete): from then on it can only be waiting.
    deadline = time.monotonic() + 10
    while p.bytes not in guard.recent():
        assert time.monotonic() < deadline, "the put never reached the guard"
        time.sleep(0.01)
    assert not done.is_set(), "a put returned while its blob was being deleted"
    slow.gate.set()
    deleter.join(10)
    assert done.wait(10)
    paired.flush(10)
    assert blobs.get(p) == b"contended"
    assert slow.contains(p)
    guard.end()


def test_known_index_round_trip_and_damage(tmp_path):
    idx = KnownBlobIndex(tmp_path / "gc" / "known-blobs")
    assert idx.load() is None
    keys = {bytes([i]) * 32 for i in range(100)}
    idx.save(keys)
    assert idx.load() == keys
    raw = bytearray(idx.path.read_bytes())
    raw[-5] ^= 1
    idx.path.write_bytes(bytes(raw))
    assert idx.load() is None                      # damaged: gc lists the slow store instead
    idx.path.write_bytes(b"junk")
    assert idx.load() is None


def test_s3_delete_many_batches_past_a_thousand_and_ignores_missing(s3_url):
    from concurrent.futures import ThreadPoolExecutor

    from versionfs.blob.pointer import Pointer
    from versionfs.blob.s3 import S3Store
    store = S3Store(s3_url)
    try:
        keys = [Pointer.random() for _ in range(1005)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put(k, b"x"), keys))
        missing = Pointer.random()
        store.delete_many(keys[:1003] + [missing])
        assert set(store.enumerate()) == set(keys[1003:])
    finally:
        store.close()


def test_paired_delete_many_removes_from_both_stores_and_the_upload_queue(tmp_path):
    from versionfs.blob.pointer import Pointer
    fast = DiskStore(tmp_path / "fast")
    paired = Paired(fast, DirectoryStore(tmp_path / "slow"), tmp_path / "journal")
    try:
        blobs = BlobStore(paired, Codec(None))
        uploaded = [blobs.put(b"u%d" % i) for i in range(20)]
        paired.start()
        paired.flush(10)
        pending = blobs.put(b"maybe not uploaded yet")
        used = fast.used_bytes
        paired.delete_many(uploaded + [pending, Pointer.random()])
        for p in uploaded + [pending]:
            assert not fast.contains(p) and not paired.slow.contains(p)
            assert not paired.is_pending(p)
        assert fast.used_bytes < used
        paired.flush(10)                             # nothing left to upload, nothing stuck
    finally:
        paired.close()


def test_referencing_write_in_flight_holds_back_a_collection(stores):
    """A restore-style write (extents pointing at existing blobs, no put) either
    lands before the epoch opens or is noted in it: begin() waits for it."""
    blobs, _paired, _slow = stores
    guard = GCGuard.install(blobs)
    ptr = blobs.put(b"shared by a snapshot and a restore")
    inside, release, begun = threading.Event(), threading.Event(), threading.Event()

    def restore_batch():
        with guard.referencing([ptr.bytes]):
            inside.set()
            assert release.wait(10)     # the metadata write would happen here

    writer = threading.Thread(target=restore_batch)
    writer.start()
    assert inside.wait(10)
    collector = threading.Thread(target=lambda: (guard.begin(), begun.set()))
    collector.start()
    deadline = time.monotonic() + 10
    while not waiting_in(collector, "begin"):
        assert time.monotonic() < deadline, "begin() never came to wait"
        time.sleep(0.01)
    assert not begun.is_set()           # marking cannot start mid-write
    release.set()
    writer.join(10)
    assert begun.wait(10)
    collector.join(10)
    with guard.referencing([ptr.bytes]):    # inside an epoch: noted at once
        pass
    assert ptr.bytes in guard.recent()
    guard.end()
