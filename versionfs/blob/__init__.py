"""Content-addressed blobs: pointers, codec, and the stores that keep them.

Modules, bottom up: ``pointer`` (Pointer, Null), ``errors``, ``store`` (the
Store ABC over raw stored bytes), ``files``/``disk``/``directory`` (local
stores), ``s3`` (S3Bucket named objects with conditional writes, S3Store),
``remote`` (RemoteStore + StoreService over HTTP), ``journal`` + ``copies``
+ ``uploads`` + ``paired`` (the fast/slow write-back pair, judging copies with a
verifier; ``uploads`` holds its upload workers),
``keys`` + ``codec`` (format byte, zstd, AEAD, keyed pointers, verification),
``blobstore`` (plaintext in, verified plaintext out; installs the verifier),
``url`` (open_store). Nothing here imports ``versionfs.meta`` or ``versionfs.fs``.
"""

from .errors import (BlobError, CorruptBlobError, NotFoundError, NotHashPointerError,
                     NotImplementedStoreError, PreconditionFailedError, ReadOnlyError,
                     StoreFullError, StoreUnavailableError, TruncatedBlobError,
                     WrongPassphraseError)
from .pointer import Null, Pointer

__all__ = [
    "BlobError", "CorruptBlobError", "NotFoundError", "NotHashPointerError",
    "NotImplementedStoreError", "PreconditionFailedError", "ReadOnlyError", "StoreFullError",
    "StoreUnavailableError", "TruncatedBlobError", "WrongPassphraseError", "Null", "Pointer",
]
