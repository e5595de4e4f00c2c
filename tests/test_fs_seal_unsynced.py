"""What the next fsync journals (FileData.unsynced) across a seal, on a real
DataManager and blob store: a stored seal takes what it froze out of it, a
seal in flight does not yet, a failed seal gives it back (see layers.py
`freeze_unsynced`; the power-cut side is test_powercut.py
test_power_cut_after_fsync_that_follows_a_seal)."""

from __future__ import annotations

import os
import shutil

import pytest
import trio

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.disk import DiskStore
from versionfs.fs.core import UnsyncedInodes
from versionfs.fs.data import SEAL_PAUSE_ENV, DataManager
from versionfs.fs.journal import DirtyJournal
from versionfs.fs.layers import FileData

MIB = 1 << 20


@pytest.fixture
def dm(tmp_path):
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)), str(tmp_path / "dirty"))
    try:
        yield dm
    finally:
        dm.close()


def test_after_a_seal_fsync_journals_only_what_was_written_since(dm):
    async def run():
        big, small = FileData(1, [], 0), FileData(2, [], 0)
        dm.write(big, 0, os.urandom(3 * MIB))
        dm.write(small, 0, os.urandom(5000))
        dm.truncate(big, 2 * MIB, metadata_only=False)
        await dm.seal(big, lambda f, r: None)
        assert await dm.seal_small([small], lambda results: None) == 1
        assert not big.has_unsynced and not small.has_unsynced
        dm.write(big, 2 * MIB, b"a" * 4096)
        dm.write(small, 5000, b"b" * 100)
        assert big.take_unsynced() == ([(2 * MIB, 2 * MIB + 4096)], None)
        assert small.take_unsynced() == ([(5000, 5100)], None)

    trio.run(run)


def test_an_fsync_while_the_seal_is_in_flight_journals_what_it_froze(dm):
    """`persist` runs once the chunks are stored, before the seal is: an fsync
    then must still journal what the seal froze, plus what came after."""
    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, os.urandom(2 * MIB))
        dm.truncate(f, MIB, metadata_only=False)
        during = []

        def persist(f, r):
            dm.write(f, 5 * MIB, b"c" * 10)          # after the freeze
            during.append(f.take_unsynced())

        await dm.seal(f, persist)
        assert during == [([(0, MIB), (5 * MIB, 5 * MIB + 10)], MIB)]
        assert not f.has_unsynced

    trio.run(run)


def test_a_failed_seal_gives_back_what_it_froze(dm, tmp_path):
    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, os.urandom(MIB))
        dm.truncate(f, MIB - 10, metadata_only=False)
        blobs = tmp_path / "blobs"
        shutil.rmtree(blobs)
        blobs.write_bytes(b"")                        # the store breaks: no blob can be put
        with pytest.raises(OSError):
            await dm.seal(f, lambda f, r: None)
        dm.write(f, 3 * MIB, b"d" * 10)
        assert f.take_unsynced() == ([(0, MIB - 10), (3 * MIB, 3 * MIB + 10)], MIB - 10)

    trio.run(run)


def paused_dm(tmp_path, monkeypatch):
    """A DataManager made with the seal pause hook set (data.SEAL_PAUSE_ENV),
    its pause file in place, and the journal's last index given by `index`."""
    pause = tmp_path / "pause"
    pause.touch()
    monkeypatch.setenv(SEAL_PAUSE_ENV, str(pause))
    index = [-1]
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)),
                     str(tmp_path / "dirty"), journal_index=lambda: index[0])
    return dm, pause, index


async def wait_for_path(path) -> None:
    with trio.fail_after(60):
        while not path.exists():
            await trio.sleep(0.01)


@pytest.mark.parametrize("written_after_freeze", [False, True])
def test_a_seal_holds_the_record_of_an_fsync_of_only_what_it_froze(
        tmp_path, monkeypatch, written_after_freeze):
    """An fsync while the seal runs: a record of nothing but what the seal froze
    is held by that seal (its `covered` reaches the record); one with a write
    since the freeze is not (the seal holds neither those bytes nor the size
    and mtime the record gives), whatever its index."""
    dm, pause, index = paused_dm(tmp_path, monkeypatch)
    covered = []

    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, os.urandom(2 * MIB))
        index[0] = 4                              # records up to 4 before the freeze
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dm.seal, f, lambda f, r: covered.append(r.covered))
            await wait_for_path(tmp_path / "pause.reached")
            if written_after_freeze:
                dm.write(f, 2 * MIB, b"x" * 10)
            async with f.sync_lock:               # what durability.py does
                assert f.take_unsynced()[0] == [(0, 2 * MIB + 10 * written_after_freeze)]
                index[0] = 9
                f.journaled(9)
            (tmp_path / "pause.reached").unlink()
        assert f.seal_covers is None

    try:
        trio.run(run)
    finally:
        dm.close()
    assert covered == [4 if written_after_freeze else 9]


def test_the_seal_pause_hook_is_read_once_when_the_data_path_is_made(tmp_path, monkeypatch):
    """Unset when the DataManager is made, the hook costs a seal nothing: the
    variable set later is not even looked at."""
    monkeypatch.delenv(SEAL_PAUSE_ENV, raising=False)
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), Codec(None)), str(tmp_path / "dirty"))
    pause = tmp_path / "pause"
    pause.touch()
    monkeypatch.setenv(SEAL_PAUSE_ENV, str(pause))

    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, os.urandom(2 * MIB))
        with trio.fail_after(60):
            assert await dm.seal(f, lambda f, r: None)

    try:
        trio.run(run)
    finally:
        dm.close()
    assert not (tmp_path / "pause.reached").exists()


def test_a_seal_made_before_the_first_journal_record_hides_none_of_it(tmp_path):
    """A file sealed while the journal was still empty (the seal covers index
    -1) and fsynced meanwhile: the S record of that seal must not hide the
    journal's first record (index 0) from the replay."""
    j = DirtyJournal(str(tmp_path / "journal"))
    first = j.log(7, None, [(0, b"fsynced")], 7, 1, 1)
    j.sealed(7, -1)
    j.metadata_synced(j.seals_noted())
    j.sync()
    j.close()
    j = DirtyJournal(str(tmp_path / "journal"))
    try:
        (replayed,) = j.replay()
        assert [op[:2] for op in replayed.ops] == [(first - 1, "W"), (first, "A")]
    finally:
        j.close()


def test_a_metadata_sync_records_only_the_seals_noted_before_it_started(tmp_path):
    """Two metadata syncs at once (the idle sealer's and an fsync's, each in a
    worker thread) and a seal persisted while the slower one runs: that sync
    may not hold the seal, so it must not write the seal's S record. Counted
    as a prefix of the seals pending, it took the seal noted after it began
    for one of its own once the other sync had taken its seals away; after a
    power cut replay then skipped the fsynced writes the seal held, with the
    metadata on disk lacking the seal: the file came back as an older seal."""
    j = DirtyJournal(str(tmp_path / "journal"))
    early = j.log(7, None, [(0, b"sealed early")], 12, 1, 1)
    late = j.log(8, None, [(0, b"fsynced, sealed late")], 20, 1, 1)
    j.sync()
    j.sealed(7, early)
    periodic = j.seals_noted()           # the idle sealer's metadata sync starts
    fsyncs = j.seals_noted()             # an fsync's starts too ...
    j.metadata_synced(fsyncs)            # ... and ends first
    j.sealed(8, late)                    # a seal persisted during the periodic sync
    j.metadata_synced(periodic)          # which ends: it did not hold that seal
    j.close()                            # the power goes before the next metadata sync
    j = DirtyJournal(str(tmp_path / "journal"))
    try:
        replayed = {r.ino: [op[:2] for op in r.ops] for r in j.replay()}
        assert replayed == {8: [(late - 1, "W"), (late, "A")]}
    finally:
        j.close()


def test_an_inode_stays_unsynced_until_a_metadata_sync_started_after_its_change():
    """An fsync arriving while a metadata sync runs must not count on it (the
    inode stays in until the sync is durable), and a change made during the
    sync is not forgotten when that sync ends (it may not hold the change)."""
    pending = UnsyncedInodes()
    pending.add(7)
    pending.add(8)
    mark = pending.mark()              # a metadata sync starts
    assert 7 in pending and 8 in pending
    pending.add(8)                     # changed again during that sync
    pending.synced(mark)               # the sync is durable
    assert 7 not in pending and 8 in pending
    pending.synced(pending.mark())
    assert 8 not in pending


def test_what_an_fsync_reads_to_journal_stays_its_own_across_reads(dm):
    """An fsync journals several ranges, one read each, and keeps every answer
    until it appends them all; a read joined from layer and sealed pieces must
    not be a view of the buffer the next read reuses (`ChunkReader._reply_from`:
    only a FUSE reply may share it)."""
    async def run():
        f = FileData(1, [], 0)
        base = os.urandom(2 * MIB)
        dm.write(f, 0, base)
        await dm.seal(f, lambda f, r: None)
        dm.write(f, 1000, b"x" * 10)
        dm.write(f, MIB + 1000, b"y" * 10)
        first = await dm.read(f, 900, 200)
        second = await dm.read(f, MIB + 900, 200)
        assert bytes(first) == base[900:1000] + b"x" * 10 + base[1010:1100]
        assert bytes(second) == base[MIB + 900:MIB + 1000] + b"y" * 10 + base[MIB + 1010:MIB + 1100]
        shared = await dm.read(f, 900, 200, shared=True)
        assert bytes(shared) == bytes(first)

    trio.run(run)
