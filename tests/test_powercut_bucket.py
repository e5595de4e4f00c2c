"""Power cuts around the bucket (issue 11): the ``file://`` slow store's named
objects, a clone's lazy reads, publishing.

The harness is tests/powercut.py; ``VersionfsOnDisk`` and the checks after a
cut come from tests/test_powercut.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import pytest

from cli_util import ok, run_cli
from cloud_util import Machine
from powercut import PowerCutDisk
from test_cloud_publish import Rig
from test_powercut import RemountRefused, VersionfsOnDisk, Workload, write
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.files import TEMP_PREFIX
from versionfs.bucket import publish
from versionfs.common import config as configmod
from versionfs.meta.mvcc.store import MVCCStore

pytestmark = pytest.mark.fuse


@pytest.mark.parametrize("names", ["strict", "ext4"])
def test_named_objects_of_a_directory_store_survive_a_power_cut(tmp_path, names):
    """The lease, the head and the published metadata live in new directories
    (meta/, meta/wal/, meta/checkpoints/<id>/): each must be fsynced into its
    parent, or a cut takes every object under it along (strict names)."""
    disk = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt", names).start()
    try:
        bucket = DirectoryStore(disk.mountpoint / "slow").bucket
        etag = bucket.put_if_absent("meta/lease", b"lease generation 1")
        etag = bucket.put_if_match("meta/lease", b"lease generation 2, renewed", etag)
        objects = {"meta/lease": b"lease generation 2, renewed",
                   "meta/head": b"head" * 100,
                   "meta/wal/0001-0002-ab": b"wal" * 1000,
                   "meta/checkpoints/0002-ab/part-000000": b"checkpoint" * 1000}
        for name, data in objects.items():
            if name != "meta/lease":
                bucket.put(name, data)
        report = disk.cut()
        disk.start()
        bucket = DirectoryStore(disk.mountpoint / "slow").bucket
        assert {n: bucket.get(n)[0] for n in bucket.list("meta/")} == objects, report
        assert bucket.get("meta/lease")[1] == etag
    finally:
        disk.stop()


def switched_off(rig: Rig) -> None:
    """Close what ran on a disk whose power is gone: the errors are expected."""
    for close in (rig.meta.close, rig.paired.close):
        with contextlib.suppress(Exception):
            close()


def test_nothing_is_published_that_a_power_cut_takes_back(tmp_path):
    """Publishing ships WAL entries the metadata store may not have fsynced yet
    (its LMDB commit syncs them, every batch_interval): after a cut the bucket
    would be ahead of the state dir, and the mount refuses ("the bucket's
    metadata is ahead of this state dir; clone the filesystem again")."""
    disk = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt", "strict").start()
    try:
        slow = DirectoryStore(tmp_path / "bucket")     # BUCKET_OFF_DISK
        rig = Rig(disk.mountpoint, slow, Codec(None), batch_interval=3600)
        rig.write_file(b"a", b"one")
        assert rig.pub.publish(timeout=30)             # a checkpoint: commits, so syncs
        for i in range(20):
            rig.write_file(b"f%d" % i, b"x" * i)       # appended to the WAL, not synced
        assert rig.pub.publish(timeout=30)
        published = publish.read_head(publish.bucket_kv(slow.bucket), rig.codec)[1].last_index
        disk.cut()
        switched_off(rig)
        disk.start()
        meta = MVCCStore.open(str(disk.mountpoint / "meta"))
        try:
            assert meta.last_index >= published, \
                f"published up to index {published}, the state dir kept {meta.last_index}"
        finally:
            meta.close()
    finally:
        disk.stop()


class PowerCut(Exception):
    """The machine went off in the middle of a publish."""


def test_a_power_cut_between_the_first_head_swing_and_its_record(tmp_path):
    """The first publish of a state dir swings the head, then saves which writer
    it is (published.json): a cut in between left a head nobody here claimed,
    and the mount refused for good ("another machine published newer
    metadata").  The cut is aimed by wrapping the swing: no real part can land
    a power cut on that instant on cue."""
    disk = PowerCutDisk(tmp_path / "disk", tmp_path / "mnt", "strict").start()
    try:
        slow = DirectoryStore(tmp_path / "bucket")     # BUCKET_OFF_DISK
        rig = Rig(disk.mountpoint, slow, Codec(None))
        rig.write_file(b"a", b"one")
        swing = rig.pub._swing

        def swing_then_cut(prev, new):
            swing(prev, new)
            disk.cut()
            raise PowerCut

        rig.pub._swing = swing_then_cut
        with pytest.raises(PowerCut):
            rig.pub.publish(timeout=30)
        switched_off(rig)
        disk.start()
        meta = MVCCStore.open(str(disk.mountpoint / "meta"))
        try:
            pub = publish.Publisher(meta, None, slow.bucket, rig.codec,
                                    str(disk.mountpoint / publish.RECORD_NAME), fs_id="fs1")
            pub.open()
            head = publish.read_head(publish.bucket_kv(slow.bucket), rig.codec)[1]
            assert pub.status.published_index == head.last_index == meta.last_index
        finally:
            meta.close()
    finally:
        disk.stop()


# ---------------------------------------------------------------- a clone's lazy reads

BUCKET_OFF_DISK = "the bucket is off the power-cut disk: the cloud does not lose power"


def cloned_on_disk(tmp_path: Path, names: str, files: dict[str, bytes]) -> VersionfsOnDisk:
    """Machine A (an ordinary disk) writes ``files`` into a ``file://`` bucket and
    unmounts; machine B clones it into a state dir on the power-cut disk."""
    url = (tmp_path / "bucket").as_uri()          # BUCKET_OFF_DISK
    a = Machine(tmp_path, "a")
    try:
        ok(run_cli("init", a.state, "--slow", url))
        a.mount_ok()
        for name, data in files.items():
            (a.mnt / name).write_bytes(data)
        a.umount()                                  # uploads and publishes everything
    finally:
        a.cleanup()
    b = VersionfsOnDisk(tmp_path, names)
    b.disk.start()
    b.state = b.disk.mountpoint / "b-state"
    ok(run_cli("clone", url, b.state))
    return b


def lazy_read_scenario(tmp_path: Path, names: str, seed: int) -> None:
    """B reads part of the files (cache fills into its fast store, never
    fsynced), the power goes; after the reboot B writes the same content
    again, which re-puts the very chunks whose cache fills the cut damaged."""
    rng = random.Random(seed)
    files = {f"f{i}": rng.randbytes(rng.randrange(1, 3_000_000)) for i in range(5)}
    b = cloned_on_disk(tmp_path, names, files)
    try:
        b.mount()
        order = rng.sample(sorted(files), len(files))
        whole = rng.randrange(len(files))           # the cut point: files read so far ...
        for name in order[:whole]:
            assert (b.mnt / name).read_bytes() == files[name]
        with open(b.mnt / order[whole], "rb") as f:  # ... and part of the next one
            part = rng.randrange(1, len(files[order[whole]]) + 1)
            assert f.read(part) == files[order[whole]][:part]
        report = b.crash()
        refused = b.remount(report)
        for name, data in files.items():
            write(b.mnt / name, data)                # the same content again, fsynced
        ok(run_cli("flush", b.mnt, "--timeout", "60"))
        wrong = [name for name, data in files.items() if (b.mnt / name).read_bytes() != data]
        ok(run_cli("umount", b.mnt))
        assert wrong == [], f"seed {seed}: files wrong after the cut during lazy reads " \
                            f"(the cut reverted {sorted(report['reverted'])}): {wrong}"
        b.check_stores()
        if refused:
            raise RemountRefused(refused)
    finally:
        b.cleanup()


@pytest.mark.parametrize("names", ["ext4", "strict"])
def test_power_cut_during_a_clones_lazy_reads(tmp_path, names):
    lazy_read_scenario(tmp_path, names, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 12))
@pytest.mark.parametrize("names", ["ext4", "strict"])
def test_power_cut_during_a_clones_lazy_reads_many(tmp_path, names, seed):
    lazy_read_scenario(tmp_path, names, seed)


# ---------------------------------------------------------------- publishing

def meta_names(bucket_dir: Path) -> set[str]:
    """Named objects under meta/ of a ``file://`` bucket, read beside the harness."""
    out = set()
    for dirpath, _dirs, files in os.walk(bucket_dir / "meta"):
        out.update(os.path.join(dirpath, f) for f in files if not f.startswith(TEMP_PREFIX))
    return out


def publish_scenario(tmp_path: Path, names: str, where: str, seed: int) -> None:
    """Metadata published every 0.2 s (a checkpoint every second) while files
    are written with fsyncs; the power goes right after the n-th new object
    under meta/ appeared (WAL objects, checkpoint parts, head copies, the head),
    so the cuts land between the steps of a publish."""
    rng = random.Random(seed)
    v = VersionfsOnDisk(tmp_path, names)
    v.disk.start()
    try:
        if where == "off-disk":                        # BUCKET_OFF_DISK
            bucket_dir = tmp_path / "bucket"
            ok(run_cli("init", v.state, "--slow", bucket_dir.as_uri()))
        else:                                          # STATE/slow: cut with the state dir
            bucket_dir = v.disk.disk / "live" / "slow"
            ok(run_cli("init", v.state))
        settings = {"cloud.wal_ship_interval_seconds": 0.2, "cloud.checkpoint_interval_seconds": 1.0,
                    "mount.idle_seal_seconds": 0.3}
        cfg = configmod.load(v.state / "config.toml")
        for dotted, value in settings.items():
            cfg.set(dotted, value)
        configmod.save(cfg, v.state / "config.toml")
        v.mount()
        work = Workload(v.mnt, seed)
        work.create_all()
        before, wanted = meta_names(bucket_dir), rng.randrange(1, 12)
        deadline = time.monotonic() + 60
        while len(meta_names(bucket_dir) - before) < wanted:
            assert time.monotonic() < deadline, "nothing was published"
            work.step()
        report = v.crash()
        refused = v.remount(report)
        wrong = work.check(v.mnt)
        ok(run_cli("flush", v.mnt, "--timeout", "60"))
        ok(run_cli("umount", v.mnt))
        assert wrong == [], (f"after a power cut during publishing (seed {seed}; the cut lost "
                             f"{report['lost']}, reverted {sorted(report['reverted'])}): "
                             + "; ".join(wrong))
        v.check_stores()
        clone = tmp_path / "clone"                     # what was published restores and verifies
        ok(run_cli("clone", bucket_dir.as_uri() if where == "off-disk" else v.state / "slow", clone))
        r = run_cli("fsck", clone, "--quiet", "--read-data")
        assert r.returncode == 0, f"fsck of a clone after the cut: {r.stdout} {r.stderr}"
        if refused:
            raise RemountRefused(refused)
    finally:
        v.cleanup()


@pytest.mark.parametrize("where", ["off-disk", "on-disk"])
@pytest.mark.parametrize("names", ["ext4", "strict"])
def test_power_cut_during_publishing(tmp_path, names, where):
    publish_scenario(tmp_path, names, where, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 10))
@pytest.mark.parametrize("where", ["off-disk", "on-disk"])
@pytest.mark.parametrize("names", ["ext4", "strict"])
def test_power_cut_during_publishing_many(tmp_path, names, where, seed):
    publish_scenario(tmp_path, names, where, seed)
