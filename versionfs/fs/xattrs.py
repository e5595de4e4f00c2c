"""`XattrOps`: extended attributes.

They are stored one key each next to their inode (`schema.xattr_key`), so
they are versioned with the tree: a snapshot's are read from its revision.
Only the user., trusted. and security. namespaces are accepted, with Linux's
limits on name and value size, and the two POSIX ACL names, which acls.py
gives their meaning (the mode follows a new access ACL). SELinux labels
(security.selinux) are not kept: EOPNOTSUPP for them lets `ls -l` stop asking
for one per file, as it does on filesystems without labels. The inodes of
`/.versionfs` have none.
"""

from __future__ import annotations

import errno

import pyfuse3
from pyfuse3 import FUSEError

from versionfs.tree import schema

from . import acls
from .core import MountCore
from .guard import guard
from .snapshots import is_snap_ino
from .special_inodes import is_control_ino

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
UNKEPT = (b"security.selinux",)


class XattrOps(MountCore):
    """setxattr, getxattr, listxattr, removexattr."""

    @staticmethod
    def _check_xattr_namespace(name: bytes) -> None:
        # FUSE passes every name through; pyfuse3 also calls getxattr for
        # XATTR_CREATE/REPLACE, so all three calls must refuse alike (as ext4 does).
        if name in acls.NAMES:
            return
        if not name.startswith(XATTR_NAMESPACES) or name in UNKEPT:
            raise FUSEError(errno.EOPNOTSUPP)

    @guard
    async def setxattr(self, ino, name, value, ctx):
        self._writable(ino)
        self._not_gone(ino)
        self._check_xattr_namespace(name)
        if len(name) > XATTR_NAME_MAX:
            raise FUSEError(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise FUSEError(errno.E2BIG)
        inode = self._inode(ino)
        if name in acls.NAMES:
            self._set_acl(inode, name, value)
            return
        inode.ctime_ns = schema.now_ns()
        with self.meta.write() as b:
            b.put(schema.xattr_key(ino, name), value)
            self._store_inode(inode, b)

    def _set_acl(self, inode, name: bytes, value: bytes) -> None:
        """Store an ACL as ext4 does: an access ACL sets the mode's rwx bits and
        is not kept when the mode says it all; only directories have a default ACL."""
        entries = acls.parse(value)
        if name == acls.DEFAULT and not inode.is_dir:
            raise FUSEError(errno.EACCES)
        key = schema.xattr_key(inode.ino, name)
        inode.ctime_ns = schema.now_ns()
        with self.meta.write() as b:
            if name == acls.ACCESS:
                inode.mode = inode.mode & ~0o777 | acls.mode_bits(entries)
            if name == acls.ACCESS and acls.is_minimal(entries):
                b.delete(key)
            else:
                b.put(key, acls.pack(entries))
            self._store_inode(inode, b)

    @guard
    async def getxattr(self, ino, name, ctx):
        self._check_xattr_namespace(name)
        if is_snap_ino(ino):
            value = self.snaps.getxattr(ino, name)
        elif is_control_ino(ino):
            value = None
        else:
            value = self.meta.get(schema.xattr_key(ino, name))
        if value is None:
            raise FUSEError(pyfuse3.ENOATTR)
        return value

    @guard
    async def listxattr(self, ino, ctx):
        if is_snap_ino(ino):
            return self.snaps.listxattr(ino)
        if is_control_ino(ino):
            return []
        prefix = schema.xattr_prefix(ino)
        return [k[len(prefix):] for k, _ in self.meta.range(prefix, schema.prefix_end(prefix))]

    @guard
    async def removexattr(self, ino, name, ctx):
        self._writable(ino)
        self._not_gone(ino)
        self._check_xattr_namespace(name)
        key = schema.xattr_key(ino, name)
        if self.meta.get(key) is None:
            if name in acls.NAMES:          # no ACL to remove is fine (setfacl -b, -k)
                return
            raise FUSEError(pyfuse3.ENOATTR)
        inode = self._inode(ino)
        inode.ctime_ns = schema.now_ns()
        with self.meta.write() as b:
            b.delete(key)
            self._store_inode(inode, b)
