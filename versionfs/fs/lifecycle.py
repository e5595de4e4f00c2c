"""`LifecycleOps`: what a mount does beyond answering one request: start its
background work, seal written files, make the kernel hand over the pages it
still holds, take snapshots, flush, report its status, and shut down.

Sealing turns a file's dirty overlay into content-defined chunks in the blob
store (`DataManager.seal`) and stores the new extents, size and inode record
in one batch: a new version of the file, which the bucket will get. It is
coalesced, so that a file saved or fsynced many times becomes few versions
(fsync itself only journals, durability.py): the idle sealer seals a file
not written for `idle_seal_seconds` (open or closed), or dirty for
`seal_max_age_seconds` however busy; a writer streaming a big file is sealed
in the background once more than `STREAM_SEAL_BYTES` are pending; snapshot, flush and
unmount seal everything. Small new files are sealed many to a batch. A file
left with runs of small extents by appends, or with partial extents of a
mostly unused chunk by rewrites, is merged once it has been quiet for
`merge_quiet_seconds` (sealing.py `merge_ranges` says why and how). The idle
sealer also syncs the metadata every `metadata_sync_seconds` while it changes,
which lets the journal release what the seals cover. The ctl commands (fs/ctl/) snapshot, flush and report through the
last section.
"""

from __future__ import annotations

import errno
import logging
import time

import pyfuse3
import trio

from versionfs.blob.errors import StoreFullError
from versionfs.common.memory import TRIM_INTERVAL_SECONDS, give_back_free_memory
from versionfs.tree import schema
from versionfs.tree.names import iso_utc

from .core import MountCore
from .ctl.command import CommandError
from .data import CHUNK_MIN, FileData, SealResult
from .files import FileHandle
from .sealing import merge_ranges

log = logging.getLogger(__name__)

# How long snapshot/flush wait for the kernel to hand over its dirty pages.
KERNEL_WRITEBACK_TIMEOUT = 60.0
# A failed seal is retried after 2, 4, 8, ... seconds, at most this long apart.
SEAL_RETRY_MAX_SECONDS = 300.0
# A seal that failed for lack of room in the fast store waits for uploads to
# make room, which nothing announces: it is retried at least this often, not
# after a backoff that would have grown to minutes during the outage that
# filled the store.
STORE_FULL_RETRY_SECONDS = 10.0


class SealError(OSError):
    """Files could not be sealed (their data is kept); errno EIO."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)

    def __str__(self) -> str:
        return self.strerror


class LifecycleOps(MountCore):
    """Background sealing and the whole-mount operations (see the module docstring)."""

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        if self.journal is not None:
            self._replay_journal()
        if not self.read_only:
            nursery.start_soon(self._idle_sealer)
            nursery.start_soon(self._small_sealer)
            nursery.start_soon(self._reclaim_loop)      # reclaiming.py

    # -- sealing --------------------------------------------------------------

    def _queue_seal(self, f: FileData) -> None:
        """Seal soon: new small files in batches, others on their own."""
        if f.size <= CHUNK_MIN and not f.extents:
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
            for ino in await self._seal_small_now():
                self._schedule_seal(ino)         # one by one, each with its own retries

    async def _seal_small_now(self) -> list[int]:
        """Seal the due small files in one batch; the inodes of the batch when it
        failed as a whole (logged; the caller seals them one by one)."""
        due, self._small_due = self._small_due, set()
        files = [self.files[i] for i in due if i in self.files]
        try:
            await self.data.seal_small(files, self._persist_many)
        except Exception as exc:              # noqa: BLE001 - each file on its own next
            log.warning("sealing small files together failed (%s); one by one", exc)
            return [f.ino for f in files]
        for f in files:
            if f.dirty:                        # too big, busy or grown meanwhile
                self._schedule_seal(f.ino)
            else:
                self._seal_succeeded(f.ino)
                self._maybe_unload(f.ino)
        return []

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
            self._seal_failed(ino, exc)
        else:
            self._seal_succeeded(ino)
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
        """New extents, size and inode record of a sealed file, in batch `b`.
        A file deleted while it was sealed gets its new chunks queued for
        reclamation instead: no extent will ever name them."""
        if f.deleted:
            orphaned = {e.pointer for e in r.added}
            for pointer in orphaned:
                schema.queue_candidate(b, pointer)
            if orphaned:
                log.info("inode %d was deleted while it was sealed: %d new chunk(s) queued "
                         "for reclamation", f.ino, len(orphaned))
            return
        inode = self._inode(f.ino)
        stored = sum(e.length for e in r.extents)
        # A chunk the file still uses (partial extents of a split) is not a
        # reclamation candidate.
        still_used = {e.pointer for e in r.extents}
        for e in r.removed:
            schema.delete_extent(b, f.ino, e.offset, e.pointer, queue=e.pointer not in still_used)
        for e in r.added:
            schema.put_extent(b, f.ino, e.offset, e.length, e.pointer, e.skip)
        b.put(schema.inode_key(f.ino), inode.pack(size=r.size, stored=stored))
        inode.stored = stored
        self.seals_unsynced.add(f.ino)
        if merge_ranges(r.extents):
            self._merge_due[f.ino] = time.monotonic()
        else:
            self._merge_due.pop(f.ino, None)
        if self.journal is not None and self.journal.holds(f.ino):
            # What the journal holds of this file up to `covered` is in this seal.
            b.put(schema.journal_mark_key(f.ino), self.journal.mark(r.covered))
            self.journal.sealed(f.ino, r.covered)

    async def seal_all(self, *, skip_failing: bool = False) -> None:
        """Seal every dirty file. A file whose seal fails is reported (log,
        status) and the others are still sealed; the first error is raised at
        the end, and the file's data stays dirty (and journaled, see
        `shutdown`). With `skip_failing`, files whose last seal failed and
        whose retry time has not come are not tried again: flush and unmount
        then answer at once instead of waiting on a store that is full."""
        now = time.monotonic()
        # (ino, error) of files left out; copied now: a background retry may
        # clear seal_failures while this runs.
        skipped = [(ino, error) for ino, (_, retry_at, error) in list(self.seal_failures.items())
                   if skip_failing and now < retry_at and ino in self.files]
        left_out = {ino for ino, _ in skipped}
        self._small_due.update(i for i, f in self.files.items() if f.dirty and i not in left_out)
        first_error: Exception | None = None
        await self._seal_small_now()          # what it could not seal is sealed one by one below
        for ino in list(self.files):
            if ino in left_out:
                continue
            try:
                await self.seal_file(ino)
            except Exception as exc:          # noqa: BLE001 - reported, the rest go on
                self._seal_failed(ino, exc)
                first_error = first_error or exc
            else:
                self._seal_succeeded(ino)
            self._maybe_unload(ino)
        if first_error is not None:
            raise first_error
        if skipped:
            ino, error = skipped[0]
            raise SealError(f"{len(skipped)} file(s) could not be sealed (inode {ino}: "
                            f"{error}); their data is kept and retried")

    def _seal_due(self, f: FileData, now: float) -> bool:
        """The sealing policy: a file left alone for `idle_seal_seconds`, or dirty
        for `seal_max_age_seconds` however busy it is; a file whose seal failed,
        once its retry time has come."""
        failed = self.seal_failures.get(f.ino)
        if failed is not None:
            return f.dirty and now >= failed[1]
        return f.dirty and (now - f.last_write >= self.idle_seal_seconds
                            or now - f.dirty_since >= self.seal_max_age_seconds)

    def _seal_failed(self, ino: int, exc: BaseException) -> None:
        """Keep the data, say so (log, status, metrics), retry with backoff."""
        count = self.seal_failures.get(ino, (0, 0.0, ""))[0] + 1
        delay = min(SEAL_RETRY_MAX_SECONDS, 2.0 ** count)
        if isinstance(exc, StoreFullError):
            delay = min(delay, STORE_FULL_RETRY_SECONDS)
        self.seal_failures[ino] = (count, time.monotonic() + delay, repr(exc))
        self.last_error = f"seal of inode {ino} failed ({count}x), retrying in {delay:.0f}s: {exc!r}"
        log.error("sealing inode %d failed (%d time(s)); its data stays dirty and journaled, "
                  "retrying in %.0fs: %s", ino, count, delay, exc)

    def _seal_succeeded(self, ino: int) -> None:
        if self.seal_failures.pop(ino, None) is not None:
            log.info("sealing inode %d succeeded after earlier failures", ino)

    def _merges_due(self, now: float) -> list[int]:
        """Files with something to merge (`merge_ranges`), quiet for
        `merge_quiet_seconds` since their last write and their last seal."""
        due = []
        for ino, sealed_at in list(self._merge_due.items()):
            f = self.files.get(ino)
            last = max(sealed_at, f.last_write if f is not None else 0.0)
            if now - last >= self.merge_quiet_seconds and not (f is not None and f.dirty):
                del self._merge_due[ino]
                due.append(ino)
        return due

    async def _merge_small_extents(self, ino: int) -> None:
        """Merge a quiet file's `merge_ranges` (sealing.py); a failure is
        logged and reported, the file stays as it was."""
        if ino in self._seal_scheduled or self.meta.get(schema.inode_key(ino)) is None:
            return
        self._seal_scheduled.add(ino)            # no seal of it meanwhile; stays loaded
        try:
            if self._inode(ino).is_reg:
                await self.data.seal(self._file(ino), self._persist_seal, merge_small=True)
        except Exception as exc:                 # noqa: BLE001 - the next seal asks again
            log.error("merging the small extents of inode %d failed: %s", ino, exc)
            self.last_error = f"merge of inode {ino}: {exc!r}"
        finally:
            self._seal_scheduled.discard(ino)
            self._maybe_unload(ino)

    async def _idle_sealer(self) -> None:
        last_sync = last_trim = time.monotonic()
        while True:
            await trio.sleep(min(0.5, self.idle_seal_seconds / 2))
            now = time.monotonic()
            for ino, f in list(self.files.items()):
                if self._seal_due(f, now):
                    self._queue_seal(f)
            if self.data.cache.release_if_idle(self.read_cache_idle_seconds):
                log.debug("read cache emptied after %.0fs unused", self.read_cache_idle_seconds)
            elif now - last_trim >= TRIM_INTERVAL_SECONDS and self.data.cache.last_use > last_trim:
                # Busy (chunks read or sealed since the last trim): give back the
                # heap pages that freed chunks left between live ones (common/memory.py).
                last_trim = now
                await trio.to_thread.run_sync(give_back_free_memory)
                self.allocator_trims += 1
            for ino in self._merges_due(now):
                self._nursery.start_soon(self._merge_small_extents, ino)
            if self._meta_changed and now - last_sync > self.metadata_sync_seconds:
                self._meta_changed = False
                last_sync = now
                try:
                    await self.sync_metadata()
                except Exception as exc:    # noqa: BLE001
                    log.exception("periodic metadata sync failed")
                    self.last_error = f"metadata sync: {exc!r}"

    # -- snapshot, flush, status (used by the ctl commands, fs/ctl/) ----------

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
        if self.writes_refused:
            why = self.cloud.read_only_reason if not self.read_only and self.cloud else None
            raise CommandError(why or "the mount is read-only", errno.EROFS)
        await self._kernel_writeback()
        await self.seal_all()
        info = self.meta.snapshot(name)
        await self.sync_metadata()
        self.snaps.refresh()
        return info

    async def flush_all(self, timeout: float | None) -> None:
        """Seal everything, sync the metadata, wait for the uploads.

        Files whose seal keeps failing (typically: the fast store is full of
        blobs the slow store does not have yet) are not retried at once: the
        uploads run first, which makes room (or, with the slow store down,
        times out — ETIMEDOUT, quickly for `umount --timeout`), then they are
        sealed and uploaded too."""
        async def wait():
            if self.paired is not None:
                await trio.to_thread.run_sync(self.paired.flush, timeout)

        try:
            if not self.read_only:
                await self._kernel_writeback()
                try:
                    await self.seal_all(skip_failing=True)
                except SealError:
                    await self.sync_metadata()
                    await wait()                        # room first, then the files that lacked it
                    await self.seal_all()
                await self.sync_metadata()
            await wait()
        except TimeoutError as exc:
            raise CommandError(str(exc), errno.ETIMEDOUT) from None
        except OSError as exc:
            await self.sync_metadata()
            raise CommandError(f"flush: {exc.strerror or exc}", exc.errno or errno.EIO) from None

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
            # fsynced writes waiting for their seal, and the work done so far:
            # what fsync journaled and what sealing chunked (bytes since mount).
            "journal_files": None if self.journal is None else self.journal.held_files(),
            "journal_bytes": None if self.journal is None else self.journal.bytes_logged,
            # Journal segments zero-filled ahead of use, and journal syncs that
            # extended a segment anyway (each also commits a size change).
            "journal_segments_preallocated": None if self.journal is None
            else self.journal.segments_preallocated,
            "journal_size_changing_syncs": None if self.journal is None
            else self.journal.size_changing_syncs,
            "sealed_bytes": self.data.bytes_sealed,
            "fsync_metadata_syncs": self.fsync_metadata_syncs,
            # Metadata batches (WAL entries) written so far: what a name
            # operation costs in the store (one each for create and unlink).
            "metadata_batches": self.meta.last_index,
            "fsync_syncs_in_loop": self.fsync_syncs_in_loop,
            "merged_extents": self.data.extents_merged,
            "seal_failing_files": len(self.seal_failures),
            # The memory budget (common/memory.py): per-file state is only for
            # files the kernel still knows, the read cache stays under its limit.
            "inodes_in_memory": len(self.inodes),
            "files_in_memory": len(self.files),
            "read_cache_bytes": self.data.cache.used_bytes,
            **self.data.read_status(),                    # reading.py: what reads cost
            # Unsealed bytes held in memory layers now, at most at once, and the
            # layers moved to their file because the total was reached (layers.py).
            "memory_layer_bytes": self.data.layer_memory.used,
            "memory_layer_peak_bytes": self.data.layer_memory.peak,
            "memory_layers_spilled": self.data.layer_memory.spilled,
            "allocator_trims": self.allocator_trims,
            **self.reclaim_status(),                      # reclaiming.py
        }
        if self.paired is not None:
            ps = self.paired.status()
            limit = ps.get("fast_limit")
            st["pending_uploads"] = ps.get("pending_count")
            st["pending_bytes"] = ps.get("pending_bytes")
            st["uploads_linked"] = ps.get("uploads_linked")
            st["uploads_copied"] = ps.get("uploads_copied")
            used = ps.get("fast_bytes")
            st["fast_store_use"] = ("unknown" if used is None else f"{used}") + \
                (f" of {limit}" if limit else "")
            st["fast_store_scan"] = ps.get("fast_scan")
            ok = ps.get("last_upload_ok")
            st["last_upload"] = None if ok is None else iso_utc(ok)
            st["last_error"] = ps.get("last_error") or self.last_error
        return st

    async def shutdown(self) -> None:
        """Seal everything and make the metadata durable (before unmounting).

        Everything written is journaled first, so a seal that fails here loses
        nothing: the next mount replays it (durability.py)."""
        if not self.read_only:
            await self.journal_all_dirty()
            try:
                await self.seal_all(skip_failing=True)
            except Exception as exc:          # noqa: BLE001 - journaled: replayed next mount
                log.error("unmounting with unsealed files (kept in the dirty journal, "
                          "sealed at the next mount): %s", exc)
            finally:
                await self.sync_metadata()


def _write_back_inodes(inos: list[int]) -> None:
    """Runs in a worker thread: one data invalidation per inode (see _kernel_writeback)."""
    for ino in inos:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:      # ENOENT: the kernel has no such inode cached
                log.warning("writing back inode %d failed: %s", ino, exc)
