"""Errors of the blob layer.

Every failure a caller may want to treat differently has its own class, so the
filesystem can map them to errno values (NotFound -> ENOENT, StoreFull ->
ENOSPC, ReadOnly -> EROFS, StoreUnavailable -> EIO/EAGAIN) without parsing text.
"""

from __future__ import annotations


class BlobError(Exception):
    """Base class of every error raised by ``versionfs.blob``."""


class NotFoundError(BlobError, LookupError):
    """The store has no object under this key (seed: ErrNotFound)."""


class ReadOnlyError(BlobError):
    """The store refuses writes, e.g. a Paired store opened without a journal."""


class NotImplementedStoreError(BlobError, NotImplementedError):
    """The store does not offer this operation (seed: ErrNotImplemented)."""


class NotHashPointerError(BlobError, ValueError):
    """A value that should be a 32-byte pointer is not one."""


class CorruptBlobError(BlobError):
    """Stored bytes fail verification; the message names the pointer."""

    def __init__(self, message: str, pointer_hex: str | None = None):
        super().__init__(message)
        self.pointer_hex = pointer_hex


class TruncatedBlobError(CorruptBlobError):
    """Stored bytes are shorter than their header says: a cut-off write or copy."""


class WrongPassphraseError(BlobError):
    """The passphrase does not unlock the wrapped master key."""


class StoreUnavailableError(BlobError):
    """The (slow) store cannot be reached right now; retrying later may work."""


class StoreFullError(BlobError):
    """The fast store is full of blobs that are not yet safe on the slow store."""


class PreconditionFailedError(BlobError):
    """A conditional write or delete lost: the object changed (or exists)."""
