"""Read-only views of frozen revisions under `/.versionfs/snapshots/`.

A revision is browsed straight from the MVCC store at that revision: no copy,
no cache to fill. The kernel needs inode numbers distinct from the live tree's,
so an object `ino` of revision `rev` appears as the virtual inode

    VIRTUAL_BIT | rev << 40 | ino          (ino < 2**40, rev < 2**22)

which also makes hard links inside one snapshot share an inode number, as they
should. Every attempt to change a snapshot fails with EROFS.
"""

from __future__ import annotations

import errno

from pyfuse3 import FUSEError

from versionfs.tree import schema
from versionfs.tree.names import DIRNAME_RE, snapshot_dirname

from .extents import Extent

VIRTUAL_BIT = 1 << 62
_INO_BITS = 40
_INO_MASK = (1 << _INO_BITS) - 1


def snap_ino(rev: int, ino: int) -> int:
    if ino > _INO_MASK or rev >= 1 << 22:
        raise FUSEError(errno.EOVERFLOW)
    return VIRTUAL_BIT | (rev << _INO_BITS) | ino


def split_snap_ino(vino: int) -> tuple[int, int]:
    return (vino & ~VIRTUAL_BIT) >> _INO_BITS, vino & _INO_MASK


def is_snap_ino(ino: int) -> bool:
    return bool(ino & VIRTUAL_BIT)


class SnapshotViews:
    """Name resolution and reads inside frozen revisions."""

    def __init__(self, meta):
        self.meta = meta
        self._revs: dict[int, object] = {}

    def refresh(self) -> list:
        revs = self.meta.revisions()
        self._revs = {r.rev: r for r in revs}
        return revs

    def resolve(self, name: str):
        """RevisionInfo for a snapshot directory name or a bare snapshot NAME."""
        m = DIRNAME_RE.match(name)
        revs = self.refresh()
        if m:
            info = self._revs.get(int(m.group(1)))
            if info is not None and snapshot_dirname(info) == name:
                return info
            return None
        for info in revs:
            if info.name == name:
                return info
        return None

    def exists(self, rev: int) -> bool:
        if rev not in self._revs:
            self.refresh()
        return rev in self._revs

    def inode(self, vino: int) -> schema.Inode:
        rev, ino = split_snap_ino(vino)
        raw = self.meta.get(schema.inode_key(ino), rev)
        if raw is None:
            raise FUSEError(errno.ENOENT)
        inode = schema.Inode.unpack(ino, raw)
        inode.ino = vino
        return inode

    def lookup(self, parent_vino: int, name: bytes) -> int | None:
        rev, parent = split_snap_ino(parent_vino)
        raw = self.meta.get(schema.dirent_key(parent, name), rev)
        return None if raw is None else snap_ino(rev, schema.from_u64(raw))

    def parent(self, vino: int) -> int | None:
        """Virtual inode of a snapshot directory's parent; None at its root."""
        rev, ino = split_snap_ino(vino)
        if ino == schema.ROOT_INO:
            return None
        return snap_ino(rev, self.inode(vino).parent)

    def entries(self, dir_vino: int, after: bytes | None, limit: int):
        """(name, child vino, next key) of a directory, after key `after`."""
        rev, ino = split_snap_ino(dir_vino)
        prefix = schema.dirent_prefix(ino)
        start = after if after is not None else prefix
        for key, value in self.meta.range(start, schema.prefix_end(prefix), rev, limit):
            yield key[len(prefix):], snap_ino(rev, schema.from_u64(value)), key + b"\0"

    def readlink(self, vino: int) -> bytes:
        rev, ino = split_snap_ino(vino)
        target = self.meta.get(schema.symlink_key(ino), rev)
        if target is None:
            raise FUSEError(errno.EINVAL)
        return target

    def extents(self, vino: int) -> list[Extent]:
        rev, ino = split_snap_ino(vino)
        prefix = schema.extent_prefix(ino)
        return [Extent(*schema.unpack_extent(k, v))
                for k, v in self.meta.range(prefix, schema.prefix_end(prefix), rev)]

    def getxattr(self, vino: int, name: bytes) -> bytes | None:
        rev, ino = split_snap_ino(vino)
        return self.meta.get(schema.xattr_key(ino, name), rev)

    def listxattr(self, vino: int) -> list[bytes]:
        rev, ino = split_snap_ino(vino)
        prefix = schema.xattr_prefix(ino)
        return [k[len(prefix):] for k, _ in self.meta.range(prefix, schema.prefix_end(prefix), rev)]
