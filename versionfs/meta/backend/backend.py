"""``Backend``: the LMDB environment, its writer thread, and how durable a commit is.

Sync flags — why ``metasync=False`` (MDB_NOMETASYNC) and ``sync=True``:
durability is the write-ahead log's job.  Every batch records the last WAL
index it applied (``applied_index``) in the same transaction, and the WAL is
fsynced up to that index *before* the batch commits (``before_commit``), so
LMDB can never be ahead of the durable log.  After a crash the owner reopens
the WAL at ``applied_index + 1`` and replays the rest.  That means a crash may
freely undo the last committed LMDB transactions — which is exactly what
NOMETASYNC permits — but it must never *corrupt* the file, which rules out
``sync=False`` (MDB_NOSYNC: without a flush the meta page can reach the disk
before the data pages it points to).  NOMETASYNC keeps integrity with one
fdatasync of the data pages per commit instead of two flushes, and commits
happen once per batch, not per write.  Before WAL segments are deleted
(``durable_applied_index``) the environment is fully synced, so a released
segment is never needed again.

Space: ``quota_bytes`` bounds the bytes of live pages (``size_in_use``).
Callers ask ``check_quota`` before logging a write, so an over-quota write
fails up front with ``QuotaExceededError`` and nothing is written anywhere.
The LMDB map is larger than the quota so that writes already accepted, and
deletions, still commit; if the map or the disk fills anyway, the batch stays
queued in memory (still covered by the WAL), the error is reported to writers,
and the store keeps serving reads.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
from collections import deque
from typing import Callable

import crc32c
import lmdb

from .batch import _BatchContext
from .copies import CompactCopies
from .errors import BackendError, BackendLockedError, DiskFullError, QuotaExceededError
from .snapshot import ReadSnapshot

__all__ = ["Backend", "DEFAULT_QUOTA_BYTES", "MAX_QUOTA_BYTES"]

DEFAULT_QUOTA_BYTES = 2 * 1024**3
MAX_QUOTA_BYTES = 8 * 1024**3
DEFAULT_BATCH_INTERVAL = 0.1
DEFAULT_BATCH_LIMIT = 10000
META_BUCKET = b"_backend"
APPLIED_KEY = b"applied_index"
_U64 = struct.Struct(">Q")
log = logging.getLogger(__name__)


class _Future:
    __slots__ = ("event", "result", "error")

    def __init__(self):
        self.event = threading.Event()
        self.result = None
        self.error: BaseException | None = None

    def wait(self):
        self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Backend(CompactCopies):
    """LMDB database with batched commits on a dedicated writer thread."""

    def __init__(
        self,
        path: str,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        buckets: tuple[bytes, ...] = (),
        before_commit: Callable[[int], None] | None = None,
        after_commit: Callable[[int], None] | None = None,
        map_size: int | None = None,
    ):
        if quota_bytes <= 0:
            raise ValueError(f"quota_bytes must be positive, got {quota_bytes}")
        self.path = os.path.abspath(path)
        self.batch_interval = batch_interval
        self.batch_limit = batch_limit
        self.quota_bytes = quota_bytes
        self.before_commit = before_commit
        self.after_commit = after_commit
        self._map_size = map_size or max(2 * quota_bytes, quota_bytes + 64 * 1024**2)
        os.makedirs(self.path, exist_ok=True)
        self._lockfd = os.open(os.path.join(self.path, "backend.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lockfd)
            raise BackendLockedError(f"metadata database {self.path} is already open") from None
        self._bucket_names = (META_BUCKET,) + tuple(b for b in buckets if b != META_BUCKET)
        try:
            self._open_env()
        except BaseException:
            os.close(self._lockfd)
            raise
        self._cond = threading.Condition()
        self._pending: dict[bytes, list] = {}  # bucket -> [(key, value or None for delete)]
        self._pending_count = 0
        self._pending_bytes = 0
        self._pending_index: int | None = None
        self._pending_since: float | None = None
        self._force = 0
        self._jobs: deque = deque()
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._retry_at = 0.0
        self._snapshots = 0
        with self._env.begin() as txn:
            raw = txn.get(APPLIED_KEY, db=self._dbs[META_BUCKET])
        applied = _U64.unpack(raw)[0] if raw is not None else 0
        # (commit generation, last WAL index committed): one tuple, so readers
        # see both halves of a commit together.
        self.state = (0, applied)
        self._durable_index = applied
        self._in_use = self._measure_in_use()
        self._thread = threading.Thread(target=self._run, name=f"lmdb-writer:{self.path}", daemon=True)
        self._thread.start()

    def _open_env(self) -> None:
        self._env = lmdb.open(
            self.path,
            map_size=self._map_size,
            max_dbs=len(self._bucket_names) + 4,
            metasync=False,
            sync=True,
            readahead=False,
            max_readers=256,
            mode=0o600,            # data.mdb/lock.mdb: the owner only (lmdb defaults to 0755)
        )
        self._dbs = {name: self._env.open_db(name) for name in self._bucket_names}

    # ---------------------------------------------------------------- writes

    def batch_tx(self) -> "_BatchContext":
        """``with backend.batch_tx() as tx: tx.put(...)`` — queued into the current batch."""
        return _BatchContext(self)

    def check_quota(self, extra_bytes: int = 0) -> None:
        """Raise QuotaExceededError when ``extra_bytes`` more would exceed the quota.

        Also raises the standing error when committing queued batches is
        currently failing (map or disk full), so no more puts pile up.
        """
        failure = self._failure
        if isinstance(failure, QuotaExceededError):
            raise type(failure)(str(failure))
        used = self._in_use + self._pending_bytes + extra_bytes
        if used > self.quota_bytes:
            raise QuotaExceededError(
                f"metadata store over its space quota: {used} bytes needed, quota is "
                f"{self.quota_bytes} bytes (compact and defrag, or raise the quota)"
            )

    @property
    def applied_index(self) -> int:
        """The last WAL index committed to LMDB (maybe not yet fsynced)."""
        return self.state[1]

    def commit(self) -> int:
        """Commit the current batch now and wait; returns the applied index."""
        fut = _Future()
        with self._cond:
            self._check_open()
            self._force += 1
            self._jobs.append((None, fut, False))
            self._cond.notify_all()
        fut.wait()
        return self.state[1]

    def run(self, fn: Callable, with_txn: bool = True):
        """Run ``fn(txn, dbs)`` in its own write transaction on the writer thread.

        With ``with_txn=False`` it runs as ``fn()`` with no transaction open.

        The current batch commits first, so ``fn`` sees every queued write.
        Returns what ``fn`` returns; exceptions abort the transaction and are
        re-raised here.
        """
        fut = _Future()
        with self._cond:
            self._check_open()
            self._jobs.append((fn, fut, with_txn))
            self._cond.notify_all()
        return fut.wait()

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise BackendError(f"metadata database {self.path} is closed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = self._pending and (
                        self._force
                        or self._jobs
                        or self._closing
                        or self._pending_count >= self.batch_limit
                        or now - self._pending_since >= self.batch_interval
                    )
                    if self._failure is not None and due and now < self._retry_at and not self._closing:
                        due = False  # back off while the disk/map is full
                        if self._jobs:
                            self._fail_jobs(self._failure)
                    if due or self._jobs or (self._closing and not self._pending):
                        break
                    if self._pending:
                        wake = self._pending_since + self.batch_interval
                        if self._failure is not None:
                            wake = max(wake, self._retry_at)
                        self._cond.wait(max(0.0, wake - now))
                    else:
                        self._cond.wait()
                ops = None
                if due:
                    ops, index, nbytes = self._pending, self._pending_index, self._pending_bytes
                    count = self._pending_count
                    self._pending, self._pending_index, self._pending_count = {}, None, 0
                    self._pending_since = None
                jobs = list(self._jobs)
                self._jobs.clear()
                self._force = 0
                if not ops and not jobs and self._closing:
                    return
            if ops:
                try:
                    self._commit(ops, index)
                except BaseException as exc:  # keep the batch: the WAL still covers it
                    with self._cond:
                        for bucket, newer in self._pending.items():
                            ops.setdefault(bucket, []).extend(newer)
                        self._pending = ops
                        self._pending_count += count
                        if self._pending_index is None:
                            self._pending_index = index
                        self._pending_since = self._pending_since or time.monotonic()
                        self._failure = exc
                        self._retry_at = time.monotonic() + max(self.batch_interval, 0.5)
                        closing = self._closing
                        if closing:
                            self._closing_error = exc
                    self._fail_jobs(exc, jobs)
                    if closing:
                        return
                    continue
                else:
                    with self._cond:
                        self._pending_bytes -= nbytes
                        self._failure = None
                    if self.after_commit is not None and index is not None:
                        try:
                            self.after_commit(index)
                        except Exception:  # housekeeping only; the commit stands
                            log.exception("after-commit hook failed for %s", self.path)
            for fn, fut, with_txn in jobs:
                if fn is None:
                    fut.event.set()
                    continue
                try:
                    if with_txn:
                        with self._env.begin(write=True) as txn:
                            fut.result = fn(txn, self._dbs)
                    else:
                        fut.result = fn()
                    self._published_commit(self.state[1])
                except BaseException as exc:
                    fut.error = self._translate(exc)
                fut.event.set()

    def _fail_jobs(self, exc: BaseException, jobs=None) -> None:
        if jobs is None:
            jobs = list(self._jobs)
            self._jobs.clear()
        for _fn, fut, _with_txn in jobs:
            fut.error = exc
            fut.event.set()

    def _commit(self, ops: dict, index: int | None) -> None:
        if index is not None and self.before_commit is not None:
            self.before_commit(index)
        try:
            with self._env.begin(write=True) as txn:
                for bucket, items in ops.items():
                    db = self._dbs[bucket]
                    cur = txn.cursor(db)
                    run = []  # consecutive puts go to LMDB in one C-level call
                    for item in items:
                        if item[1] is None:
                            if run:
                                cur.putmulti(run)
                                run = []
                            txn.delete(item[0], db=db)
                        else:
                            run.append(item)
                    if run:
                        cur.putmulti(run)
                if index is not None:
                    txn.put(APPLIED_KEY, _U64.pack(index), db=self._dbs[META_BUCKET])
        except BaseException as exc:
            raise self._translate(exc) from exc
        self._published_commit(self.state[1] if index is None else index)

    def _published_commit(self, index: int) -> None:
        self._in_use = self._measure_in_use()
        self.state = (self.state[0] + 1, index)

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, lmdb.MapFullError):
            return QuotaExceededError(
                f"metadata database {self.path} is full (LMDB map of {self._map_size} bytes); "
                "compact and defrag, or raise the quota"
            )
        if isinstance(exc, (lmdb.Error, OSError)) and (
            getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "No space left" in str(exc)
            # LMDB turns a short write (the disk filled mid-commit) into EIO.
            or ("Input/output error" in str(exc) and self._disk_nearly_full())
        ):
            return DiskFullError(f"no space left on device for metadata database {self.path}")
        return exc

    def _disk_nearly_full(self) -> bool:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize < max(4 << 20, self._pending_count * 256)

    # ----------------------------------------------------------------- reads

    def read_snapshot(self) -> ReadSnapshot:
        """A consistent read-only view of everything committed so far."""
        return ReadSnapshot(self)

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    def db(self, bucket: bytes):
        return self._dbs[bucket]

    # ------------------------------------------------------------ durability

    def durable_applied_index(self) -> int:
        """Force LMDB to disk; returns the WAL index it now durably covers.

        With NOMETASYNC the last commit's meta page may still be in the page
        cache; a full sync makes it durable so WAL segments up to the
        returned index can be released.
        """
        index = self.state[1]
        self._env.sync(True)
        self._durable_index = index
        return index

    # ------------------------------------------------------------- utilities

    def _measure_in_use(self) -> int:
        """Bytes in live B-tree pages (free pages excluded)."""
        with self._env.begin() as txn:
            stats = [txn.stat(db) for db in self._dbs.values()]
            stats.append(self._env.stat())
        pages = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
        return (pages + 2) * stats[-1]["psize"]

    def size(self) -> int:
        """Bytes of the database file in use by LMDB (its high-water mark)."""
        info = self._env.info()
        return (info["last_pgno"] + 1) * self._env.stat()["psize"]

    def size_in_use(self) -> int:
        return self._in_use

    def hash(self, ignore: set[tuple[bytes, bytes]] | None = None) -> int:
        """CRC32C over every bucket's keys and values (one consistent snapshot).

        The backend's own applied-index bookkeeping is ignored by default, so
        two backends with the same content hash alike however they got there.
        """
        ignore = {(META_BUCKET, APPLIED_KEY)} if ignore is None else ignore
        h = 0
        with self._env.begin() as txn:
            for name in sorted(self._dbs):
                h = crc32c.crc32c(name, h)
                for k, v in txn.cursor(db=self._dbs[name]):
                    if (name, k) in ignore:
                        continue
                    h = crc32c.crc32c(v, crc32c.crc32c(k, h))
        return h

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._closing_error = None
            self._cond.notify_all()
        self._thread.join()
        error = self._closing_error
        self._closed = True
        self._env.close()
        os.close(self._lockfd)
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return self._closed
