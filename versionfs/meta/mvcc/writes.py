"""The write side: batches at the head revision.

Write path.  ``write()`` batches become one WAL entry (appended, fsynced only
by ``sync()`` or before the backend commits past it), then go into an
in-memory *overlay* (memtable generations, overlay.py) that reads consult
first (read-your-writes), and into the backend's current batch, which one
writer thread commits to LMDB per interval or per N operations.  After a crash
the WAL is replayed past the index LMDB recorded in the same transaction as
the data, so nothing is lost or applied twice.
"""

from __future__ import annotations

import msgpack

from .layout import _U64, CHANGES, KV, OP_WRITE, PUT, TOMB, _check_key, _inv

__all__ = ["WriteBatch"]


class WriteBatch:
    """Collects puts and deletes; applied atomically as one WAL entry on exit."""

    __slots__ = ("_store", "ops", "_done")

    def __init__(self, store):
        self._store = store
        self.ops: list[tuple[bytes, bytes, bytes | None]] = []
        self._done = False

    def put(self, key: bytes, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        self.ops.append((*_check_key(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self.ops.append((*_check_key(key), None))

    def __enter__(self) -> "WriteBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._done:
            self._done = True
            if self.ops:
                self._store._commit_write(self.ops)


class Writes:
    """``MVCCStore``'s write side (a mixin)."""

    def write(self) -> WriteBatch:
        """``with store.write() as b: b.put(k, v); b.delete(k2)`` — atomic, one WAL entry."""
        return WriteBatch(self)

    def put(self, key: bytes, value: bytes) -> None:
        with self.write() as b:
            b.put(key, value)

    def delete(self, key: bytes) -> None:
        with self.write() as b:
            b.delete(key)

    def _commit_write(self, ops: list) -> None:
        flat = []
        nbytes = 0
        has_put = False
        for key, ek, value in ops:
            flat.append(key)
            flat.append(value)
            if value is not None:
                has_put = True
                nbytes += 2 * len(ek) + len(value) + 48
        with self._lock:
            self._check_open()
            if has_put:
                self._backend.check_quota(nbytes)
            index = self._next_index
            rev = self._head
            self._wal.save_entry(index, msgpack.packb([OP_WRITE, rev, flat]))
            self._next_index = index + 1
            self._apply_write(ops, index, rev)

    def _apply_write(self, ops: list, index: int, rev: int) -> None:
        self._refresh()  # write-only workloads must shed committed generations too
        gen = self._gen
        data = gen.data
        for key, _ek, value in ops:
            vers = data.get(key)
            if vers is None:
                data[key] = [(rev, value)]
                gen.keys.append(key)
            elif vers[-1][0] == rev:
                vers[-1] = (rev, value)
            else:
                vers.append((rev, value))
        if gen.min_index is None:
            gen.min_index = index
        gen.max_index = index
        if gen.min_rev is None:
            gen.min_rev = rev
        gen.max_rev = rev
        rinv = _inv(rev)
        rbe = _U64.pack(rev)
        versions = []
        changes = []
        nbytes = 0
        for key, ek, value in ops:
            stored = TOMB if value is None else PUT + value
            versions.append((ek + rinv, stored))
            changes.append((rbe + key, b""))
            nbytes += 2 * len(ek) + len(stored) + 16
        with self._backend.batch_tx() as tx:
            tx.put_many(KV, versions, nbytes)
            tx.put_many(CHANGES, changes, 0)  # counted with the versions above
            tx.set_applied_index(index)

    def sync(self) -> None:
        """fsync the WAL: everything written so far survives a crash."""
        self._check_open()
        self._wal.sync()
