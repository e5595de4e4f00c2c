"""The backend's errors: the quota and a full disk both read as ENOSPC."""

from __future__ import annotations

import errno

__all__ = ["BackendError", "QuotaExceededError", "DiskFullError", "BackendLockedError"]


class BackendError(Exception):
    """Base class of backend errors."""


class QuotaExceededError(BackendError, OSError):
    """The metadata store is over its space quota; the write was not made.

    An ``OSError`` with ``errno.ENOSPC`` so the filesystem reports ENOSPC.
    """

    def __init__(self, message: str):
        OSError.__init__(self, errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


class DiskFullError(QuotaExceededError):
    """The disk under the metadata store is full; the write was not made."""


class BackendLockedError(BackendError):
    """Another process (or another Backend in this one) has this database open."""
