"""Deferred durability: blobs stored without fsync, made durable by one barrier.

The fs layer stores a seal's chunks with ``put_many_deferred`` and calls
``sync_deferred`` (``BlobStore.barrier``) before it writes the metadata that
refers to them. These tests pin down what that must guarantee: until the
barrier no blob exists under its real name (so a crash cannot leave a torn
blob that a later put of the same content would trust) and the upload journal
does not list it; after the barrier it is durable, journaled and uploaded; and
a durable put of a blob that is still staged does not return before it is safe.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.files import TEMP_PREFIX
from versionfs.blob.journal import UploadJournal
from versionfs.blob.paired import Paired
from versionfs.blob.pointer import Pointer


def _key(data: bytes) -> Pointer:
    return Codec(None).pointer_for(data)


def _temps(root) -> list[str]:
    return [n for _, _, names in os.walk(root) for n in names if n.startswith(TEMP_PREFIX)]


def test_staged_blob_is_readable_but_has_no_name_until_the_barrier(tmp_path):
    store = DiskStore(tmp_path / "fast")
    key = _key(b"a")
    store.put_many_deferred([(key, b"stored a")])
    assert store.get(key) == b"stored a"
    assert store.contains(key)
    assert not os.path.exists(store.path_for(key))
    assert len(_temps(tmp_path / "fast")) == 1
    store.sync_deferred()
    assert open(store.path_for(key), "rb").read() == b"stored a"
    assert store.get(key) == b"stored a"
    assert _temps(tmp_path / "fast") == []


def test_durable_put_of_a_staged_blob_makes_it_durable_before_returning(tmp_path):
    store = DiskStore(tmp_path / "fast")
    key = _key(b"b")
    store.put_many_deferred([(key, b"stored b")])
    store.put_many([(key, b"stored b")])           # dedup must not skip durability
    assert open(store.path_for(key), "rb").read() == b"stored b"
    assert _temps(tmp_path / "fast") == []


def test_deleting_a_staged_blob_drops_it_for_good(tmp_path):
    store = DiskStore(tmp_path / "fast")
    k1, k2 = _key(b"c1"), _key(b"c2")
    store.put_many_deferred([(k1, b"c1"), (k2, b"c2")])
    store.delete(k1)
    store.sync_deferred()
    assert not store.contains(k1) and not os.path.exists(store.path_for(k1))
    assert store.get(k2) == b"c2"
    assert _temps(tmp_path / "fast") == []


_CRASHER = textwrap.dedent("""
    import os, sys
    from versionfs.blob.blobstore import BlobStore
    from versionfs.blob.codec import Codec
    from versionfs.blob.directory import DirectoryStore
    from versionfs.blob.disk import DiskStore
    from versionfs.blob.paired import Paired
    root, barrier = sys.argv[1], sys.argv[2] == "1"
    pair = Paired(DiskStore(root + "/fast"), DirectoryStore(root + "/slow"), root + "/journal")
    blobs = BlobStore(pair, Codec(None))
    ptrs = blobs.put_many_deferred([b"one" * 1000, b"two" * 1000])
    if barrier:
        blobs.barrier()
    print(" ".join(p.hex() for p in ptrs), flush=True)
    os._exit(0)                      # no close, no flush: as abrupt as kill -9
""")


def _crash_after_put(tmp_path, barrier: bool) -> list[Pointer]:
    out = subprocess.run([sys.executable, "-c", _CRASHER, str(tmp_path), "1" if barrier else "0"],
                         check=True, capture_output=True, text=True).stdout
    return [Pointer.from_hex(h) for h in out.split()]


def test_crash_before_the_barrier_leaves_no_blob_and_no_journal_record(tmp_path):
    keys = _crash_after_put(tmp_path, barrier=False)
    assert dict(UploadJournal(tmp_path / "journal").replay()) == {}
    fast = DiskStore(tmp_path / "fast")
    assert not any(fast.contains(k) for k in keys)
    # The same content put again is really written, not deduplicated against a leftover.
    pair = Paired(fast, DirectoryStore(tmp_path / "slow"), tmp_path / "journal2")
    blobs = BlobStore(pair, Codec(None))
    assert blobs.put(b"one" * 1000) == keys[0]
    assert open(fast.path_for(keys[0]), "rb").read()
    pair.close()


def test_crash_after_the_barrier_keeps_blobs_and_uploads_them(tmp_path):
    keys = _crash_after_put(tmp_path, barrier=True)
    assert set(UploadJournal(tmp_path / "journal").replay()) == set(keys)
    pair = Paired(DiskStore(tmp_path / "fast"), DirectoryStore(tmp_path / "slow"),
                  tmp_path / "journal")
    blobs = BlobStore(pair, Codec(None))
    assert blobs.get(keys[0]) == b"one" * 1000
    pair.flush(timeout=30)
    slow = DirectoryStore(tmp_path / "slow")
    assert all(slow.contains(k) for k in keys)
    pair.close()


def test_flush_runs_the_barrier_and_uploads_deferred_blobs(tmp_path):
    pair = Paired(DiskStore(tmp_path / "fast"), DirectoryStore(tmp_path / "slow"),
                  tmp_path / "journal")
    blobs = BlobStore(pair, Codec(None))
    ptrs = blobs.put_many_deferred([b"x" * 5000, b"y" * 5000])
    assert all(pair.is_pending(p) for p in ptrs)
    pair.flush(timeout=30)
    assert not any(pair.is_pending(p) for p in ptrs)
    assert all(DirectoryStore(tmp_path / "slow").contains(p) for p in ptrs)
    assert all(os.path.exists(pair.fast.path_for(p)) for p in ptrs)
    pair.close()
