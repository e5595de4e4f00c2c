"""The Store interface: raw stored bytes keyed by Pointer.

Stores are blocking and thread-safe. The filesystem runs on trio and calls them
through ``trio.to_thread.run_sync`` so a slow disk or network never stalls the
event loop; keeping the stores synchronous keeps them simple and lets hashing,
compression and I/O run in parallel threads (all release the GIL).
"""

from __future__ import annotations

import abc
from typing import Iterable, Iterator

from .pointer import Pointer

Buffer = bytes | bytearray | memoryview


class Store(abc.ABC):
    """A key/value store of immutable blobs."""

    @abc.abstractmethod
    def get(self, key: Pointer) -> bytes:
        """The bytes stored under ``key``; NotFoundError if there are none."""

    @abc.abstractmethod
    def put(self, key: Pointer, data: Buffer) -> None:
        """Store ``data`` under ``key``; durable on return; idempotent."""

    @abc.abstractmethod
    def delete(self, key: Pointer) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    @abc.abstractmethod
    def contains(self, key: Pointer) -> bool:
        """Whether ``key`` is stored."""

    @abc.abstractmethod
    def enumerate(self) -> Iterator[Pointer]:
        """Every stored key, in no particular order."""

    def put_many(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        """Store several blobs; stores that can share the cost of durability override it."""
        for key, data in items:
            self.put(key, data)

    def delete_many(self, keys: Iterable[Pointer]) -> None:
        """Remove several keys (missing ones are fine); stores with a batch API override it."""
        for key in keys:
            self.delete(key)

    def close(self) -> None:
        """Release resources; the default has none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
