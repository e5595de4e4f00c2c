"""What retained revisions can see: ``compact()`` drops the rest, ``versions()`` lists it.

``compact()`` drops versions no retained revision (nor the head) can see,
plus tombstones with nothing older beneath them; ``defrag()`` then returns the
space to the disk.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator

from .layout import _MASK, _U64, CHANGES, KV, PUT, TOMB, decode_key, encode_key, _inv, _is_tomb


def _split_visible(versions: list, retained: list[int], h0: int) -> tuple[list, list]:
    """Split one key's versions (``(rev, x)`` newest first; ``x[:1] == TOMB`` or
    ``x is True`` marks a tombstone) into (kept, dropped): a version is kept if
    it is at or above h0 or some revision in ``retained`` (which must include
    the head) sees it."""
    keep = []
    drop = []
    upper = None
    for rev, x in versions:
        if rev >= h0:
            keep.append((rev, x))
        else:
            i = bisect_left(retained, rev)
            visible = i < len(retained) and (upper is None or retained[i] < upper)
            (keep if visible else drop).append((rev, x))
        upper = rev
    while keep and _is_tomb(keep[-1][1]):  # a tombstone with nothing beneath it hides nothing
        drop.append(keep.pop())
    return keep, drop


class Compaction:
    """``MVCCStore``'s compaction and version listing (a mixin)."""

    def _retained_and_commit(self) -> tuple[list[int], int]:
        """(retained revisions + the head, head), with every queued write in LMDB."""
        with self._lock:
            self._check_open()
            retained = sorted(self._revs)
            h0 = self._head
        retained.append(h0)
        self._backend.commit()
        return retained, h0

    def compact(self) -> int:
        """Drop versions no retained revision can see. Returns how many were dropped."""
        retained, h0 = self._retained_and_commit()
        dropped = 0
        pos = b""
        while pos is not None:
            pos, n = self._backend.run(lambda txn, dbs, p=pos: self._compact_chunk(txn, dbs, p, retained, h0))
            dropped += n
        return dropped

    def _compact_chunk(self, txn, dbs, start: bytes, retained: list[int], h0: int, budget: int = 5000):
        kvdb, chdb = dbs[KV], dbs[CHANGES]
        cur = txn.cursor(kvdb)
        if not cur.set_range(start):
            return None, 0
        dropped = 0
        seen = 0
        more = True
        while more and seen < budget:
            ek = cur.key()[:-8]
            versions = []  # (rev, tombstone), newest first
            while True:
                sk = cur.key()
                if sk[:-8] != ek:
                    break
                versions.append((_MASK - _U64.unpack(sk[-8:])[0], cur.value()[:1] == TOMB))
                if not cur.next():
                    more = False
                    break
            next_sk = cur.key() if more else None
            seen += len(versions)
            keep, drop = _split_visible(versions, retained, h0)
            if drop:
                key = decode_key(ek)
                for rev, _tomb in drop:
                    txn.delete(ek + _inv(rev), db=kvdb)
                    txn.delete(_U64.pack(rev) + key, db=chdb)
                dropped += len(drop)
                if more:
                    cur.set_range(next_sk)
        return (cur.key() if more else None), dropped

    def versions(self, start: bytes, end: bytes | None = None, *,
                 retained_only: bool = False) -> Iterator[tuple[bytes, int, bytes | None]]:
        """Every stored version ``(key, rev, value or None for a tombstone)`` of the
        keys in [start, end), key by key, newest version first, streaming.

        This is what garbage collection and fsck need: the union of what every
        retained revision and the head can see, without reading the tree once per
        revision.  With ``retained_only`` it yields only versions some retained
        revision or the head can see (exactly what ``compact()`` would keep);
        otherwise also versions only forgotten revisions saw.

        Everything written before the call is included (queued writes are
        committed first); versions written while the iteration runs may or may
        not appear, so a caller racing with writers must cover them itself.
        """
        if not isinstance(start, bytes) or (end is not None and not isinstance(end, bytes)):
            raise TypeError("versions bounds must be bytes")
        retained, h0 = self._retained_and_commit()
        return self._versions_iter(start, end, retained, h0, retained_only)

    def _versions_iter(self, start, end, retained, h0, retained_only):
        pos = encode_key(start)
        end_ek = None if end is None else encode_key(end)
        while pos is not None:
            with self._lock:
                self._check_open()
                groups, pos = self._versions_chunk(pos, end_ek)
            for ek, versions in groups:
                key = decode_key(ek)
                if retained_only:
                    versions, _ = _split_visible(versions, retained, h0)
                for rev, raw in versions:
                    yield key, rev, (raw[1:] if raw[:1] == PUT else None)

    def _versions_chunk(self, pos: bytes, end_ek: bytes | None, budget: int = 4096):
        """Whole version groups from ``pos`` (an encoded key) on; (groups, next pos)."""
        groups = []
        n = 0
        with self._backend.env.begin() as txn:
            cur = txn.cursor(self._kvdb)
            if not cur.set_range(pos):
                return groups, None
            while True:
                ek = cur.key()[:-8]
                if end_ek is not None and ek >= end_ek:
                    return groups, None
                if n >= budget:
                    return groups, ek
                versions = []
                more = True
                while True:
                    sk = cur.key()
                    if sk[:-8] != ek:
                        break
                    raw = cur.value()
                    versions.append((_MASK - _U64.unpack(sk[-8:])[0], raw if raw[:1] == PUT else TOMB))
                    if not cur.next():
                        more = False
                        break
                groups.append((ek, versions))
                n += len(versions)
                if not more:
                    return groups, None

    def defrag(self) -> None:
        """Compact the LMDB file itself (after ``compact()``, to return space to the disk)."""
        with self._lock:
            self._check_open()
            self._backend.defrag()
            self._kvdb = self._backend.db(KV)  # handles belong to the reopened environment
            self._chdb = self._backend.db(CHANGES)
