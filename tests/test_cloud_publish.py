"""Publisher and restore_meta on real stores (LMDB, WAL, DirectoryStore / SeaweedFS), no FUSE."""

from __future__ import annotations

import os

import pytest

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.paired import Paired
from versionfs.blob.s3 import S3Store
from versionfs.bucket import publish
from versionfs.meta.mvcc.store import MVCCStore
from versionfs.meta.wal.decode import read_entries
from versionfs.meta.wal.errors import IndexNotFoundError


def _dump(store: MVCCStore) -> dict:
    out = {"head": dict(store.range(b"")), "revs": {}}
    for info in store.revisions():
        out["revs"][(info.rev, info.name)] = dict(store.range(b"", rev=info.rev))
    return out


class Rig:
    def __init__(self, tmp_path, slow, codec, start=True, **meta_opts):
        self.tmp = tmp_path
        self.slow = slow
        self.codec = codec
        self.paired = Paired(DiskStore(tmp_path / "fast"), slow, tmp_path / "journal")
        if start:
            self.paired.start()
        self.blobs = BlobStore(self.paired, codec)
        self.meta = MVCCStore.open(str(tmp_path / "meta"), **meta_opts)
        self.pub = publish.Publisher(self.meta, self.paired, slow.bucket, codec,
                                     str(tmp_path / publish.RECORD_NAME), fs_id="fs1")
        self.pub.open()

    def write_file(self, name: bytes, data: bytes) -> None:
        ptr = self.blobs.put(data)            # blob first, then the metadata naming it
        self.meta.put(b"f/" + name, ptr.bytes)

    def close(self):
        self.meta.close()
        self.paired.close()


def _restore(rig: Rig, where) -> MVCCStore:
    kv = publish.bucket_kv(rig.slow.bucket)
    _pair, head = publish.read_head(kv, rig.codec)
    publish.restore_meta(rig.slow.bucket, rig.codec, str(where), head)
    return MVCCStore.open(str(where))


def test_publish_then_restore_gives_every_revision(tmp_path):
    rig = Rig(tmp_path, DirectoryStore(tmp_path / "slow"), Codec(None))
    try:
        rig.write_file(b"a", b"one")
        rig.meta.snapshot("s1")
        assert rig.pub.publish(timeout=30)            # first publish: a checkpoint
        rig.write_file(b"a", b"two")
        rig.write_file(b"b", b"x" * 10000)
        rig.meta.snapshot("s2")
        rig.meta.delete(b"f/b")
        assert rig.pub.publish(timeout=30)            # WAL objects on top
        assert not rig.pub.publish(timeout=30)        # nothing new
        want = _dump(rig.meta)
        restored = _restore(rig, tmp_path / "restored")
        try:
            assert _dump(restored) == want
            assert restored.head == rig.meta.head
            assert restored.last_index == rig.meta.last_index
            # every blob the published metadata names is on the slow store
            for key, value in restored.range(b"f/"):
                assert rig.slow.contains(value)
        finally:
            restored.close()
    finally:
        rig.close()


def test_nothing_is_published_before_its_blobs_are_durable(tmp_path):
    rig = Rig(tmp_path, DirectoryStore(tmp_path / "slow"), Codec(None), start=False)
    try:
        rig.write_file(b"a", b"payload")
        with pytest.raises(publish.BlobsNotDurableError):
            rig.pub.publish(timeout=0.5)
        assert publish.read_head(publish.bucket_kv(rig.slow.bucket), rig.codec) is None
        assert not list(rig.slow.bucket.list("meta/"))      # failed publish left nothing behind
        rig.paired.start()
        assert rig.pub.publish(timeout=30)
        assert rig.pub.status.published_index == rig.meta.last_index
    finally:
        rig.close()


def test_a_second_writer_cannot_overwrite_the_head(tmp_path):
    slow = DirectoryStore(tmp_path / "slow")
    rig = Rig(tmp_path / "one", slow, Codec(None))
    try:
        rig.write_file(b"a", b"1")
        rig.pub.publish(timeout=30)
        restored = _restore(rig, tmp_path / "two-meta")
        restored.close()
        rig.write_file(b"a", b"2")
        rig.pub.publish(timeout=30)
        # A state dir that never published, with local changes: diverged.
        other = MVCCStore.open(str(tmp_path / "other"))
        other.put(b"x", b"y")
        pub = publish.Publisher(other, None, slow.bucket, Codec(None),
                                str(tmp_path / "other.json"), fs_id="fs1")
        with pytest.raises(publish.DivergedError):
            pub.open()
        other.close()
        # A stale copy without local changes: fast-forward is possible.
        stale = MVCCStore.open(str(tmp_path / "stale"))
        pub = publish.Publisher(stale, None, slow.bucket, Codec(None),
                                str(tmp_path / "stale.json"), fs_id="fs1")
        with pytest.raises(publish.StaleStateError):
            pub.open()
        stale.close()
        # A publisher whose view of the head is out of date loses the CAS.
        rig2 = publish.Publisher(rig.meta, rig.paired, slow.bucket, Codec(None),
                                 str(tmp_path / "one" / publish.RECORD_NAME), fs_id="fs1")
        rig2.open()
        rig.write_file(b"a", b"3")
        rig.pub.publish(timeout=30)
        rig.write_file(b"a", b"4")
        with pytest.raises(publish.DivergedError, match="changed behind"):
            rig2.publish(timeout=30)
    finally:
        rig.close()


def test_released_wal_falls_back_to_a_checkpoint(tmp_path):
    rig = Rig(tmp_path, DirectoryStore(tmp_path / "slow"), Codec(None), segment_bytes=4096)
    try:
        rig.write_file(b"a", b"1")
        rig.pub.publish(timeout=30)
        for i in range(300):
            rig.meta.put(b"k%05d" % i, os.urandom(64))
        rig.meta.flush()
        rig.meta.sync()
        rig.meta.flush()                   # lets the backend release old segments
        with pytest.raises(IndexNotFoundError):
            read_entries(rig.meta.wal_dir, rig.pub.status.published_index + 1, rig.meta.last_index)
        assert rig.pub.publish(timeout=30)
        restored = _restore(rig, tmp_path / "restored")
        assert _dump(restored) == _dump(rig.meta)
        restored.close()
    finally:
        rig.close()


def test_encrypted_bucket_shows_no_names_or_contents(tmp_path, s3_url):
    from versionfs.blob import keys
    codec = Codec(keys.new_master_key())
    rig = Rig(tmp_path, S3Store(s3_url), codec)
    try:
        rig.write_file(b"secret-name.txt", b"MARKER-CONTENT " * 100)
        rig.meta.snapshot("secret-snapshot")
        rig.pub.publish(timeout=60)
        rig.write_file(b"second-secret", b"MARKER-CONTENT")
        rig.pub.publish(timeout=60)
        names = list(rig.slow.bucket.list(""))
        assert any(n.startswith("meta/wal/") for n in names)
        for name in names:
            body = rig.slow.bucket.get(name)[0]
            for marker in (b"secret", b"MARKER-CONTENT"):
                assert marker not in body, name
        restored = _restore(rig, tmp_path / "restored")
        assert _dump(restored) == _dump(rig.meta)
        restored.close()
    finally:
        rig.close()


def test_a_torn_head_object_falls_back_to_its_copy(tmp_path, s3_url):
    """SeaweedFS can leave an empty object when a writer is killed mid conditional PUT."""
    rig = Rig(tmp_path, S3Store(s3_url), Codec(None))
    try:
        rig.write_file(b"a", b"1")
        rig.pub.publish(timeout=60)
        rig.write_file(b"b", b"2")
        rig.pub.publish(timeout=60)
        want = _dump(rig.meta)
        rig.slow.bucket.put(publish.HEAD_KEY, b"")          # the torn head
        kv = publish.bucket_kv(rig.slow.bucket)
        _pair, head = publish.read_head(kv, rig.codec)
        assert head.last_index == rig.meta.last_index
        restored = _restore(rig, tmp_path / "restored")
        assert _dump(restored) == want
        restored.close()
        # The writer (same record) carries on: its CAS replaces the damaged object.
        pub = publish.Publisher(rig.meta, rig.paired, rig.slow.bucket, rig.codec,
                                str(tmp_path / publish.RECORD_NAME), fs_id="fs1")
        pub.open()
        rig.write_file(b"c", b"3")
        assert pub.publish(timeout=60)
        assert kv.get(publish.HEAD_KEY).value                # a real head again
        assert len(list(rig.slow.bucket.list(publish.HEAD_COPY_PREFIX))) <= publish.HEAD_COPIES_KEPT
    finally:
        rig.close()
