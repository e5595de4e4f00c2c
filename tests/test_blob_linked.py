"""Uploads into a `file://` slow store on the fast store's file system are hard
links (versionfs/blob/linked.py); elsewhere they are copies.

Real parts: DiskStore and DirectoryStore on tmp_path (one ext4 file system),
a DirectoryStore on /dev/shm (tmpfs: another file system), a real codec.
"""

import os

import pytest

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.errors import CorruptBlobError
from versionfs.blob.paired import Paired


def make(tmp_path, slow_root=None, max_bytes=None):
    fast = DiskStore(tmp_path / "fast", max_bytes=max_bytes)
    slow = DirectoryStore(slow_root or tmp_path / "slow")
    pair = Paired(fast, slow, tmp_path / "upload.journal")
    return pair, BlobStore(pair, Codec(None))


def test_uploads_are_hard_links_that_verify(tmp_path):
    pair, blobs = make(tmp_path)
    contents = [os.urandom(50_000) for _ in range(5)]
    pointers = blobs.put_many(contents)
    pair.flush(timeout=30)
    st = pair.status()
    assert (st["uploads_linked"], st["uploads_copied"]) == (5, 0)
    for p, data in zip(pointers, contents):
        fast_path, slow_path = pair.fast.path_for(p), pair.slow.path_for(p)
        assert os.path.samefile(fast_path, slow_path)
        assert os.stat(slow_path).st_nlink == 2
        assert Codec(None).decode(p, pair.slow.get(p)) == data
    assert not [n for d in os.listdir(pair.slow.root) for n in os.listdir(pair.slow.root / d)
                if n.startswith(".tmp-")], "a temp link was left behind"
    pair.close()


def test_linking_a_blob_linked_before_leaves_no_temp_link(tmp_path):
    """An upload redone after a crash links the same inode over a name that
    already is that inode: rename() then does nothing (POSIX), and the temp
    name must not stay behind (tests/test_powercut.py found blobs with three
    names after a power cut during upload)."""
    pair, blobs = make(tmp_path)
    p = blobs.put(os.urandom(50_000))
    pair.flush(timeout=30)
    fd = pair.fast.open_blob(p)
    try:
        pair.slow.link_blob(p, fd)               # again, as a redone upload does
    finally:
        os.close(fd)
    slow_path = pair.slow.path_for(p)
    assert os.stat(slow_path).st_nlink == 2
    assert [n for n in os.listdir(os.path.dirname(slow_path)) if n.startswith(".tmp-")] == []
    pair.close()


def test_eviction_from_the_fast_store_keeps_the_slow_copy(tmp_path):
    pair, blobs = make(tmp_path, max_bytes=200_000)
    pair.start()
    first = os.urandom(150_000)
    p = blobs.put(first)
    pair.flush(timeout=30)
    slow_path = pair.slow.path_for(p)
    assert os.stat(slow_path).st_nlink == 2
    blobs.put(os.urandom(150_000))           # no room for both: the uploaded one is evicted
    pair.flush(timeout=30)
    assert not pair.fast.contains(p)
    assert os.stat(slow_path).st_nlink == 1
    assert blobs.get(p) == first              # from slow, verified, cached again
    pair.close()


def test_a_damaged_fast_copy_is_never_linked(tmp_path):
    pair, blobs = make(tmp_path)
    p = blobs.put(os.urandom(50_000))
    path = pair.fast.path_for(p)
    with open(path, "r+b") as f:              # rot in place, before the upload starts
        f.seek(1000)
        f.write(b"\xff" * 16)
    pair.start()
    assert not pair.wait_durable([p], timeout=2)
    assert not pair.slow.contains(p)
    st = pair.status()
    assert st["uploads_linked"] == 0 and st["unuploadable"] == 1
    pair.close()


def test_rot_in_a_linked_blob_is_an_error_naming_it(tmp_path):
    """One inode, one physical copy: damage to it after the upload cannot be
    repaired from the slow store on the same disk, but it is never served."""
    pair, blobs = make(tmp_path)
    p = blobs.put(os.urandom(50_000))
    pair.flush(timeout=30)
    with open(pair.fast.path_for(p), "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 16)
    with pytest.raises(CorruptBlobError, match=p.hex()):
        blobs.get(p)
    pair.close()


def test_another_file_system_gets_copies(tmp_path, shm_dir):
    pair, blobs = make(tmp_path, slow_root=shm_dir)
    p = blobs.put(os.urandom(50_000))
    pair.flush(timeout=30)
    st = pair.status()
    assert (st["uploads_linked"], st["uploads_copied"]) == (0, 1)
    assert os.stat(pair.slow.path_for(p)).st_nlink == 1
    pair.close()
