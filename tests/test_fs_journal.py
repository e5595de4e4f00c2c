"""fsync through the dirty journal (versionfs/fs/journal.py, durability.py):
durable in O(bytes written since the last fsync), no blob per fsync, replayed
after a crash; sealing coalesced (issue 10).

These kill the daemon with SIGKILL: the journal and the metadata WAL are
fsynced files of the state dir, so what a power cut does to them is the job
of the power-cut harness (tests/test_powercut.py); here the point is that
the daemon itself never needs more than its journal.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from fsmount import fresh_mount, vfs  # noqa: F401  (fixture)

from versionfs.fs.data import SEAL_PAUSE_ENV


def status(vfs) -> dict:
    return json.loads(vfs.ok("status --json"))


def meta_wal_bytes(vfs) -> int:
    wal = vfs.state_dir / "meta" / "wal"
    return sum(p.stat().st_size for p in wal.iterdir())


def fast_blobs(vfs) -> int:
    return sum(len(files) for _, _, files in os.walk(vfs.state_dir / "fast"))


def _apply(rng: random.Random, fd: int, model: bytearray) -> None:
    """One random change: write at a random offset, extend, truncate or rewrite."""
    op = rng.choice(["write", "write", "extend", "truncate", "rewrite"])
    size = len(model)
    if op == "write" and size:
        off = rng.randrange(size)
        data = rng.randbytes(rng.randint(1, 20_000))
    elif op == "rewrite":
        off, data = 0, rng.randbytes(rng.randint(1, 300_000))
        os.ftruncate(fd, 0)
        del model[:]
    elif op == "truncate":
        new = rng.randrange(size + 1) if size else 0
        os.ftruncate(fd, new)
        del model[new:]
        return
    else:
        off = size + rng.randint(0, 50_000)
        data = rng.randbytes(rng.randint(1, 100_000))
    os.pwrite(fd, data, off)
    if off > len(model):
        model.extend(bytes(off - len(model)))
    model[off:off + len(data)] = data


def test_fsync_then_kill9_keeps_contents_size_and_mtime_exact(vfs):
    """Random writes, extensions, truncations and rewrites of several files with
    fsyncs between them (and seals forced now and then, so journal records and
    seals interleave); after kill -9 every file is exactly as at its last fsync."""
    rng = random.Random(1010)
    names = [f"f{i}" for i in range(4)]
    models = {n: bytearray() for n in names}
    fds = {n: os.open(vfs.path(n), os.O_RDWR | os.O_CREAT, 0o644) for n in names}
    synced: dict[str, tuple[bytes, int]] = {}
    try:
        for step in range(120):
            name = rng.choice(names)
            _apply(rng, fds[name], models[name])
            if rng.random() < 0.3:
                os.fsync(fds[name])
                synced[name] = (bytes(models[name]), os.fstat(fds[name]).st_mtime_ns)
            if step % 40 == 19:                   # the last 20 steps only journaled
                vfs.ok("flush")                   # seals now and then, between fsyncs
        for name in names:                         # every file ends fsynced
            os.fsync(fds[name])
            synced[name] = (bytes(models[name]), os.fstat(fds[name]).st_mtime_ns)
        assert status(vfs)["journal_files"] > 0    # at least some of it only in the journal
    finally:
        for fd in fds.values():
            os.close(fd)
    vfs.kill9()
    vfs.start()
    for name, (data, mtime) in synced.items():
        st = os.stat(vfs.path(name))
        assert st.st_size == len(data), name
        assert open(vfs.path(name), "rb").read() == data, name
        assert st.st_mtime_ns == mtime, name
    # replayed files are sealed and the journal lets go of them
    vfs.ok("flush")
    assert status(vfs)["journal_files"] == 0
    for name, (data, _) in synced.items():
        assert open(vfs.path(name), "rb").read() == data, name


def test_unsynced_writes_never_corrupt_synced_data(vfs):
    synced = os.urandom(300_000)
    fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, synced)
    os.fsync(fd)
    os.pwrite(fd, b"N" * 5000, 1000)              # not fsynced: may or may not survive
    os.pwrite(fd, b"T" * 7000, 300_000)
    other = os.open(vfs.path("other"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(other, b"never synced")
    vfs.kill9()
    for dead in (fd, other):                       # the mount they were on is gone
        try:
            os.close(dead)
        except OSError:
            pass
    vfs.start()
    body = open(vfs.path("f"), "rb").read()
    assert body[:1000] == synced[:1000] and body[6000:300_000] == synced[6000:]
    assert body[1000:6000] in (synced[1000:6000], b"N" * 5000)
    assert body[300_000:] in (b"", b"T" * 7000)


def small_and_big_files(vfs) -> None:
    """Files "small" (1 MiB) and "big" (200 MiB) of distinct 1 MiB blocks, sealed."""
    block = os.urandom(1 << 20)
    for name, mib in (("small", 1), ("big", 200)):
        with open(vfs.path(name), "wb") as f:
            for i in range(mib):
                f.write(block[i:] + block[:i])
    vfs.ok("flush")


def test_fsync_creates_no_blob_and_costs_what_was_written(vfs):
    """The same 4 KiB append + fsync costs the same on a 1 MiB and a 200 MiB
    file: 4 KiB journaled, nothing chunked, no blob (counters, not timings)."""
    small_and_big_files(vfs)
    costs = {}
    for name in ("small", "big"):
        before, blobs = status(vfs), fast_blobs(vfs)
        fd = os.open(vfs.path(name), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, os.urandom(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
        after = status(vfs)
        costs[name] = (after["journal_bytes"] - before["journal_bytes"],
                       after["sealed_bytes"] - before["sealed_bytes"],
                       fast_blobs(vfs) - blobs)
    assert costs["small"] == costs["big"] == (4096, 0, 0), costs


def test_the_first_fsync_after_a_seal_the_metadata_lacks_syncs_it_once(tmp_path, monkeypatch):
    """The idle sealer seals a file the metadata sync will not reach for long:
    the next fsync journals only its append and syncs the metadata once (the
    seal under that record must be durable, test_powercut.py); the one after
    it is the journal alone again."""
    monkeypatch.setenv("VFS_METADATA_SYNC", "600")
    with fresh_mount(tmp_path) as m:
        reader = os.open(m.path("log"), os.O_RDONLY | os.O_CREAT, 0o644)  # keeps it loaded
        try:
            os.fsync(reader)                           # new inode: metadata synced
            # Whole pages (the kernel writes back pages, not bytes); close hands
            # them over.
            with open(m.path("log"), "ab") as f:
                f.write(os.urandom(64 * 4096))
            deadline = time.monotonic() + 60
            while status(m)["dirty_files"]:
                assert time.monotonic() < deadline, "the idle sealer never sealed the file"
                time.sleep(0.05)
            before = status(m)
            fd = os.open(m.path("log"), os.O_WRONLY | os.O_APPEND)
            try:
                for _ in range(2):
                    os.write(fd, os.urandom(4096))
                    os.fsync(fd)
            finally:
                os.close(fd)
            after = status(m)
        finally:
            os.close(reader)
    cost = (after["journal_bytes"] - before["journal_bytes"],
            after["fsync_metadata_syncs"] - before["fsync_metadata_syncs"])
    assert cost == (2 * 4096, 1), cost


def test_fsync_alone_in_flight_syncs_without_a_thread_and_grows_no_segment(vfs):
    """A program fsyncing after each small write (SQLite's commits): each fsync
    is the only request being served, so its journal sync runs on the loop
    (no thread hop), and it overwrites the journal's pre-zeroed blocks: no
    sync changes a segment's size."""
    fd = os.open(vfs.path("db-wal"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(4096))
        os.fsync(fd)                               # new inode: metadata synced too
        before = status(vfs)
        for _ in range(50):
            os.write(fd, os.urandom(4120))
            os.fsync(fd)
        after = status(vfs)
    finally:
        os.close(fd)
    assert after["fsync_syncs_in_loop"] - before["fsync_syncs_in_loop"] == 50
    assert after["journal_size_changing_syncs"] == 0
    assert after["journal_segments_preallocated"] >= 1


def test_fsync_syncs_only_the_journal(vfs):
    """fsync of a file that exists on disk is one disk sync (the journal): the
    metadata store is not synced, nor even written (the kernel's mtime/ctime
    stamps stay in memory until the seal), yet size and mtime come back after
    kill -9 from the journal record; a chmod since the last metadata sync makes
    the next fsync sync the metadata too (the journal does not carry the mode)."""
    fd = os.open(vfs.path("wal"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(5000))
        os.fsync(fd)                               # new inode: metadata synced too
        before, wal = status(vfs)["fsync_metadata_syncs"], meta_wal_bytes(vfs)
        for _ in range(50):
            os.write(fd, os.urandom(100))
            os.fsync(fd)
        assert meta_wal_bytes(vfs) == wal
        assert status(vfs)["fsync_metadata_syncs"] == before
        os.fchmod(fd, 0o600)
        os.write(fd, b"last")
        os.fsync(fd)
        st = os.fstat(fd)
        data = os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)
    vfs.kill9()
    vfs.start()
    got = os.stat(vfs.path("wal"))
    assert (got.st_size, got.st_mtime_ns, got.st_mode & 0o777) == (len(data), st.st_mtime_ns, 0o600)
    assert open(vfs.path("wal"), "rb").read() == data


def test_many_fsyncs_become_one_version(vfs):
    """An append-only log (a line + fsync, many times) is sealed once, after it
    goes quiet: one chunk, not one per fsync."""
    blobs = fast_blobs(vfs)
    fd = os.open(vfs.path("log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for i in range(300):
            os.write(fd, f"line {i:05d} {'x' * 80}\n".encode())
            os.fsync(fd)
    finally:
        os.close(fd)
    assert fast_blobs(vfs) == blobs                # fsync stored nothing
    vfs.ok("flush")
    assert fast_blobs(vfs) - blobs == 1
    assert status(vfs)["journal_files"] == 0


def test_workload_with_seals_between_fsyncs_then_kill9(vfs):
    """The power-cut workload (files opened per step, written at random offsets,
    extended, truncated, rewritten, some steps fsynced), with seals landing
    between fsyncs: after kill -9 every file is its fsynced state or a later
    one, exactly — never a mix (what the journal mark in the metadata is for)."""
    from test_powercut import Workload
    for seed in (23, 24, 27):
        root = vfs.mountpoint / f"w{seed}"
        os.mkdir(root)
        work = Workload(root, seed)
        work.create_all()
        for step in range(150):
            work.step()
            if step % 50 == 25:
                vfs.ok("flush")                  # seals, between fsyncs
        vfs.kill9()
        vfs.start()
        assert work.check(root) == [], seed


def test_fsync_after_a_seal_leaves_nothing_in_the_journal(vfs):
    """fsstress found files replayed from the journal after a clean unmount: an
    fsync (or the unmount) after a seal journaled bytes or a truncation the seal
    or the metadata already held, and no later seal of the file released them
    (so the journal kept its segments, and each mount replayed them again)."""
    fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"q" * 100_000)
    vfs.ok("flush")                                 # sealed, never fsynced
    os.fsync(fd)
    os.close(fd)
    fd = os.open(vfs.path("g"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"r" * 100_000)
    vfs.ok("flush")
    os.ftruncate(fd, 0)                             # cut in the metadata alone
    os.fsync(fd)
    os.pwrite(fd, b"s" * 10, 0)
    vfs.ok("flush")                                 # sealed, then left to the unmount
    os.close(fd)
    vfs.ok("flush")
    assert status(vfs)["journal_files"] == 0
    vfs.stop()
    vfs.start()
    assert "replayed the dirty journal" not in vfs.log.read_text()
    assert open(vfs.path("f"), "rb").read() == b"q" * 100_000
    assert open(vfs.path("g"), "rb").read() == b"s" * 10



def wait_for_path(path: Path, what: str) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_fsync_during_the_seal_of_what_it_froze_is_released_by_that_seal(
        tmp_path, monkeypatch):
    """An fsync that arrives while the file's seal runs journals what the seal
    froze; with nothing written since the freeze, that seal holds every byte,
    the size and the mtime of the record, so once it is durable the journal
    lets go of the file: no held segment, no replay at the next mount. The
    daemon's test hook (data.SEAL_PAUSE_ENV) holds the seal open."""
    pause = tmp_path / "seal-pause"
    reached = Path(f"{pause}.reached")
    pause.touch()
    monkeypatch.setenv(SEAL_PAUSE_ENV, str(pause))
    data = os.urandom(1 << 20)                  # above CHUNK_MIN: sealed on its own
    with fresh_mount(tmp_path, idle_seal=1) as m:
        with open(m.path("f"), "wb") as f:      # close hands the pages over
            f.write(data)
        wait_for_path(reached, "the idle seal never stored its chunks")
        fd = os.open(m.path("f"), os.O_RDWR)
        try:
            os.fsync(fd)
            reached.unlink()                    # the seal goes on
            deadline = time.monotonic() + 120
            while status(m)["dirty_files"]:
                assert time.monotonic() < deadline, "the seal did not end"
                time.sleep(0.05)
        finally:
            os.close(fd)
        sync_metadata_by_fsync(m)
        assert status(m)["journal_files"] == 0
        pause.unlink()
        m.stop()
        m.start()
        assert "replayed the dirty journal" not in m.log.read_text()
        assert open(m.path("f"), "rb").read() == data


def test_an_fsync_during_the_seal_of_later_writes_stays_held_until_they_are_sealed(
        tmp_path, monkeypatch):
    """The same fsync with an append made after the freeze: that seal does not
    hold the append (nor the size and mtime that go with it), so its journal
    record outlives the seal's metadata sync, and kill -9 before the append's
    own seal is persisted (the hook holds it) still gives the append back."""
    pause = tmp_path / "seal-pause"
    reached = Path(f"{pause}.reached")
    pause.touch()
    monkeypatch.setenv(SEAL_PAUSE_ENV, str(pause))
    first, later = os.urandom(1 << 20), os.urandom(5000)
    with fresh_mount(tmp_path, idle_seal=1) as m:
        with open(m.path("f"), "wb") as f:
            f.write(first)
        wait_for_path(reached, "the idle seal never stored its chunks")
        fd = os.open(m.path("f"), os.O_RDWR | os.O_APPEND)
        try:
            os.write(fd, later)
            os.fsync(fd)
            mtime = os.fstat(fd).st_mtime_ns
            reached.unlink()                    # the first seal goes on
            wait_for_path(reached, "the append was never sealed")   # held: never persisted
        finally:
            os.close(fd)
        sync_metadata_by_fsync(m)               # the first seal is durable
        st = status(m)
        assert (st["dirty_files"], st["journal_files"]) == (1, 1), st
        m.kill9()
        pause.unlink()
        m.start()
        assert "replayed the dirty journal" in m.log.read_text()
        got = os.stat(m.path("f"))
        assert (got.st_size, got.st_mtime_ns) == (len(first) + len(later), mtime)
        assert open(m.path("f"), "rb").read() == first + later


def sync_metadata_by_fsync(m) -> None:
    """fsync of a new empty file syncs the metadata (its inode is not in the
    journal), and with it the journal records the seals it made durable."""
    fd = os.open(m.path("new"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        before = status(m)["fsync_metadata_syncs"]
        os.fsync(fd)
        assert status(m)["fsync_metadata_syncs"] == before + 1
    finally:
        os.close(fd)
