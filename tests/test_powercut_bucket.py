"""Power cuts around the bucket (issue 11): the ``file://`` slow store's named
objects, a clone's lazy reads, publishing.

The harness is tests/powercut.py; ``VersionfsOnDisk`` and the checks after a
cut come from tests/test_powercut.py.
"""

from __future__ import annotations

import pytest

from powercut import PowerCutDisk
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
