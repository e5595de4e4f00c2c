"""Issue 11, finding 8: after a power cut the laptop remounts its own filesystem.

The state dir lives on ``crashdisk.CrashDisk`` (ext4 in a loop-mounted image,
where a power cut loses exactly what was never made durable); the bucket is
the real SeaweedFS, which keeps the writer lease of the daemon that died.
"""

from __future__ import annotations

import os
import re

import pytest

from cli_util import ok, run_cli
from cloud_util import Machine
from crashdisk import CrashDisk

pytestmark = pytest.mark.fuse


@pytest.fixture
def disk(tmp_path):
    d = CrashDisk(tmp_path / "crashdisk")
    try:
        yield d.mount()
    finally:
        d.cleanup()


@pytest.fixture
def laptop(tmp_path, disk):
    m = Machine(tmp_path, "laptop")          # the mountpoint is off the crashing disk
    m.state = disk.path / "laptop-state"
    try:
        yield m
    finally:
        m.cleanup()


def test_power_cut_then_the_laptop_remounts_without_steal_lease(laptop, disk, s3_url):
    ok(run_cli("init", laptop.state, "--slow", s3_url))
    laptop.configure(**{"cloud.lease_ttl_seconds": 600.0})
    laptop.mount_ok()
    fd = os.open(laptop.mnt / "durable.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"fsynced before the power cut\n")
    os.fsync(fd)
    os.close(fd)
    holder = (laptop.state / "instance-id").read_text().strip()
    laptop.kill9()                  # the machine stops: nothing more reaches the disk ...
    disk.power_cut()                # ... and what was only in its memory is gone
    assert disk.cuts == 1
    # The daemon that died still holds the lease (for 10 minutes); it is this state dir's.
    r = laptop.mount()
    ok(r)
    assert (laptop.state / "instance-id").read_text().strip() == holder
    assert (laptop.mnt / "durable.txt").read_bytes() == b"fsynced before the power cut\n"
    status = laptop.ctl("status")
    assert re.search(r"^lease: held until", status, re.M), status
    laptop.umount()
