"""A power cut for a directory: an ext4 filesystem in an image file, loop-mounted.

A loop device writes what reaches it into the image file, and only that: data
and metadata still in the page cache of the mounted ext4 (never fsynced, not
yet written back) are not in the image.  So a copy of the image taken at some
moment is exactly the disk a power cut at that moment would leave, and
mounting the copy in place of the original is the reboot (ext4 replays its
journal).  ``power_cut()`` does that; whoever had files open there must be
dead first (kill -9 keeps the page cache; only the copy loses it).

The ext4 is mounted with a long journal commit interval, so that nothing
becomes durable by the timer during a test: only fsync, fdatasync and
directory fsyncs count, as on a real disk whose power fails before the timer.
Needs root, ``mkfs.ext4`` and a free loop device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MOUNT_OPTIONS = "loop,commit=300"


def _run(*argv: str | os.PathLike[str]) -> None:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {r.stderr.strip() or r.returncode}")


class CrashDisk:
    """``CrashDisk(workdir).mount()``; files go under ``.path``; ``cleanup()`` always."""

    def __init__(self, workdir: Path, size: str = "1G"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.image = self.workdir / "disk.img"
        self.path = self.workdir / "disk"
        self.size = size
        self.mounted = False
        self.cuts = 0

    def mount(self) -> "CrashDisk":
        if not self.image.exists():
            _run("truncate", "-s", self.size, self.image)
            _run("mkfs.ext4", "-q", "-F", self.image)
        self.path.mkdir(exist_ok=True)
        _run("mount", "-o", MOUNT_OPTIONS, self.image, self.path)
        self.mounted = True
        return self

    def power_cut(self) -> None:
        """Lose everything not yet on the disk, then boot again (remount)."""
        crash = self.image.with_name("disk.crash")
        _run("cp", "--sparse=always", self.image, crash)   # what reached the disk
        _run("umount", self.path)                          # the old one: discarded
        self.mounted = False
        os.replace(crash, self.image)
        self.cuts += 1
        self.mount()

    def cleanup(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
        shutil.rmtree(self.workdir, ignore_errors=True)
