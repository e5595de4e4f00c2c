"""The mount daemon keeps its memory budget (common/memory.py): resident memory
read from /proc/PID/status of the real daemon started by `versionfs mount`,
through a 256 MiB write and cold read and a 10,000-file workload, and when
idle; per-file state does not outlive the kernel's interest in the files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cli_util import daemon_pid
from history_util import cli_fs, wait_for  # noqa: F401 - cli_fs is a fixture

from versionfs.common.memory import resident_bytes
from versionfs.fs.layers import MEMORY_LAYER_BYTES, MEMORY_LAYERS_TOTAL_BYTES

pytestmark = pytest.mark.fuse

MiB = 1 << 20
PEAK_BUDGET = 200 * MiB       # issue 13: at most 200 MB through the workloads
IDLE_BUDGET = 150 * MiB       # and back under 150 MB when idle


def drop_caches(what: str) -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text(what)


def test_rss_stays_under_budget_through_big_io_and_many_files(cli_fs):  # noqa: F811
    fs = cli_fs.init(mount__read_cache_idle_seconds=3).mount()
    pid = daemon_pid(fs.state)
    assert pid

    written = hashlib.sha256()
    with open(fs.path("big"), "wb") as f:
        for _ in range(256):
            block = os.urandom(MiB)
            written.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    fs.cli("flush", fs.mnt)
    drop_caches("3")
    read = hashlib.sha256()
    with open(fs.path("big"), "rb") as f:
        while block := f.read(MiB):
            read.update(block)
    assert read.digest() == written.digest()
    after_big = resident_bytes(pid)
    assert after_big["VmHWM"] <= PEAK_BUDGET, after_big
    st = fs.status()
    assert st["read_cache_bytes"] <= 64 * MiB
    # Free heap pages were given back while the daemon was busy (common/memory.py):
    # without that the freed chunks stay resident between live ones.
    assert st["allocator_trims"] > 0, st

    small = fs.path("small")
    small.mkdir()
    data = os.urandom(4096)
    for i in range(10_000):
        (small / f"f{i:05d}").write_bytes(data)
    assert len(os.listdir(small)) == 10_000

    # Once the kernel forgets the files (dentry and inode caches dropped), so
    # does the daemon: nothing per file stays behind.
    drop_caches("2")
    st = wait_for(lambda: (s := fs.status())["inodes_in_memory"] < 100 and s, 30,
                  "the daemon to drop the inodes the kernel forgot")
    assert st["files_in_memory"] < 100, st
    for entry in os.scandir(small):
        os.unlink(entry.path)
    small.rmdir()
    os.unlink(fs.path("big"))

    after_all = resident_bytes(pid)
    assert after_all["VmHWM"] <= PEAK_BUDGET, after_all
    # Idle: the read cache is emptied once unused for read_cache_idle_seconds.
    wait_for(lambda: fs.status()["dirty_files"] == 0, 30, "the deletions to be sealed")
    wait_for(lambda: fs.status()["read_cache_bytes"] == 0, 30, "the idle read cache to empty")
    idle = resident_bytes(pid)
    assert idle["VmRSS"] <= IDLE_BUDGET, idle
    fs.umount()


def test_unsealed_small_files_in_memory_stay_under_their_total(cli_fs):  # noqa: F811
    """Memory layers of all files together stay under MEMORY_LAYERS_TOTAL_BYTES
    (fs/layers.py): files held open (so not sealed) beyond that total move to
    their layer files, and read back the same."""
    fs = cli_fs.init().mount()
    per_file = MEMORY_LAYER_BYTES * 3 // 4            # each fits a memory layer alone
    count = 2 * MEMORY_LAYERS_TOTAL_BYTES // per_file  # together twice the total
    contents = [os.urandom(per_file) for _ in range(count)]
    handles = []
    for i, data in enumerate(contents):
        f = open(fs.path(f"open{i:03d}"), "wb")
        f.write(data)
        f.flush()
        handles.append(f)
    st = fs.status()
    assert st["memory_layer_peak_bytes"] <= MEMORY_LAYERS_TOTAL_BYTES, st
    assert st["memory_layers_spilled"] >= count // 2 - 1, st
    for f in handles:
        f.close()
    for i, data in enumerate(contents):
        assert fs.path(f"open{i:03d}").read_bytes() == data
    wait_for(lambda: fs.status()["memory_layer_bytes"] == 0, 30, "the layers to be sealed")
    fs.umount()
