"""A mount's link to its bucket: the writer lease, publishing metadata, catching up.

``CloudSession.start(state, read_only=..., steal_lease=...)`` runs in the mount
daemon right after the state dir is opened:

* read-write: take the lease ``meta/lease`` in the slow store by CAS (or steal
  it), catch the local metadata up to the bucket's head if another machine
  published since and nothing changed here, then renew the lease every
  ttl/3 and publish metadata every ``cloud.wal_ship_interval_seconds``;
* read-only: no lease; catch up to the latest published state unless this
  state dir holds changes of its own that were never published.

``flush`` and ``snapshot`` on the ctl file publish too (``flush`` waits for it,
``snapshot`` starts it); ``status`` reports what is published and the lease
(versionfs.fs.ctl.basic, through the mount's ``fs.cloud``).

Offline: every bucket operation here runs on background threads and retries
when the store is unreachable; the mount never waits for it except in
``flush``, which is asked to.  A read-write mount whose bucket is unreachable
at mount time still mounts when this state dir was the last holder of the
lease (``seen.LeaseRecord``, a laptop booting offline); the lease thread takes
the lease back by CAS when the bucket answers and publishing resumes if the
bucket's head is still the one this state dir last saw.

Supervision: the two threads (``vfs-lease``, ``vfs-publish``) never end
silently.  A failure is retried with capped exponential backoff (tenacity),
and every failure is a log line (ERROR unless it is the bucket being
unreachable), a ``status`` line and the ``background_errors_total`` metric.
What cannot be retried stops publishing for good, visibly: the lease taken
by another machine, another machine's publish, a rolled-back head.  From then
on ``writable`` is False and ``read_only_reason`` says why and what to do: the
filesystem layer answers writes with EROFS, since nothing written could ever
be published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential_jitter

from versionfs.blob.errors import BlobError, NotFoundError, StoreUnavailableError
from versionfs.bucket import publish
from versionfs.bucket.catchup import fast_forward
from versionfs.bucket.lease import Lease, LeaseError, LeaseHeldError, LeaseLostError
from versionfs.bucket.seen import HeadWatermark, LeaseRecord, SeenHead
from versionfs.common import identity as identitymod
from versionfs.common import metrics
from versionfs.common import state as statemod

log = logging.getLogger(__name__)

# What a failed background attempt may be without being a bug (logged without traceback).
_EXPECTED = (BlobError, OSError, LeaseError, publish.PublishError)
_WHAT_TO_DO = ("this mount keeps what was written here but publishes nothing more and "
               "refuses writes: copy out what you need, unmount it, and clone the "
               "filesystem again (versionfs clone) or mount it --read-only")


class CloudError(statemod.StateError):
    """A mount refused because of the bucket (lease held, diverged state); one line."""


def holder_name(state_dir) -> str:
    return (f"{socket.gethostname()} pid {os.getpid()} ({state_dir}) "
            f"[{statemod.instance_id(state_dir)}]")


def _is_dead_predecessor(holder: str, state_dir) -> bool:
    """True when ``holder`` is an earlier daemon of this very state directory.

    We hold the state dir's flock, so no other daemon of it is alive: its
    lease is stale however long it still has to run.
    """
    return holder.endswith(f"[{statemod.instance_id(state_dir)}]") and \
        holder != holder_name(state_dir)


def _when(ts: float) -> str:
    left = ts - time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
    return f"{stamp} (in {left:.0f}s)" if left > 0 else f"{stamp} (expired)"


class CloudSession:
    """Lease + publisher of one mounted state dir (inert when the slow store has
    no named objects, e.g. a remote store served without them)."""

    def __init__(self, state, read_only: bool):
        self.state = state
        self.read_only = read_only
        self.bucket = statemod.named_objects(state.slow)
        self.kv = publish.bucket_kv(self.bucket) if self.bucket is not None else None
        self.watermark = HeadWatermark(state.path)
        self.lease: Lease | None = None
        self.publisher: publish.Publisher | None = None
        self.errors: dict[str, str | None] = {"lease": None, "publish": None}
        self.stopped: str | None = None       # why publishing stopped for good
        self.offline: str | None = None       # why the lease is not held yet (offline boot)
        self.refused: str | None = None       # read-only mount: a head refused as a rollback
        self._lease_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        cfg = state.config
        self.ship_interval = cfg["cloud.wal_ship_interval_seconds"]
        self.ttl = cfg["cloud.lease_ttl_seconds"]

    @property
    def record_path(self) -> str:
        return str(self.state.layout.root / publish.RECORD_NAME)

    @property
    def writable(self) -> bool:
        """False once nothing written could be published any more (see the module doc)."""
        return self.stopped is None

    @property
    def read_only_reason(self) -> str | None:
        return self.stopped

    @classmethod
    def start(cls, state, *, read_only: bool, steal_lease: bool = False) -> "CloudSession":
        session = cls(state, read_only)
        if session.bucket is None:
            log.warning("the slow store %s keeps no named objects: metadata is not published",
                        state.slow_url)
            return session
        session._seed_watermark()
        if read_only:
            session._catch_up_read_only()
            session._check_identity(repair=False)
        else:
            session._start_writer(steal_lease)
        return session

    def _check_identity(self, repair: bool) -> None:
        """The bucket's versionfs.toml must be this filesystem's, as this state dir
        knows it (common.identity): a missing, damaged, forged or changed one is an
        ERROR naming it; a writer (holding the lease) writes it back."""
        st = self.state
        try:
            try:
                raw = self.bucket.get(identitymod.FILESYSTEM_OBJECT)[0]
                found = identitymod.verify(identitymod.parse(raw, st.slow_url), st.codec,
                                           st.slow_url)
                changed = sorted(k for k in set(found) | set(st.identity)
                                 if found.get(k) != st.identity.get(k))
                problem = (f"{st.slow_url}: {identitymod.FILESYSTEM_OBJECT} differs from this "
                           f"filesystem's identity in {', '.join(changed)}") if changed else None
            except NotFoundError:
                problem = f"{st.slow_url}: {identitymod.FILESYSTEM_OBJECT} is missing"
            except identitymod.IdentityError as exc:
                problem = str(exc)
            if problem is None:
                return
            metrics.background_error("identity")
            if not repair:
                log.error("%s; a read-write mount writes it back", problem)
                return
            self.bucket.put(identitymod.FILESYSTEM_OBJECT, identitymod.encode(st.identity, st.codec))
            log.error("%s; written back from this state dir", problem)
        except (BlobError, OSError) as exc:
            log.warning("could not check %s in the slow store: %s",
                        identitymod.FILESYSTEM_OBJECT, exc)

    def _seed_watermark(self) -> None:
        """A state dir from before rollback protection: what it published is the floor."""
        record = publish.load_record(self.record_path)
        if record and self.watermark.load() is None:
            self.watermark.note(SeenHead(int(record.get("last_index", 0)), 0.0,
                                         record.get("writer", "")))

    def _read_head(self) -> tuple[Any, publish.HeadRecord] | None:
        return publish.read_head(self.kv, self.state.codec)

    def _catch_up_read_only(self) -> None:
        try:
            found = self._read_head()
        except (BlobError, OSError) as exc:
            log.warning("slow store unreachable (%s): mounting the local copy as it is", exc)
            return
        if found is None:
            return
        pair, head = found
        try:
            self._catch_up_to(pair, head)
        except publish.RollbackError as exc:
            self.refused = f"{exc}; mounted this machine's copy as it is"
            log.error(self.refused)
            metrics.background_error("catch-up")
        except (BlobError, OSError) as exc:
            log.warning("catching up with the bucket failed (%s): mounting the local copy "
                        "as it is", exc)

    def _catch_up_to(self, pair, head: publish.HeadRecord) -> None:
        older = self.watermark.older(head.seen())
        if older:
            raise publish.RollbackError(older)
        self.watermark.note(head.seen())
        record = publish.load_record(self.record_path) or {}
        if record.get("etag") == pair.last_index:
            return
        if self.state.meta.last_index > int(record.get("last_index", 0)) and \
                head.writer == record.get("writer"):
            return                       # we wrote the head: local is as new or newer
        if self.state.meta.last_index > int(record.get("last_index", 0)):
            log.warning("this state dir holds metadata changes that were never published; "
                        "mounting it as it is, not the bucket's newer head")
            return
        fast_forward(self.state, self.bucket, pair, head, record, self.watermark)

    # -- taking the lease ------------------------------------------------------------
    def _start_writer(self, steal: bool) -> None:
        st = self.state
        self.lease = Lease(self.kv, publish.LEASE_KEY, holder_name(st.path), self.ttl,
                           codec=st.codec, floor=self._generation_floor)
        self.publisher = self._new_publisher()
        try:
            self._take_lease(steal)
        except LeaseHeldError as e:
            raise CloudError(
                f"{st.slow_url} is mounted read-write by {e.info.holder}; its lease expires "
                f"{_when(e.info.expires)}. Mount with --read-only for the latest published state, "
                f"or with --steal-lease if that machine is gone for good") from None
        except (BlobError, OSError) as exc:
            self._go_offline(exc, steal)
            self._start_threads()
            return
        try:
            self._open_publisher(at_mount=True)
        except (BlobError, OSError) as exc:
            self._go_offline(exc, steal=False)      # the lease is ours: go on offline
        except publish.RollbackError as exc:
            self._release_quietly()
            raise CloudError(f"{exc}; nothing was changed here. Mount --read-only to use this "
                             f"machine's copy; if the bucket was restored on purpose, clone it "
                             f"into a new state dir") from None
        except publish.PublishError as exc:
            self._release_quietly()
            raise CloudError(str(exc)) from None
        except BaseException:
            self._release_quietly()
            raise
        if not self.offline:
            self._check_identity(repair=True)
        self._start_threads()

    def _generation_floor(self) -> int:
        """The newest lease generation this state dir has held or seen (lease.py: replays)."""
        record, seen = LeaseRecord.load(self.state.path), self.watermark.load()
        return max(record.generation if record else 0, seen.generation if seen else 0)

    def _release_quietly(self) -> None:
        try:
            self.lease.release()
        except (BlobError, OSError, LeaseError) as exc:
            log.warning("could not release the writer lease (it expires by itself): %s", exc)

    def _take_lease(self, steal: bool) -> None:
        st = self.state
        try:
            if steal:
                old = self.lease.steal()
                if old is not None:
                    log.warning("stole the writer lease from %s (it expired %s)", old.holder,
                                _when(old.expires))
            else:
                try:
                    self.lease.acquire()
                except LeaseHeldError as e:
                    if not _is_dead_predecessor(e.info.holder, st.path):
                        raise
                    self.lease.steal(only_from=e.info.holder)
                    log.warning("took over the writer lease left by %s, an earlier daemon of "
                                "this state dir that did not unmount cleanly", e.info.holder)
        except LeaseHeldError as e:
            LeaseRecord.record(st.path, e.info.holder, e.info.generation, "lost")
            raise
        if self.lease.overridden:
            metrics.background_error("lease")
        LeaseRecord.record(st.path, self.lease.holder, self.lease.info.generation, "held")

    def _open_publisher(self, at_mount: bool) -> None:
        """Check the bucket's head; at mount a stale copy is fast-forwarded first."""
        try:
            self.publisher.open()
        except publish.StaleStateError:
            if not at_mount:
                raise
            found = self._read_head()
            fast_forward(self.state, self.bucket, found[0], found[1],
                         publish.load_record(self.record_path), self.watermark)
            self.publisher = self._new_publisher()
            self.publisher.open()

    def _go_offline(self, exc: Exception, steal: bool) -> None:
        """The bucket is unreachable at mount: go on offline if this state dir was the
        last lease holder (CloudError otherwise)."""
        st = self.state
        record = LeaseRecord.load(st.path)
        if steal or record is None or not record.last_holder:
            why = ("--steal-lease needs the bucket" if steal else
                   "this state dir is not the last holder of the writer lease, so it cannot "
                   "mount read-write while the bucket is unreachable")
            raise CloudError(f"cannot take the writer lease in {st.slow_url}: {exc}; {why}; "
                             f"mount --read-only to use the local copy") from None
        self.offline = (f"the bucket was unreachable at mount ({exc}); this state dir was the "
                        f"last lease holder, so the mount is read-write and takes the lease "
                        f"back when the bucket answers")
        log.warning("mounting read-write offline: %s", self.offline)

    def _reconnect(self) -> None:
        """Offline boot: take the lease back by CAS and check the head (lease thread)."""
        try:
            with self._lease_lock:
                self._take_lease(False)
        except LeaseHeldError as e:
            self._stop_publishing(f"while this mount was offline, {e.info.holder} took the "
                                  f"writer lease; {_WHAT_TO_DO}")
            return
        try:
            self._open_publisher(at_mount=False)
        except (publish.StaleStateError, publish.DivergedError, publish.RollbackError) as exc:
            with self._lease_lock:
                self._release_quietly()
            todo = ("nothing changed here since: unmount and mount again to catch up with it"
                    if isinstance(exc, publish.StaleStateError) else _WHAT_TO_DO)
            self._stop_publishing(f"{exc}; nothing was overwritten; {todo}")
            return
        self.offline = None
        log.info("the bucket answers again: writer lease taken back, publishing resumes")
        self._wake.set()

    def _new_publisher(self) -> publish.Publisher:
        st = self.state
        return publish.Publisher(st.meta, st.paired, self.bucket, st.codec, self.record_path,
                                 fs_id=st.id, fence=self._fence, watermark=self.watermark,
                                 checkpoint_interval=st.config["cloud.checkpoint_interval_seconds"])

    # -- supervision -------------------------------------------------------------------
    def _start_threads(self) -> None:
        for target, name in ((self._lease_loop, "vfs-lease"), (self._ship_loop, "vfs-publish")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _attempt(self, task: str, fn: Callable[[], None], max_wait: float) -> None:
        """Run ``fn`` until it succeeds, backing off between failures; only stop() ends it."""
        retrying = Retrying(retry=retry_if_exception_type(Exception),
                            wait=wait_exponential_jitter(initial=0.5, max=max_wait, jitter=0.5),
                            stop=stop_when_event_set(self._stop), sleep=self._stop.wait,
                            before_sleep=lambda rs: self._failed(task, rs), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    if not self._stop.is_set():
                        fn()
        except Exception as exc:            # noqa: BLE001 - stopping: the last failure
            log.info("%s stopped while retrying: %s", task, exc)
            return
        self.errors[task] = None

    def _failed(self, task: str, retry_state) -> None:
        exc = retry_state.outcome.exception()
        wait = retry_state.next_action.sleep if retry_state.next_action else 0
        text = f"{type(exc).__name__}: {exc}"
        self.errors[task] = (f"{text} (failed {retry_state.attempt_number} time(s), "
                             f"retrying in {wait:.0f}s)")
        metrics.background_error(task)
        unreachable = isinstance(exc, (StoreUnavailableError, ConnectionError, TimeoutError))
        log.log(logging.WARNING if unreachable else logging.ERROR, "%s failed, retrying in "
                "%.0fs: %s", task, wait, text,       # a traceback once per series, for bugs
                exc_info=retry_state.attempt_number == 1 and not isinstance(exc, _EXPECTED))

    def _stop_publishing(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            metrics.background_error("publish")
            log.error(why)

    # -- lease -------------------------------------------------------------------
    def _fence(self) -> int:
        """Prove by CAS that the lease is still ours, right before the head swings."""
        with self._lease_lock:
            if self.stopped:
                raise publish.PublishError(self.stopped)
            try:
                info = self.lease.renew()
            except LeaseLostError as exc:
                LeaseRecord.record(self.state.path, self.lease.holder, self._generation_floor(),
                                   "lost")
                self._stop_publishing(f"the writer lease was lost ({exc}); {_WHAT_TO_DO}")
                raise publish.PublishError(self.stopped) from None
            return info.generation

    def _lease_loop(self) -> None:
        while not self._stop.wait(min(self.ttl / 3, self.ship_interval) if self.offline
                                  else self.ttl / 3):
            if self.stopped:
                return                      # nothing left to renew; status says why
            self._attempt("lease", self._lease_once, max_wait=max(1.0, self.ttl / 6))

    def _lease_once(self) -> None:
        if self.stopped:
            return
        if self.offline:
            self._reconnect()
            return
        try:
            self._fence()
        except publish.PublishError:
            if not self.stopped:
                raise

    # -- publishing --------------------------------------------------------------
    def _ship_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.ship_interval)
            self._wake.clear()
            if self._stop.is_set() or self.stopped:
                return
            if not self.offline:
                self._attempt("publish", self._ship_once, max_wait=max(30.0, self.ship_interval))

    def _ship_once(self) -> None:
        try:
            self.publish(timeout=self.ship_interval)
        except publish.BlobsNotDurableError as exc:
            log.info("not publishing yet: %s", exc)
        except (publish.DivergedError, publish.RollbackError) as exc:
            self._stop_publishing(f"{exc}; {_WHAT_TO_DO}")
        except publish.PublishError:
            if not self.stopped:
                raise

    def publish(self, timeout: float | None = None) -> bool:
        if self.publisher is None:
            return False
        if self.stopped:
            raise publish.PublishError(self.stopped)
        if self.offline:
            raise publish.PublishError(f"not published: {self.offline}")
        return self.publisher.publish(timeout=timeout)

    def publish_soon(self) -> None:
        self._wake.set()

    def published_floor(self) -> int | None:
        """The oldest metadata index a head record in the bucket covers; None
        when nothing is published here (versionfs.maint.reclaim)."""
        if self.bucket is None:
            return None
        return 0 if self.publisher is None else self.publisher.status.oldest_kept_index

    def uploads_awaited(self):
        """Context manager (``Publisher.uploads_awaited``): yields (index shipped,
        pending blobs awaited) of a running publish, or None when that cannot be known."""
        if self.publisher is None:
            return contextlib.nullcontext((0, frozenset()) if self.bucket is None else None)
        return self.publisher.uploads_awaited()

    # -- reporting -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if self.bucket is None:
            return {"published": "not published (the slow store keeps no metadata)"}
        if self.publisher is None:
            return {"lease": "none (read-only mount)", "catch-up error": self.refused}
        ps = self.publisher.status
        lease = self.lease.info if self.lease is not None else None
        last = ps.last_publish
        if self.offline:
            held = f"not held yet: {self.offline}"
        elif lease is None:
            held = "not held"
        else:
            held = f"held until {_when(lease.expires)}"
        return {
            "published index": ps.published_index,
            "unpublished changes": self.publisher.pending(),
            "last publish": None if last is None else
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
            "publish error": self.stopped or self.errors["publish"] or ps.last_error,
            "lease": held,
            "lease error": self.errors["lease"],
            "writes refused": self.read_only_reason,
        }

    def gauges(self) -> list[tuple[str, str, float]]:
        """For the metrics endpoint: (name, help, value)."""
        if self.publisher is None:
            return []
        return [("unpublished_changes", "metadata changes not yet published to the bucket",
                 self.publisher.pending()),
                ("publishing_stopped", "1 when publishing stopped for good (see status)",
                 1 if self.stopped else 0)]

    def close(self, timeout: float = 60.0) -> None:
        """Final publish (best effort), stop the threads, give the lease back."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=timeout)
        if self.publisher is not None and not self.stopped and not self.offline:
            try:
                self.publish(timeout=timeout)
            except Exception as exc:        # noqa: BLE001 - the journal and WAL keep it all
                log.warning("final publish failed (the next mount publishes it): %s", exc)
        if self.lease is not None:
            with self._lease_lock:
                info = self.lease.info
                self._release_quietly()
                if info is not None and self.lease.info is None and not self.stopped:
                    LeaseRecord.record(self.state.path, info.holder, info.generation, "released")
