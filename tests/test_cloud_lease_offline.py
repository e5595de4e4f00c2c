"""Issue 5: one writer at a time (the lease in the bucket), and working offline.

Real SeaweedFS (stopped and restarted for the offline test), real FUSE mounts
through the ``versionfs`` command.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from cli_util import assert_user_error, ok, run_cli
from cloud_util import machines, tree_digest  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def test_second_writer_gets_a_clear_error_until_the_lease_expires(machines, s3_url):
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url))
    a.configure(**{"cloud.lease_ttl_seconds": 6.0})
    a.mount_ok()
    (a.mnt / "from-a.txt").write_text("a\n")
    a.ctl("flush")

    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.configure(**{"cloud.lease_ttl_seconds": 6.0})
    line = assert_user_error(b.mount(), "mounted read-write by", "lease expires", "--read-only")
    assert str(a.state) in line                       # names the holder
    # --read-only mounts the latest published state instead.
    (a.mnt / "later.txt").write_text("published later\n")
    a.ctl("flush")
    b.mount_ok("--read-only")
    assert (b.mnt / "later.txt").read_text() == "published later\n"
    with pytest.raises(OSError):
        (b.mnt / "nope").write_text("x")
    b.umount()

    a.kill9()                                         # the holder dies, lease not released
    assert_user_error(b.mount(), "mounted read-write by")
    time.sleep(6.5)                                   # ... and its lease expires
    b.mount_ok()
    assert (b.mnt / "later.txt").read_text() == "published later\n"
    (b.mnt / "from-b.txt").write_text("b\n")
    b.ctl("flush")
    status = b.ctl("status")
    assert "lease: held until" in status and "unpublished changes: 0" in status
    b.umount()
    # Unmount released the lease: the first machine's stale copy catches up and mounts.
    a.mount_ok()
    assert (a.mnt / "from-b.txt").read_text() == "b\n"
    a.umount()


def test_steal_lease(machines, s3_url):
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url))
    a.mount_ok()
    a.ctl("flush")
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    assert_user_error(b.mount(), "--steal-lease")
    b.mount_ok("--steal-lease")
    (b.mnt / "x").write_text("x\n")
    b.ctl("flush")
    # The old holder notices at its next publish and stops publishing; nothing is overwritten.
    (a.mnt / "y").write_text("y\n")
    line = assert_user_error(run_cli("flush", a.mnt), "publishing metadata failed",
                             "lease was lost")
    assert str(b.state) in line                       # says who has it now
    status = a.ctl("status")
    assert "lease: not held" in status
    assert re.search(r"^writes refused: the writer lease was lost .*clone", status, re.M), status
    b.umount()
    a.umount()
    # The bucket holds the thief's writes, not the old holder's later ones.
    c = machines("check")
    ok(run_cli("clone", s3_url, c.state, "-q"))
    c.mount_ok("--read-only")
    assert (c.mnt / "x").read_text() == "x\n" and not (c.mnt / "y").exists()
    c.umount()


def test_offline_keeps_working_and_everything_arrives(machines, s3_server, s3_url, tmp_path):
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url))
    a.configure(**{"cloud.wal_ship_interval_seconds": 1.0, "cloud.lease_ttl_seconds": 30.0,
                   "mount.idle_seal_seconds": 0.2})
    a.mount_ok()
    (a.mnt / "before.txt").write_text("online\n")
    a.ctl("flush")
    s3_server.stop()
    try:
        (a.mnt / "offline").mkdir()
        for i in range(30):
            (a.mnt / "offline" / f"f{i}").write_bytes(os.urandom(50_000))
            time.sleep(0.05)
        a.ctl("snapshot", "while-offline")
        time.sleep(2)
        st = json.loads(a.ctl("status", "--json"))
        assert st["pending_uploads"] > 0 and st["unpublished_changes"] > 0, st
        assert st["last_upload"] is not None
        assert (a.mnt / "offline" / "f7").stat().st_size == 50_000      # reads work
        assert_user_error(run_cli("flush", a.mnt, "--timeout", "2"), "pending")
    finally:
        s3_server.start()
    a.ctl("flush", "--timeout", "120")
    st = json.loads(a.ctl("status", "--json"))
    assert st["pending_uploads"] == 0 and st["unpublished_changes"] == 0, st
    live = tree_digest(a.mnt)
    a.umount()
    # Everything arrived: a clone from the bucket alone has it all.
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.mount_ok()
    assert tree_digest(b.mnt) == live
    assert any("while-offline" in n for n in os.listdir(b.mnt / ".versionfs" / "snapshots"))
    b.umount()


def test_full_fast_store_offline_gives_enospc_and_loses_nothing(machines, s3_server, s3_url):
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url))
    a.configure(**{"store.fast_max_bytes": 4 << 20, "mount.idle_seal_seconds": 0.2})
    a.mount_ok()
    s3_server.stop()
    written = []
    try:
        with pytest.raises(OSError) as err:
            for i in range(40):
                data = os.urandom(512 << 10)
                with open(a.mnt / f"f{i}", "wb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
                written.append((f"f{i}", data))
        assert err.value.errno == 28                   # ENOSPC, not a lost file
        assert len(written) >= 2
    finally:
        s3_server.start()
    a.ctl("flush", "--timeout", "120")
    for name, data in written:
        assert (a.mnt / name).read_bytes() == data
    a.umount()
