"""The write side callers hold: the open batch, entered under the backend's lock."""

from __future__ import annotations

import time

from .errors import BackendError

__all__ = ["BatchTx"]

_OP_OVERHEAD = 16  # bytes of LMDB node header per stored item, for accounting


class BatchTx:
    """The open batch: queue puts and deletes; they commit together later.

    Only valid inside ``with backend.batch_tx() as tx``; the backend lock is
    held meanwhile, so everything queued in one block lands in one LMDB
    transaction.
    """

    __slots__ = ("_b",)

    def __init__(self, backend):
        self._b = backend

    def _ops(self, bucket: bytes) -> list:
        b = self._b
        ops = b._pending.get(bucket)
        if ops is None:
            if bucket not in b._dbs:
                raise KeyError(f"no bucket {bucket!r} in metadata database {b.path}")
            ops = b._pending[bucket] = []
        return ops

    def put(self, bucket: bytes, key: bytes, value: bytes) -> None:
        self._ops(bucket).append((key, value))
        b = self._b
        b._pending_count += 1
        b._pending_bytes += len(key) + len(value) + _OP_OVERHEAD

    def put_many(self, bucket: bytes, items: list[tuple[bytes, bytes]], nbytes: int | None = None) -> None:
        """Queue many puts at once (``nbytes``: their size, if the caller knows it)."""
        self._ops(bucket).extend(items)
        b = self._b
        b._pending_count += len(items)
        if nbytes is None:
            nbytes = sum(len(k) + len(v) for k, v in items)
        b._pending_bytes += nbytes + _OP_OVERHEAD * len(items)

    def delete(self, bucket: bytes, key: bytes) -> None:
        self._ops(bucket).append((key, None))
        self._b._pending_count += 1

    def set_applied_index(self, index: int) -> None:
        """Record that this batch includes the WAL entry ``index``."""
        self._b._pending_index = index

    def __len__(self) -> int:
        return self._b._pending_count


class _BatchContext:
    """``with backend.batch_tx() as tx``: the backend's lock for the block; wakes the writer when the batch is due."""

    __slots__ = ("_b",)

    def __init__(self, backend):
        self._b = backend

    def __enter__(self) -> BatchTx:
        b = self._b
        b._cond.acquire()
        if b._closing or b._closed:
            b._cond.release()
            raise BackendError(f"metadata database {b.path} is closed")
        return BatchTx(b)

    def __exit__(self, *exc) -> None:
        b = self._b
        try:
            if b._pending_count:
                if b._pending_since is None:
                    b._pending_since = time.monotonic()
                    b._cond.notify_all()
                elif b._pending_count >= b.batch_limit:
                    b._cond.notify_all()
        finally:
            b._cond.release()
