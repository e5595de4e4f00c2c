"""`MountCore`: the state every part of a mount shares, and the helpers that
keep its inode cache and the metadata store in step.

Metadata lives in the MVCC store (key layout in versionfs.tree.schema);
contents go through `DataManager` (data.py). Inode attributes are cached in
memory and written through to the store on every metadata change, so a
handler costs a dict lookup plus, when it changes something, one atomic MVCC
batch. File sizes and times that change with every write() are kept in
memory and stored together with the extents when the file is sealed
(lifecycle.py), so the store never holds a size that does not match the
stored chunks.

The request handlers are mixins on top of this class (see operations.py);
`MountCore.__init__` is the one place their shared state is set up.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import threading
import time

import pyfuse3
import trio
from pyfuse3 import FUSEError

from versionfs.maint.reclaim import ensure_extent_refs
from versionfs.tree import schema
from versionfs.tree.schema import ROOT_INO, Inode

from .data import DataManager, Extent, FileData
from .journal import open_journal
from .reading import CACHE_IDLE_SECONDS, CHUNK_CACHE_BYTES
from .snapshots import SnapshotViews, is_snap_ino
from .special_inodes import CTL_DIR_INO, CTL_FILE_INO, SNAPS_DIR_INO, is_control_ino

log = logging.getLogger(__name__)

NAME_MAX = 255

# Attribute and entry timeouts. This mount is the only writer of its tree and
# tells the kernel about every change it makes, so long timeouts are safe.
LIVE_TIMEOUT = 300.0
SNAP_TIMEOUT = 3600.0
CTL_TIMEOUT = 1.0


class UnsyncedInodes:
    """Inodes whose fsync must sync the metadata too, each until a metadata
    sync that started after its latest change has finished.

    Cleared at the start of a sync, an inode changed during that sync would be
    forgotten although the sync may not hold the change; cleared after it, an
    fsync arriving meanwhile would rely on a sync that had not finished. So a
    sync takes a `mark()` before it starts and hands it to `synced()` after.
    """

    def __init__(self) -> None:
        self._changes = 0
        self._latest: dict[int, int] = {}       # ino -> number of its latest change

    def add(self, ino: int) -> None:
        self._changes += 1
        self._latest[ino] = self._changes

    def __contains__(self, ino: int) -> bool:
        return ino in self._latest

    def mark(self) -> int:
        return self._changes

    def synced(self, mark: int) -> None:
        """A metadata sync that started at `mark` is durable."""
        self._latest = {ino: n for ino, n in self._latest.items() if n > mark}


class MountCore:
    """Shared state and inode bookkeeping of one mount (no request handlers)."""

    def __init__(self, meta, blobs, paired, dirty_dir: str, *, mountpoint: str,
                 read_only: bool = False, idle_seal_seconds: float = 5.0,
                 seal_max_age_seconds: float = 60.0, merge_quiet_seconds: float = 60.0,
                 metadata_sync_seconds: float = 5.0,
                 cloud=None, read_cache_bytes: int = CHUNK_CACHE_BYTES,
                 read_cache_idle_seconds: float = CACHE_IDLE_SECONDS):
        super().__init__()                     # pyfuse3.Operations, last in VersionFS's bases
        self.meta = meta
        # The bucket session (versionfs.bucket.session.CloudSession) or None:
        # the ctl commands publish through it and `status` reports it.
        self.cloud = cloud
        self.blobs = blobs
        self.paired = paired
        self.mountpoint = mountpoint
        self.read_only = read_only
        self.idle_seal_seconds = idle_seal_seconds
        self.seal_max_age_seconds = seal_max_age_seconds
        self.read_cache_idle_seconds = read_cache_idle_seconds
        self.merge_quiet_seconds = merge_quiet_seconds
        self.metadata_sync_seconds = metadata_sync_seconds
        # fsynced writes not yet sealed (journal.py); replayed by `start`.
        self.journal = None if read_only else open_journal(dirty_dir)
        # Encrypted filesystems chunk under a key (chunking.py); only the
        # derived chunking seed leaves the codec.
        self.data = DataManager(
            blobs, dirty_dir,
            journal_index=lambda: -1 if self.journal is None else self.journal.last_index,
            chunking_seed=blobs.codec.chunking_seed(), cache_bytes=read_cache_bytes)
        self.dirty_dir = dirty_dir
        self.snaps = SnapshotViews(meta)
        self.inodes: dict[int, Inode] = {}
        self.lookups: collections.Counter[int] = collections.Counter()
        # Unlinked inodes the kernel still knows (until its FORGET) but nothing
        # has open: their keys were deleted with their last name, so what the
        # kernel still asks of them (getattr, the ctime setattr it sends after
        # an unlink) is answered from memory and FORGET writes nothing.
        self.gone: set[int] = set()
        self.files: dict[int, FileData] = {}
        self.open_count: collections.Counter[int] = collections.Counter()
        self.handles: dict[int, object] = {}
        self._next_fh = 1
        self._nursery: trio.Nursery | None = None
        self._seal_scheduled: set[int] = set()
        # ino -> monotonic time of the seal that left it with runs of small
        # extents: merged once it has been quiet for merge_quiet_seconds.
        self._merge_due: dict[int, float] = {}
        self._small_due: set[int] = set()
        self._small_wakeup = trio.Event()
        self._meta_changed = False
        # Inodes whose record changed since the last metadata sync in a way the
        # dirty journal does not carry (created; mode or owner changed): their
        # fsync syncs the metadata too (durability.py).
        self.attrs_unsynced = UnsyncedInodes()
        # Inodes sealed since the last metadata sync: the journal records that
        # follow build on that seal (replay applies them on top of the metadata
        # as it is on disk), so their fsync syncs the metadata too (durability.py).
        self.seals_unsynced = UnsyncedInodes()
        self.fsync_metadata_syncs = 0          # fsyncs that synced the metadata too (status)
        self.requests_in_flight = 0            # FUSE requests being served (guard.py)
        self.fsync_syncs_in_loop = 0           # journal syncs run without a thread (status)
        self._writebacks_running = 0           # kernel writeback calls not yet returned
        self._writeback_lock = threading.Lock()
        self.last_error: str | None = None
        self.allocator_trims = 0               # free heap given back while busy (status)
        # Files whose last seal failed: ino -> (failures, monotonic retry time, error).
        # Their data stays dirty (and journaled); the idle sealer retries with backoff.
        self.seal_failures: dict[int, tuple[int, float, str]] = {}
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        if not read_only:
            self.data.discard_leftovers(set() if self.journal is None else self.journal.layer_files())
            self._ensure_root()
            if ensure_extent_refs(meta):
                log.info("indexed the chunks of every live extent (reclamation starts)")
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

    # -- the inode cache and the store -----------------------------------------

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
        if is_control_ino(ino):
            return self._entry(self._virtual_inode(ino), CTL_TIMEOUT)
        if is_snap_ino(ino):
            return self._entry(self.snaps.inode(ino), SNAP_TIMEOUT)
        return self._entry(self._inode(ino))

    @property
    def writes_refused(self) -> bool:
        """Read-only mount, or the bucket session lost the right to write (a lost
        lease, another machine wrote meanwhile: `status` says why and what to do)."""
        return self.read_only or (self.cloud is not None and not self.cloud.writable)

    def _writable(self, ino: int) -> None:
        if self.writes_refused or is_snap_ino(ino) or is_control_ino(ino):
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

    def _delete_inode_keys(self, ino: int, b, *, symlink: bool = True,
                           orphan: bool = True) -> None:
        """Every key of inode `ino`. `symlink` / `orphan`: False when the caller
        knows there is no such key (a delete of a missing key still writes a
        tombstone version)."""
        prefix = schema.extent_prefix(ino)
        for key, value in self.meta.range(prefix, schema.prefix_end(prefix)):
            schema.delete_extent_record(b, key, value)
        prefix = schema.xattr_prefix(ino)
        for key, _ in self.meta.range(prefix, schema.prefix_end(prefix)):
            b.delete(key)
        if symlink:
            b.delete(schema.symlink_key(ino))
        b.delete(schema.journal_mark_key(ino))
        b.delete(schema.inode_key(ino))
        if orphan:
            b.delete(schema.orphan_key(ino))

    def _drop_link(self, inode: Inode, now: int, b) -> None:
        """One directory entry of `inode` went away (the entry is deleted by the caller).

        Its last one: an inode something has open stays, as an orphan, until
        its last release (or the next mount); one nothing has open is deleted
        in the same batch, even if the kernel still knows it (`gone`)."""
        inode.nlink -= 2 if inode.is_dir else 1
        inode.nlink = max(inode.nlink, 0)
        inode.ctime_ns = now
        if inode.nlink > 0:
            self._store_inode(inode, b)
        elif self.open_count[inode.ino] > 0:
            self._store_inode(inode, b)
            b.put(schema.orphan_key(inode.ino), b"")
        else:
            # No orphan key: one is only written while the inode is open.
            self._delete_inode(inode.ino, b, symlink=inode.is_lnk, orphan=False)
            if self.lookups[inode.ino] > 0:
                self.gone.add(inode.ino)
            else:
                self.inodes.pop(inode.ino, None)
                self.lookups.pop(inode.ino, None)

    def _delete_inode(self, ino: int, b, **keys: bool) -> None:
        """Its keys (in batch `b`), journal records and file data; not its
        in-memory inode."""
        self._delete_inode_keys(ino, b, **keys)
        if self.journal is not None:           # its journal records die with it
            self.journal.sealed(ino, self.journal.last_index)
        f = self.files.pop(ino, None)
        if f is not None:
            self.data.drop(f)

    def _forget_inode(self, ino: int, b) -> None:
        self._delete_inode(ino, b)
        self.inodes.pop(ino, None)
        self.lookups.pop(ino, None)

    def _unreferenced(self, ino: int) -> bool:
        """Unlinked, not deleted yet, and neither the kernel nor any open holds
        it: time to delete it."""
        inode = self.inodes.get(ino)
        return (inode is not None and inode.nlink == 0 and self.lookups[ino] <= 0
                and self.open_count[ino] <= 0 and ino not in self.gone)

    def _not_gone(self, ino: int) -> None:
        """ENOENT for an inode deleted with its last name (`gone`): an open or an
        xattr change that raced with the unlink must not bring keys back."""
        if ino in self.gone:
            raise FUSEError(errno.ENOENT)

    def _maybe_delete(self, *inos: int) -> None:
        """Delete the unlinked inodes among `inos` that the kernel and all opens
        let go of, in one metadata batch (FORGET comes in batches of thousands
        when a tree is deleted)."""
        dead = [ino for ino in inos if self._unreferenced(ino)]
        if dead:
            with self.meta.write() as b:
                for ino in dead:
                    self._forget_inode(ino, b)
            self._meta_changed = True

    def _new_fh(self, handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh
