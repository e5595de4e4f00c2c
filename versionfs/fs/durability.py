"""`DurabilityOps`: fsync through the dirty journal, and what a mount does
with the journal at start and at the end.

fsync/fdatasync of a file appends the bytes written since its last fsync
(their current content), its truncation, its size and its times to the dirty
journal (journal.py) and fsyncs that journal: one disk sync, whose cost
follows what was written since the last fsync, never the file's size, and no
blob is created. The inode record in the metadata is stored as usual by the
next seal or metadata sync; replay restores size and times from the journal.
Only a file whose inode record changed in a way the journal does not carry
since the last metadata sync (`MountCore.attrs_unsynced`: created, mode or
owner changed), or that was sealed since (`MountCore.seals_unsynced`: the
seal took what was written before it out of what fsync journals, and replay
builds on the metadata as it is on disk), costs a metadata sync too. A seal
still in flight is not in the metadata yet: fsync journals what it froze as
well (`FileData.sealing`); when that is all it journals (nothing written
since the freeze), that seal holds the record and releases it once durable
(`FileData.journaled`), else the next seal does. The file is sealed later
(lifecycle.py), coalescing many fsyncs into one version. A file with more
than `JOURNAL_FSYNC_LIMIT` bytes written since its last fsync is not copied
into the journal: its bytes are already in dirty layer files, so fsync
freezes those layers (new writes open a fresh one), fdatasyncs them and
journals where they are (L records, journal.py): one write of each byte
before it is durable, like a native file, and sealing follows in the
background. A layer file the journal refers to is kept after its seal until
the metadata saying so is durable (`DataManager.kept_files`, released at each
metadata sync).

At start the journal is replayed before the first request: the files it
holds get their journaled writes and times back as dirty layers and are
sealed like any written file. At the end (`shutdown`) every dirty file is
journaled before the final seals, so a seal that fails there (a full disk, a
broken store) loses nothing: the next mount replays it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import trio

from versionfs.blob.files import fsync_dir
from versionfs.tree import schema

from .core import MountCore

log = logging.getLogger(__name__)

# Bytes written since the last fsync above which fsync seals instead of journaling.
JOURNAL_FSYNC_LIMIT = 16 << 20
# Journal records are cut into pieces of at most this many bytes.
JOURNAL_PIECE = 4 << 20
# At most this many bytes to sync, an fsync alone in flight syncs on the loop.
LOOP_SYNC_BYTES = 64 << 10


class DurabilityOps(MountCore):
    """fsync, journal replay and the journal's part of shutdown (module docstring)."""

    # -- start ----------------------------------------------------------------

    def _replay_journal(self) -> None:
        """Give the files the journal holds their journaled state back (dirty)."""
        referenced = self.journal.layer_files()
        replayed = self.journal.replay()
        adopted: set[str] = set()
        applied = 0
        for r in replayed:
            if self.meta.get(schema.inode_key(r.ino)) is None:
                self.journal.forget(r.ino)              # deleted since: nothing to restore
                continue
            inode = self._inode(r.ino)
            if not inode.is_reg:
                self.journal.forget(r.ino)
                continue
            f = self._file(r.ino)
            ops = r.after(self.meta.get(schema.journal_mark_key(r.ino)), self.journal.id)
            if not ops:
                continue
            times = None
            for index, kind, *args in ops:
                if kind == "W":
                    self.data.write(f, args[0], args[1])
                    continue
                if kind == "L":
                    self._replay_layer(f, index, *args)
                    adopted.add(args[0])
                    continue
                if args[0] != f.size:                    # "T", or "A" (the size at the fsync)
                    self._replay_truncate(inode, f, args[0])
                if kind == "A" and len(args) == 3:     # older A records carry no times
                    times = args[1:]
            if times is not None and times[1] >= inode.ctime_ns:
                # A larger ctime in the metadata is a later change of the inode
                # (chmod, utimes...) whose record holds the times to keep.
                inode.mtime_ns, inode.ctime_ns = times
            inode.size = f.size
            f.unsynced.clip(0)                          # all of it is in the journal already
            f.unsynced_trunc = None
            f.last_write = 0.0                          # idle: the sealer takes it soon
            applied += 1
        if applied:
            log.warning("replayed the dirty journal: %d file(s) get their fsynced writes back",
                        applied)
        for name in referenced - adopted:           # covered by durable seals: not needed
            _unlink_quietly(os.path.join(self.dirty_dir, name))

    def _replay_layer(self, f, index: int, name: str, size: int, ranges) -> None:
        try:
            self.data.adopt_layer(f, name, size, ranges, index)
        except FileNotFoundError:
            log.error("the dirty journal refers to layer file %s of inode %d, which is gone: "
                      "the writes fsynced through it are lost", name, f.ino)
            self.last_error = f"dirty layer file {name} of inode {f.ino} missing at replay"

    def _replay_truncate(self, inode, f, size: int) -> None:
        # In a layer, like any truncate of a journaled file (files.py `_truncate`).
        self.data.truncate(f, size, metadata_only=False)
        inode.size = f.size

    # -- fsync ----------------------------------------------------------------

    async def sync_file(self, ino: int) -> None:
        """What fsync/fdatasync of a live file does (see the module docstring)."""
        f = self.files.get(ino)
        if f is not None and f.has_unsynced and not self.read_only:
            if self.journal is None or self._fast_store_full():
                await self.seal_file(ino)
            else:
                async with f.sync_lock:
                    await self._journal_unsynced(f)
                if ino not in self.attrs_unsynced and ino not in self.seals_unsynced:
                    # Size and times are in the journal record: one disk sync.
                    await self._sync_journal()
                    return
        if not self.read_only and ino in self.inodes:
            self._store_inode(self.inodes[ino])
        self.fsync_metadata_syncs += 1
        marks = self.attrs_unsynced.mark(), self.seals_unsynced.mark()
        await trio.to_thread.run_sync(self._sync_journal_and_meta)
        self._metadata_synced(*marks)

    async def _sync_journal(self) -> None:
        """The journal's fdatasync for one fsync. When that fsync is the only
        request being served and its records are small (a program committing
        transaction after transaction), it runs on the loop: a worker thread
        would cost two scheduler wake-ups per fsync, more than such a sync on
        a loaded machine (the segments are pre-zeroed: it overwrites written
        blocks), and no other request waits for the loop meanwhile; one that
        arrives during the sync waits for it. Otherwise it runs in a thread,
        so that other requests go on."""
        if self.requests_in_flight == 1 and self.journal.unsynced_bytes <= LOOP_SYNC_BYTES:
            self.fsync_syncs_in_loop += 1
            self.journal.sync()
        else:
            await trio.to_thread.run_sync(self.journal.sync)

    def _fast_store_full(self) -> bool:
        """Blobs in the fast store plus dirty data not yet sealed reach the fast
        store's limit: then fsync seals, so that data that cannot be stored fails
        with ENOSPC now (or waits for uploads to make room) instead of piling up
        in the journal beyond the store's budget."""
        # The fast store's own counters: Paired.status() would also add up the
        # whole upload backlog, on every fsync.
        fast = getattr(self.paired, "fast", None)
        limit = getattr(fast, "max_bytes", None)
        if not limit:
            return False
        dirty = sum(layer.dirty.total() for f in self.files.values() for layer in f.layers)
        return (fast.used_bytes or 0) + dirty >= limit

    async def _journal_unsynced(self, f) -> None:
        """What a file's fsync appends: its bytes, or where they are when many."""
        if f.unsynced_bytes() > JOURNAL_FSYNC_LIMIT:
            await self._journal_layers(f)
        else:
            await self._journal_file(f)

    async def _journal_file(self, f) -> None:
        ranges, trunc = f.take_unsynced()
        writes = []
        for a, b in ranges:
            for start in range(a, b, JOURNAL_PIECE):
                end = min(b, start + JOURNAL_PIECE)
                data = await self.data.read(f, start, end - start)
                if data:
                    writes.append((start, data))
        inode = self._inode(f.ino)
        f.journaled(self.journal.log(f.ino, trunc, writes, f.size, inode.mtime_ns, inode.ctime_ns))

    async def _journal_layers(self, f) -> None:
        """Journal a big unsynced area where it is: each layer not journaled yet,
        oldest first, as its truncation plus an L record naming its file (a
        small layer in memory as W records of its bytes). The layer files are
        fdatasynced before the records are appended: a journal synced by
        another fsync meanwhile must never name bytes that are not durable."""
        ops, files = [], []
        for layer in f.layers:
            if layer.keep is not None:
                continue                    # journaled by an earlier fsync, frozen since
            layer.frozen = True
            if layer.trunc is not None:
                ops.append(("T", layer.trunc))
            if layer.mem is None:
                ops.append(("L", os.path.basename(layer.path), layer.size, list(layer.dirty)))
                files.append(layer)
            else:
                ops.extend(("W", a, layer.pread(b - a, a)) for a, b in layer.dirty)
        ranges, trunc = f.take_unsynced()
        kept = [self.data.keep_file(layer, f.ino) for layer in files]
        for layer in files:
            layer.readers += 1              # a seal finishing meanwhile must not close its fd
        try:
            await trio.to_thread.run_sync(_sync_layer_files, [l.fd for l in files], self.dirty_dir)
        except BaseException:
            for a, b in ranges:             # still unsynced: the next fsync tries again
                f.unsynced.add(a, b)
            if trunc is not None:
                f.unsynced_trunc = trunc if f.unsynced_trunc is None else min(trunc, f.unsynced_trunc)
            for layer, k in zip(files, kept):
                layer.keep = None
                self.data.kept_files.remove(k)
            raise
        finally:
            for layer in files:
                layer.readers -= 1
                if layer.retired:
                    layer.close()
        inode = self._inode(f.ino)
        index = self.journal.log_layers(f.ino, ops, f.size, inode.mtime_ns, inode.ctime_ns)
        f.journaled(index)
        for k in kept:
            k.index = index

    def _sync_journal_and_meta(self) -> None:
        if self.journal is None:
            self.meta.sync()
            return
        # Seals noted before this metadata sync become durable with it: record
        # them in the journal too, or a replay would apply older records of a
        # file over content fsynced through its seal.
        noted = self.journal.seals_noted()
        unneeded = self._kept_files_unneeded()
        self.journal.sync()
        self.meta.sync()
        if noted:
            self.journal.metadata_synced(noted)
        self._drop_kept_files(unneeded)

    def _kept_files_unneeded(self) -> list:
        """Kept layer files no replay needs once the metadata as it is now is
        durable: a seal covering their L record is in it, or the file is gone."""
        return [k for k in list(self.data.kept_files)
                if k.closed and k.index is not None
                and (self.meta.get(schema.inode_key(k.ino)) is None
                     or self.journal.covers(self.meta.get(schema.journal_mark_key(k.ino)), k.index))]

    def _metadata_synced(self, attrs_mark: int, seals_mark: int) -> None:
        self.attrs_unsynced.synced(attrs_mark)
        self.seals_unsynced.synced(seals_mark)

    def _drop_kept_files(self, kept: list) -> None:
        """After the metadata sync that made them unneeded. Two syncs (an
        fsync's and the periodic one) may run at once and both find a file
        unneeded: the second finds it gone."""
        for k in kept:
            try:
                self.data.kept_files.remove(k)
            except ValueError:
                continue
            _unlink_quietly(os.path.join(self.dirty_dir, k.name))

    async def journal_all_dirty(self) -> None:
        """Journal every file written since its last fsync (before the last seals)."""
        if self.journal is None:
            return
        for f in list(self.files.values()):
            if f.has_unsynced and not f.deleted:
                async with f.sync_lock:
                    await self._journal_unsynced(f)
        await trio.to_thread.run_sync(self.journal.sync)

    # -- after the metadata is synced -------------------------------------------

    async def sync_metadata(self) -> None:
        """fsync the metadata; then seals written before are durable, so the
        journal records them and releases what it no longer needs."""
        marker = self.journal.seals_noted() if self.journal is not None else 0
        unneeded = self._kept_files_unneeded() if self.journal is not None else []
        marks = self.attrs_unsynced.mark(), self.seals_unsynced.mark()
        await trio.to_thread.run_sync(self.meta.sync)
        self._metadata_synced(*marks)
        if self.journal is not None and marker:
            await trio.to_thread.run_sync(self.journal.metadata_synced, marker)
        self._drop_kept_files(unneeded)


def _sync_layer_files(fds: list[int], dirty_dir: str) -> None:
    """fdatasync layer files, then their directory (their names are new)."""
    for fd in fds:
        os.fdatasync(fd)
    if fds:
        fsync_dir(dirty_dir)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
