"""DiskStore and DirectoryStore on real files: atomic writes, verification,
LRU eviction with its guard, and the named-object API with conditional writes."""

import os
import threading

import pytest
from blob_checks import check_named_object_contract

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryBucket, DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.errors import (CorruptBlobError, NotFoundError,
                                   PreconditionFailedError, StoreFullError)
from versionfs.blob.pointer import Null, Pointer


@pytest.mark.parametrize("kind", [DiskStore, DirectoryStore])
def test_store_basics(tmp_path, kind):
    store = kind(tmp_path / "s")
    p = Pointer.random()
    assert not store.contains(p)
    with pytest.raises(NotFoundError, match=p.hex()):
        store.get(p)
    with pytest.raises(NotFoundError):
        store.get(Null)
    store.put(p, b"abc")
    store.put(p, b"abc")
    assert store.get(p) == b"abc" and store.contains(p)
    many = [(Pointer.random(), os.urandom(100)) for _ in range(20)]
    store.put_many(many)
    assert set(store.enumerate()) == {p} | {k for k, _ in many}
    store.delete(p)
    store.delete(p)
    assert not store.contains(p)
    reopened = kind(tmp_path / "s")
    assert set(reopened.enumerate()) == {k for k, _ in many}
    leftovers = [n for d in os.listdir(tmp_path / "s") for n in
                 (os.listdir(tmp_path / "s" / d) if (tmp_path / "s" / d).is_dir() else [])
                 if n.startswith(".tmp")]
    assert leftovers == []


def test_disk_store_fans_out_by_first_byte(tmp_path):
    store = DiskStore(tmp_path)
    p = Pointer.from_hex("ab" + "00" * 31)
    store.put(p, b"x")
    assert (tmp_path / "ab" / p.hex()).read_bytes() == b"x"


def test_corrupt_blob_on_disk_fails_naming_the_pointer(tmp_path):
    store = DiskStore(tmp_path)
    blobs = BlobStore(store, Codec(None))
    p = blobs.put(os.urandom(10_000))
    path = store.path_for(p)
    data = bytearray(open(path, "rb").read())
    data[5000] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CorruptBlobError, match=p.hex()):
        blobs.get(p)


def test_lru_eviction_respects_the_guard_and_reports_full(tmp_path):
    store = DiskStore(tmp_path, max_bytes=10_000)
    keys = [Pointer.random() for _ in range(10)]
    for k in keys:
        store.put(k, b"x" * 1000)
    assert store.used_bytes == 10_000
    store.get(keys[0])                      # now most recently used
    pinned = {keys[1], keys[2]}
    store.set_eviction_guard(lambda k: k in pinned)
    new = Pointer.random()
    store.put(new, b"y" * 1000)
    assert not store.contains(keys[3])      # the oldest unpinned blob went
    assert all(store.contains(k) for k in [keys[0], keys[1], keys[2], new])
    store.set_eviction_guard(lambda k: True)
    with pytest.raises(StoreFullError, match="not yet uploaded"):
        store.put(Pointer.random(), b"z" * 1000)
    with pytest.raises(StoreFullError):
        store.put(Pointer.random(), b"z" * 20_000)
    assert store.used_bytes == 10_000
    reopened = DiskStore(tmp_path, max_bytes=10_000)
    assert reopened.wait_scanned(30) and reopened.used_bytes == 10_000


@pytest.mark.parametrize("make", [
    lambda tmp: DirectoryBucket(tmp / "b"),
    lambda tmp: DirectoryStore(tmp / "d").bucket,
])
def test_directory_bucket_conditional_writes(tmp_path, make):
    bucket = make(tmp_path)
    check_named_object_contract(bucket)
    with pytest.raises(ValueError):
        bucket.put("../escape", b"x")


def test_directory_bucket_concurrent_conditional_writers_one_wins(tmp_path):
    bucket = DirectoryBucket(tmp_path)
    etag = bucket.put("cas", b"start")
    barrier = threading.Barrier(8)
    wins, losses = [], []

    def writer(i):
        barrier.wait()
        try:
            bucket.put_if_match("cas", b"writer %d" % i, etag)
            wins.append(i)
        except PreconditionFailedError:
            losses.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert bucket.get("cas")[0] == b"writer %d" % wins[0]
