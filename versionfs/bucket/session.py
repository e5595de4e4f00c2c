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

Offline: every bucket operation here runs on background threads and only logs
and retries when the store is unreachable; the mount never waits for it except
in ``flush``, which is asked to.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from versionfs.common import state as statemod
from versionfs.blob.errors import BlobError
from versionfs.bucket import publish
from versionfs.bucket.catchup import fast_forward
from versionfs.bucket.lease import Lease, LeaseError, LeaseHeldError, LeaseLostError
from versionfs.bucket.seen import HeadWatermark, SeenHead

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------- session

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
        self.lease_error: str | None = None
        self.stopped: str | None = None       # why publishing stopped for good
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
        else:
            session._start_writer(steal_lease)
        return session

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

    def _start_writer(self, steal: bool) -> None:
        st = self.state
        self.lease = Lease(self.kv, publish.LEASE_KEY, holder_name(st.path), self.ttl)
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
            raise CloudError(
                f"{st.slow_url} is mounted read-write by {e.info.holder}; its lease expires "
                f"{_when(e.info.expires)}. Mount with --read-only for the latest published state, "
                f"or with --steal-lease if that machine is gone for good") from None
        except (BlobError, OSError) as exc:
            raise CloudError(f"cannot take the writer lease in {st.slow_url}: {exc}; "
                             f"mount --read-only to use the local copy") from None
        try:
            self.publisher = self._new_publisher()
            try:
                self.publisher.open()
            except publish.StaleStateError:
                found = self._read_head()
                fast_forward(st, self.bucket, found[0], found[1],
                             publish.load_record(self.record_path), self.watermark)
                self.publisher = self._new_publisher()
                self.publisher.open()
        except publish.RollbackError as exc:
            self.lease.release()
            raise CloudError(f"{exc}; nothing was changed here. Mount --read-only to use this "
                             f"machine's copy; if the bucket was restored on purpose, clone it "
                             f"into a new state dir") from None
        except publish.PublishError as exc:
            self.lease.release()
            raise CloudError(str(exc)) from None
        except BaseException:
            self.lease.release()
            raise
        for target, name in ((self._renew_loop, "vfs-lease"), (self._ship_loop, "vfs-publish")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _new_publisher(self) -> publish.Publisher:
        st = self.state
        return publish.Publisher(st.meta, st.paired, self.bucket, st.codec, self.record_path,
                                 fs_id=st.id, fence=self._fence, watermark=self.watermark,
                                 checkpoint_interval=st.config["cloud.checkpoint_interval_seconds"])

    # -- lease -------------------------------------------------------------------
    def _fence(self) -> int:
        """Prove by CAS that the lease is still ours, right before the head swings."""
        with self._lease_lock:
            if self.stopped:
                raise publish.PublishError(self.stopped)
            try:
                info = self.lease.renew()
            except LeaseLostError as exc:
                self._stop_publishing(f"the writer lease was lost ({exc}); this mount no longer "
                                      f"publishes: unmount it and clone again")
                raise publish.PublishError(self.stopped) from None
            self.lease_error = None
            return info.generation

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._fence()
            except publish.PublishError:
                return
            except (BlobError, OSError, LeaseError) as exc:
                self.lease_error = f"renewing the lease failed, retrying: {exc}"
                log.warning(self.lease_error)

    def _stop_publishing(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            log.error(why)

    # -- publishing --------------------------------------------------------------
    def _ship_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.ship_interval)
            self._wake.clear()
            if self._stop.is_set() or self.stopped:
                return
            self._publish_quietly(timeout=self.ship_interval)

    def _publish_quietly(self, timeout: float | None) -> None:
        try:
            self.publish(timeout=timeout)
        except publish.BlobsNotDurableError as exc:
            log.info("not publishing yet: %s", exc)
        except (publish.DivergedError, publish.RollbackError) as exc:
            self._stop_publishing(str(exc))
        except (publish.PublishError, BlobError, OSError) as exc:
            log.warning("publishing metadata failed, will retry: %s", exc)

    def publish(self, timeout: float | None = None) -> bool:
        if self.publisher is None:
            return False
        if self.stopped:
            raise publish.PublishError(self.stopped)
        return self.publisher.publish(timeout=timeout)

    def publish_soon(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        if self.bucket is None:
            return {"published": "not published (the slow store keeps no metadata)"}
        if self.publisher is None:
            return {"lease": "none (read-only mount)", "catch-up error": self.refused}
        ps = self.publisher.status
        lease = self.lease.info if self.lease is not None else None
        last = ps.last_publish
        return {
            "published index": ps.published_index,
            "unpublished changes": self.publisher.pending(),
            "last publish": None if last is None else
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
            "publish error": self.stopped or ps.last_error,
            "lease": None if lease is None else f"held until {_when(lease.expires)}",
            "lease error": self.lease_error,
        }

    def close(self, timeout: float = 60.0) -> None:
        """Final publish (best effort), stop the threads, give the lease back."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=timeout)
        if self.publisher is not None and not self.stopped:
            self._publish_quietly(timeout=timeout)
        if self.lease is not None:
            with self._lease_lock:
                try:
                    self.lease.release()
                except (BlobError, OSError, LeaseError) as exc:
                    log.warning("could not release the writer lease (it expires by itself): %s", exc)
