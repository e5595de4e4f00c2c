"""CopyCheck: how a Paired store judges the copies of a blob it holds.

The stores keep codec output and cannot tell a good copy from a damaged one
by themselves; the codec can (``Codec.verify``), and BlobStore hands its
verifier down. A copy that fails is never trusted or propagated: a fast copy
that fails counts as absent, and the slow store's copy is checked before it
is taken as proof that a blob is safe.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .errors import CorruptBlobError, NotFoundError
from .pointer import Pointer
from .store import Buffer, Store

log = logging.getLogger(__name__)

Verifier = Callable[[Pointer, Buffer], None]


class CopyCheck:
    """A verifier (None until one is installed: then every copy passes), the
    count of damaged fast copies, and the blobs whose damaged fast copy a re-put
    replaced (their upload first looks for a good copy already on slow)."""

    def __init__(self):
        self.verify: Verifier | None = None
        self.damaged = 0
        self.replaced: set[Pointer] = set()
        self._lock = threading.Lock()

    def problem(self, key: Pointer, data: Buffer) -> str | None:
        """Why ``data`` is not a good copy of ``key``'s blob; None if it is, or if
        there is no verifier to tell."""
        if self.verify is None:
            return None
        try:
            self.verify(key, data)
        except CorruptBlobError as exc:
            return str(exc)
        return None

    def note_damaged(self, key: Pointer, what: str) -> None:
        """A WARNING and a count: the fast copy counts as absent."""
        with self._lock:
            self.damaged += 1
        log.warning("blob %s: the fast store's copy %s; treated as absent", key.hex(), what)

    def note_replaced(self, key: Pointer) -> None:
        """A re-put replaced a damaged fast copy. That copy had been uploaded or
        fetched from slow, so the slow store most likely holds a good one, which
        the upload then leaves alone (with encryption a fresh encoding differs
        from it byte for byte)."""
        with self._lock:
            self.replaced.add(key)

    def forget(self, key: Pointer) -> None:
        with self._lock:
            self.replaced.discard(key)

    def slow_has_good_copy(self, slow: Store, key: Pointer) -> bool:
        """Whether ``slow`` holds a copy of ``key`` that verifies (without a
        verifier: any copy)."""
        if self.verify is None:
            return slow.contains(key)
        try:
            return self.problem(key, slow.get(key)) is None
        except NotFoundError:
            return False
