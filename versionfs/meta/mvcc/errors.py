"""The MVCC store's errors."""

from __future__ import annotations

__all__ = ["MVCCError", "RevisionNotFoundError", "StoreClosedError", "KeyTooLongError", "ReplayError"]


class MVCCError(Exception):
    """Base class of MVCC store errors."""


class RevisionNotFoundError(MVCCError, LookupError):
    """No such revision (never made, deleted, or a name nobody gave)."""


class StoreClosedError(MVCCError):
    """The store was closed."""


class KeyTooLongError(MVCCError, ValueError):
    """The key does not fit LMDB's key size once encoded."""


class ReplayError(MVCCError):
    """A WAL entry does not fit the store's state: the log and database disagree."""
