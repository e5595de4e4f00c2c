"""The record store's errors."""

from __future__ import annotations

__all__ = ["RecordError", "KeyConflictError", "RecordNotFoundError", "UnknownTypeError",
           "NotPristineError", "RecordStoreFullError"]


class RecordError(Exception):
    """Base class of record store errors."""


class KeyConflictError(RecordError):
    """The record's unique key value already belongs to another record."""


class RecordNotFoundError(RecordError, KeyError):
    """No record has this id."""

    __str__ = Exception.__str__


class UnknownTypeError(RecordError, ValueError):
    """The type name was never registered nor stored in this database."""


class NotPristineError(RecordError):
    """``restore_from`` needs an empty database."""


class RecordStoreFullError(RecordError):
    """The LMDB map is full; the write was not applied."""
