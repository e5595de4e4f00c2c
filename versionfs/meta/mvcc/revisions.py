"""The revision catalogue: the head, retained snapshots and their names.

Snapshots are O(1): a WAL entry, one ``revs`` item and a new head number; no
key is copied.  Forgetting one is as cheap; ``compact()`` (compaction.py)
reclaims later what only it could see.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import msgpack

from .errors import ReplayError, RevisionNotFoundError
from .layout import _U64, HEAD_KEY, OP_DELETE_REVISION, OP_SNAPSHOT, REVS, STATE

__all__ = ["RevisionInfo"]


class RevisionInfo(NamedTuple):
    rev: int
    name: str | None
    time: float


class RevisionCatalogue:
    """``MVCCStore``'s revisions (a mixin: ``_head``, ``_revs``, ``_names``)."""

    def _read_rev(self, rev: int | None) -> int:
        if rev is None or rev == self._head:
            return self._head
        if rev in self._revs:
            return rev
        raise RevisionNotFoundError(f"revision {rev} does not exist (head is {self._head})")

    @property
    def head(self) -> int:
        return self._head

    def snapshot(self, name: str | None = None) -> RevisionInfo:
        """Freeze the head as a read-only revision and open the next one. O(1)."""
        if name is not None:
            if not isinstance(name, str) or not name or "/" in name or "\0" in name:
                raise ValueError(f"snapshot name must be a non-empty str without '/' or NUL: {name!r}")
            if name.isdigit():
                raise ValueError(f"snapshot name {name!r} would be read as a revision number")
        with self._lock:
            self._check_open()
            if name is not None and name in self._names:
                raise ValueError(f"a snapshot named {name!r} already exists (revision {self._names[name]})")
            info = RevisionInfo(self._head, name, time.time())
            index = self._next_index
            self._wal.save_entry(index, msgpack.packb([OP_SNAPSHOT, info.rev, name, info.time]))
            self._next_index = index + 1
            self._apply_snapshot(index, info)
            return info

    def _apply_snapshot(self, index: int, info: RevisionInfo) -> None:
        self._revs[info.rev] = info
        if info.name is not None:
            self._names[info.name] = info.rev
        self._head = info.rev + 1
        self._mark_index(index)
        with self._backend.batch_tx() as tx:
            tx.put(REVS, _U64.pack(info.rev), msgpack.packb([info.name, info.time]))
            tx.put(STATE, HEAD_KEY, _U64.pack(self._head))
            tx.set_applied_index(index)

    def revisions(self) -> list[RevisionInfo]:
        """Retained snapshots, oldest first (the head is not one)."""
        with self._lock:
            return [self._revs[r] for r in sorted(self._revs)]

    def revision(self, rev_or_name: int | str) -> RevisionInfo:
        with self._lock:
            if isinstance(rev_or_name, str):
                rev = self._names.get(rev_or_name)
                if rev is None and rev_or_name.isdigit():
                    rev = int(rev_or_name)
            else:
                rev = rev_or_name
            info = self._revs.get(rev)
            if info is None:
                raise RevisionNotFoundError(f"no snapshot {rev_or_name!r}")
            return info

    def delete_revision(self, rev: int | str) -> None:
        """Forget a snapshot; ``compact()`` later reclaims what only it could see."""
        with self._lock:
            self._check_open()
            info = self.revision(rev)
            index = self._next_index
            self._wal.save_entry(index, msgpack.packb([OP_DELETE_REVISION, info.rev]))
            self._next_index = index + 1
            self._apply_delete_revision(index, info.rev)

    def _apply_delete_revision(self, index: int, rev: int) -> None:
        info = self._revs.pop(rev, None)
        if info is None:
            raise ReplayError(f"WAL entry {index} deletes revision {rev}, which does not exist")
        if info.name is not None:
            self._names.pop(info.name, None)
        self._mark_index(index)
        with self._backend.batch_tx() as tx:
            tx.delete(REVS, _U64.pack(rev))
            tx.set_applied_index(index)
