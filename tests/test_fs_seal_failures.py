"""A seal that fails keeps the data, says so, and is retried (issue 11, finding 2).

The failure is real: the S3 server behind the slow store is stopped and the
fast store has a small limit, so storing the chunks of a closed, never
fsynced file fails with the store full. Its data must stay (dirty and
journaled), show in `status`, come back after an unmount and remount, and be
sealed once the store has room again.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from cli_util import ok, run_cli
from cloud_util import machines  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def _status(m) -> dict:
    return json.loads(m.ctl("status", "--json"))


def test_failed_seal_keeps_data_is_visible_and_is_retried(machines, s3_server, s3_url):
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url))
    a.configure(**{"store.fast_max_bytes": 6 << 20, "mount.idle_seal_seconds": 0.2})
    a.mount_ok()
    data = os.urandom(10 << 20)                   # more than the fast store may hold
    s3_server.stop()
    try:
        with open(a.mnt / "big", "wb") as f:     # closed, never fsynced
            f.write(data)
        deadline = time.monotonic() + 90
        st = _status(a)
        while st["seal_failing_files"] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            st = _status(a)
        assert st["seal_failing_files"] == 1, st
        assert "seal of inode" in (st["last_error"] or ""), st
        assert (a.mnt / "big").read_bytes() == data            # nothing thrown away
        log = (a.state / "versionfs.log").read_text()
        assert "ERROR" in log and "stays dirty" in log
        # Unmount with the store still down: the seal fails again, the data is
        # journaled and comes back at the next mount.
        ok(run_cli("umount", a.mnt, "--timeout", "1"))
    finally:
        s3_server.start()
    a.mount_ok()
    assert (a.mnt / "big").read_bytes() == data
    # Once uploads make room in the fast store, a retry seals it (backoff: no flush needed).
    deadline = time.monotonic() + 240
    st = _status(a)
    while (st["seal_failing_files"] or st["journal_files"]) and time.monotonic() < deadline:
        time.sleep(1)
        st = _status(a)
    assert st["seal_failing_files"] == 0 and st["journal_files"] == 0, st
    a.ctl("flush", "--timeout", "120")
    assert (a.mnt / "big").read_bytes() == data
    a.umount()
