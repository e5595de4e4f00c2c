"""Superseded chunks are reclaimed without gc (versionfs.maint.reclaim), on real
mounts with a real SeaweedFS bucket: a chunk superseded before its upload
never reaches the bucket; a day of saves leaves the stores bounded by the live
data + retained snapshots; snapshots and deduplicated chunks survive; fsck is
clean and gc finds nothing more."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

import cloud_util
import faultproxy
from cli_util import ok, run_cli
from cloud_util import Machine, metric, status, wait_for
from history_util import free_port
from maint_util import fast_blobs, open_meta, slow_blobs

from versionfs.fs.data import SEAL_PAUSE_ENV

pytestmark = pytest.mark.fuse

proxy = faultproxy.proxy                # the fixture
powered_laptop = cloud_util.powered_laptop  # the fixture


def publish_past(m: Machine, rounds: int = 4) -> None:
    """Once a drain has seen the candidates: a few changes that supersede no chunk,
    each published, so every head the bucket keeps is newer than them."""
    time.sleep(5)                                   # RECLAIM_INTERVAL + MIN_AGE
    for i in range(rounds):
        (m.mnt / f".tick-{i}").mkdir()
        m.ctl("flush")


@pytest.fixture
def laptop(tmp_path, s3_url):
    m = Machine(tmp_path, "laptop")
    try:
        ok(run_cli("init", m.state, "--slow", s3_url))
        m.configure(**{"cloud.wal_ship_interval_seconds": 1.0})
        yield m
    finally:
        m.cleanup()


def test_a_chunk_superseded_before_its_upload_never_reaches_the_bucket(laptop, proxy, s3_server,
                                                                       s3_bucket):
    m = laptop
    m.mount_ok(env=proxy.env())
    proxy.drop()                                    # uploads wait (and retry)
    first, second = os.urandom(200_000), os.urandom(200_000)   # one chunk each (< CHUNK_MIN)
    old, new = hashlib.sha256(first).digest(), hashlib.sha256(second).digest()
    (m.mnt / "doc.txt").write_bytes(first)
    wait_for(m, lambda st: st["dirty_files"] == 0 and st["pending_uploads"] >= 1, "the first seal")
    assert old in fast_blobs(m.state)
    (m.mnt / "doc.txt").write_bytes(second)
    st = wait_for(m, lambda st: (st["reclaimed_before_upload"] or 0) >= 1, "the reclamation")
    assert st["reclaimed_bytes"] > 0 and st["reclaim_error"] is None
    assert old not in fast_blobs(m.state)           # deleted from the fast store at once
    proxy.heal()
    m.ctl("flush")
    in_bucket = slow_blobs(s3_server, s3_bucket)
    assert new in in_bucket and old not in in_bucket
    assert (m.mnt / "doc.txt").read_bytes() == second
    m.umount()


def _editor_save(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def test_a_day_of_saves_leaves_only_live_data_snapshots_and_a_bounded_slack(
        laptop, s3_server, s3_bucket):
    m = laptop
    m.mount_ok()
    shared = os.urandom(1_500_000)                  # the same bytes in two files: dedup
    (m.mnt / "a.bin").write_bytes(shared)
    (m.mnt / "b.bin").write_bytes(shared)
    db = sqlite3.connect(m.mnt / "mail.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    doc = m.mnt / "doc.txt"
    kept_snapshot = kept_doc = None
    snapshots = []
    for i in range(500):                            # 500 commits, 200 editor saves
        db.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(300),))
        db.commit()
        if i % 5 in (0, 2):
            _editor_save(doc, os.urandom(200_000))
        if i % 25 == 24:
            time.sleep(2.5)                         # idle: the files get sealed
        if i % 100 == 50:
            name = f"s{i}"
            snapshots.append(ok(run_cli("snapshot", m.mnt, name)).strip())
            if kept_snapshot is None:
                kept_snapshot, kept_doc = snapshots[-1], doc.read_bytes()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    (m.mnt / "a.bin").write_bytes(os.urandom(1_500_000))   # b.bin keeps the shared chunks
    for name in snapshots[1:-1]:                    # expire all but the first and the last
        m.ctl("forget", name)
    m.ctl("flush")
    publish_past(m)
    st = wait_for(m, lambda st: st["reclaim_backlog"] == 0 and st["dirty_files"] == 0,
                  "the backlog to drain")
    assert st["reclaimed_blobs"] > 0, st            # without gc
    # A snapshot still reads what the live file no longer has.
    snap = m.mnt / ".versionfs" / "snapshots" / kept_snapshot
    assert (snap / "doc.txt").read_bytes() == kept_doc
    live = {p.name: p.read_bytes() for p in m.mnt.iterdir() if p.is_file()}
    m.umount()

    from versionfs.maint.gc import extent_pointers
    meta = open_meta(m.state)
    try:
        needed = extent_pointers(meta, retained_only=True)
    finally:
        meta.close()
    slack = 16                                      # blobs of at most a few recent heads
    in_bucket, in_fast = slow_blobs(s3_server, s3_bucket), fast_blobs(m.state)
    assert needed <= in_bucket
    assert len(in_bucket - needed) <= slack, f"{len(in_bucket - needed)} garbage blobs in the bucket"
    assert len(in_fast - needed) <= slack, f"{len(in_fast - needed)} garbage blobs in the fast store"
    r = run_cli("fsck", m.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    # Every live file and the snapshot read back from the bucket alone.
    for p in (m.state / "fast").iterdir():
        if p.is_dir():
            for f in p.iterdir():
                f.unlink()
    m.mount_ok()
    assert {p.name: p.read_bytes() for p in m.mnt.iterdir() if p.is_file()} == live
    assert (m.mnt / "b.bin").read_bytes() == shared
    assert (snap / "doc.txt").read_bytes() == kept_doc
    out = m.ctl("gc", "--dry-run")                  # the full verifier agrees
    assert "would delete: " in out
    m.umount()


def _save(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_a_power_cut_during_reclamation_loses_nothing(powered_laptop, s3_url):
    m = powered_laptop
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 1.0, "cloud.lease_ttl_seconds": 600.0,
                   "mount.idle_seal_seconds": 1.0})
    m.mount_ok()
    shared, first = os.urandom(600_000), os.urandom(600_000)
    _save(m.mnt / "a.bin", first)
    _save(m.mnt / "b.bin", shared)
    _save(m.mnt / "c.bin", shared)                 # dedup: c.bin shares b.bin's chunks
    snap = ok(run_cli("snapshot", m.mnt, "before")).strip()
    last = first
    for i in range(12):                             # versions superseded, sealed, reclaimed
        last = os.urandom(600_000)
        _save(m.mnt / "a.bin", last)
        if i == 6:
            _save(m.mnt / "c.bin", os.urandom(600_000))
            _save(m.mnt / "c.bin", shared)
        time.sleep(1.0 + (i % 3))
    _save(m.mnt / "d.bin", os.urandom(600_000))
    st = wait_for(m, lambda st: (st["reclaimed_blobs"] or 0) > 0 and st["dirty_files"] == 0,
                  "a reclamation before the cut")
    last = os.urandom(600_000)
    _save(m.mnt / "a.bin", last)                    # the cut lands while this is reclaimed
    os.truncate(m.mnt / "d.bin", 0)                 # never synced: its metadata may be lost,
    for i in range(4):                              # but not once its chunk is deleted (which
        (m.mnt / f"dir{i}").mkdir()                 # waits for a few publishes: changes that
        time.sleep(1.5)                             # sync nothing)
    wait_for(m, lambda s: s["reclaimed_blobs"] > st["reclaimed_blobs"],
             "the truncated chunk's reclamation")
    m.kill9()
    report = m.disk.cut()
    m.disk.start()
    r = m.mount()
    assert r.returncode == 0, f"{r.stderr} (the cut lost {report['lost']})"
    assert (m.mnt / "a.bin").read_bytes() == last
    assert (m.mnt / "b.bin").read_bytes() == shared
    assert (m.mnt / "c.bin").read_bytes() == shared
    assert (m.mnt / ".versionfs" / "snapshots" / snap / "a.bin").read_bytes() == first
    assert (m.mnt / "d.bin").stat().st_size == 0
    assert (m.mnt / "d.bin").read_bytes() == b""
    publish_past(m)
    wait_for(m, lambda st: st["reclaim_backlog"] == 0, "the backlog to drain after the cut")
    assert (m.mnt / "b.bin").read_bytes() == shared
    m.umount()
    r = run_cli("fsck", m.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_failing_drain_is_an_error_in_log_status_and_metrics_and_is_retried(
        laptop, proxy, s3_server, s3_bucket):
    m = laptop
    port = free_port()
    m.configure(**{"metrics.listen": f"127.0.0.1:{port}", "mount.idle_seal_seconds": 1.0})
    m.mount_ok(env=proxy.env())
    first = os.urandom(200_000)
    old = hashlib.sha256(first).digest()
    (m.mnt / "doc.txt").write_bytes(first)
    snap = ok(run_cli("snapshot", m.mnt, "s")).strip()
    m.ctl("flush")
    assert old in slow_blobs(s3_server, s3_bucket)
    # A reader keeps the old version open in the snapshot, so it is held while
    # the snapshot is forgotten and the heads the bucket keeps move past it.
    reader = open(m.mnt / ".versionfs" / "snapshots" / snap / "doc.txt", "rb")
    try:
        assert reader.read(10) == first[:10]
        (m.mnt / "doc.txt").write_bytes(os.urandom(200_000))
        m.ctl("forget", "s")
        m.ctl("flush")
        publish_past(m)
        assert old in slow_blobs(s3_server, s3_bucket)
        proxy.drop()                                # the bucket refuses the delete
    finally:
        reader.close()
    st = wait_for(m, lambda st: st["reclaim_error"] is not None, "the failure in status", 120)
    assert "unreachable" in st["reclaim_error"].lower() or "Store" in st["reclaim_error"], st
    assert metric(port, 'versionfs_background_errors_total{task="reclaim"}') >= 1
    log = (m.state / "versionfs.log").read_text()
    assert " ERROR " in log and "reclaiming superseded chunks failed" in log, log[-3000:]
    proxy.heal()
    wait_for(m, lambda st: st["reclaim_error"] is None and st["reclaim_backlog"] == 0,
             "the retried drain", 420)
    assert old not in slow_blobs(s3_server, s3_bucket)
    m.umount()


def test_a_file_deleted_while_its_seal_runs_leaves_no_chunk_behind(laptop, s3_server, s3_bucket):
    """The seal's new chunks are queued when it finds the file gone: both
    stores lose them without gc. The seal is held between storing its chunks
    and persisting them by the daemon's test hook (data.SEAL_PAUSE_ENV): with
    a big file alone the delete raced the seal, and under load the seal won."""
    m = laptop
    m.configure(**{"mount.idle_seal_seconds": 1.0})
    pause = m.state.parent / "seal-pause"
    pause.touch()
    m.mount_ok(env={SEAL_PAUSE_ENV: str(pause)})
    fast_before, slow_before = fast_blobs(m.state), slow_blobs(s3_server, s3_bucket)
    big = m.mnt / "big.bin"
    big.write_bytes(os.urandom(16 << 20))
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{pause}.reached").exists():    # the idle seal has stored its chunks
            assert time.monotonic() < deadline, "the seal of big.bin did not store its chunks"
            time.sleep(0.05)
        stored = fast_blobs(m.state) - fast_before
        assert stored, "the seal stored no chunk"
        big.unlink()
        wait_for(m, lambda st: st["files_in_memory"] == 0, "the daemon to let go of big.bin")
    finally:
        pause.unlink(missing_ok=True)
    line = f"was deleted while it was sealed: {len(stored)} new chunk(s) queued"
    deadline = time.monotonic() + 60
    while line not in (log := (m.state / "versionfs.log").read_text()):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
    m.ctl("flush")
    publish_past(m)
    wait_for(m, lambda st: st["reclaim_backlog"] == 0 and st["pending_uploads"] == 0,
             "the seal's chunks to be reclaimed")
    assert fast_blobs(m.state) - fast_before == set()
    assert slow_blobs(s3_server, s3_bucket) - slow_before == set()
    m.umount()


def test_a_power_cut_after_a_discard_never_finds_metadata_naming_the_discarded_chunk(
        powered_laptop, proxy, s3_url):
    """The metadata that supersedes a chunk is synced before the chunk is
    deleted. Every other sync is held off (LMDB commits, the periodic sync,
    publishing), so only that ordering keeps the file readable after the cut."""
    m = powered_laptop
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 60.0, "cloud.lease_ttl_seconds": 600.0,
                   "mount.idle_seal_seconds": 1.0, "mount.metadata_sync_seconds": 3600.0,
                   "meta.batch_interval": 3600.0, "meta.batch_limit": 10 ** 9})
    m.mount_ok(env=proxy.env())
    proxy.drop()                                    # uploads wait: the chunk stays pending
    first, second = os.urandom(200_000), os.urandom(200_000)
    (m.mnt / "a.bin").write_bytes(first)
    wait_for(m, lambda st: st["dirty_files"] == 0 and st["pending_uploads"] >= 1, "the first seal")
    with open(m.mnt / "a.bin", "rb") as f:          # the first version's metadata is durable
        os.fsync(f.fileno())
    (m.mnt / "a.bin").write_bytes(second)           # never fsynced
    wait_for(m, lambda st: (st["reclaimed_before_upload"] or 0) >= 1 and st["dirty_files"] == 0,
             "the first version's chunk to be discarded")
    m.kill9()
    report = m.disk.cut()
    m.disk.start()
    proxy.heal()
    r = m.mount(env=proxy.env())
    assert r.returncode == 0, f"{r.stderr} (the cut lost {report['lost']})"
    # Unsynced, so it may come back as it was before, but readable: never the
    # first version, whose chunk is gone.
    assert (m.mnt / "a.bin").read_bytes() in (b"", second)
    m.umount()
    r = run_cli("fsck", m.state, "--read-data", "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr


def test_after_a_remount_a_chunk_no_kept_head_names_leaves_the_bucket_without_new_publishes(
        laptop, s3_server, s3_bucket):
    """The heads the bucket keeps (their indexes are in the head record) and
    when a drain first saw a candidate (b"Y") outlive the mount: a chunk the
    published heads had already moved past goes at the next mount's first
    drains, not after three more publishes."""
    m = laptop
    m.mount_ok()
    first = os.urandom(200_000)
    old = hashlib.sha256(first).digest()
    (m.mnt / "doc.txt").write_bytes(first)
    ok(run_cli("snapshot", m.mnt, "s"))
    m.ctl("flush")
    assert old in slow_blobs(s3_server, s3_bucket)
    # An open snapshot file holds the old chunk past the publishes that make it
    # garbage; the laptop then dies with it open.
    reader = open(m.mnt / ".versionfs" / "snapshots" / "s" / "doc.txt", "rb")
    assert reader.read(10) == first[:10]
    (m.mnt / "doc.txt").write_bytes(os.urandom(200_000))
    m.ctl("forget", "s")
    m.ctl("flush")
    publish_past(m)
    time.sleep(5)                                   # drains see it held: it stays
    assert old in slow_blobs(s3_server, s3_bucket)
    m.kill9()
    with contextlib.suppress(OSError):
        reader.close()
    m.configure(**{"cloud.wal_ship_interval_seconds": 60.0})   # none in the next minute
    m.mount_ok()
    before = status(m)["published_index"]
    deadline = time.monotonic() + 45
    while old in slow_blobs(s3_server, s3_bucket):
        assert time.monotonic() < deadline, f"still in the bucket after the remount: {status(m)}"
        time.sleep(0.5)
    st = status(m)
    assert st["reclaim_error"] is None
    assert st["published_index"] == before, "deleted only after a publish of this mount"
    m.umount()

