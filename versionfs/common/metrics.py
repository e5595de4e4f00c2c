"""What a mount counts for its metrics, without importing prometheus_client.

The FUSE handlers call `request_done` on every request, which returns at once
until the Prometheus endpoint (versionfs.common.metrics_endpoint, imported
only when `[metrics] listen` is set: start-up time) observes them. Failures of
background tasks are counted always, since they happen before and without an
endpoint; the endpoint exports them as `versionfs_background_errors_total`.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

_observe: Callable[..., None] | None = None
_background_errors: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def request_done(op: str, seconds: float, ok: bool, result: Any = None) -> None:
    """Called by every FUSE handler when it finishes."""
    if _observe is not None:
        _observe(op, seconds, ok, result)


def observe_requests(observer: Callable[..., None] | None) -> None:
    """Hand every finished request to `observer` from now on (None: stop)."""
    global _observe
    _observe = observer


def background_error(task: str) -> None:
    """One failure of the background task `task` (publish, lease, ...)."""
    with _lock:
        _background_errors[task] += 1


def background_errors() -> dict[str, int]:
    with _lock:
        return dict(_background_errors)
