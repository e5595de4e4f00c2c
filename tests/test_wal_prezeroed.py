"""Pre-zeroed WAL segments (versionfs/meta/wal/spare.py), as the dirty journal
uses them: a sync overwrites zeros in place and never extends a file; a zeroed
tail is the end of the log; a torn append into the zeros is repaired with
zeros; a power cut (tests/powercut.py) keeps exactly the synced records."""

from __future__ import annotations

import os
import shutil

import pytest
from powercut import PowerCutDisk
from test_meta_wal import assert_flips_are_corruption

from versionfs.fs.journal import DirtyJournal
from versionfs.meta.wal import decode
from versionfs.meta.wal.repair import SECTOR
from versionfs.meta.wal.spare import SPARE_SUFFIX
from versionfs.meta.wal.wal import FIRST_SEGMENT_ZEROED, WAL

SEGMENT = 8192


def segs(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".wal"))


def payload(i):
    return b"entry-%d-" % i + bytes([i % 251 or 1]) * (i % 97)


def read(d):
    w = WAL.open_at_index(d, 0, segment_bytes=SEGMENT, preallocate=True)
    return w, w.read_all()[2]


def test_syncs_overwrite_zeros_and_never_grow_a_segment(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, b"meta", segment_bytes=SEGMENT, preallocate=True)
    for i in range(1, 301):
        w.save_entry(i, payload(i))
        w.sync()
    assert w.size_changing_syncs == 0
    names = segs(d)
    assert len(names) >= 3 and w.segments_preallocated == len(names)
    assert all(os.path.getsize(os.path.join(d, n)) == SEGMENT for n in names)
    w.save_entry(301, bytes(range(256)) * 40)       # bigger than a segment: must grow one
    w.sync()
    assert w.size_changing_syncs == 1
    w.close()
    assert not [n for n in os.listdir(d) if n.endswith(SPARE_SUFFIX)]   # the spare went
    w, ents = read(d)
    assert [e.index for e in ents] == list(range(1, 302))
    assert all(e.data == payload(e.index) for e in ents[:-1])
    assert w.tails_repaired == 0     # a clean close leaves zeros after the log: nothing to sync
    w.save_entry(302, b"after reopen")
    w.sync()
    assert w.size_changing_syncs == 0
    w.close()
    w, ents = read(d)
    assert ents[-1].data == b"after reopen" and ents[-1].index == 302
    w.close()


def _last_record(d):
    path = os.path.join(d, segs(d)[-1])
    raw = open(path, "rb").read()
    recs, end, _ = decode._scan(raw, path, None, True)
    return path, recs[-2].end, recs[-1].end


def test_append_torn_into_the_zeros_is_cut_off_with_zeros(tmp_path):
    """Every way the sectors of the last append can be missing (a prefix of them
    on disk, the rest still zeros): the log ends before it, the segment keeps
    its size, the torn bytes become zeros again and appending goes on."""
    src = str(tmp_path / "src")
    w = WAL.create(src, b"meta", segment_bytes=1 << 20, preallocate=True)
    for i in range(1, 11):
        w.save_entry(i, payload(i))
    w.save_entry(11, os.urandom(3000))              # spans several sectors
    w.sync()
    w.close()
    path, start, end = _last_record(src)
    name = os.path.basename(path)
    cuts = [start] + list(range((start // SECTOR + 1) * SECTOR, end, SECTOR))
    assert len(cuts) >= 5
    for cut in cuts:
        d = str(tmp_path / f"cut{cut}")
        shutil.copytree(src, d)
        with open(os.path.join(d, name), "r+b") as f:
            f.seek(cut)
            f.write(bytes(end - cut))
        w, ents = read(d)
        assert [e.index for e in ents] == list(range(1, 11)), cut
        assert w.tails_repaired == (cut > start)     # all of it missing: nothing torn
        raw = open(os.path.join(d, name), "rb").read()
        assert len(raw) == 1 << 20 and raw.count(0, start) == len(raw) - start   # repaired
        w.save_entry(11, b"again")
        w.close()
        w, ents = read(d)
        assert ents[-1].index == 11 and ents[-1].data == b"again"
        w.close()
        shutil.rmtree(d)


def test_a_flipped_byte_before_the_zeros_is_still_corruption(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, b"meta", segment_bytes=1 << 20, preallocate=True)
    for i in range(1, 41):
        w.save_entry(i, payload(i))
    w.close()
    path, start, _end = _last_record(d)
    # inside records that were complete: corruption, not a torn append
    assert_flips_are_corruption(path, range(200, start, 97), lambda: read(d))


def test_a_new_journal_zeroes_a_small_first_segment_then_uses_full_spares(tmp_path):
    """Creating the dirty journal (every mount) writes only FIRST_SEGMENT_ZEROED
    of zeros before it answers; once its records outgrow them the log moves
    to a full-sized spare prepared in the background, and no sync on the way
    extends a file."""
    jdir = str(tmp_path / "journal")
    os.mkdir(jdir)
    j = DirtyJournal(jdir)
    [first] = segs(jdir)
    assert os.path.getsize(os.path.join(jdir, first)) == FIRST_SEGMENT_ZEROED
    piece = os.urandom(60_000)
    for i in range(2 * FIRST_SEGMENT_ZEROED // len(piece)):
        j.log(7, None, [(i * len(piece), piece)], (i + 1) * len(piece), i, i)
        j.sync()
    assert j.size_changing_syncs == 0
    names = segs(jdir)
    assert len(names) == 2 and os.path.getsize(os.path.join(jdir, names[1])) == 16 << 20
    j.close()


@pytest.mark.parametrize("names", ["strict", "ext4"])
def test_power_cut_keeps_exactly_the_synced_journal_records(tmp_path, names):
    """The dirty journal on the power-cut disk: records synced before the cut
    replay exactly, records appended after the last sync do not, the segment's
    pre-zeroed tail is read as the end; across a cut made right after a new
    segment was put in place too (nothing appended to it yet)."""
    disk = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt", names).start()
    try:
        jdir = str(tmp_path / "mnt" / "journal")
        os.mkdir(jdir)
        j = DirtyJournal(jdir)
        synced = []
        for i in range(20):
            j.log(7, None, [(i * 100, b"w%03d" % i)], (i + 1) * 100, i, i)
            synced.append((i * 100, b"w%03d" % i))
        j.sync()
        j.log(7, None, [(5000, b"never synced")], 6000, 99, 99)
        assert j.size_changing_syncs == 0 and j.segments_preallocated == 1
        disk.cut()
        disk.start()
        j = DirtyJournal(jdir)
        [r] = j.replay()
        writes = [tuple(op[2:]) for op in r.ops if op[1] == "W"]
        assert writes == synced
        assert [op[2:] for op in r.ops if op[1] == "A"][-1] == (2000, 19, 19)
        segment = os.path.join(jdir, segs(jdir)[-1])
        assert os.path.getsize(segment) == FIRST_SEGMENT_ZEROED   # still pre-zeroed, not truncated
        j.log(7, None, [(7000, b"after the cut")], 8000, 100, 100)
        j.sync()
        j._wal.cut()                                   # a new pre-zeroed segment, empty
        disk.cut()
        disk.start()
        j = DirtyJournal(jdir)
        [r] = j.replay()
        assert [tuple(op[2:]) for op in r.ops if op[1] == "W"] == synced + [(7000, b"after the cut")]
        j.close()
    finally:
        disk.stop()


def test_a_spare_that_cannot_be_prepared_is_logged_and_the_cut_zeroes_one(tmp_path, caplog):
    """The background preparation fails for real (a directory sits where the
    spare file goes): the error is logged when it happens, and the cut that
    needed the spare writes a zeroed segment itself; nothing is lost."""
    d = str(tmp_path / "wal")
    blocker = os.path.join(d, "%016x%s" % (1, SPARE_SUFFIX))
    os.makedirs(blocker)
    w = WAL.create(d, b"meta", segment_bytes=SEGMENT, preallocate=True)
    for i in range(1, 301):
        w.save_entry(i, payload(i))
    w.sync()
    w.close()
    assert any("could not prepare the next write-ahead log segment" in r.getMessage()
               for r in caplog.records)
    names = segs(d)
    assert len(names) >= 2 and all(os.path.getsize(os.path.join(d, n)) == SEGMENT for n in names)
    os.rmdir(blocker)
    w, ents = read(d)
    assert [e.index for e in ents] == list(range(1, 301))
    w.close()
