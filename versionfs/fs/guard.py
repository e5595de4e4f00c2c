"""`guard`: what every pyfuse3 request handler of a mount is wrapped in.

FUSEError passes through, a few known failures map to their errno (full store
-> ENOSPC, read-only -> EROFS, a failed ctl command -> its errno), and
anything unexpected is logged and becomes EIO; the mount stays up. Each
request is also reported to `metrics.request_done`, and counted in
`requests_in_flight` while it is served (an fsync alone in flight syncs
without a thread hop, durability.py).
"""

from __future__ import annotations

import errno
import functools
import logging
import time

from pyfuse3 import FUSEError

from versionfs.common import metrics

from .ctl.command import CommandError

log = logging.getLogger(__name__)


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


def guard(fn):
    """Wrap the handler `fn` as described in the module docstring."""
    op = fn.__name__

    @functools.wraps(fn)
    async def handler(self, *args):
        start = time.perf_counter()
        self.requests_in_flight += 1
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
        finally:
            self.requests_in_flight -= 1
    return handler
