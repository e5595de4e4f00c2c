"""Issue 11: the bucket session under faults — nothing is rolled back.

Real SeaweedFS, real FUSE mounts through the ``versionfs`` command.
"""

from __future__ import annotations

import os
import re

import pytest

import cloud_util
from cli_util import assert_user_error, ok, run_cli
from cloud_util import tree_digest

machines = cloud_util.machines          # the fixture

pytestmark = pytest.mark.fuse


def new_machine(machines, s3_url, name="laptop", **settings):
    m = machines(name)
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 1.0, "mount.idle_seal_seconds": 0.2,
                   **settings})
    return m


# ---------------------------------------------------------------- finding 7

def test_a_replayed_old_head_never_replaces_newer_local_metadata(
        machines, s3_server, s3_bucket, s3_url):
    client = s3_server.client()
    a = new_machine(machines, s3_url)
    a.mount_ok()
    (a.mnt / "file.txt").write_text("version 1\n")
    a.ctl("flush")
    old_head = client.get_object(Bucket=s3_bucket, Key="vfs/meta/head")["Body"].read()
    (a.mnt / "file.txt").write_text("version 2\n")
    (a.mnt / "new.txt").write_text("created later\n")
    a.ctl("snapshot", "named")
    a.ctl("flush")
    live = tree_digest(a.mnt)
    a.umount()
    # Whoever can write the bucket puts the old head record back.
    client.put_object(Bucket=s3_bucket, Key="vfs/meta/head", Body=old_head)

    line = assert_user_error(a.mount(), "older", "--read-only")
    found = re.findall(r"index (\d+), published (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)", line)
    assert len(found) == 2 and int(found[0][0]) < int(found[1][0]), line
    a.mount_ok("--read-only")                   # the local copy is all there
    assert tree_digest(a.mnt) == live
    assert any(n.endswith("-named") for n in os.listdir(a.mnt / ".versionfs" / "snapshots"))
    log = (a.state / "versionfs.log").read_text()     # (a read-only mount has no ctl)
    assert re.search(r" ERROR .*head \(index \d+, .*older.*index \d+, .*mounted this "
                     r"machine's copy as it is", log), log[-3000:]
    a.umount()
    assert (a.state / "meta").is_dir() and not (a.state / "meta.incoming").exists()

    # clone says which head it restores (and restores just that: the replayed one).
    b = machines("desktop")
    r = run_cli("clone", s3_url, b.state)
    ok(r)
    assert re.search(r"the head published \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by writer "
                     r"[0-9a-f]{12} \(metadata index \d+\)", r.stderr), r.stderr
