"""What runs beside a mount, from its config: automatic snapshots and the
Prometheus endpoint; plus the operator-facing lines they add to `status`.

`daemon_services(cfg)` gives the callables `mount.serve(services=...)` starts
in the mount's nursery; they stop when the mount ends.
"""

from __future__ import annotations

import logging
import os
import time
import weakref

import trio

from versionfs import __version__
from versionfs.common.units import parse_duration

from versionfs.tree.restore import JOBS
from versionfs.tree.names import iso_utc, snapshot_dirname

from .scheduler import AutoSnapshots, retention_from_config

log = logging.getLogger(__name__)


class _Running:
    """What services run for one mount (for `status`)."""

    def __init__(self):
        self.scheduler: AutoSnapshots | None = None
        self.metrics_address: str | None = None


RUNNING: "weakref.WeakKeyDictionary[object, _Running]" = weakref.WeakKeyDictionary()


def daemon_services(cfg) -> list:
    """Service starters for `serve(services=...)` from a validated Config."""
    interval = cfg["snapshots.interval"]
    listen = cfg["metrics.listen"]

    def start(fs, nursery: trio.Nursery) -> None:
        running = RUNNING.setdefault(fs, _Running())
        if interval and not fs.read_only:
            running.scheduler = AutoSnapshots(parse_duration(interval), retention_from_config(cfg))
            nursery.start_soon(running.scheduler.run, fs)
            log.info("automatic snapshots every %s", interval)
        if listen:
            from versionfs.common.metrics_endpoint import MetricsServer
            try:
                server = MetricsServer(fs, listen, running.scheduler)
            except OSError as e:           # the mount is worth more than its metrics
                log.error("%s; serving without metrics", e)
                return
            running.metrics_address = server.address
            nursery.start_soon(_close_at_end, server)
    return [start]


async def _close_at_end(server) -> None:
    try:
        await trio.sleep_forever()
    finally:
        server.close()


def status_extras(fs) -> dict:
    """Operator lines for `status`: who serves what, how old the last snapshot is."""
    revs = fs.meta.revisions()
    last = revs[-1] if revs else None
    st = {
        "mountpoint": getattr(fs, "mountpoint", None),
        "pid": os.getpid(),
        "version": __version__,
        "uptime_seconds": round(time.time() - fs.started / 1e9, 1),
        "read_only": fs.read_only,
        "last_snapshot": snapshot_dirname(last) if last else None,
        "last_snapshot_age_seconds": round(time.time() - last.time, 1) if last else None,
    }
    try:
        meta_stats = fs.meta.stats()
        st["metadata_bytes"] = meta_stats.get("db_in_use")
    except Exception:                      # noqa: BLE001 - status must always answer
        st["metadata_bytes"] = None
    running = RUNNING.get(fs)
    sched = running.scheduler if running else None
    st["auto_snapshot_interval"] = None if sched is None else sched.interval
    st["auto_snapshot_next"] = None if sched is None else iso_utc(sched.next_due(fs))
    st["auto_snapshots_taken"] = None if sched is None else sched.taken
    st["auto_snapshots_skipped"] = None if sched is None else sched.skipped
    st["metrics"] = None if running is None or running.metrics_address is None else \
        f"http://{running.metrics_address}/metrics"
    job = JOBS.get(fs)
    st["running_job"] = None if job is None else f"{job.what} {job.done}/{job.total}"
    return st

