"""Power cuts around the bucket (issue 11): the ``file://`` slow store's named
objects, a clone's lazy reads, publishing.

The harness is tests/powercut.py; ``VersionfsOnDisk`` and the checks after a
cut come from tests/test_powercut.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cli_util import ok, run_cli
from cloud_util import Machine
from powercut import PowerCutDisk
from test_powercut import RemountRefused, VersionfsOnDisk, write
from versionfs.blob.directory import DirectoryStore

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
