"""fsync of a big write (durability.py `_journal_layers`): the bytes stay in the
dirty layer files, which are fdatasynced and named by an L record of the
dirty journal; nothing is copied into the journal or sealed before fsync
returns, and a kill -9 loses nothing fsynced.

The daemon's idle sealer is turned off (an hour), so that what fsync did is
what the counters show; `flush` seals. The power-cut variant is in
tests/test_powercut.py (test_power_cut_after_big_fsync). The daemon's
allocator costs of a big write are counted on the real `versionfs mount`
daemon (its allocator settings, common/memory.py).
"""

from __future__ import annotations

import json
import os
import random

import pytest

from cli_util import daemon_pid
from fsmount import fresh_mount
from history_util import cli_fs  # noqa: F401 - cli_fs is a fixture

MiB = 1 << 20


@pytest.fixture
def quiet_vfs(tmp_path):
    with fresh_mount(tmp_path, idle_seal=3600) as m:
        yield m


def status(vfs) -> dict:
    return json.loads(vfs.ok("status --json"))


def layer_files(vfs) -> list[str]:
    return sorted(n for n in os.listdir(vfs.state_dir / "dirty") if n != "journal")


def fast_blobs(vfs) -> int:
    return sum(len(files) for _, _, files in os.walk(vfs.state_dir / "fast"))


def crash_and_read(vfs, fd: int, name: str) -> bytes:
    """Close `fd`, kill -9 the daemon, mount again; the file's contents."""
    os.close(fd)
    vfs.kill9()
    vfs.start()
    with open(vfs.path(name), "rb") as f:
        return f.read()


def write_all(fd: int, data: bytes, offset: int = 0) -> None:
    for start in range(0, len(data), MiB):
        os.pwrite(fd, data[start:start + MiB], offset + start)


def test_big_fsync_writes_each_byte_once_and_survives_kill9(quiet_vfs):
    vfs = quiet_vfs
    data = os.urandom(40 * MiB) + b"tail"
    before, blobs = status(vfs), fast_blobs(vfs)
    fd = os.open(vfs.path("big"), os.O_RDWR | os.O_CREAT, 0o644)
    write_all(fd, data)
    os.fsync(fd)
    mtime = os.fstat(fd).st_mtime_ns
    after = status(vfs)
    # Durable where the bytes already were: not copied into the journal, not sealed.
    assert after["journal_bytes"] == before["journal_bytes"]
    assert after["sealed_bytes"] == before["sealed_bytes"]
    assert fast_blobs(vfs) == blobs
    assert layer_files(vfs), "the fsynced layer file is kept for the journal"
    assert crash_and_read(vfs, fd, "big") == data
    assert os.stat(vfs.path("big")).st_mtime_ns == mtime
    vfs.ok("flush")                 # the replayed file is sealed; its layer file goes
    assert layer_files(vfs) == []
    st = status(vfs)
    assert st["journal_files"] == 0
    # Sealing read each byte about once (the chunker re-reads a window's tail),
    # and every chunk reached the file:// slow store on this disk as a hard link.
    assert st["sealed_bytes"] <= 1.1 * len(data)
    assert st["uploads_copied"] == 0 and st["uploads_linked"] >= 20


def minor_faults(pid: int) -> int:
    """Minor page faults of process `pid` so far (/proc/PID/stat, field 10)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_big_write_reuses_the_request_buffer_instead_of_faulting_in_fresh_pages(cli_fs):  # noqa: F811
    # Each 1 MiB WRITE request arrives in a fresh bytes object: a fresh mmap
    # (256 faults per MiB, measured 262) unless the allocator reuses its heap
    # (common/memory.py, measured 6 per MiB including everything else).
    fs = cli_fs.init(mount__idle_seal_seconds=3600).mount()
    pid = daemon_pid(fs.state)
    data = os.urandom(64 * MiB)
    fd = os.open(fs.path("big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        before = minor_faults(pid)
        write_all(fd, data)
        os.fsync(fd)
        faults = minor_faults(pid) - before
    finally:
        os.close(fd)
    assert faults <= 32 * len(data) // MiB, f"{faults / (len(data) / MiB):.0f} faults per MiB"
    with open(fs.path("big"), "rb") as f:
        assert f.read() == data


def test_big_fsyncs_of_overwrites_truncations_and_extensions_replay_exactly(quiet_vfs):
    """Several big fsyncs of one file, each after a big write, a small write and
    maybe a truncation, a seal between two of them; after kill -9 the file is
    exactly as at its last fsync (contents, size, mtime)."""
    vfs, rng = quiet_vfs, random.Random(17)
    model = bytearray()
    fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    for step in range(4):
        off = rng.randrange(len(model) + 1)
        chunk = rng.randbytes(18 * MiB + rng.randrange(MiB))
        write_all(fd, chunk, off)
        model[len(model):] = bytes(max(0, off - len(model)))
        model[off:off + len(chunk)] = chunk
        small_off, small = rng.randrange(len(model)), rng.randbytes(3000)
        os.pwrite(fd, small, small_off)
        model[small_off:small_off + len(small)] = small
        model[len(model):] = bytes(max(0, small_off + len(small) - len(model)))
        if step % 2:
            size = rng.randrange(len(model) // 2, len(model))
            os.ftruncate(fd, size)
            del model[size:]
        os.fsync(fd)
        if step == 1:
            vfs.ok("flush")         # a seal between two big fsyncs
    mtime = os.fstat(fd).st_mtime_ns
    got = crash_and_read(vfs, fd, "f")
    assert len(got) == len(model)
    assert got == model
    assert os.stat(vfs.path("f")).st_mtime_ns == mtime
    vfs.ok("flush")
    assert layer_files(vfs) == []


def test_unsynced_overwrite_never_corrupts_the_fsynced_big_write(quiet_vfs):
    vfs = quiet_vfs
    old, new = os.urandom(32 * MiB), os.urandom(16 * MiB)
    fd = os.open(vfs.path("f"), os.O_RDWR | os.O_CREAT, 0o644)
    write_all(fd, old)
    os.fsync(fd)
    write_all(fd, new)              # not fsynced: may be lost, must not corrupt
    got = crash_and_read(vfs, fd, "f")
    assert len(got) == len(old)
    for start in range(0, len(old), MiB):
        block = got[start:start + MiB]
        assert block == old[start:start + MiB] or block == new[start:start + MiB], start
