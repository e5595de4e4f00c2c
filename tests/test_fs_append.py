"""Append-friendly sealing (versionfs/fs/sealing.py, issue 10): a seal stores
only the new bytes of an append, never the unchanged part of a partial last
chunk again, and runs of small extents are merged once the file is quiet.
Counters, not timings: bytes chunked per seal (`sealed_bytes`), blobs and
bytes in the fast store, bytes uploaded to the slow store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

from fsmount import Mount, new_mountpoint, new_state, vfs  # noqa: F401  (fixture)
from test_fs_journal import small_and_big_files, status


def store_use(root) -> tuple[int, int]:
    """(blobs, bytes) under a store directory."""
    count = size = 0
    for d, _, files in os.walk(root):
        for name in files:
            count += 1
            size += os.path.getsize(os.path.join(d, name))
    return count, size


def log_line(i: int) -> bytes:
    """About 100 bytes of text that does not compress much (base64 of random bytes)."""
    return f"{i:06d} ".encode() + base64.b64encode(os.urandom(69)) + b"\n"


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_append_and_seal_cost_the_same_on_1mib_and_200mib(vfs):
    """The same 4 KiB append + seal chunks 4 KiB and stores one blob on a
    1 MiB and on a 200 MiB file: the partial last chunk is not re-stored."""
    small_and_big_files(vfs)
    costs = {}
    for name in ("small", "big"):
        before, (blobs, stored) = status(vfs), store_use(vfs.state_dir / "fast")
        with open(vfs.path(name), "ab") as f:
            f.write(os.urandom(4096))
        vfs.ok("flush")
        after, (blobs2, stored2) = status(vfs), store_use(vfs.state_dir / "fast")
        costs[name] = (after["sealed_bytes"] - before["sealed_bytes"], blobs2 - blobs,
                       stored2 - stored)
    assert costs["small"] == costs["big"], costs
    assert costs["small"][:2] == (4096, 1), costs
    assert costs["small"][2] < 2 * 4096, costs


def test_append_log_with_seals_between_uploads_at_most_twice_written(vfs):
    """A ~100-byte line + fsync, 2,000 times, sealed every 100 lines: the slow
    store receives at most twice the bytes written."""
    slow = vfs.state_dir / "slow"
    _, uploaded = store_use(slow)
    written = 0
    fd = os.open(vfs.path("app.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for i in range(2000):
            written += os.write(fd, log_line(i))
            os.fsync(fd)
            if i % 100 == 99:
                vfs.ok("flush")                    # a seal (and upload) between appends
    finally:
        os.close(fd)
    vfs.ok("flush")
    _, uploaded2 = store_use(slow)
    assert os.path.getsize(vfs.path("app.log")) == written
    assert uploaded2 - uploaded <= 2 * written, (uploaded2 - uploaded, written)


def test_small_extents_are_merged_when_quiet_and_content_stays_exact(tmp_path, monkeypatch):
    """Appends sealed one by one leave a run of small extents; once the file is
    quiet they are merged (counter), and after a remount the content is the
    same, byte for byte."""
    monkeypatch.setenv("VFS_MERGE_QUIET", "1.0")
    mnt = new_mountpoint()
    m = Mount(new_state(tmp_path), mnt).start()
    try:
        path = m.mountpoint / "history"
        for i in range(20):
            with open(path, "ab") as f:
                f.write(log_line(i) * (50 + i))
            m.ok("flush")
        digest = sha256(path)
        deadline = time.monotonic() + 60
        while json.loads(m.ok("status --json"))["merged_extents"] < 20:
            assert time.monotonic() < deadline, "the small extents were not merged"
            time.sleep(0.2)
        assert sha256(path) == digest
        m.ok("flush")
    finally:
        m.stop()
    m.start()
    try:
        assert sha256(m.mountpoint / "history") == digest
    finally:
        m.stop()
        os.rmdir(mnt)
