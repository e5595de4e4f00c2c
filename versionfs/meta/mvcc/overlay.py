"""The in-memory overlay: memtable generations that reads consult before LMDB.

Writes land here as well as in the backend's current batch, so a read sees
them at once (read-your-writes) while the batch waits for its commit.  A
generation is dropped once the backend reports a commit covering its last WAL
index.
"""

from __future__ import annotations


class _Gen:
    """One overlay generation: key -> [(rev, value|None), ...] ascending by rev."""

    __slots__ = ("data", "keys", "sorted_upto", "min_index", "max_index", "min_rev", "max_rev")

    def __init__(self):
        self.data: dict[bytes, list] = {}
        self.keys: list[bytes] = []
        self.sorted_upto = 0
        self.min_index: int | None = None
        self.max_index: int | None = None
        self.min_rev: int | None = None   # revisions written here, so changed_keys
        self.max_rev: int | None = None   # can skip a generation outside its range

    def sorted_keys(self) -> list[bytes]:
        if self.sorted_upto < len(self.keys):
            self.keys.sort()  # timsort merges the sorted prefix with the new tail
            self.sorted_upto = len(self.keys)
        return self.keys


class Overlay:
    """``MVCCStore``'s overlay generations (a mixin: ``_gen``, ``_frozen``, ``_seen_state``)."""

    def _refresh(self) -> None:
        """Drop overlay generations the backend has committed (lazily, under the lock)."""
        state = self._backend.state
        if state is self._seen_state:
            return
        committed = state[1]
        if self._frozen:
            self._frozen = [g for g in self._frozen if g.max_index > committed]
        g = self._gen
        if g.max_index is not None and g.min_index <= committed:
            if g.max_index > committed:
                # Partly committed: everything in it is already queued, so the
                # next commit covers it; freeze it so it stops growing.
                self._frozen.append(g)
            self._gen = _Gen()
        self._seen_state = state

    def _gens(self) -> list[_Gen]:
        if self._frozen:
            return [self._gen, *reversed(self._frozen)]
        return [self._gen]

    def _mem_lookup(self, gens, key: bytes, rev: int):
        for gen in gens:
            vers = gen.data.get(key)
            if vers:
                for r, v in reversed(vers):
                    if r <= rev:
                        return True, v
        return False, None

    def _mark_index(self, index: int) -> None:
        gen = self._gen
        if gen.min_index is None:
            gen.min_index = index
        gen.max_index = index
