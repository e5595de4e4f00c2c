"""BlobStore: plaintext in, Pointer out; every read verified."""

from __future__ import annotations

from typing import Iterable

from .codec import Codec
from .errors import CorruptBlobError
from .pointer import Pointer, as_pointer
from .store import Store


class BlobStore:
    """A Store seen through a Codec. Blocking and thread-safe.

    If a read fails verification and the store can fetch a second copy
    (``Paired.refetch``: the fast copy is bad but the slow one may be good),
    the blob is repaired from it; otherwise CorruptBlobError names the pointer.

    A BlobStore is where a codec meets a store, so it hands the store the
    codec's verifier (``set_verifier``, where the store has one): a Paired
    store keeps codec output it cannot judge by itself, and with the verifier
    it never uploads, or trusts on a re-put, a copy that does not verify.
    Reads are verified here, by decoding, and not again in the store.
    """

    def __init__(self, store: Store, codec: Codec):
        self.store = store
        self.codec = codec
        install = getattr(store, "set_verifier", None)
        if install is not None:
            install(codec.verify)

    def put(self, plaintext) -> Pointer:
        pointer, stored = self.codec.encode(plaintext)
        self.store.put(pointer, stored)
        return pointer

    def put_many(self, plaintexts: Iterable) -> list[Pointer]:
        """Encode and store several blobs at once, sharing the store's fsyncs."""
        encoded = [self.codec.encode(p) for p in plaintexts]
        self.store.put_many(encoded)
        return [pointer for pointer, _ in encoded]

    def put_deferred(self, plaintext) -> Pointer:
        """Store a blob that must be durable only once ``barrier()`` returns."""
        return self.put_many_deferred([plaintext])[0]

    def put_many_deferred(self, plaintexts: Iterable) -> list[Pointer]:
        """put_many whose durability waits for ``barrier()`` (stores that cannot
        defer make the blobs durable at once)."""
        encoded = [self.codec.encode(p) for p in plaintexts]
        getattr(self.store, "put_many_deferred", self.store.put_many)(encoded)
        return [pointer for pointer, _ in encoded]

    def barrier(self) -> None:
        """Every blob put so far is durable when this returns: call it before
        making durable any metadata that refers to deferred blobs."""
        sync = getattr(self.store, "sync_deferred", None)
        if sync is not None:
            sync()

    def get(self, pointer: Pointer) -> bytes:
        return bytes(self.get_buffer(pointer))

    def get_buffer(self, pointer: Pointer) -> bytes | memoryview:
        """``get`` without a copy where the codec can avoid one (``Codec.decode_buffer``)."""
        pointer = as_pointer(pointer)
        stored = self.store.get(pointer)
        try:
            return self.codec.decode_buffer(pointer, stored)
        except CorruptBlobError:
            refetch = getattr(self.store, "refetch", None)
            if refetch is None:
                raise
            return self.codec.decode_buffer(pointer, refetch(pointer))

    def contains(self, pointer: Pointer) -> bool:
        return self.store.contains(as_pointer(pointer))

    def delete(self, pointer: Pointer) -> None:
        self.store.delete(as_pointer(pointer))

    def close(self) -> None:
        self.store.close()
