"""The read side: a key or a range of keys as of a revision, overlay first, then LMDB.

``range`` and ``changed_keys`` (changes.py) stream in chunks, each read under
the store's lock in its own LMDB read transaction, so a 100k-entry listing
never sits in memory and never pins an old LMDB snapshot.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from itertools import islice
from typing import Iterator

from .layout import _AFTER_VERSIONS, PUT, decode_key, encode_key, _inv


class Reads:
    """``MVCCStore``'s reads (a mixin)."""

    def get(self, key: bytes, rev: int | None = None) -> bytes | None:
        """The value of ``key`` at ``rev`` (None: head), or None if absent."""
        with self._lock:
            self._check_open()
            rev = self._read_rev(rev)
            self._refresh()
            for gen in self._gens():
                vers = gen.data.get(key)
                if vers:
                    for r, v in reversed(vers):
                        if r <= rev:
                            return v
            ek = encode_key(key)
            with self._backend.env.begin() as txn:
                cur = txn.cursor(self._kvdb)
                if cur.set_range(ek + _inv(rev)):
                    sk = cur.key()
                    if sk[:-8] == ek:
                        raw = cur.value()
                        return raw[1:] if raw[:1] == PUT else None
            return None

    @staticmethod
    def _lmdb_visible(cur, start: bytes, rinv: bytes, end_ek: bytes | None):
        """(encoded key, raw value) of each key's newest version <= rev, in key order."""
        if not cur.set_range(start):
            return
        while True:
            sk = cur.key()
            ek = sk[:-8]
            if end_ek is not None and ek >= end_ek:
                return
            if sk[-8:] >= rinv:
                yield ek, cur.value()
                if not cur.set_range(ek + _AFTER_VERSIONS):
                    return
            elif not cur.set_range(ek + rinv):
                return

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        rev: int | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for start <= key < end at ``rev``, in key order, streaming."""
        if not isinstance(start, bytes) or (end is not None and not isinstance(end, bytes)):
            raise TypeError("range bounds must be bytes")
        with self._lock:
            self._check_open()
            rev = self._read_rev(rev)
        return self._range_iter(start, end, rev, limit)

    def _range_iter(self, start, end, rev, limit):
        pos, inclusive = start, True
        remaining = limit
        chunk = 64
        while remaining is None or remaining > 0:
            n = chunk if remaining is None else min(chunk, remaining)
            with self._lock:
                self._check_open()
                self._read_rev(rev)
                items, pos = self._range_chunk(pos, inclusive, end, rev, n)
            yield from items
            if remaining is not None:
                remaining -= len(items)
            if pos is None:
                return
            inclusive = False
            chunk = min(chunk * 2, 1024)

    def _range_chunk(self, lo: bytes, inclusive: bool, end: bytes | None, rev: int, n: int):
        self._refresh()
        gens = self._gens()
        iters = []
        for g in gens:
            ks = g.sorted_keys()
            i = bisect_left(ks, lo) if inclusive else bisect_right(ks, lo)
            j = len(ks) if end is None else bisect_left(ks, end)
            if i < j:
                iters.append(islice(ks, i, j))
        mit = iters[0] if len(iters) == 1 else heapq.merge(*iters)
        end_ek = None if end is None else encode_key(end)
        start_ek = encode_key(lo) if inclusive else encode_key(lo) + _AFTER_VERSIONS
        items = []
        budget = 4 * n + 64  # keys examined per chunk, tombstones included
        last = None
        with self._backend.env.begin() as txn:
            lit = self._lmdb_visible(txn.cursor(self._kvdb), start_ek, _inv(rev), end_ek)
            lk = next(lit, None)
            lkey = decode_key(lk[0]) if lk is not None else None
            mk = next(mit, None)
            while lk is not None or mk is not None:
                if len(items) >= n or budget <= 0:
                    return items, last
                budget -= 1
                if mk is None or (lk is not None and lkey < mk):
                    key, raw = lkey, lk[1]
                    value = raw[1:] if raw[:1] == PUT else None
                    lk = next(lit, None)
                    lkey = decode_key(lk[0]) if lk is not None else None
                else:
                    key = mk
                    found, value = self._mem_lookup(gens, mk, rev)
                    if lk is not None and lkey == mk:
                        if not found:
                            raw = lk[1]
                            value = raw[1:] if raw[:1] == PUT else None
                        lk = next(lit, None)
                        lkey = decode_key(lk[0]) if lk is not None else None
                    while mk is not None and mk == key:
                        mk = next(mit, None)
                last = key
                if value is not None:
                    items.append((key, value))
        return items, None
