"""Issue 11: the bucket session under faults — background work never stops silently,
nothing is rolled back, a laptop that boots offline gets its home directory.

Real SeaweedFS, real FUSE mounts through the ``versionfs`` command.  Network
faults come from ``faultproxy.FaultProxy`` in front of SeaweedFS: the machine
under test talks to the bucket through it, the other machines directly.
"""

from __future__ import annotations

import errno
import os
import re
import time

import pytest

import cloud_util
from cli_util import assert_user_error, ok, run_cli
from cloud_util import metric, status, tree_digest, wait_for
import faultproxy
from history_util import free_port

machines = cloud_util.machines          # the fixture
proxy = faultproxy.proxy                # the fixture

pytestmark = pytest.mark.fuse


def new_machine(machines, s3_url, name="laptop", **settings):
    m = machines(name)
    ok(run_cli("init", m.state, "--slow", s3_url))
    m.configure(**{"cloud.wal_ship_interval_seconds": 1.0, "mount.idle_seal_seconds": 0.2,
                   **settings})
    return m


def _flip_byte_in_second_wal_record(state) -> tuple:
    """Damage the payload of the WAL's second record (the first one is the CRC seed)."""
    seg = sorted((state / "meta" / "wal").glob("*.wal"))[0]
    with open(seg, "r+b") as f:
        head = f.read(16)
        first_len = int.from_bytes(head[0:4], "little")
        f.seek(16 + first_len)
        second_len = int.from_bytes(f.read(4), "little")
        assert second_len > 0
        at = 16 + first_len + 16 + second_len // 2
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([old[0] ^ 0xFF]))
    return seg, at, old


# ---------------------------------------------------------------- finding 4

def test_a_wal_error_does_not_end_publishing_for_the_life_of_the_mount(machines, s3_url):
    port = free_port()
    a = new_machine(machines, s3_url, **{"metrics.listen": f"127.0.0.1:{port}"})
    a.mount_ok()
    (a.mnt / "first.txt").write_text("published\n")
    a.ctl("flush")
    seg, at, old = _flip_byte_in_second_wal_record(a.state)
    (a.mnt / "second.txt").write_text("written while the WAL reads back damaged\n")
    st = wait_for(a, lambda s: "crc" in str(s["publish_error"]).lower(),
                  "the publish error is shown")
    assert st["unpublished_changes"] > 0
    assert metric(port, 'versionfs_background_errors_total{task="publish"}') >= 1
    log = (a.state / "versionfs.log").read_text()
    assert re.search(r" ERROR .*publish.* failed.*crc", log, re.I | re.M), log[-3000:]
    # The damage goes away (say, a flaky disk): publishing resumes by itself, no flush.
    with open(seg, "r+b") as f:
        f.seek(at)
        f.write(old)
    st = wait_for(a, lambda s: s["unpublished_changes"] == 0, "publishing resumed", 90)
    assert st["publish_error"] is None and st["writes_refused"] is None
    a.umount()
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.mount_ok("--read-only")
    assert (b.mnt / "second.txt").read_text() == "written while the WAL reads back damaged\n"
    b.umount()


def test_lease_renewal_rides_out_a_dropped_link_and_a_lost_lease_is_plain(
        machines, s3_url, proxy):
    port = free_port()
    a = new_machine(machines, s3_url, **{"cloud.lease_ttl_seconds": 6.0,
                                         "metrics.listen": f"127.0.0.1:{port}"})
    a.mount_ok(env=proxy.env())
    assert proxy.connections > 0
    (a.mnt / "a1.txt").write_text("1\n")
    a.ctl("flush")
    # The link drops for longer than the lease's TTL; nobody takes the lease meanwhile.
    proxy.drop()
    st = wait_for(a, lambda s: s["lease_error"] is not None, "the renewal failure is shown")
    assert "retrying" in st["lease_error"]
    assert metric(port, 'versionfs_background_errors_total{task="lease"}') >= 1
    time.sleep(6.5)                           # the lease is past its expiry now
    proxy.heal()
    wait_for(a, lambda s: s["lease_error"] is None and s["lease"].startswith("held until"),
             "the lease renewed by CAS after the link came back")
    (a.mnt / "a2.txt").write_text("2\n")
    wait_for(a, lambda s: s["unpublished_changes"] == 0, "publishing went on")
    # Now the link drops and another machine takes the expired lease for real.
    proxy.drop()
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    deadline = time.monotonic() + 30
    while (r := b.mount()).returncode != 0:
        assert "mounted read-write by" in r.stderr, r.stderr
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.5)
    (b.mnt / "b.txt").write_text("b\n")
    b.ctl("flush")
    (a.mnt / "a3.txt").write_text("3\n")
    proxy.heal()
    st = wait_for(a, lambda s: s["writes_refused"] is not None, "the lost lease is reported")
    assert "writer lease was lost" in st["writes_refused"] and "clone" in st["writes_refused"]
    assert st["lease"] == "not held"
    assert metric(port, "versionfs_publishing_stopped") == 1
    assert_user_error(run_cli("flush", a.mnt), "lease was lost")
    assert " ERROR " in (a.state / "versionfs.log").read_text()
    # The mount turned read-only for writes: nothing more is accepted that could
    # never be published, and a snapshot says why.
    with pytest.raises(OSError) as refused:
        (a.mnt / "a4.txt").write_text("4\n")
    assert refused.value.errno == errno.EROFS
    assert_user_error(run_cli("snapshot", a.mnt), "lease was lost")
    assert (a.mnt / "a3.txt").read_text() == "3\n"          # what it had stays readable
    b.umount()
    a.umount()
    c = machines("check")
    ok(run_cli("clone", s3_url, c.state, "-q"))
    c.mount_ok("--read-only")
    assert (c.mnt / "b.txt").exists() and (c.mnt / "a2.txt").exists()
    assert not (c.mnt / "a3.txt").exists()          # nothing of the loser was published
    c.umount()


def test_uploads_and_publishing_recover_from_dropped_stalled_and_cut_connections(
        machines, s3_url, proxy):
    a = new_machine(machines, s3_url, **{"cloud.lease_ttl_seconds": 60.0})
    a.mount_ok(env=proxy.env())
    faults = {"drop": proxy.drop, "stall": proxy.stall, "cut": lambda: proxy.truncate(3000)}
    for name, fault in faults.items():
        fault()
        (a.mnt / f"{name}.bin").write_bytes(os.urandom(400_000))
        a.ctl("snapshot", f"during-{name}")
        if name == "stall":                   # requests hang: nothing can report yet
            time.sleep(3)
        else:
            wait_for(a, lambda s: s["last_error"] or s["publish_error"],
                     f"the {name} fault is visible in status")
        assert status(a)["unpublished_changes"] > 0
        proxy.heal()
        wait_for(a, lambda s: s["unpublished_changes"] == 0 and s["pending_uploads"] == 0,
                 f"recovered from {name} without a flush", 120)
    live = tree_digest(a.mnt)
    a.umount()
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    report = run_cli("fsck", b.state, "--read-data", "-q")  # every blob in the bucket verifies
    assert report.returncode == 0, report.stdout + report.stderr
    b.mount_ok("--read-only")
    assert tree_digest(b.mnt) == live
    assert len(os.listdir(b.mnt / ".versionfs" / "snapshots")) == 3
    b.umount()


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


# ---------------------------------------------------------------- finding 9

def last_lease_holder(machines, s3_url, proxy):
    """A laptop that mounted through the proxy, published a file and unmounted:
    its state dir was the last holder of the writer lease."""
    a = new_machine(machines, s3_url)
    a.mount_ok(env=proxy.env())
    (a.mnt / "online.txt").write_text("published before\n")
    a.ctl("flush")
    a.umount()
    return a


def test_a_laptop_that_boots_offline_mounts_read_write_and_publishes_later(
        machines, s3_url, proxy):
    a = last_lease_holder(machines, s3_url, proxy)
    # A clone that never held the lease cannot mount read-write without the bucket.
    c = machines("never-held")
    ok(run_cli("clone", s3_url, c.state, "-q"))
    proxy.drop()
    assert_user_error(c.mount(env=proxy.env()), "not the last holder", "--read-only")

    a.mount_ok(env=proxy.env())                 # offline, read-write
    st = status(a)
    assert st["lease"].startswith("not held yet: the bucket was unreachable"), st
    (a.mnt / "offline.txt").write_text("written offline\n")
    a.ctl("snapshot", "offline-snap")
    assert status(a)["unpublished_changes"] > 0
    proxy.heal()
    wait_for(a, lambda s: s["lease"].startswith("held until") and s["unpublished_changes"] == 0
             and s["pending_uploads"] == 0, "lease taken back and everything published", 120)
    live = tree_digest(a.mnt)
    a.umount()
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.mount_ok("--read-only")
    assert tree_digest(b.mnt) == live
    assert any(n.endswith("-offline-snap") for n in os.listdir(b.mnt / ".versionfs" / "snapshots"))
    b.umount()


def test_offline_changes_are_kept_but_not_published_when_another_machine_wrote(
        machines, s3_url, proxy):
    a = last_lease_holder(machines, s3_url, proxy)
    proxy.drop()
    a.mount_ok(env=proxy.env())                 # offline ...
    (a.mnt / "laptop.txt").write_text("written on the offline laptop\n")
    b = machines("desktop")                     # ... while the desktop writes and publishes
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.mount_ok()
    (b.mnt / "desktop.txt").write_text("written on the desktop\n")
    b.ctl("flush")
    b.umount()
    proxy.heal()
    st = wait_for(a, lambda s: s["writes_refused"] is not None, "the divergence is reported")
    assert "another machine published" in st["writes_refused"], st
    assert "nothing was overwritten" in st["writes_refused"]
    assert (a.mnt / "laptop.txt").read_text() == "written on the offline laptop\n"
    assert_user_error(run_cli("flush", a.mnt), "publishing metadata failed")
    a.umount()
    c = machines("check")
    ok(run_cli("clone", s3_url, c.state, "-q"))
    c.mount_ok()                                # the lease was given back
    assert (c.mnt / "desktop.txt").exists() and not (c.mnt / "laptop.txt").exists()
    c.umount()


# ---------------------------------------------------------------- gc

def test_gc_over_a_dropped_link_fails_visibly_and_deletes_nothing_live(machines, s3_url, proxy):
    a = new_machine(machines, s3_url)
    a.mount_ok(env=proxy.env())
    (a.mnt / "keep.bin").write_bytes(os.urandom(1_000_000))
    (a.mnt / "gone.bin").write_bytes(os.urandom(1_000_000))
    a.ctl("snapshot", "old")
    (a.mnt / "gone.bin").unlink()
    a.ctl("flush")
    assert "deleted: 0 blob(s)" in a.ctl("gc")     # seeds the index of known blobs
    a.ctl("forget", "old")
    live = tree_digest(a.mnt)
    proxy.drop()
    line = assert_user_error(run_cli("gc", a.mnt), "failed")
    assert "deleted: 0 blob(s)" in line and "unreachable" in line
    proxy.heal()
    out = a.ctl("gc")
    deleted = int(re.search(r"deleted: (\d+) blob", out).group(1))
    assert deleted > 0 and "failed" not in out, out
    a.umount()
    report = run_cli("fsck", a.state, "--read-data", "-q")
    assert report.returncode == 0, report.stdout + report.stderr
    b = machines("desktop")                           # the bucket alone still has it all
    ok(run_cli("clone", s3_url, b.state, "-q"))
    b.mount_ok("--read-only")
    assert tree_digest(b.mnt) == live
    b.umount()
