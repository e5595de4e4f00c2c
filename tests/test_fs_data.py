"""The data path on a real mount: durability, CDC dedup, big files, crashes."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time

import pytest

from fsmount import fresh_mount, vfs  # noqa: F401  (fixture)
from history_util import wait_for

pytestmark = pytest.mark.fuse


def fast_blobs(vfs) -> int:
    return sum(len(files) for _, _, files in os.walk(vfs.state_dir / "fast"))


def test_kill9_after_fsync_loses_nothing(vfs):
    data = os.urandom(5 << 20) + b"tail"
    os.makedirs(vfs.path("a/b"))
    fd = os.open(vfs.path("a/b/synced"), os.O_RDWR | os.O_CREAT, 0o640)
    os.write(fd, data)
    os.fsync(fd)
    os.setxattr(vfs.path("a/b/synced"), "user.k", b"v")
    os.utime(vfs.path("a/b/synced"), ns=(11, 22))
    os.fsync(fd)
    # not synced: may be lost, but must not corrupt anything
    fd2 = os.open(vfs.path("unsynced"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd2, b"maybe")
    vfs.kill9()
    vfs.start()
    assert open(vfs.path("a/b/synced"), "rb").read() == data
    st = os.stat(vfs.path("a/b/synced"))
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 22 and st.st_size == len(data)
    assert os.getxattr(vfs.path("a/b/synced"), "user.k") == b"v"
    if os.path.exists(vfs.path("unsynced")):              # consistent: size matches content
        body = open(vfs.path("unsynced"), "rb").read()
        assert body in (b"", b"maybe") and os.stat(vfs.path("unsynced")).st_size == len(body)
    # the remounted filesystem is fully usable
    open(vfs.path("after"), "w").write("ok")
    assert open(vfs.path("after")).read() == "ok"


def test_kill9_during_writes_then_remount_is_consistent(vfs):
    fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"A" * 100_000)
    os.fsync(fd)
    os.write(fd, b"B" * 3_000_000)               # unsynced growth
    os.ftruncate(fd, 50_000)                     # unsynced truncate
    vfs.kill9()
    vfs.start()
    body = open(vfs.path("f"), "rb").read()
    assert body == b"A" * 100_000 or body == b"A" * 50_000, len(body)
    assert os.stat(vfs.path("f")).st_size == len(body)
    # leftover layer files are gone; the dirty journal (fsynced writes) stays
    assert os.listdir(vfs.state_dir / "dirty") == ["journal"]


def test_file_deleted_while_its_seal_runs_leaves_no_dirty_file(tmp_path, monkeypatch):
    # fsstress found a layer file left in the dirty area after a clean unmount
    # (the next mount warned of an unclean shutdown): a file written while its
    # seal ran, then deleted before the seal ended, kept its newer layer.
    monkeypatch.setenv("VFS_TEST_SEAL_GATE", "1")
    with fresh_mount(tmp_path) as vfs:
        started, go = vfs.state_dir / "seal-started", vfs.state_dir / "seal-go"
        fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, os.urandom(2 << 20))
        os.fsync(fd)
        wait_for(started.exists, 60, "the idle seal to start", step=0.05)
        os.pwrite(fd, os.urandom(2 << 20), 2 << 20)     # a new layer, in a layer file
        os.fsync(fd)
        os.close(fd)
        os.unlink(vfs.path("f"))
        wait_for(lambda: json.loads(vfs.ok("status --json"))["files_in_memory"] == 0, 60,
                 "the daemon to forget the deleted file", step=0.05)
        go.touch()
        vfs.stop()
        assert os.listdir(vfs.state_dir / "dirty") == ["journal"]
        vfs.start()
        assert "unclean shutdown" not in vfs.log.read_text()


def test_clean_unmount_seals_everything(vfs):
    blobs = {}
    for i in range(20):
        blobs[i] = os.urandom(1000 * i + 1)
        with open(vfs.path(f"f{i}"), "wb") as f:
            f.write(blobs[i])
    vfs.stop()
    vfs.start()
    for i, b in blobs.items():
        assert open(vfs.path(f"f{i}"), "rb").read() == b


def test_inserting_one_byte_stores_about_one_new_chunk(vfs):
    # fsync of a big write journals where its bytes are and seals later
    # (durability.py): `flush` seals now, so the blobs can be counted.
    data = os.urandom(64 << 20)
    with open(vfs.path("big"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    vfs.ok("flush")
    n0 = fast_blobs(vfs)
    assert 40 <= n0 <= 120                      # ~1 MiB chunks (plus min size)
    with open(vfs.path("big"), "wb") as f:       # an editor saving the whole file
        f.write(b"!" + data)
        os.fsync(f.fileno())
    vfs.ok("flush")
    new = fast_blobs(vfs) - n0
    assert 1 <= new <= 3, new
    with open(vfs.path("big"), "r+b") as f:      # overwrite one byte in the middle
        f.seek(40 << 20)
        f.write(b"?")
        os.fsync(f.fileno())
    vfs.ok("flush")
    assert fast_blobs(vfs) - n0 - new <= 2
    expected = bytearray(b"!" + data)
    expected[40 << 20] = ord("?")
    vfs.stop()
    vfs.start()
    h = hashlib.sha256()
    with open(vfs.path("big"), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.digest() == hashlib.sha256(expected).digest()


def test_appending_in_steps_reuses_chunks(vfs):
    data = os.urandom(24 << 20)
    with open(vfs.path("log"), "wb") as f:
        for i in range(0, len(data), 3 << 20):
            f.write(data[i:i + (3 << 20)])
            f.flush()
            os.fsync(f.fileno())
            vfs.ok("flush")                       # fsync journals; make each step a seal
    n = fast_blobs(vfs)
    with open(vfs.path("copy"), "wb") as f:      # same bytes in one go: no new chunks
        f.write(data)
    vfs.ok("flush")
    assert fast_blobs(vfs) - n <= 2
    assert open(vfs.path("log"), "rb").read() == data


def test_big_sequential_file_streams_and_reads_back(vfs):
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    t0 = time.monotonic()
    with open(vfs.path("big"), "wb") as f:
        for i in range(200):
            b = block[i:] + block[:i]
            f.write(b)
            h.update(b)
        os.fsync(f.fileno())
    elapsed = time.monotonic() - t0
    assert elapsed < 60
    vfs.stop()
    vfs.start()
    h2 = hashlib.sha256()
    with open(vfs.path("big"), "rb") as f:
        while chunk := f.read(1 << 20):
            h2.update(chunk)
    assert h2.digest() == h.digest()


def _start_writeback(fd: int) -> None:
    """Make the kernel hand its dirty pages of ``fd`` to the daemon now, as its
    periodic writeback would (sync_file_range WAIT_BEFORE|WRITE|WAIT_AFTER):
    plain WRITE requests, neither an fsync nor a flush nor a release."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if libc.sync_file_range(fd, 0, 0, 7) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_idle_files_are_sealed_without_close(vfs):
    data = os.urandom(100_000)
    fd = os.open(vfs.path("idle"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.fsync(fd)                                  # durable (journaled or sealed)
    os.write(fd, b"more")
    os.pwrite(fd, b"x", 0)
    _start_writeback(fd)                          # the daemon has the bytes, unsealed
    # (small unsealed writes live in memory, not under dirty/: ask the daemon)
    deadline = time.monotonic() + 20
    while json.loads(vfs.ok("status --json"))["dirty_files"]:
        assert time.monotonic() < deadline, "the idle file was not sealed within 20s"
        time.sleep(0.2)
    # ... while the file is still open, and what was sealed is what was written.
    assert open(vfs.path("idle"), "rb").read() == b"x" + data[1:] + b"more"
    os.close(fd)


def test_corrupt_blob_gives_eio_and_mount_survives(vfs):
    with open(vfs.path("f"), "wb") as f:
        f.write(os.urandom(2 << 20))
        os.fsync(f.fileno())
    vfs.ok("flush")
    vfs.stop()
    for store in ("fast", "slow"):                # damage every copy
        for dirpath, _, files in os.walk(vfs.state_dir / store):
            for name in files:
                path = os.path.join(dirpath, name)
                if len(name) >= 64:
                    with open(path, "r+b") as fh:
                        fh.seek(100)
                        fh.write(b"garbage!")
    vfs.start()
    with pytest.raises(OSError) as info:
        open(vfs.path("f"), "rb").read()
    assert info.value.errno == 5                  # EIO
    open(vfs.path("g"), "w").write("still alive")
    assert open(vfs.path("g")).read() == "still alive"
    last_error = json.loads(vfs.ok("status --json"))["last_error"]
    assert last_error and "blob" in last_error
