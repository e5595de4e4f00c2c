"""`NamespaceOps`: the requests about names and attributes: lookup, forget,
getattr/setattr, readlink, creating, linking, removing and renaming names,
listing directories, statfs.

Live directories and snapshot trees are listed alike, in batches from the
store with a resume key per entry (`DirHandle`); lookups and listings inside
`/.versionfs` itself are `SpecialDirOps`' (special_dirs.py). A new size is
applied by `FileOps._truncate` (files.py).
"""

from __future__ import annotations

import collections
import errno
import os
import stat

import pyfuse3
from pyfuse3 import FUSEError

from versionfs.tree import schema
from versionfs.tree.schema import ROOT_INO, Inode

from . import acls
from .core import LIVE_TIMEOUT, NAME_MAX, MountCore
from .guard import guard
from .snapshots import is_snap_ino
from .special_inodes import CTL_DIR_INO, CTL_DIR_NAME, CTL_FILE_INO, SNAPS_DIR_INO

READDIR_BATCH = 128
RENAME_WHITEOUT = 4                # <linux/fs.h>; pyfuse3 exports only EXCHANGE and NOREPLACE
DIR_CURSORS = 8192


class DirHandle:
    """Cursor state of one opendir: readdir offsets map to resume keys."""

    __slots__ = ("ino", "cursors", "next_id")

    def __init__(self, ino):
        self.ino = ino
        self.cursors: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.next_id = 3          # 1 and 2 are "." and ".."

    def remember(self, key: bytes) -> int:
        self.next_id += 1
        self.cursors[self.next_id] = key
        if len(self.cursors) > DIR_CURSORS:
            self.cursors.popitem(last=False)
        return self.next_id


class _NoUmask:
    """A request context with umask 0 (symlinks are always 0777)."""

    def __init__(self, ctx):
        self.uid, self.gid, self.pid, self.umask = ctx.uid, ctx.gid, ctx.pid, 0


class NamespaceOps(MountCore):
    """Lookup, attributes, names and directory listings (see the module docstring)."""

    # -- lookup & attributes --------------------------------------------------

    @guard
    async def lookup(self, parent, name, ctx):
        self._check_name(name)
        if is_snap_ino(parent) or parent in (CTL_DIR_INO, SNAPS_DIR_INO):
            return self._lookup_special(parent, name)
        if parent == ROOT_INO and name == CTL_DIR_NAME:
            return self._attr(CTL_DIR_INO)
        if name == b".":
            ino = parent
        elif name == b"..":
            ino = self._inode(parent).parent or ROOT_INO
        else:
            ino = self._child(parent, name)
            if ino is None:
                e = pyfuse3.EntryAttributes()     # cached negative entry
                e.st_ino = 0
                e.entry_timeout = LIVE_TIMEOUT
                return e
        attr = self._attr(ino)
        self.lookups[ino] += 1
        return attr

    @guard
    async def forget(self, inode_list):
        released = []
        for ino, n in inode_list:
            if ino < schema.FIRST_FREE_INO or is_snap_ino(ino):
                continue
            self.lookups[ino] -= n
            if self.lookups[ino] <= 0:
                released.append(ino)
        self._maybe_delete(*released)
        for ino in released:
            self.gone.discard(ino)
            self._maybe_unload(ino)

    @guard
    async def getattr(self, ino, ctx):
        return self._attr(ino)

    @guard
    async def setattr(self, ino, attr, fields, fh, ctx):
        if ino == CTL_FILE_INO:            # O_TRUNC of the ctl file: nothing to do
            return self._attr(ino)
        self._writable(ino)
        inode = self._inode(ino)
        now = schema.now_ns()
        if fields.update_size:
            if inode.is_dir:
                raise FUSEError(errno.EISDIR)
            if not inode.is_reg:
                raise FUSEError(errno.EINVAL)
            await self._truncate(inode, attr.st_size, now)
        acl_key = acl = None
        if fields.update_mode:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(attr.st_mode)
            acl_key = schema.xattr_key(ino, acls.ACCESS)
            acl = self.meta.get(acl_key)
        if fields.update_uid:
            inode.uid = attr.st_uid
        if fields.update_gid:
            inode.gid = attr.st_gid
        if fields.update_mode or fields.update_uid or fields.update_gid:
            self.attrs_unsynced.add(ino)
        if fields.update_atime:
            inode.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            inode.mtime_ns = attr.st_mtime_ns
        inode.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        f = self.files.get(ino)
        times_only = not (fields.update_size or fields.update_atime or fields.update_mode
                          or fields.update_uid or fields.update_gid)
        if inode.nlink == 0 or (times_only and f is not None and f.dirty):
            # Kept in memory only: an unlinked inode is deleted with its last name
            # or at its last release (or the next mount), and the kernel stamps
            # mtime/ctime of a written file on every flush, fsync and eviction:
            # kept like its size, stored by its seal or by the fsync of a new
            # file (durability.py), journaled by fsync; no metadata write per
            # transaction.
            return self._entry(inode)
        with self.meta.write() as b:
            if acl is not None:               # chmod rewrites the access ACL (acls.py)
                b.put(acl_key, acls.pack(acls.chmod(acls.parse(acl), inode.mode)))
            self._store_inode(inode, b)
        return self._entry(inode)

    @guard
    async def readlink(self, ino, ctx):
        if is_snap_ino(ino):
            return self.snaps.readlink(ino)
        target = self.meta.get(schema.symlink_key(ino))
        if target is None:
            raise FUSEError(errno.EINVAL)
        return target

    # -- creating and removing names ------------------------------------------

    def _new_node(self, parent: int, name: bytes, mode: int, ctx, rdev: int = 0,
                  target: bytes | None = None) -> Inode:
        self._check_name(name)
        self._writable(parent)
        if parent == ROOT_INO and name == CTL_DIR_NAME:
            raise FUSEError(errno.EEXIST)
        pinode = self._inode(parent)
        if pinode.nlink == 0:
            raise FUSEError(errno.ENOENT)
        if self._child(parent, name) is not None:
            raise FUSEError(errno.EEXIST)
        now = schema.now_ns()
        gid = ctx.gid
        if pinode.mode & stat.S_ISGID:
            gid = pinode.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        default_acl = None if target is not None else self.meta.get(
            schema.xattr_key(parent, acls.DEFAULT))
        access_acl = None
        if default_acl is None:
            mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        else:     # the default ACL instead of the umask (the kernel applied it: acls.py)
            access, bits = acls.inherit(acls.parse(default_acl), mode)
            mode = mode & ~0o777 | bits
            if not acls.is_minimal(access):
                access_acl = acls.pack(access)
        ino = self.alloc.allocate()
        inode = Inode(ino, mode, 2 if is_dir else 1, ctx.uid, gid, rdev,
                      size=len(target) if target is not None else 0,
                      atime_ns=now, mtime_ns=now, ctime_ns=now,
                      parent=parent if is_dir else 0)
        self._touch_dir(pinode, now, 1 if is_dir else 0)
        with self.meta.write() as b:
            b.put(schema.inode_key(ino), inode.pack())
            schema.put_dirent(b, parent, name, ino)
            if target is not None:
                b.put(schema.symlink_key(ino), target)
            if access_acl is not None:
                b.put(schema.xattr_key(ino, acls.ACCESS), access_acl)
            if default_acl is not None and is_dir:
                b.put(schema.xattr_key(ino, acls.DEFAULT), default_acl)
            self._store_inode(pinode, b)
        self._meta_changed = True
        self.attrs_unsynced.add(ino)
        self.inodes[ino] = inode
        self.lookups[ino] += 1
        return inode

    @guard
    async def mknod(self, parent, name, mode, rdev, ctx):
        return self._entry(self._new_node(parent, name, mode, ctx, rdev))

    @guard
    async def mkdir(self, parent, name, mode, ctx):
        return self._entry(self._new_node(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    @guard
    async def symlink(self, parent, name, target, ctx):
        if len(target) > 4095:
            raise FUSEError(errno.ENAMETOOLONG)
        umask_free = _NoUmask(ctx)
        return self._entry(self._new_node(parent, name, stat.S_IFLNK | 0o777, umask_free,
                                          target=target))

    @guard
    async def link(self, ino, new_parent, new_name, ctx):
        self._check_name(new_name)
        self._writable(new_parent)
        self._writable(ino)
        self._not_gone(ino)
        inode = self._inode(ino)
        if inode.is_dir:
            raise FUSEError(errno.EPERM)
        if new_parent == ROOT_INO and new_name == CTL_DIR_NAME:
            raise FUSEError(errno.EEXIST)
        pinode = self._inode(new_parent)
        if pinode.nlink == 0:
            raise FUSEError(errno.ENOENT)
        if self._child(new_parent, new_name) is not None:
            raise FUSEError(errno.EEXIST)
        now = schema.now_ns()
        inode.nlink += 1
        inode.ctime_ns = now
        self._touch_dir(pinode, now)
        with self.meta.write() as b:
            schema.put_dirent(b, new_parent, new_name, ino)
            b.delete(schema.orphan_key(ino))
            self._store_inode(inode, b)
            self._store_inode(pinode, b)
        self.lookups[ino] += 1
        return self._entry(inode)

    @guard
    async def unlink(self, parent, name, ctx):
        await self._remove(parent, name, want_dir=False)

    @guard
    async def rmdir(self, parent, name, ctx):
        await self._remove(parent, name, want_dir=True)

    def _is_empty(self, ino: int) -> bool:
        prefix = schema.dirent_prefix(ino)
        return not any(True for _ in self.meta.range(prefix, schema.prefix_end(prefix), None, 1))

    async def _remove(self, parent: int, name: bytes, want_dir: bool) -> None:
        self._check_name(name)
        self._writable(parent)
        if parent == ROOT_INO and name == CTL_DIR_NAME:
            raise FUSEError(errno.EBUSY)
        ino = self._child(parent, name)
        if ino is None:
            raise FUSEError(errno.ENOENT)
        inode = self._inode(ino)
        if want_dir and not inode.is_dir:
            raise FUSEError(errno.ENOTDIR)
        if not want_dir and inode.is_dir:
            raise FUSEError(errno.EISDIR)
        if want_dir and not self._is_empty(ino):
            raise FUSEError(errno.ENOTEMPTY)
        pinode = self._inode(parent)
        now = schema.now_ns()
        self._touch_dir(pinode, now, -1 if want_dir else 0)
        with self.meta.write() as b:
            schema.delete_dirent(b, parent, name, ino)
            self._store_inode(pinode, b)
            self._drop_link(inode, now, b)
        self._meta_changed = True

    @guard
    async def rename(self, p_old, n_old, p_new, n_new, flags, ctx):
        self._check_name(n_old)
        self._check_name(n_new)
        self._writable(p_old)
        self._writable(p_new)
        if (p_old == ROOT_INO and n_old == CTL_DIR_NAME) or (p_new == ROOT_INO and n_new == CTL_DIR_NAME):
            raise FUSEError(errno.EBUSY)
        src = self._child(p_old, n_old)
        if src is None:
            raise FUSEError(errno.ENOENT)
        dst = self._child(p_new, n_new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        whiteout = bool(flags & RENAME_WHITEOUT)
        if flags & ~(pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE | RENAME_WHITEOUT) or (
                exchange and (whiteout or flags & pyfuse3.RENAME_NOREPLACE)):
            raise FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and dst is not None:
            raise FUSEError(errno.EEXIST)
        if exchange and dst is None:
            raise FUSEError(errno.ENOENT)
        if dst == src:
            return
        sinode = self._inode(src)
        pold, pnew = self._inode(p_old), self._inode(p_new)
        if pnew.nlink == 0:
            raise FUSEError(errno.ENOENT)
        dinode = self._inode(dst) if dst is not None else None
        if dinode is not None and not exchange:
            if sinode.is_dir and not dinode.is_dir:
                raise FUSEError(errno.ENOTDIR)
            if not sinode.is_dir and dinode.is_dir:
                raise FUSEError(errno.EISDIR)
            if dinode.is_dir and not self._is_empty(dst):
                raise FUSEError(errno.ENOTEMPTY)
        now = schema.now_ns()
        whiteout_ino = self.alloc.allocate() if whiteout else None
        with self.meta.write() as b:
            if exchange:
                b.delete(schema.link_key(src, p_old, n_old))
                b.delete(schema.link_key(dst, p_new, n_new))
                schema.put_dirent(b, p_old, n_old, dst)
                schema.put_dirent(b, p_new, n_new, src)
                if p_old != p_new:
                    self._reparent(sinode, pold, pnew)
                    self._reparent(dinode, pnew, pold)
                dinode.ctime_ns = now
                self._store_inode(dinode, b)
            else:
                schema.delete_dirent(b, p_old, n_old, src)
                if whiteout_ino is not None:
                    self._put_whiteout(whiteout_ino, pold, n_old, ctx, now, b)
                if dst is not None:
                    b.delete(schema.link_key(dst, p_new, n_new))
                schema.put_dirent(b, p_new, n_new, src)
                if p_old != p_new:
                    self._reparent(sinode, pold, pnew)
                if dinode is not None:
                    if dinode.is_dir:
                        pnew.nlink -= 1
                    self._drop_link(dinode, now, b)
            sinode.ctime_ns = now
            self._touch_dir(pold, now)
            self._touch_dir(pnew, now)
            self._store_inode(sinode, b)
            self._store_inode(pold, b)
            if pnew is not pold:
                self._store_inode(pnew, b)

    @staticmethod
    def _put_whiteout(ino: int, parent: Inode, name: bytes, ctx, now: int, b) -> None:
        """RENAME_WHITEOUT (overlayfs uses it): the old name becomes a 0/0
        character device in the rename's own batch, owned as ext4 owns it."""
        gid = parent.gid if parent.mode & stat.S_ISGID else ctx.gid
        whiteout = Inode(ino, stat.S_IFCHR, 1, ctx.uid, gid, 0,
                         atime_ns=now, mtime_ns=now, ctime_ns=now)
        b.put(schema.inode_key(ino), whiteout.pack())
        schema.put_dirent(b, parent.ino, name, ino)

    @staticmethod
    def _reparent(inode: Inode, old: Inode, new: Inode) -> None:
        if inode.is_dir:
            old.nlink -= 1
            new.nlink += 1
            inode.parent = new.ino

    # -- directories ----------------------------------------------------------

    @guard
    async def opendir(self, ino, ctx):
        return self._new_fh(DirHandle(ino))

    @guard
    async def readdir(self, fh, start_id, token):
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise FUSEError(errno.EBADF)
        ino = h.ino
        if start_id == 0:
            if not pyfuse3.readdir_reply(token, b".", self._attr(ino), 1):
                return
            start_id = 1
        if start_id == 1:
            if not pyfuse3.readdir_reply(token, b"..", self._attr(self._parent_of(ino)), 2):
                return
            start_id = 2
        if ino in (CTL_DIR_INO, SNAPS_DIR_INO):
            self._readdir_fixed(ino, start_id, token)
            return
        if start_id == 2:
            after = None
        else:
            after = h.cursors.get(start_id)
            if after is None:
                raise FUSEError(errno.EINVAL)
        snap = is_snap_ino(ino)
        while True:
            if snap:
                batch = list(self.snaps.entries(ino, after, READDIR_BATCH))
            else:
                batch = list(self._entries(ino, after, READDIR_BATCH))
            for name, child, next_key in batch:
                attr = self._attr(child)
                if not pyfuse3.readdir_reply(token, name, attr, h.remember(next_key)):
                    return
                if not snap:
                    self.lookups[child] += 1
                after = next_key
            if len(batch) < READDIR_BATCH:
                return

    def _entries(self, ino: int, after: bytes | None, limit: int):
        prefix = schema.dirent_prefix(ino)
        start = after if after is not None else prefix
        for key, value in self.meta.range(start, schema.prefix_end(prefix), None, limit):
            yield key[len(prefix):], schema.from_u64(value), key + b"\0"

    def _parent_of(self, ino: int) -> int:
        if ino in (ROOT_INO, CTL_DIR_INO):
            return ROOT_INO
        if ino == SNAPS_DIR_INO:
            return CTL_DIR_INO
        if is_snap_ino(ino):
            up = self.snaps.parent(ino)
            return SNAPS_DIR_INO if up is None else up
        return self._inode(ino).parent or ROOT_INO

    @guard
    async def releasedir(self, fh):
        self.handles.pop(fh, None)

    # -- file system ----------------------------------------------------------

    @guard
    async def statfs(self, ctx):
        st = os.statvfs(self.dirty_dir)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.f_bsize
        s.f_frsize = st.f_frsize
        s.f_blocks = st.f_blocks
        s.f_bfree = st.f_bfree
        s.f_bavail = st.f_bavail
        s.f_files = 1 << 40
        s.f_ffree = s.f_favail = (1 << 40) - (self.alloc._next if self.alloc else 0)
        s.f_namemax = NAME_MAX
        return s
