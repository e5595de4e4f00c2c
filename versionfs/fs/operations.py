"""`VersionFS`: the pyfuse3 request handlers of a versionfs mount.

Metadata lives in the MVCC store (layout in schema.py); contents go through
`DataManager` (data.py). Inode attributes are cached in memory and written
through to the store on every metadata change, so a handler costs a dict
lookup plus, when it changes something, one atomic MVCC batch. File sizes and
times that change with every write() are kept in memory and stored together
with the extents when the file is sealed, so the store never holds a size
that does not match the stored chunks.

Every handler is wrapped by `_guard`: FUSEError passes through, a few known
failures map to their errno (full store -> ENOSPC, read-only -> EROFS), and
anything unexpected is logged and becomes EIO; the mount stays up.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import stat
import threading
import time

import pyfuse3
import trio
from pyfuse3 import FUSEError

from versionfs.common import metrics

from versionfs.tree import schema
from versionfs.tree.names import iso_utc, snapshot_dirname
from versionfs.tree.schema import ROOT_INO, Inode

from .ctl.command import CommandError
from .ctl.registry import CtlHandle
from .data import CHUNK_MIN, STREAM_SEAL_BYTES, DataManager, Extent, FileData, SealResult
from .snapshots import SnapshotViews, is_snap_ino, snap_ino
from .special_inodes import CTL_DIR_INO, CTL_DIR_NAME, CTL_FILE_INO, SNAPS_DIR_INO

log = logging.getLogger(__name__)

NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")

# Attribute and entry timeouts. This mount is the only writer of its tree and
# tells the kernel about every change it makes, so long timeouts are safe.
LIVE_TIMEOUT = 300.0
SNAP_TIMEOUT = 3600.0
CTL_TIMEOUT = 1.0
# How long snapshot/flush wait for the kernel to hand over its dirty pages.
KERNEL_WRITEBACK_TIMEOUT = 60.0
READDIR_BATCH = 128
DIR_CURSORS = 8192

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC


def _errno_for(exc: BaseException) -> int | None:
    """errno for failures that are not bugs, None for unexpected ones."""
    name = type(exc).__name__
    if name in ("StoreFullError", "QuotaExceededError"):
        return errno.ENOSPC
    if name == "ReadOnlyError":
        return errno.EROFS
    if isinstance(exc, CommandError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return exc.errno
    return None


def _guard(fn):
    op = fn.__name__

    @functools.wraps(fn)
    async def handler(self, *args):
        start = time.perf_counter()
        try:
            result = await fn(self, *args)
            metrics.request_done(op, time.perf_counter() - start, True, result)
            return result
        except FUSEError:
            metrics.request_done(op, time.perf_counter() - start, False)
            raise
        except Exception as exc:        # noqa: BLE001 - the mount must stay up
            err = _errno_for(exc)
            if err is None:
                log.exception("%s%r failed unexpectedly; returning EIO", fn.__name__, args[:2])
                self.last_error = f"{fn.__name__}: {exc!r}"
                err = errno.EIO
            metrics.request_done(op, time.perf_counter() - start, False)
            raise FUSEError(err) from None
    return handler


class FileHandle:
    __slots__ = ("ino", "writable", "wrote")

    def __init__(self, ino, writable):
        self.ino, self.writable, self.wrote = ino, writable, False


class SnapFileHandle:
    __slots__ = ("ino", "extents", "size")

    def __init__(self, ino, extents, size):
        self.ino, self.extents, self.size = ino, extents, size


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


class VersionFS(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, meta, blobs, paired, dirty_dir: str, *, mountpoint: str,
                 read_only: bool = False, idle_seal_seconds: float = 2.0, cloud=None):
        super().__init__()
        self.meta = meta
        # The bucket session (versionfs.bucket.session.CloudSession) or None:
        # the ctl commands publish through it and `status` reports it.
        self.cloud = cloud
        self.blobs = blobs
        self.paired = paired
        self.mountpoint = mountpoint
        self.read_only = read_only
        self.idle_seal_seconds = idle_seal_seconds
        self.data = DataManager(blobs, dirty_dir)
        self.dirty_dir = dirty_dir
        self.snaps = SnapshotViews(meta)
        self.inodes: dict[int, Inode] = {}
        self.lookups: collections.Counter[int] = collections.Counter()
        self.files: dict[int, FileData] = {}
        self.open_count: collections.Counter[int] = collections.Counter()
        self.handles: dict[int, object] = {}
        self._next_fh = 1
        self._nursery: trio.Nursery | None = None
        self._seal_scheduled: set[int] = set()
        self._small_due: set[int] = set()
        self._small_wakeup = trio.Event()
        self._meta_changed = False
        self._writebacks_running = 0           # kernel writeback calls not yet returned
        self._writeback_lock = threading.Lock()
        self.last_error: str | None = None
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        if not read_only:
            self.data.discard_leftovers()
            self._ensure_root()
            self._delete_orphans()
        self.alloc = schema.InodeAllocator(meta) if not read_only else None

    # -- set-up ---------------------------------------------------------------

    def _ensure_root(self) -> None:
        if self.meta.get(schema.inode_key(ROOT_INO)) is None:
            now = schema.now_ns()
            root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, self.uid, self.gid,
                         atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO)
            self.meta.put(schema.inode_key(ROOT_INO), root.pack())
            self.meta.sync()

    def _delete_orphans(self) -> None:
        """Remove inodes unlinked while open when the last mount crashed."""
        orphans = [schema.from_u64(k[1:9]) for k, _ in
                   self.meta.range(schema.ORPHAN_PREFIX, schema.prefix_end(schema.ORPHAN_PREFIX))]
        for ino in orphans:
            with self.meta.write() as b:
                self._delete_inode_keys(ino, b)
        if orphans:
            log.info("deleted %d orphaned inode(s) left by the last mount", len(orphans))

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        if not self.read_only:
            nursery.start_soon(self._idle_sealer)
            nursery.start_soon(self._small_sealer)

    # -- helpers --------------------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raw = self.meta.get(schema.inode_key(ino))
            if raw is None:
                raise FUSEError(errno.ENOENT)
            inode = self.inodes[ino] = Inode.unpack(ino, raw)
        return inode

    def _store_inode(self, inode: Inode, batch=None) -> None:
        f = self.files.get(inode.ino)
        if f is not None and f.dirty:
            raw = inode.pack(size=f.sealed_size, stored=self._stored(f))
        else:
            raw = inode.pack()
        (batch or self.meta).put(schema.inode_key(inode.ino), raw)
        self._meta_changed = True

    @staticmethod
    def _stored(f: FileData) -> int:
        return sum(e.length for e in f.extents)

    def _entry(self, inode: Inode, timeout: float = LIVE_TIMEOUT) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode.ino
        e.generation = 0
        e.entry_timeout = timeout
        e.attr_timeout = timeout
        e.st_mode = inode.mode
        e.st_nlink = inode.nlink
        e.st_uid = inode.uid
        e.st_gid = inode.gid
        e.st_rdev = inode.rdev
        e.st_size = inode.size
        e.st_blksize = 1 << 17
        f = self.files.get(inode.ino)
        if f is not None:
            held = self._stored(f) + sum(l.dirty.total() for l in f.layers)
        elif inode.is_reg:
            held = inode.stored
        else:
            held = inode.size
        e.st_blocks = (held + 511) // 512
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        return e

    def _virtual_inode(self, ino: int) -> Inode:
        t = self.started
        if ino == CTL_FILE_INO:
            return Inode(ino, stat.S_IFREG | 0o600, 1, self.uid, self.gid,
                         atime_ns=t, mtime_ns=t, ctime_ns=t)
        if ino in (CTL_DIR_INO, SNAPS_DIR_INO):
            return Inode(ino, stat.S_IFDIR | 0o555, 2, self.uid, self.gid,
                         atime_ns=t, mtime_ns=t, ctime_ns=t)
        if is_snap_ino(ino):
            return self.snaps.inode(ino)
        raise FUSEError(errno.ENOENT)

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino < schema.FIRST_FREE_INO and ino != ROOT_INO:
            return self._entry(self._virtual_inode(ino), CTL_TIMEOUT)
        if is_snap_ino(ino):
            return self._entry(self.snaps.inode(ino), SNAP_TIMEOUT)
        return self._entry(self._inode(ino))

    def _writable(self, ino: int) -> None:
        if self.read_only or is_snap_ino(ino) or (ino < schema.FIRST_FREE_INO and ino != ROOT_INO):
            raise FUSEError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FUSEError(errno.ENAMETOOLONG)

    def _child(self, parent: int, name: bytes) -> int | None:
        raw = self.meta.get(schema.dirent_key(parent, name))
        return None if raw is None else schema.from_u64(raw)

    def _touch_dir(self, inode: Inode, now: int, nlink_delta: int = 0) -> None:
        inode.mtime_ns = inode.ctime_ns = now
        inode.nlink += nlink_delta

    def _file(self, ino: int) -> FileData:
        f = self.files.get(ino)
        if f is None:
            inode = self._inode(ino)
            prefix = schema.extent_prefix(ino)
            extents = [Extent(*schema.unpack_extent(k, v))
                       for k, v in self.meta.range(prefix, schema.prefix_end(prefix))]
            f = self.files[ino] = FileData(ino, extents, inode.size)
        return f

    def _maybe_unload(self, ino: int) -> None:
        f = self.files.get(ino)
        if (f is not None and not f.dirty and not f.seal_lock.locked()
                and self.open_count[ino] == 0 and ino not in self._seal_scheduled):
            del self.files[ino]
        if self.lookups[ino] <= 0 and self.open_count[ino] == 0 and ino not in self.files:
            self.inodes.pop(ino, None)
            self.lookups.pop(ino, None)
            self.open_count.pop(ino, None)

    def _delete_inode_keys(self, ino: int, b) -> None:
        for prefix in (schema.extent_prefix(ino), schema.xattr_prefix(ino)):
            for key, _ in self.meta.range(prefix, schema.prefix_end(prefix)):
                b.delete(key)
        b.delete(schema.symlink_key(ino))
        b.delete(schema.inode_key(ino))
        b.delete(schema.orphan_key(ino))

    def _drop_link(self, inode: Inode, now: int, b) -> None:
        """One directory entry of `inode` went away (the entry is deleted by the caller)."""
        inode.nlink -= 2 if inode.is_dir else 1
        inode.nlink = max(inode.nlink, 0)
        inode.ctime_ns = now
        if inode.nlink > 0:
            self._store_inode(inode, b)
        elif self.lookups[inode.ino] > 0 or self.open_count[inode.ino] > 0:
            self._store_inode(inode, b)
            b.put(schema.orphan_key(inode.ino), b"")
        else:
            self._forget_inode(inode.ino, b)

    def _forget_inode(self, ino: int, b) -> None:
        self._delete_inode_keys(ino, b)
        f = self.files.pop(ino, None)
        if f is not None:
            self.data.drop(f)
        self.inodes.pop(ino, None)
        self.lookups.pop(ino, None)

    def _maybe_delete(self, ino: int) -> None:
        """Delete an unlinked inode once the kernel and all opens let go of it."""
        inode = self.inodes.get(ino)
        if (inode is not None and inode.nlink == 0 and self.lookups[ino] <= 0
                and self.open_count[ino] <= 0):
            with self.meta.write() as b:
                self._forget_inode(ino, b)
            self._meta_changed = True

    # -- lookup & attributes --------------------------------------------------

    @_guard
    async def lookup(self, parent, name, ctx):
        self._check_name(name)
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
        if parent == SNAPS_DIR_INO:
            if name in (b".", b".."):
                return self._attr(SNAPS_DIR_INO if name == b"." else CTL_DIR_INO)
            info = self.snaps.resolve(os.fsdecode(name))
            if info is None:
                raise FUSEError(errno.ENOENT)
            return self._attr(snap_ino(info.rev, ROOT_INO))
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

    @_guard
    async def forget(self, inode_list):
        for ino, n in inode_list:
            if ino < schema.FIRST_FREE_INO or is_snap_ino(ino):
                continue
            self.lookups[ino] -= n
            if self.lookups[ino] <= 0:
                self._maybe_delete(ino)
                self._maybe_unload(ino)

    @_guard
    async def getattr(self, ino, ctx):
        return self._attr(ino)

    @_guard
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
        if fields.update_mode:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            inode.uid = attr.st_uid
        if fields.update_gid:
            inode.gid = attr.st_gid
        if fields.update_atime:
            inode.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            inode.mtime_ns = attr.st_mtime_ns
        inode.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now
        self._store_inode(inode)
        return self._entry(inode)

    async def _truncate(self, inode: Inode, size: int, now: int) -> None:
        f = self._file(inode.ino)
        if size == f.size:
            return
        removed = self.data.truncate(f, size)
        inode.size = size
        inode.mtime_ns = now
        if removed is None:
            self._schedule_seal(inode.ino)
            return
        inode.stored = self._stored(f)
        with self.meta.write() as b:
            for e in removed:
                b.delete(schema.extent_key(inode.ino, e.offset))
            self._store_inode(inode, b)
        self._maybe_unload(inode.ino)

    @_guard
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
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        ino = self.alloc.allocate()
        is_dir = stat.S_ISDIR(mode)
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
            self._store_inode(pinode, b)
        self._meta_changed = True
        self.inodes[ino] = inode
        self.lookups[ino] += 1
        return inode

    @_guard
    async def mknod(self, parent, name, mode, rdev, ctx):
        return self._entry(self._new_node(parent, name, mode, ctx, rdev))

    @_guard
    async def mkdir(self, parent, name, mode, ctx):
        return self._entry(self._new_node(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    @_guard
    async def symlink(self, parent, name, target, ctx):
        if len(target) > 4095:
            raise FUSEError(errno.ENAMETOOLONG)
        umask_free = _NoUmask(ctx)
        return self._entry(self._new_node(parent, name, stat.S_IFLNK | 0o777, umask_free,
                                          target=target))

    @_guard
    async def create(self, parent, name, mode, flags, ctx):
        inode = self._new_node(parent, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.files[inode.ino] = FileData(inode.ino, [], 0)
        return self._open_handle(inode.ino, flags), self._entry(inode)

    @_guard
    async def link(self, ino, new_parent, new_name, ctx):
        self._check_name(new_name)
        self._writable(new_parent)
        self._writable(ino)
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

    @_guard
    async def unlink(self, parent, name, ctx):
        await self._remove(parent, name, want_dir=False)

    @_guard
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

    @_guard
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
        if flags & pyfuse3.RENAME_NOREPLACE and dst is not None:
            raise FUSEError(errno.EEXIST)
        if exchange and dst is None:
            raise FUSEError(errno.ENOENT)
        if flags & ~(pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE):
            raise FUSEError(errno.EINVAL)
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
    def _reparent(inode: Inode, old: Inode, new: Inode) -> None:
        if inode.is_dir:
            old.nlink -= 1
            new.nlink += 1
            inode.parent = new.ino

    # -- files ----------------------------------------------------------------

    def _new_fh(self, handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    def _open_handle(self, ino: int, flags: int) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self._file(ino)
        self.open_count[ino] += 1
        return pyfuse3.FileInfo(fh=self._new_fh(FileHandle(ino, writable)), keep_cache=True)

    @_guard
    async def open(self, ino, flags, ctx):
        wants_write = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if ino == CTL_FILE_INO:
            return pyfuse3.FileInfo(fh=self._new_fh(CtlHandle()), direct_io=True,
                                    keep_cache=False, nonseekable=True)
        if is_snap_ino(ino):
            if wants_write:
                raise FUSEError(errno.EROFS)
            inode = self.snaps.inode(ino)
            return pyfuse3.FileInfo(fh=self._new_fh(
                SnapFileHandle(ino, self.snaps.extents(ino), inode.size)), keep_cache=True)
        if ino < schema.FIRST_FREE_INO and ino != ROOT_INO:
            raise FUSEError(errno.EISDIR)
        if wants_write and self.read_only:
            raise FUSEError(errno.EROFS)
        if flags & os.O_TRUNC:
            # libfuse turns on atomic O_TRUNC: the kernel sends no setattr(size=0)
            # and expects open itself to truncate (and stamp mtime/ctime).
            inode = self._inode(ino)
            if inode.is_reg:
                now = schema.now_ns()
                await self._truncate(inode, 0, now)
                inode.mtime_ns = inode.ctime_ns = now
                self._store_inode(inode)
        return self._open_handle(ino, flags)

    @_guard
    async def read(self, fh, off, size):
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            return await self.data.read(self.files[h.ino], off, size)
        if isinstance(h, SnapFileHandle):
            return await self.data.read_extents(h.extents, h.size, off, size)
        if isinstance(h, CtlHandle):
            return h.read(size)
        raise FUSEError(errno.EBADF)

    @_guard
    async def write(self, fh, off, buf):
        h = self.handles.get(fh)
        if isinstance(h, CtlHandle):
            return await h.write(self, buf)
        if not isinstance(h, FileHandle):
            raise FUSEError(errno.EROFS if isinstance(h, SnapFileHandle) else errno.EBADF)
        if self.read_only:
            raise FUSEError(errno.EROFS)
        f = self.files[h.ino]
        n = self.data.write(f, off, buf)
        h.wrote = True
        inode = self._inode(h.ino)
        inode.size = f.size
        if f.live_bytes() >= STREAM_SEAL_BYTES:
            self._schedule_seal(h.ino)
        return n

    @_guard
    async def flush(self, fh):
        pass

    @_guard
    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if not isinstance(h, FileHandle):
            return
        self.open_count[h.ino] -= 1
        f = self.files.get(h.ino)
        if f is not None and f.dirty:
            self._queue_seal(f)
        self._maybe_delete(h.ino)
        self._maybe_unload(h.ino)

    @_guard
    async def fsync(self, fh, datasync):
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            await self.seal_file(h.ino)
            self._store_inode(self._inode(h.ino))
            await trio.to_thread.run_sync(self.meta.sync)

    @_guard
    async def fsyncdir(self, fh, datasync):
        await trio.to_thread.run_sync(self.meta.sync)

    # -- sealing --------------------------------------------------------------

    def _queue_seal(self, f: FileData) -> None:
        """Seal soon: small files in batches, others on their own."""
        if f.size <= CHUNK_MIN:
            self._small_due.add(f.ino)
            self._small_wakeup.set()
        else:
            self._schedule_seal(f.ino)

    async def _small_sealer(self) -> None:
        """Seal small files shortly after release, many per store round trip."""
        while True:
            await self._small_wakeup.wait()
            self._small_wakeup = trio.Event()
            await trio.sleep(0.05)            # let a burst of small files gather
            try:
                await self._seal_small_now()
            except Exception as exc:          # noqa: BLE001 - retried by the idle sealer
                log.exception("sealing small files failed; will retry")
                self.last_error = f"seal of small files: {exc!r}"

    async def _seal_small_now(self) -> None:
        due, self._small_due = self._small_due, set()
        files = [self.files[i] for i in due if i in self.files]
        await self.data.seal_small(files, self._persist_many)
        for f in files:
            if f.dirty:                        # busy or grown meanwhile
                self._schedule_seal(f.ino)
            else:
                self._maybe_unload(f.ino)

    def _persist_many(self, results: list) -> None:
        with self.meta.write() as b:
            for f, r in results:
                self._persist_into(b, f, r)
        self._meta_changed = True

    def _schedule_seal(self, ino: int) -> None:
        if ino in self._seal_scheduled or self._nursery is None:
            return
        self._seal_scheduled.add(ino)
        self._nursery.start_soon(self._background_seal, ino)

    async def _background_seal(self, ino: int) -> None:
        try:
            await self.seal_file(ino)
        except Exception as exc:            # noqa: BLE001 - retried by the idle sealer
            log.exception("sealing inode %d failed; will retry", ino)
            self.last_error = f"seal of inode {ino}: {exc!r}"
        finally:
            self._seal_scheduled.discard(ino)
            self._maybe_unload(ino)

    async def seal_file(self, ino: int) -> bool:
        f = self.files.get(ino)
        if f is None:
            return False
        return await self.data.seal(f, self._persist_seal)

    def _persist_seal(self, f: FileData, r: SealResult) -> None:
        with self.meta.write() as b:
            self._persist_into(b, f, r)
        self._meta_changed = True

    def _persist_into(self, b, f: FileData, r: SealResult) -> None:
        """New extents, size and inode record of a sealed file, in batch `b`."""
        inode = self._inode(f.ino)
        stored = sum(e.length for e in r.extents)
        for e in r.removed:
            b.delete(schema.extent_key(f.ino, e.offset))
        for e in r.added:
            b.put(schema.extent_key(f.ino, e.offset), schema.pack_extent(e.length, e.pointer))
        b.put(schema.inode_key(f.ino), inode.pack(size=r.size, stored=stored))
        inode.stored = stored

    async def seal_all(self) -> None:
        self._small_due.update(i for i, f in self.files.items() if f.dirty)
        await self._seal_small_now()
        for ino in list(self.files):
            await self.seal_file(ino)
            self._maybe_unload(ino)

    async def _idle_sealer(self) -> None:
        last_sync = time.monotonic()
        while True:
            await trio.sleep(min(0.5, self.idle_seal_seconds / 2))
            now = time.monotonic()
            for ino, f in list(self.files.items()):
                if f.dirty and now - f.last_write >= self.idle_seal_seconds:
                    self._queue_seal(f)
            if self._meta_changed and now - last_sync > 5:
                self._meta_changed = False
                last_sync = now
                try:
                    await trio.to_thread.run_sync(self.meta.sync)
                except Exception as exc:    # noqa: BLE001
                    log.exception("periodic metadata sync failed")
                    self.last_error = f"metadata sync: {exc!r}"

    # -- directories ----------------------------------------------------------

    @_guard
    async def opendir(self, ino, ctx):
        return self._new_fh(DirHandle(ino))

    @_guard
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

    @_guard
    async def releasedir(self, fh):
        self.handles.pop(fh, None)

    # -- extended attributes --------------------------------------------------

    @staticmethod
    def _check_xattr_namespace(name: bytes) -> None:
        # FUSE passes every name through; pyfuse3 also calls getxattr for
        # XATTR_CREATE/REPLACE, so all three calls must refuse alike (as ext4 does).
        if not name.startswith(XATTR_NAMESPACES):
            raise FUSEError(errno.EOPNOTSUPP)

    @_guard
    async def setxattr(self, ino, name, value, ctx):
        self._writable(ino)
        self._check_xattr_namespace(name)
        if len(name) > XATTR_NAME_MAX:
            raise FUSEError(errno.ERANGE)
        if len(value) > XATTR_SIZE_MAX:
            raise FUSEError(errno.E2BIG)
        inode = self._inode(ino)
        inode.ctime_ns = schema.now_ns()
        with self.meta.write() as b:
            b.put(schema.xattr_key(ino, name), value)
            self._store_inode(inode, b)

    @_guard
    async def getxattr(self, ino, name, ctx):
        self._check_xattr_namespace(name)
        if is_snap_ino(ino):
            value = self.snaps.getxattr(ino, name)
        elif ino < schema.FIRST_FREE_INO and ino != ROOT_INO:
            value = None
        else:
            value = self.meta.get(schema.xattr_key(ino, name))
        if value is None:
            raise FUSEError(pyfuse3.ENOATTR)
        return value

    @_guard
    async def listxattr(self, ino, ctx):
        if is_snap_ino(ino):
            return self.snaps.listxattr(ino)
        if ino < schema.FIRST_FREE_INO and ino != ROOT_INO:
            return []
        prefix = schema.xattr_prefix(ino)
        return [k[len(prefix):] for k, _ in self.meta.range(prefix, schema.prefix_end(prefix))]

    @_guard
    async def removexattr(self, ino, name, ctx):
        self._writable(ino)
        self._check_xattr_namespace(name)
        key = schema.xattr_key(ino, name)
        if self.meta.get(key) is None:
            raise FUSEError(pyfuse3.ENOATTR)
        inode = self._inode(ino)
        inode.ctime_ns = schema.now_ns()
        with self.meta.write() as b:
            b.delete(key)
            self._store_inode(inode, b)

    # -- file system ----------------------------------------------------------

    @_guard
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

    # -- control operations (used by control.py) ------------------------------

    def _written_inodes(self) -> list[int]:
        """Inodes the kernel may hold dirty pages for: those with a writable open.

        With the writeback cache a page can only be dirty while some `struct
        file` that may write it is alive (a writable fd or a shared writable
        mmap): the kernel writes an inode's pages back and waits for them on
        every close (FLUSH) and again before RELEASE, and we see that RELEASE.
        """
        return sorted({h.ino for h in self.handles.values()
                       if isinstance(h, FileHandle) and h.writable})

    async def _kernel_writeback(self) -> None:
        """Make the kernel hand us the dirty pages it holds, and wait for them.

        With the writeback cache, data an application wrote may still sit in
        the kernel. For each inode that can have dirty pages we send the kernel
        an inode invalidation: it writes every dirty page back to us (WRITE
        requests our loop serves meanwhile) and waits for each to be answered
        before dropping it, so once it returns, everything written before the
        command is ours. We do not use syncfs() on our own mount: it holds the
        superblock's s_umount while it waits on the flusher, so a stuck call
        wedges umount; and current kernels (6.18 stable, AS_NO_DATA_INTEGRITY)
        no longer wait for FUSE pages under writeback in syncfs, so it returned
        while WRITEs of data written before the command were still in flight
        and the snapshot missed them (fs-bugs.md, bug 4).

        The notifications block in the kernel, so they run in a worker thread;
        a call that does not finish in `KERNEL_WRITEBACK_TIMEOUT` is abandoned
        (logged, `writeback_stuck` set so shutdown aborts the connection
        instead of waiting on it forever).
        """
        inos = self._written_inodes()
        if not inos:
            return

        def write_back() -> None:
            with self._writeback_lock:
                self._writebacks_running += 1
            try:
                _write_back_inodes(inos)
            finally:
                with self._writeback_lock:
                    self._writebacks_running -= 1

        with trio.move_on_after(KERNEL_WRITEBACK_TIMEOUT) as scope:
            await trio.to_thread.run_sync(write_back, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.error("the kernel did not write back inodes %s within %ss; going on without",
                      inos, KERNEL_WRITEBACK_TIMEOUT)
            self.last_error = "kernel writeback timed out"

    @property
    def writeback_stuck(self) -> bool:
        """A kernel writeback call was abandoned and may still hold kernel locks."""
        return self._writebacks_running > 0

    async def take_snapshot(self, name: str | None):
        if self.read_only:
            raise CommandError("the mount is read-only", errno.EROFS)
        await self._kernel_writeback()
        await self.seal_all()
        info = self.meta.snapshot(name)
        await trio.to_thread.run_sync(self.meta.sync)
        self.snaps.refresh()
        return info

    async def flush_all(self, timeout: float | None) -> None:
        if not self.read_only:
            await self._kernel_writeback()
            await self.seal_all()
            await trio.to_thread.run_sync(self.meta.sync)
        if self.paired is not None:
            try:
                await trio.to_thread.run_sync(self.paired.flush, timeout)
            except TimeoutError as exc:
                raise CommandError(str(exc), errno.ETIMEDOUT) from None

    def status(self) -> dict:
        revs = self.meta.revisions()
        st = {
            "revision": self.meta.head,
            "snapshots": len(revs),
            "dirty_files": sum(1 for f in self.files.values() if f.dirty),
            "pending_uploads": None,
            "pending_bytes": None,
            "fast_store_use": None,
            "last_upload": None,
            "last_error": self.last_error,
        }
        if self.paired is not None:
            ps = self.paired.status()
            limit = ps.get("fast_limit")
            st["pending_uploads"] = ps.get("pending_count")
            st["pending_bytes"] = ps.get("pending_bytes")
            st["fast_store_use"] = (f"{ps.get('fast_bytes')}" +
                                    (f" of {limit}" if limit else ""))
            ok = ps.get("last_upload_ok")
            st["last_upload"] = None if ok is None else _iso(ok)
            st["last_error"] = ps.get("last_error") or self.last_error
        return st

    async def shutdown(self) -> None:
        """Seal everything and make the metadata durable (before unmounting)."""
        if not self.read_only:
            await self.seal_all()
            await trio.to_thread.run_sync(self.meta.sync)


def _write_back_inodes(inos: list[int]) -> None:
    """Runs in a worker thread: one data invalidation per inode (see _kernel_writeback)."""
    for ino in inos:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:      # ENOENT: the kernel has no such inode cached
                log.warning("writing back inode %d failed: %s", ino, exc)


class _NoUmask:
    """A request context with umask 0 (symlinks are always 0777)."""

    def __init__(self, ctx):
        self.uid, self.gid, self.pid, self.umask = ctx.uid, ctx.gid, ctx.pid, 0


def _iso(ts: float) -> str:
    return iso_utc(ts)
