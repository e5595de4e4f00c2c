"""The read side callers hold: a read-only LMDB transaction."""

from __future__ import annotations

from typing import Iterator

import lmdb

__all__ = ["ReadSnapshot"]


class ReadSnapshot:
    """A read-only LMDB transaction: a consistent view while writes go on (``Backend.read_snapshot()``)."""

    def __init__(self, backend):
        self._backend = backend
        self.txn = backend._env.begin()
        backend._snapshots += 1

    def cursor(self, bucket: bytes) -> lmdb.Cursor:
        return self.txn.cursor(db=self._backend._dbs[bucket])

    def get(self, bucket: bytes, key: bytes) -> bytes | None:
        return self.txn.get(key, db=self._backend._dbs[bucket])

    def range(
        self, bucket: bytes, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items with start <= key < end (end None: to the last key), streaming."""
        cur = self.cursor(bucket)
        if not cur.set_range(start):
            return
        n = 0
        for k, v in cur:
            if end is not None and k >= end:
                return
            yield k, v
            n += 1
            if limit is not None and n >= limit:
                return

    def size(self) -> int:
        return self._backend.size()

    def close(self) -> None:
        if self.txn is not None:
            self.txn.abort()
            self.txn = None
            self._backend._snapshots -= 1

    def __enter__(self) -> "ReadSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
