"""`SpecialDirOps`: lookup and readdir where the live tree's directory entries
do not apply: in `/.versionfs` (the ctl file and the snapshots directory), in
`/.versionfs/snapshots` (one entry per revision, named by
`versionfs.tree.names.snapshot_dirname`), and lookups inside snapshot trees,
which `SnapshotViews` (snapshots.py) answers from their revision. Snapshot
trees are listed by `NamespaceOps.readdir`, like live directories.

The inode numbers are in special_inodes.py, the attributes come from
`MountCore._virtual_inode`. None of these lookups is counted in `lookups`:
these inodes are never deleted.
"""

from __future__ import annotations

import errno
import os

import pyfuse3
from pyfuse3 import FUSEError

from versionfs.tree.names import snapshot_dirname
from versionfs.tree.schema import ROOT_INO

from .core import MountCore
from .snapshots import is_snap_ino, snap_ino
from .special_inodes import CTL_DIR_INO, CTL_FILE_INO, SNAPS_DIR_INO


class SpecialDirOps(MountCore):
    """The special directories' side of lookup and readdir (see the module docstring)."""

    def _lookup_special(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """lookup in a snapshot tree, in /.versionfs or in /.versionfs/snapshots."""
        if is_snap_ino(parent):
            if name == b".":
                return self._attr(parent)
            if name == b"..":
                up = self.snaps.parent(parent)
                return self._attr(SNAPS_DIR_INO if up is None else up)
            child = self.snaps.lookup(parent, name)
            if child is None:
                raise FUSEError(errno.ENOENT)
            return self._attr(child)
        if parent == CTL_DIR_INO:
            ino = {b"ctl": CTL_FILE_INO, b"snapshots": SNAPS_DIR_INO,
                   b".": CTL_DIR_INO, b"..": ROOT_INO}.get(name)
            if ino is None:
                raise FUSEError(errno.ENOENT)
            return self._attr(ino)
        # parent == SNAPS_DIR_INO
        if name in (b".", b".."):
            return self._attr(SNAPS_DIR_INO if name == b"." else CTL_DIR_INO)
        info = self.snaps.resolve(os.fsdecode(name))
        if info is None:
            raise FUSEError(errno.ENOENT)
        return self._attr(snap_ino(info.rev, ROOT_INO))

    def _readdir_fixed(self, ino: int, start_id: int, token) -> None:
        """readdir of /.versionfs or /.versionfs/snapshots from entry `start_id` (>= 2) on."""
        if ino == CTL_DIR_INO:
            fixed = [(b"ctl", CTL_FILE_INO), (b"snapshots", SNAPS_DIR_INO)]
            for i, (name, child) in enumerate(fixed[start_id - 2:], start=start_id + 1):
                if not pyfuse3.readdir_reply(token, name, self._attr(child), i):
                    return
            return
        if ino == SNAPS_DIR_INO:
            revs = self.snaps.refresh()
            for i, info in enumerate(revs[start_id - 2:], start=start_id + 1):
                name = snapshot_dirname(info).encode()
                if not pyfuse3.readdir_reply(token, name, self._attr(snap_ino(info.rev, ROOT_INO)), i):
                    return
            return
