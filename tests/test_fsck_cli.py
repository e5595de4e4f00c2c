"""``versionfs fsck`` on real state dirs built through real mounts.

It must find a deleted blob, a corrupted blob and broken index entries, repair
what is safe (and only that), report the rest, and exit 0/3/4 as documented.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_util import assert_user_error, run_cli
from maint_util import Fs, file_ino, file_pointers, open_meta, tree_digest

pytestmark = pytest.mark.fuse


def _blob_paths(state: Path, raw: bytes) -> tuple[Path, Path]:
    from versionfs.blob.files import FanOutStore
    from versionfs.blob.pointer import Pointer
    p = Pointer.from_bytes(raw)
    return (Path(FanOutStore(state / "fast").path_for(p)),
            Path(FanOutStore(state / "slow" / "blobs").path_for(p)))


def _copies(fs: Fs, path: str) -> tuple[Path, Path]:
    """The fast and the slow copy of the first blob of ``path`` in the head."""
    meta = open_meta(fs.state)
    try:
        return _blob_paths(fs.state, file_pointers(meta, path)[0])
    finally:
        meta.close()


def fsck(fs: Fs, *args: str):
    return run_cli("fsck", fs.state, "--quiet", *args)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small tree with a snapshot; the pristine state dir is copied for each test."""
    root = tmp_path_factory.mktemp("fsck")
    fs = Fs(root)
    fs.init()
    fs.mount()
    try:
        m = fs.mnt
        (m / "docs").mkdir()
        (m / "docs" / "a.txt").write_bytes(os.urandom(300_000))
        (m / "big.bin").write_bytes(os.urandom(3_000_000))
        os.link(m / "big.bin", m / "docs" / "big-link")
        os.symlink("docs/a.txt", m / "sym")
        (m / "empty").write_bytes(b"")
        fs.cli("snapshot", m, "one")
        (m / "docs" / "a.txt").unlink()          # replaced, so revision 1 alone keeps the old one
        (m / "docs" / "a.txt").write_bytes(os.urandom(200_000))
        (m / "later.bin").write_bytes(os.urandom(500_000))
        fs.cli("flush", m)
        digest = tree_digest(m)
    finally:
        fs.umount()
        fs.cleanup()
    return fs, digest


@pytest.fixture
def fs(built, tmp_path):
    import shutil
    src, digest = built
    f = Fs(tmp_path)
    shutil.copytree(src.state, f.state, symlinks=True)
    try:
        yield f
    finally:
        f.cleanup()


def test_clean_filesystem_is_clean_with_read_data(fs):
    r = fsck(fs, "--read-data")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("clean (revisions 2")


def test_deleted_blob_is_found_and_not_made_worse(fs):
    meta = open_meta(fs.state)
    try:
        victim = file_pointers(meta, "big.bin")[0]
    finally:
        meta.close()
    for path in _blob_paths(fs.state, victim):
        path.unlink()
    r = fsck(fs)
    assert r.returncode == 4
    assert f"blob {victim.hex()}" in r.stdout and "missing from the fast and the slow store" in r.stdout
    r2 = fsck(fs, "--repair")
    assert r2.returncode == 4                     # nothing to copy it from: reported, not "fixed"
    assert "repaired:" not in r2.stdout


def test_blob_only_the_slow_store_lacks_is_uploaded_again(fs):
    meta = open_meta(fs.state)
    try:
        victim = file_pointers(meta, "docs/a.txt", rev=1)[0]
    finally:
        meta.close()
    fast, slow = _blob_paths(fs.state, victim)
    slow.unlink()
    r = fsck(fs)
    assert r.returncode == 4 and "missing from the slow store" in r.stdout
    r = fsck(fs, "--repair")
    assert r.returncode == 3, r.stdout
    assert "copied again" in r.stdout
    assert slow.read_bytes() == fast.read_bytes()
    assert fsck(fs, "--read-data").returncode == 0


def test_corrupted_blob_is_found_by_read_data_and_repaired_from_the_good_copy(fs):
    fast, slow = _copies(fs, "later.bin")
    good = slow.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x40
    slow.write_bytes(bytes(bad))
    assert fsck(fs).returncode == 0               # it exists; only reading it shows the damage
    r = fsck(fs, "--read-data")
    assert r.returncode == 4 and "corrupted in the slow store" in r.stdout
    r = fsck(fs, "--read-data", "--repair")
    assert r.returncode == 3 and "copied again" in r.stdout
    assert slow.read_bytes() == good
    # Both copies bad: reported, nothing overwritten.
    fast.write_bytes(bytes(bad))
    slow.write_bytes(bytes(bad))
    r = fsck(fs, "--read-data", "--repair")
    assert r.returncode == 4 and "corrupted in the fast and the slow store" in r.stdout
    assert slow.read_bytes() == bytes(bad)


def test_repair_never_uploads_a_corrupted_fast_copy(fs):
    """Issue 11: a fast copy cut short (a cache fill lost by a power cut) or
    damaged must not reach the bucket, with or without --read-data; the
    bucket's good copy survives and refills the fast one."""
    fast, slow = _copies(fs, "later.bin")
    good = slow.read_bytes()
    for damaged in (b"", good[:len(good) // 2], bytes(b ^ 1 for b in good)):
        fast.write_bytes(damaged)
        slow.unlink()                         # the bucket lacks it: only the bad copy is left
        r = fsck(fs, "--repair")
        assert r.returncode == 4, r.stdout
        assert "missing from the slow store; repair failed: the only copy there is does not " \
               "verify" in r.stdout, r.stdout
        assert not slow.exists(), "a corrupted fast copy was uploaded"
        slow.write_bytes(good)                # the bucket's good copy back
        assert fsck(fs, "--repair").returncode == 0
        assert slow.read_bytes() == good
        r = fsck(fs, "--read-data", "--repair")
        assert r.returncode == 3 and "the fast copy is corrupted; copied again" in r.stdout, r.stdout
        assert slow.read_bytes() == good and fast.read_bytes() == good
    assert fsck(fs, "--read-data").returncode == 0


def test_broken_index_entries_are_found_and_rebuilt(fs, built):
    from versionfs.tree import schema
    from versionfs.meta.mvcc.layout import _U64, CHANGES
    meta = open_meta(fs.state)
    try:
        ino = file_ino(meta, "docs/a.txt")
        docs = file_ino(meta, "docs")
        with meta.write() as b:
            b.delete(schema.link_key(ino, docs, b"a.txt"))                 # reverse index item lost
            b.put(schema.dirent_key(schema.ROOT_INO, b"ghost"), schema.u64(999_999))  # entry to nothing
            raw = meta.get(schema.inode_key(ino))
            inode = schema.Inode.unpack(ino, raw)
            inode.nlink = 5                                                  # wrong link count
            b.put(schema.inode_key(ino), inode.pack())
        meta.flush()
        # The metadata store's own index: the `changes` item of docs/ in revision 1 lost.
        meta._backend.run(lambda txn, dbs: txn.delete(_U64.pack(1) + schema.inode_key(docs),
                                                      db=dbs[CHANGES]))
    finally:
        meta.close()
    r = fsck(fs)
    assert r.returncode == 4
    out = r.stdout
    assert "changes index lacks" in out
    assert "reverse index lacks the entry b'a.txt'" in out
    assert "names inode 999999, which does not exist" in out
    assert f"inode {ino} has link count 5, the tree says 1" in out
    r = fsck(fs, "--repair")
    assert r.returncode == 3, r.stdout
    assert "problem:" not in r.stdout
    assert fsck(fs, "--read-data").returncode == 0
    # Nothing of the user's was lost: the tree mounts and reads as before.
    fs.mount()
    try:
        assert tree_digest(fs.mnt) == built[1]
    finally:
        fs.umount()


def test_orphans_go_to_lost_and_found_and_unreadable_records_are_only_reported(fs, built):
    from versionfs.tree import schema
    meta = open_meta(fs.state)
    try:
        big = file_ino(meta, "big.bin")
        a = file_ino(meta, "docs/a.txt")
        with meta.write() as b:
            # An inode nothing names (its entries and reverse links gone).
            b.delete(schema.dirent_key(schema.ROOT_INO, b"later.bin"))
            b.delete(schema.link_key(file_ino(meta, "later.bin"), schema.ROOT_INO, b"later.bin"))
            # Extents whose inode record is gone: the file docs/a.txt loses its inode.
            b.delete(schema.inode_key(a))
            # A broken extent record.
            b.put(schema.extent_key(big, 1 << 40), b"\xc1garbage")
    finally:
        meta.close()
    r = fsck(fs, "--repair")
    assert r.returncode == 4, r.stdout               # the garbage extent stays reported
    assert "unreadable record" in r.stdout
    assert "has no name; linked into /lost+found" in r.stdout
    assert f"extent(s) of inode {a}, which does not exist; recovered as /lost+found/#{a}" in r.stdout
    # Remove the garbage by hand; then the tree must be clean and the data all there.
    meta = open_meta(fs.state)
    try:
        meta.delete(schema.extent_key(big, 1 << 40))
    finally:
        meta.close()
    r = fsck(fs, "--read-data")
    assert r.returncode == 0, r.stdout
    fs.mount()
    try:
        lf = fs.mnt / "lost+found"
        names = sorted(os.listdir(lf))
        assert len(names) == 2
        digest = tree_digest(fs.mnt)
        want = built[1]
        assert sorted(digest[f"lost+found/{n}"] for n in names) == \
            sorted([want["later.bin"], want["docs/a.txt"]])
    finally:
        fs.umount()


def test_fsck_refuses_a_mounted_filesystem(fs):
    fs.mount()
    try:
        assert_user_error(fsck(fs), "in use")
    finally:
        fs.umount()


def test_partial_extents_reading_past_their_blob_or_with_a_bad_skip_are_reported(fs):
    """A partial extent ([length, pointer, skip], sealing.py) must read inside its
    blob (checked with --read-data) and have a non-negative integer skip."""
    from versionfs.tree import schema
    meta = open_meta(fs.state)
    try:
        ino = file_ino(meta, "later.bin")             # one 500,000-byte chunk
        key = schema.extent_key(ino, 0)
        _off, length, pointer, _skip = schema.unpack_extent(key, meta.get(key))
        with meta.write() as b:                        # the same bytes, as a partial extent
            schema.delete_extent(b, ino, 0, pointer)
            schema.put_extent(b, ino, 0, length // 2, pointer)
            schema.put_extent(b, ino, length // 2, length - length // 2, pointer, length // 2)
    finally:
        meta.close()
    assert fsck(fs, "--read-data").returncode == 0
    meta = open_meta(fs.state)
    try:
        meta.put(schema.extent_key(ino, length // 2),
                 schema.pack_extent(length - length // 2, pointer, length // 2 + 1))
    finally:
        meta.close()
    r = fsck(fs, "--read-data")
    assert r.returncode == 4
    assert f"blob {pointer.hex()}" in r.stdout and f"up to byte {length + 1}" in r.stdout
    assert fsck(fs).returncode == 0                    # only reading the blob tells
    meta = open_meta(fs.state)
    try:
        import msgpack
        meta.put(schema.extent_key(ino, length // 2),
                 msgpack.packb([length - length // 2, pointer, -1]))
    finally:
        meta.close()
    r = fsck(fs)
    assert r.returncode == 4 and "unreadable record" in r.stdout and "skip -1" in r.stdout
