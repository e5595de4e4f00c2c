"""The upload half of Paired (paired.py): worker threads that send journaled
blobs to the slow store, retrying with backoff until it works, and record
them done. Kept apart so each half reads on its own; Paired's ``__init__``
sets up the state used here (queue, pending map, journal, copies checker).

A blob is sent only if its fast copy verifies against its pointer; without a
good copy to send it is done only if the slow store already holds one, else
it stays pending and is reported (``NoGoodCopyError``, retried forever: the
same content written again brings a good copy). Workers never die silently.
"""

from __future__ import annotations

import logging
import time

from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from .errors import BlobError, NotFoundError
from .pointer import Pointer

log = logging.getLogger("versionfs.blob.paired")


class _Closed(Exception):
    """The pair is closing; an upload in progress stays in the journal."""


class _Deleted(Exception):
    """The blob being uploaded is being deleted; its upload is abandoned."""


class NoGoodCopyError(BlobError):
    """A journaled blob has no good copy to upload and the slow store lacks it."""

    def __init__(self, message: str, key: Pointer):
        super().__init__(message)
        self.key = key


class UploadLoop:
    """Mixin of Paired: the upload workers and what they share with it."""

    def _worker(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stop.is_set())
                if self._stop.is_set():
                    return
                key = self._queue.popleft()
                if key not in self._pending or key in self._in_flight:
                    continue
                self._in_flight.add(key)
            try:
                self._upload(key)
            except (_Closed, _Deleted) as exc:
                with self._cond:
                    self._in_flight.discard(key)
                    self._cond.notify_all()
                if isinstance(exc, _Closed):
                    return
                continue
            self._finish(key)

    def _finish(self, key: Pointer) -> None:
        """An upload is durable on slow: unpin it and record it done.

        Under the lock, so that a new put of the same blob (which pins it again
        under the lock) writes its put record after this done record.
        """
        self._copies.forget(key)
        with self._cond:
            self._in_flight.discard(key)
            self._unuploadable.pop(key, None)
            if self._pending.pop(key, None) is not None:
                self._journaled.discard(key)
                self._record_done(key)
            self._uploaded += 1
            self._last_ok = time.time()
            self._maybe_compact()
            self._cond.notify_all()

    def _record_done(self, key: Pointer) -> None:
        """A lost done record only means one more upload after a restart."""
        try:
            self._journal.done(key)
        except OSError as exc:
            self._fail(f"upload journal {self._journal.path}: cannot record that blob "
                       f"{key.hex()} is uploaded ({exc}); it will be uploaded again "
                       "after a restart")

    def _maybe_compact(self) -> None:
        if not self._journal.needs_compaction(len(self._pending)):
            return
        try:
            # Every pending key, journaled or about to be: a put whose record
            # went to the old file must not lose it to the rewrite.
            self._journal.compact(self._pending.items())
        except OSError as exc:
            self._fail(f"upload journal {self._journal.path}: compaction failed ({exc}); "
                       "it is tried again later")

    def _upload(self, key: Pointer) -> None:
        """Copy one blob to slow, retrying with exponential backoff until it works."""
        try:
            for attempt in self._retrying(key):
                with attempt:
                    self._upload_once(key)
        except Exception:
            if self._stop.is_set():
                raise _Closed() from None
            if key in self._deleting:
                raise _Deleted() from None
            raise

    def _retrying(self, key: Pointer | None = None) -> Retrying:
        """Retry forever with capped exponential backoff; only closing, or a
        delete of the blob being uploaded, stops it, and either interrupts the
        backoff's sleep."""
        def over(_state=None) -> bool:
            return self._stop.is_set() or key in self._deleting

        def sleep(seconds: float) -> None:
            with self._cond:
                self._cond.wait_for(over, seconds)

        return Retrying(retry=retry_if_exception_type(Exception),
                        wait=wait_exponential_jitter(multiplier=0.05, max=self.retry_max_wait,
                                                     jitter=0.1),
                        stop=over, sleep=sleep, before_sleep=self._note_error, reraise=True)

    def _upload_once(self, key: Pointer) -> None:
        """Send the fast copy if it verifies. Without one to send, the blob is
        done only if the slow store already holds a good copy; else it stays
        pending (NoGoodCopyError is retried: the same content written again
        brings a good fast copy)."""
        if key in self._copies.replaced and self._copies.slow_has_good_copy(self.slow, key):
            return
        try:
            copy = self._uploader.fast_copy(key)
        except NotFoundError:
            problem = "missing from the fast store"
        else:
            with copy:
                problem = self._copies.problem(key, copy.data)
                if problem is None:
                    self._uploader.send(key, copy)
                    return
            if key not in self._unuploadable:
                self._copies.note_damaged(key, f"fails verification before its upload ({problem})")
            problem = f"damaged in the fast store ({problem})"
        if self._copies.slow_has_good_copy(self.slow, key):
            return
        raise NoGoodCopyError(f"blob {key.hex()} waits for upload but is {problem}, and the "
                              "slow store has no good copy: it stays pending until the same "
                              "content is written again", key)

    def _note_error(self, state) -> None:
        exc = state.outcome.exception()
        message = f"upload failed (attempt {state.attempt_number}), retrying: {exc}"
        if isinstance(exc, NoGoodCopyError):
            with self._cond:
                self._unuploadable[exc.key] = str(exc)
            self._fail(message)             # not a passing outage: loud every time
        else:
            self._last_error = message
            log.warning(message)

    def _reconcile(self) -> None:
        """After journal damage, re-queue every fast blob the slow store lacks
        (one that fails verification cannot be: it is reported instead)."""
        for key in self.fast.enumerate():
            if self._stop.is_set():
                return
            if self.is_pending(key):
                continue
            try:
                if not self._slow_lacks(key):
                    continue
                data = self.fast.get(key)
                problem = self._copies.problem(key, data)
                if problem is not None:
                    self._fail(f"reconcile: blob {key.hex()} is damaged in the fast store "
                               f"({problem}) and the slow store lacks it")
                    continue
                self.put(key, data)
            except Exception as exc:  # noqa: BLE001 - closing, or the blob went away
                if self._stop.is_set():
                    return
                self._fail(f"reconcile {key.hex()}: {exc}")

    def _slow_lacks(self, key: Pointer) -> bool:
        for attempt in self._retrying():
            with attempt:
                return not self.slow.contains(key)
        raise _Closed()
