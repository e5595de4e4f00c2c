"""Issue 11, finding 8: after a power cut the laptop remounts its own filesystem.

The state dir lives on the power-cut harness (``tests/powercut.py``, ext4's
worst case for names); the bucket is the real SeaweedFS, which keeps the
writer lease of the daemon that died, as it would for a laptop.
"""

from __future__ import annotations

import os
import re

import pytest

import cloud_util
from cli_util import ok, run_cli

pytestmark = pytest.mark.fuse


powered_laptop = cloud_util.powered_laptop      # the fixture


def test_power_cut_then_the_laptop_remounts_without_steal_lease(powered_laptop, s3_url):
    laptop = powered_laptop
    ok(run_cli("init", laptop.state, "--slow", s3_url))
    laptop.configure(**{"cloud.lease_ttl_seconds": 600.0})
    laptop.mount_ok()
    fd = os.open(laptop.mnt / "durable.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"fsynced before the power cut\n")
    os.fsync(fd)
    os.close(fd)
    holder = (laptop.state / "instance-id").read_text().strip()
    laptop.kill9()                  # the machine stops ...
    report = laptop.disk.cut()      # ... and what was only in its memory is gone
    laptop.disk.start()
    # The daemon that died still holds the lease (for 10 minutes); it is this state dir's.
    r = laptop.mount()
    assert r.returncode == 0, f"{r.stderr} (the cut lost {report['lost']}, " \
                              f"reverted {sorted(report['reverted'])})"
    assert (laptop.state / "instance-id").read_text().strip() == holder
    assert (laptop.mnt / "durable.txt").read_bytes() == b"fsynced before the power cut\n"
    status = laptop.ctl("status")
    assert re.search(r"^lease: held until", status, re.M), status
    laptop.umount()
