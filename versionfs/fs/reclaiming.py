"""`ReclaimOps`: the mount's background reclamation of superseded chunks.

Every `RECLAIM_INTERVAL` seconds the mount drains the candidate queue that
sealing, truncation and deletion fill (versionfs.maint.reclaim says what is
deleted when, and why that is safe). Here is only the mount's part of the
protocol shared with `gc` (versionfs.maint.gc): one of the two at a time
(`guard.running`), a guard epoch so that a chunk put again meanwhile is kept,
and a wait for the seals already running when the epoch opened, since their
puts came before it. The chunks that open files and open snapshot files hold
are passed as held.

A failed drain is an ERROR log line, the `background_errors_total{task=
"reclaim"}` metric and `reclaim error` in `status`; the next drain is tried
after a backoff (doubling, at most `RECLAIM_RETRY_MAX_SECONDS`).
"""

from __future__ import annotations

import logging

import trio

from versionfs.common import metrics
from versionfs.maint import gc as gcmod
from versionfs.maint.reclaim import Reclaimer

from .core import MountCore

log = logging.getLogger(__name__)

RECLAIM_INTERVAL = 2.0
RECLAIM_RETRY_MAX_SECONDS = 300.0


class ReclaimOps(MountCore):
    """Background reclamation (see the module docstring)."""

    reclaimer: Reclaimer | None = None

    async def _reclaim_loop(self) -> None:
        failures = 0
        while True:
            await trio.sleep(RECLAIM_INTERVAL if not failures
                             else min(RECLAIM_RETRY_MAX_SECONDS, RECLAIM_INTERVAL * 2 ** failures))
            if self.writes_refused or self.paired is None:
                continue
            try:
                await self.reclaim_now()
            except Exception as exc:          # noqa: BLE001 - reported and retried
                failures += 1
                metrics.background_error("reclaim")
                if self.reclaimer is not None:
                    self.reclaimer.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("reclaiming superseded chunks failed (%d time(s)); retrying: %s",
                          failures, exc, exc_info=failures == 1)
            else:
                if failures:
                    log.info("reclaiming superseded chunks works again")
                failures = 0
                self.reclaimer.stats.last_error = None

    async def reclaim_now(self) -> bool:
        """One drain; False when a `gc` was running (it covers everything)."""
        if self.reclaimer is None:
            self.reclaimer = Reclaimer(self.meta, self.paired)
        guard = gcmod.GCGuard.install(self.blobs)
        if not guard.running.acquire(blocking=False):
            return False
        try:
            await trio.to_thread.run_sync(guard.begin)
            try:
                for f in list(self.files.values()):   # seals that put before the epoch
                    if f.seal_lock.locked():
                        async with f.seal_lock:
                            pass
                held = self.held_chunks()
                cloud = self.cloud
                floor = cloud.published_floor() if cloud is not None else None
                awaited = [cloud.uploads_awaited] if cloud is not None else []
                await trio.to_thread.run_sync(
                    lambda: self.reclaimer.drain(guard, held, floor, *awaited))
            finally:
                guard.end()
        finally:
            guard.running.release()
        return True

    def held_chunks(self) -> set[bytes]:
        """Chunks the daemon holds outside the metadata: open files, open snapshot files."""
        held: set[bytes] = set()
        for f in list(self.files.values()):
            held.update(e.pointer for e in f.extents)
        for h in list(self.handles.values()):
            held.update(e.pointer for e in getattr(h, "extents", ()) or ())
        return held

    def reclaim_status(self) -> dict:
        st = self.reclaimer.stats if self.reclaimer is not None else None
        return {
            "reclaimed_blobs": st and st.reclaimed_blobs,
            "reclaimed_bytes": st and st.reclaimed_bytes,
            "reclaimed_before_upload": st and st.before_upload,
            "reclaim_backlog": st and st.backlog,
            "reclaim_waiting_on_snapshots": st and st.waiting,
            "reclaim_error": st and st.last_error,
        }

    def reclaim_gauges(self) -> list[tuple[str, str, float]]:
        st = self.reclaimer.stats if self.reclaimer is not None else None
        if st is None:
            return []
        return [("reclaimed_blobs", "superseded chunks deleted without gc", st.reclaimed_blobs),
                ("reclaimed_bytes", "fast-store bytes those freed", st.reclaimed_bytes),
                ("reclaimed_before_upload", "superseded chunks never uploaded", st.before_upload),
                ("reclaim_backlog_blobs", "reclamation candidates queued", st.backlog),
                ("reclaim_waiting_blobs", "candidates only retained snapshots use", st.waiting)]
