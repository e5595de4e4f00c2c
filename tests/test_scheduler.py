"""Automatic snapshots taken by the daemon (`[snapshots] interval`), skipped when
nothing changed, with the retention policy applied after each one."""

from __future__ import annotations

import time

import pytest

from history_util import cli_fs, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def test_automatic_snapshots_skip_when_unchanged_and_apply_retention(cli_fs):
    fs = cli_fs.init(snapshots__interval="1s", snapshots__keep_last=3).mount()
    fs.path("a.txt").write_bytes(b"one")
    wait_for(lambda: len(fs.snapshots()) >= 1, 15, "the first automatic snapshot")
    # Let any snapshot of the first write settle, then nothing changes: no new ones.
    time.sleep(1.5)
    settled = fs.snapshots()
    time.sleep(3.0)
    assert fs.snapshots() == settled, "a snapshot was taken although nothing changed"
    st = fs.status()
    assert st["auto_snapshot_interval"] == 1.0
    assert st["auto_snapshots_skipped"] >= 2
    observed: set[int] = set()
    for i in range(4):
        seen = {s[1] for s in fs.snapshots()}
        fs.path(f"f{i}.txt").write_bytes(b"x" * i)

        def holds_change():
            snaps = fs.snapshots()
            observed.update(int(s[1]) for s in snaps)
            return [s for s in snaps if s[1] not in seen
                    and fs.path(".versionfs", "snapshots", s[0], f"f{i}.txt").exists()
                    and fs.path(".versionfs", "snapshots", s[0], f"f{i}.txt").read_bytes() == b"x" * i]
        # The daemon flushed the change into the snapshot before freezing it.
        wait_for(holds_change, 15, f"an automatic snapshot holding change {i}")
    time.sleep(1.5)
    kept = [int(s[1]) for s in fs.snapshots()]
    observed.update(kept)
    assert len(observed) >= 5, "one snapshot per change at least"
    assert kept == sorted(observed)[-3:], "keep_last = 3 keeps exactly the three newest"
    assert all(s[3] == "-" for s in fs.snapshots()), "automatic snapshots have no name"
    fs.umount()


def test_no_schedule_means_no_automatic_snapshots(cli_fs):
    fs = cli_fs.init().mount()
    fs.path("a.txt").write_bytes(b"one")
    time.sleep(2.0)
    assert fs.snapshots() == []
    assert fs.status()["auto_snapshot_interval"] is None
    fs.umount()
