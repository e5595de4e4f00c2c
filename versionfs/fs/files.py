"""`FileOps`: opening and creating files, and the I/O on their handles.

A handle number (`MountCore.handles`) stands for what was opened: a
`FileHandle` of a live file, whose data `DataManager` (data.py) keeps as
stored extents plus a dirty overlay; a `SnapFileHandle` of a file in a
snapshot, its extents frozen at open; or the ctl file's `CtlHandle`
(ctl/registry.py). Written data stays in the overlay until the file is
sealed (lifecycle.py): once it has not been written for a while, at least
every `seal_max_age_seconds`, or as soon as enough has been written to stream
it out. fsync journals what was written since the last fsync
(durability.py).
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import trio
from pyfuse3 import FUSEError

from versionfs.tree import schema
from versionfs.tree.schema import Inode

from .core import MountCore
from .ctl.registry import CtlHandle
from .data import STREAM_SEAL_BYTES, FileData
from .guard import guard
from .snapshots import is_snap_ino
from .special_inodes import CTL_FILE_INO, is_control_ino


class FileHandle:
    """An open file of the live tree; `writable` if opened for writing."""

    __slots__ = ("ino", "writable", "wrote")

    def __init__(self, ino, writable):
        self.ino, self.writable, self.wrote = ino, writable, False


class SnapFileHandle:
    """An open file of a snapshot: its extents and size at that revision."""

    __slots__ = ("ino", "extents", "size")

    def __init__(self, ino, extents, size):
        self.ino, self.extents, self.size = ino, extents, size


class FileOps(MountCore):
    """open/create, read/write and the handle's end (see the module docstring)."""

    def _open_handle(self, ino: int, flags: int) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self._not_gone(ino)
        self._file(ino)
        self.open_count[ino] += 1
        return pyfuse3.FileInfo(fh=self._new_fh(FileHandle(ino, writable)), keep_cache=True)

    @guard
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
        if is_control_ino(ino):
            raise FUSEError(errno.EISDIR)
        if wants_write and self.writes_refused:
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

    @guard
    async def create(self, parent, name, mode, flags, ctx):
        inode = self._new_node(parent, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        self.files[inode.ino] = FileData(inode.ino, [], 0)
        return self._open_handle(inode.ino, flags), self._entry(inode)

    async def _truncate(self, inode: Inode, size: int, now: int) -> None:
        f = self._file(inode.ino)
        if size == f.size:
            return
        # A file the dirty journal holds records of is truncated in a layer, never
        # straight in the metadata: replay applies the journal on top of the
        # metadata, so a metadata-only cut would be undone by older records.
        journaled = self.journal is not None and self.journal.holds(inode.ino)
        removed = self.data.truncate(f, size, metadata_only=not journaled)
        inode.size = size
        inode.mtime_ns = now
        if removed is None:
            self._schedule_seal(inode.ino)
            return
        inode.stored = self._stored(f)
        with self.meta.write() as b:
            for e in removed:
                schema.delete_extent(b, inode.ino, e.offset, e.pointer)
            self._store_inode(inode, b)
        self._maybe_unload(inode.ino)

    @guard
    async def read(self, fh, off, size):
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            return await self.data.read(self.files[h.ino], off, size, shared=True)
        if isinstance(h, SnapFileHandle):
            return await self.data.read_extents(h.extents, h.size, off, size, shared=True)
        if isinstance(h, CtlHandle):
            return h.read(size)
        raise FUSEError(errno.EBADF)

    @guard
    async def write(self, fh, off, buf):
        h = self.handles.get(fh)
        if isinstance(h, CtlHandle):
            return await h.write(self, buf)
        if not isinstance(h, FileHandle):
            raise FUSEError(errno.EROFS if isinstance(h, SnapFileHandle) else errno.EBADF)
        if self.writes_refused:
            raise FUSEError(errno.EROFS)
        f = self.files[h.ino]
        n = self.data.write(f, off, buf)
        h.wrote = True
        inode = self._inode(h.ino)
        inode.size = f.size
        if f.live_bytes() > STREAM_SEAL_BYTES:
            self._schedule_seal(h.ino)
        return n

    @guard
    async def flush(self, fh):
        # Nothing to do at close (the kernel writes its pages back before FLUSH,
        # sealing has its own schedule): ENOSYS tells the kernel never to send
        # FLUSH again, one request less for every close.
        raise FUSEError(errno.ENOSYS)

    @guard
    async def release(self, fh):
        h = self.handles.pop(fh, None)
        if not isinstance(h, FileHandle):
            return
        self.open_count[h.ino] -= 1
        self._maybe_delete(h.ino)
        self._maybe_unload(h.ino)

    @guard
    async def fsync(self, fh, datasync):
        h = self.handles.get(fh)
        if isinstance(h, FileHandle):
            await self.sync_file(h.ino)

    @guard
    async def fsyncdir(self, fh, datasync):
        await trio.to_thread.run_sync(self.meta.sync)
