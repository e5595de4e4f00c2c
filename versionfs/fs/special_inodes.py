"""The inodes outside the tree: `/.versionfs`, its ctl file, the snapshots directory.

They have fixed inode numbers below the first one the tree hands out
(`schema.FIRST_FREE_INO`), are never stored, and read the same in every
mount. The objects inside snapshot directories are virtual too, numbered by
`snapshots.snap_ino`. The ctl commands use these names as well, so this
module imports nothing of the mount.
"""

from __future__ import annotations

from versionfs.tree.schema import FIRST_FREE_INO, ROOT_INO

CTL_DIR_INO = 2
CTL_FILE_INO = 3
SNAPS_DIR_INO = 4
CTL_DIR_NAME = b".versionfs"


def is_control_ino(ino: int) -> bool:
    """One of the fixed inodes of `/.versionfs` (the root is not one)."""
    return ino < FIRST_FREE_INO and ino != ROOT_INO
