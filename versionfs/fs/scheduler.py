"""Automatic snapshots, taken by the daemon on a schedule (`[snapshots] interval`).

A snapshot is due when the newest one (automatic or not) is older than the
interval, so a laptop that is mounted for ten minutes a day still gets its
snapshots, and a manual snapshot resets the clock. A due snapshot is skipped
when nothing changed since the newest one: an idle home directory does not fill
the list with identical revisions. After each snapshot the retention policy
(`[snapshots] keep_*`, versionfs.maint.retention) forgets what it does not keep.

Automatic snapshots have no name, so `keep_named` protects the ones people
named by hand (and the `pre-restore-*` ones restore takes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

log = logging.getLogger(__name__)

MAX_CHECK_SECONDS = 60.0


@dataclass
class AutoSnapshots:
    """One mount's schedule. `retain(meta, now)` applies the retention policy."""

    interval: float
    retain: Callable[[Any, float], Any] | None = None
    clock: Callable[[], float] = time.time
    taken: int = 0
    skipped: int = 0
    forgotten: int = 0
    last_check: float | None = None
    last_error: str | None = None
    started: float = field(default_factory=time.time)

    def _baseline(self, fs) -> tuple[int, float]:
        """(revision, time) of the newest snapshot, or (0, mount start)."""
        revs = fs.meta.revisions()
        if revs:
            return revs[-1].rev, revs[-1].time
        return 0, self.started

    def next_due(self, fs) -> float:
        _rev, when = self._baseline(fs)
        base = max(when, self.last_check or 0.0)
        return base + self.interval

    @staticmethod
    def changed_since(fs, rev: int) -> bool:
        """Anything written since `rev`: dirty file data or any metadata key."""
        if any(f.dirty for f in fs.files.values()):
            return True
        return next(iter(fs.meta.changed_keys(rev, fs.meta.head)), None) is not None

    async def tick(self, fs):
        """Take the due snapshot if something changed; returns its RevisionInfo or None."""
        now = self.clock()
        self.last_check = now
        rev, _when = self._baseline(fs)
        await fs._kernel_writeback()
        if not self.changed_since(fs, rev):
            self.skipped += 1
            log.debug("automatic snapshot skipped: nothing changed since revision %d", rev)
            return None
        info = await fs.take_snapshot(None)
        self.taken += 1
        log.info("automatic snapshot: revision %d", info.rev)
        if self.retain is not None:
            result = await trio.to_thread.run_sync(self.retain, fs.meta, self.clock())
            removed = len(getattr(result, "remove", []) or [])
            self.forgotten += removed
            if removed:
                log.info("retention forgot %d snapshot(s)", removed)
        return info

    async def run(self, fs) -> None:
        while True:
            wait = self.next_due(fs) - self.clock()
            await trio.sleep(max(0.05, min(wait, MAX_CHECK_SECONDS, self.interval)))
            if self.clock() < self.next_due(fs):
                continue
            try:
                await self.tick(fs)
                self.last_error = None
            except Exception as exc:        # noqa: BLE001 - try again at the next interval
                log.exception("automatic snapshot failed")
                self.last_error = f"{type(exc).__name__}: {exc}"

    def status(self, fs) -> dict:
        return {
            "auto_snapshot_interval": self.interval,
            "auto_snapshot_next": self.next_due(fs),
            "auto_snapshots_taken": self.taken,
            "auto_snapshots_skipped": self.skipped,
            "auto_snapshot_error": self.last_error,
        }


def retention_from_config(cfg) -> Callable[[Any, float], Any] | None:
    """The retention step after each automatic snapshot, or None when no
    `keep_*` rule is set (then every snapshot is kept)."""
    from versionfs.maint.retention import Policy, apply_retention
    policy = Policy.from_config(cfg)
    if policy.empty:
        return None
    return lambda meta, now: apply_retention(meta, policy, now)
