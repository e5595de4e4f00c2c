"""``versionfs forget`` + ``versionfs gc`` on real mounts with a real S3 slow store
(SeaweedFS): unique blobs of forgotten snapshots are freed from both stores,
everything still needed stays, and ``fsck --read-data`` is clean afterwards;
gc racing with writers that re-create forgotten content loses nothing."""

from __future__ import annotations

import os
import random
import threading

import pytest

from cli_util import assert_user_error, run_cli
from maint_util import Fs, fast_blobs, file_ino, file_pointers, open_meta, slow_blobs, tree_digest

pytestmark = pytest.mark.fuse


@pytest.fixture
def fs(tmp_path, s3_url):
    f = Fs(tmp_path)
    f.init("--slow", s3_url)
    try:
        yield f
    finally:
        f.cleanup()


def test_forget_and_gc_free_unique_blobs_and_keep_every_needed_one(fs, s3_server, s3_bucket):
    m = fs.mnt
    fs.mount()
    (m / "shared.bin").write_bytes(os.urandom(3_000_000))
    (m / "old.bin").write_bytes(os.urandom(2_500_000))
    (m / "dir").mkdir()
    (m / "dir" / "kept.txt").write_bytes(os.urandom(400_000))
    fs.cli("snapshot", m, "first")
    (m / "old.bin").unlink()                           # only "first" still has it
    (m / "new.bin").write_bytes(os.urandom(1_500_000))
    second = fs.cli("snapshot", m, "second").strip()
    (m / "live.bin").write_bytes(os.urandom(700_000))
    (m / "dir" / "kept.txt").unlink()                  # "first" and "second" have it
    fs.cli("flush", m)
    fs.umount()

    meta = open_meta(fs.state)
    try:
        unique = set(file_pointers(meta, "old.bin", rev=1))
        needed = (set(file_pointers(meta, "shared.bin")) | set(file_pointers(meta, "new.bin"))
                  | set(file_pointers(meta, "live.bin")) | set(file_pointers(meta, "dir/kept.txt", rev=2)))
    finally:
        meta.close()
    assert unique and not unique & needed
    before = slow_blobs(s3_server, s3_bucket)
    assert unique | needed <= before

    fs.mount()
    out = fs.cli("forget", m, "first", "--dry-run")
    assert out.startswith("would forget r1-") and out.strip().endswith("-first")
    assert len(os.listdir(m / ".versionfs" / "snapshots")) == 2
    fs.cli("forget", m, "first")
    assert os.listdir(m / ".versionfs" / "snapshots") == [second]
    dry = fs.cli("gc", m, "--dry-run")
    assert f"would delete: {len(unique)} blob(s)" in dry
    assert slow_blobs(s3_server, s3_bucket) == before
    out = fs.cli("gc", m)
    assert f"deleted: {len(unique)} blob(s)" in out, out
    assert "(slow store listed)" in out                # the first gc seeds the index
    after = slow_blobs(s3_server, s3_bucket)
    assert after == before - unique
    assert not unique & fast_blobs(fs.state)
    out = fs.cli("gc", m)                              # nothing left; no listing needed now
    assert "deleted: 0 blob(s)" in out and "slow store listed" not in out
    want = tree_digest(m)
    snap_want = tree_digest(m / ".versionfs" / "snapshots" / second)
    fs.umount()

    r = run_cli("fsck", fs.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    fs.wipe_fast()                                     # every read below comes from the bucket
    fs.mount()
    assert tree_digest(m) == want
    assert tree_digest(m / ".versionfs" / "snapshots" / second) == snap_want
    fs.umount()


def test_retention_policy_and_offline_gc(fs, s3_server, s3_bucket):
    m = fs.mnt
    fs.mount()
    for i in range(5):
        # At most CHUNK_MIN bytes: exactly one chunk each (a 300 KB file is cut
        # in two about once in 60: FastCDC may cut from CHUNK_MIN on).
        (m / f"f{i}.bin").write_bytes(os.urandom(200_000))
        fs.cli("snapshot", m, *(["keepme"] if i == 0 else []))
        (m / f"f{i}.bin").unlink()
    fs.cli("flush", m)
    out = fs.cli("forget", m, "--keep-last", "2", "--keep-named", "--dry-run")
    assert out.count("would forget") == 2 and out.count("keep ") == 3
    # The config's policy applies when no rule is given.
    (fs.state / "config.toml").write_text((fs.state / "config.toml").read_text()
                                          + "\n[snapshots]\nkeep_last = 1\n")
    out = fs.cli("forget", m)
    assert out.count("forgot") == 4, out
    assert len(os.listdir(m / ".versionfs" / "snapshots")) == 1
    assert_user_error(run_cli("forget", m, "nosuch"), "no snapshot")
    assert_user_error(run_cli("forget", m, "--keep-daily", "0"), "refusing")
    fs.umount()

    before = slow_blobs(s3_server, s3_bucket)
    dry = fs.cli("gc", "--state", fs.state, "--dry-run")
    assert "would delete: 4 blob(s)" in dry
    assert slow_blobs(s3_server, s3_bucket) == before
    out = fs.cli("gc", "--state", fs.state)
    assert "deleted: 4 blob(s)" in out
    assert len(slow_blobs(s3_server, s3_bucket)) == len(before) - 4
    out = fs.cli("gc", "--state", fs.state, "--full")
    assert "(slow store listed)" in out and "deleted: 0 blob(s)" in out
    assert run_cli("fsck", fs.state, "--read-data", "--quiet").returncode == 0


def test_gc_racing_with_writers_that_recreate_forgotten_content_loses_nothing(fs):
    """A writer re-creates, while gc runs, files whose chunks only a forgotten
    snapshot referred to: every such put dedups against a blob gc wants to delete."""
    m = fs.mnt
    fs.mount()
    rng = random.Random(5)
    contents = [rng.randbytes(rng.randrange(20_000, 120_000)) for _ in range(600)]
    (m / "old").mkdir()
    for i, data in enumerate(contents):
        (m / "old" / f"{i}").write_bytes(data)
    fs.cli("snapshot", m, "doomed")
    for i in range(len(contents)):
        (m / "old" / f"{i}").unlink()
    fs.cli("forget", m, "doomed")
    fs.cli("flush", m)

    (m / "new").mkdir()
    started = threading.Event()
    stop = threading.Event()
    written: list[int] = []

    def writer():
        order = list(range(len(contents)))
        rng.shuffle(order)
        for n, i in enumerate(order):
            with open(m / "new" / f"{i}", "wb") as f:
                f.write(contents[i])
                f.flush()
                os.fsync(f.fileno())           # sealed now: dedup against the doomed blob
            written.append(i)
            if n == 20:
                started.set()
            if stop.is_set() and n > 300:
                break

    t = threading.Thread(target=writer)
    t.start()
    assert started.wait(60)
    out = fs.cli("gc", m)
    stop.set()
    t.join(120)
    assert not t.is_alive()
    print(out)
    deleted = int(out.split("deleted: ")[1].split()[0])
    kept = int(out.split("kept (written during gc): ")[1].split()[0])
    assert deleted + kept > 0, out
    fs.cli("flush", m)
    fs.umount()

    r = run_cli("fsck", fs.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    fs.wipe_fast()
    fs.mount()
    for i in written:
        assert (m / "new" / f"{i}").read_bytes() == contents[i], f"new/{i} lost"
    fs.umount()


def test_gc_refuses_to_run_past_an_extent_record_it_cannot_decode(fs, s3_server, s3_bucket):
    """Issue 11, finding 5: a damaged extent record stops gc instead of being skipped
    (skipping it would make the blob it still refers to look like garbage)."""
    from versionfs.tree import schema
    fs.mount()
    (fs.mnt / "victim.bin").write_bytes(os.urandom(1_500_000))
    fs.cli("flush", fs.mnt)
    fs.umount()
    meta = open_meta(fs.state)
    try:
        ino = file_ino(meta, "victim.bin")
        key = schema.extent_key(ino, 0)
        meta.put(key, meta.get(key)[:-5])          # the record no longer decodes
    finally:
        meta.close()
    slow_before, fast_before = slow_blobs(s3_server, s3_bucket), fast_blobs(fs.state)
    for extra in ((), ("--full",)):
        line = assert_user_error(run_cli("gc", "--state", fs.state, *extra),
                                 f"extent record of inode {ino} offset 0", "refuses", "fsck")
        assert "does not decode" in line
    assert slow_blobs(s3_server, s3_bucket) == slow_before
    assert fast_blobs(fs.state) == fast_before
