"""The ``changes`` index: which keys changed between two revisions (streaming, like ``range``), and checking the index."""

from __future__ import annotations

from typing import Iterator

from .layout import _MASK, _U64, CHANGES, KV, decode_key, encode_key, _inv


class ChangeIndex:
    """``MVCCStore``'s change index (a mixin)."""

    def changed_keys(self, rev_from: int, rev_to: int) -> Iterator[bytes]:
        """Keys with a version in (rev_from, rev_to]; cost follows the change, not the store."""
        if rev_from > rev_to:
            raise ValueError(f"changed_keys needs rev_from <= rev_to, got {rev_from} > {rev_to}")
        return self._changed_iter(rev_from, rev_to)

    def _changed_iter(self, rev_from: int, rev_to: int):
        seen: set[bytes] = set()
        with self._lock:
            self._check_open()
            self._refresh()
            gens = [g for g in self._gens()
                    if g.max_rev is not None and g.max_rev > rev_from and g.min_rev <= rev_to]
            mem = sorted(
                {k for g in gens for k, vers in g.data.items() if any(rev_from < r <= rev_to for r, _ in vers)}
            )
        for k in mem:
            seen.add(k)
            yield k
        pos = _U64.pack(rev_from + 1)
        stop = _U64.pack(rev_to + 1) if rev_to < _MASK else None
        while pos is not None:
            batch = []
            with self._lock:
                self._check_open()
                with self._backend.env.begin() as txn:
                    cur = txn.cursor(self._chdb)
                    ok = cur.set_range(pos)
                    while ok:
                        k = cur.key()
                        if stop is not None and k >= stop:
                            ok = False
                            break
                        batch.append(k[8:])
                        if len(batch) >= 1024:
                            break
                        ok = cur.next()
                    pos = k + b"\0" if ok and batch else None
            for key in batch:
                if key not in seen:
                    seen.add(key)
                    yield key

    def check_indexes(self, repair: bool = False) -> list[str]:
        """Check the ``changes`` index against the versions in ``kv``.

        Every stored version must have its ``changes`` item (or ``changed_keys``
        misses it) and every ``changes`` item must name a stored version.
        Returns one line per problem.  ``repair`` rebuilds the wrong items from
        ``kv``, which is the source of truth, so repairing loses nothing.
        """
        with self._lock:
            self._check_open()
        self._backend.commit()
        return self._backend.run(lambda txn, dbs: self._check_indexes_txn(txn, dbs, repair))

    @staticmethod
    def _check_indexes_txn(txn, dbs, repair: bool) -> list[str]:
        kvdb, chdb = dbs[KV], dbs[CHANGES]
        problems = []
        missing = []
        for sk in txn.cursor(kvdb).iternext(keys=True, values=False):
            rev = _MASK - _U64.unpack(sk[-8:])[0]
            ch = _U64.pack(rev) + decode_key(sk[:-8])
            if txn.get(ch, db=chdb) is None:
                missing.append(ch)
                problems.append(f"changes index lacks revision {rev} of key {decode_key(sk[:-8])!r}")
        stale = []
        for ch in txn.cursor(chdb).iternext(keys=True, values=False):
            rev = _U64.unpack(ch[:8])[0]
            if txn.get(encode_key(ch[8:]) + _inv(rev), db=kvdb) is None:
                stale.append(ch)
                problems.append(f"changes index names revision {rev} of key {ch[8:]!r}, "
                                "which is not stored")
        if repair:
            for ch in missing:
                txn.put(ch, b"", db=chdb)
            for ch in stale:
                txn.delete(ch, db=chdb)
        return problems
