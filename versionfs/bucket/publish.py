"""Publishing the metadata to the slow store, and reading it back on a new machine.

What the bucket holds (names relative to the slow store's root/prefix)::

    meta/head                        the head record (a KV key: changed only by CAS)
    meta/heads/<random>              copies of the newest head records, each written
                                     before the head swings (a torn head falls back)
    meta/checkpoints/<random>/part-NNNNNN  a checkpoint: the MVCC store's backup
                                     stream (``backup.BackupWriter``) cut into parts
    meta/wal/<random>                WAL entries, one msgpack list of [index, entry]

Every object is zstd-compressed and then ``Codec.seal``-ed with its own name as
context: encrypted filesystems get AEAD (nothing readable, no object can be
swapped for another), plain ones still get an integrity digest.  Names are
128-bit random ids, never used twice: they say nothing about how many
metadata changes there were or in which order (the indexes are inside the
sealed bodies and the head record), and an object replayed under another
name fails its seal.  The head record names the newest checkpoint, the index
it covers at least, the WAL objects after it with their index ranges and
sizes, and the head copies; a new machine restores the checkpoint and
replays them.  Nothing is decompressed beyond the size the (sealed) head
record or the format allows (a decompression bomb in the bucket is an
error naming the object, not an exhausted memory).

Order, the one invariant that matters (DESIGN: nothing published refers to a
blob that is not durable): the filesystem puts a chunk into the Paired store
*before* it writes the metadata entry naming it, and Paired marks a key
pending before it reaches the fast store.  So a publish first notes the last
WAL index ``T`` (after taking the checkpoint copy, if any) and fsyncs the
local log up to it (the bucket must never be ahead of what a power cut leaves
here), then the keys
pending at that moment, waits until exactly those are durable on the slow
store (blobs), uploads the checkpoint and WAL objects (metadata), and only
then swings the head by compare-and-swap (head).  A crash anywhere before the
swing leaves the old head, which is complete; objects uploaded meanwhile are
unreferenced and harmless.

Who may publish: the head's CAS is made against the head this state dir last
saw (kept in ``STATE_DIR/published.json``).  If someone else published since,
the CAS fails and nothing is overwritten: this copy is stale, and
``Publisher.open`` says whether it can simply be fast-forwarded (no local
changes since) or has diverged (local changes, and newer ones in the bucket).
The single-writer lease (``lease.py``) keeps that from happening in normal
use; the CAS is what keeps it safe when clocks or networks misbehave.  And
no head older than the newest this state dir has seen or published is ever
accepted, as the base of a publish or as metadata to catch up with
(``seen.HeadWatermark``: rollback protection, ``RollbackError``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack
import zstandard

from versionfs.blob.codec import decompress_at_most
from versionfs.blob.errors import BlobError, NotFoundError
from versionfs.bucket.seen import HeadWatermark, SeenHead, iso
from versionfs.meta.backup import BackupReader, BackupWriter, framed_copy, verified_stream
from versionfs.meta.kv import (BucketKV, DirectoryKV, ForeignObjectError, KeyExistsError, KeyModifiedError,
                 KeyNotFoundError, KVPair, S3KV)
from versionfs.meta.mvcc.store import MVCCStore
from versionfs.meta.wal.decode import read_entries
from versionfs.meta.wal.errors import IndexNotFoundError
from versionfs.meta.wal.record import Entry

__all__ = ["Publisher", "HeadRecord", "PublishError", "NothingPublishedError",
           "StaleStateError", "DivergedError", "BlobsNotDurableError", "RollbackError", "bucket_kv",
           "read_head", "restore_meta", "HEAD_KEY", "LEASE_KEY", "RECORD_NAME"]

log = logging.getLogger(__name__)

HEAD_KEY = "meta/head"
LEASE_KEY = "meta/lease"
CHECKPOINT_PREFIX = "meta/checkpoints/"
WAL_PREFIX = "meta/wal/"
HEAD_COPY_PREFIX = "meta/heads/"
HEAD_COPIES_KEPT = 3
RECORD_NAME = "published.json"
HEAD_FORMAT = 1
CHECKPOINT_KIND = "versionfs.mvcc"
PART_BYTES = 32 << 20            # checkpoint part size: bounded memory per upload
WAL_OBJECT_BYTES = 16 << 20      # most entry bytes per shipped WAL object
MAX_WAL_OBJECTS = 256            # more than this since the checkpoint: take a new one
MAX_HEAD_BYTES = 16 << 20        # most a head copy may decompress to (a few KiB in practice)


class PublishError(Exception):
    """Publishing or reading published metadata failed; ``str()`` is for the user."""


class NothingPublishedError(PublishError):
    """The bucket holds no head record yet."""


class StaleStateError(PublishError):
    """Someone published newer metadata; this state dir has no local changes since
    its last publish, so it can be fast-forwarded to the bucket's head."""


class DivergedError(PublishError):
    """Someone published newer metadata *and* this state dir has unpublished changes."""


class BlobsNotDurableError(PublishError):
    """The blobs the metadata refers to are not all on the slow store yet (offline?)."""


class RollbackError(PublishError):
    """The bucket's head is older than one this state dir has seen or published."""


# --------------------------------------------------------------------- records

@dataclass
class HeadRecord:
    """What ``meta/head`` says: checkpoint, the WAL objects after it, who wrote it."""

    fs: str
    writer: str
    checkpoint: dict              # {"name", "parts", "index", "bytes"}
    wal: list[dict]               # [{"name", "first", "last", "bytes"}] ascending
    last_index: int
    time: float
    generation: int = 0           # the writer's lease generation (fencing token)
    revision: int = 0
    snapshots: int = 0
    retired: list[str] = field(default_factory=list)   # objects to delete at the next checkpoint
    copies: list[str] = field(default_factory=list)    # meta/heads/ objects kept, newest last
    copy_indexes: list[int] = field(default_factory=list)  # their last_index (0: not known)

    def oldest_kept_index(self) -> int:
        """The oldest metadata index a head copy the bucket keeps covers (0: unknown)."""
        known = self.copy_indexes if len(self.copy_indexes) == len(self.copies) else []
        return min(known, default=0)

    def encode(self) -> bytes:
        doc = {"format": HEAD_FORMAT, **self.__dict__}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "HeadRecord":
        try:
            doc = json.loads(raw)
            if doc.pop("format") != HEAD_FORMAT:
                raise ValueError("unknown format")
            return cls(**doc)
        except (ValueError, TypeError, KeyError) as exc:
            raise PublishError(f"the bucket's {HEAD_KEY} is not a head record this versionfs "
                               f"can read ({exc})") from None

    def seen(self) -> SeenHead:
        return SeenHead(self.last_index, self.time, self.writer, self.generation)

    def objects(self) -> list[str]:
        names = [f"{self.checkpoint['name']}/part-{i:06d}" for i in range(self.checkpoint["parts"])]
        return names + [w["name"] for w in self.wal]


def bucket_kv(bucket: Any) -> BucketKV:
    """A KV store with CAS on the slow store's named objects (for the head and the lease)."""
    from versionfs.blob.directory import DirectoryBucket
    return DirectoryKV(bucket) if isinstance(bucket, DirectoryBucket) else S3KV(bucket)


def _pack(codec, name: str, data: bytes) -> bytes:
    return codec.seal(zstandard.ZstdCompressor(level=3).compress(data), name.encode())


def _new_name(prefix: str) -> str:
    """A name no object had before, revealing nothing (module doc)."""
    return prefix + secrets.token_hex(16)


def _unpack(codec, name: str, sealed: bytes, limit: int) -> bytes:
    """``sealed`` opened (checked against ``name``) and decompressed to at most ``limit`` bytes."""
    try:
        data = decompress_at_most(codec.open(sealed, name.encode()), limit)
    except zstandard.ZstdError as exc:
        raise PublishError(f"published object {name}: bad compressed data ({exc})") from None
    if data is None:
        raise PublishError(f"published object {name} decompresses to more than {limit} bytes, "
                           f"more than versionfs wrote there (a decompression bomb?)")
    return data


def read_head(kv: BucketKV, codec) -> tuple[KVPair, HeadRecord] | None:
    """The bucket's head (its KV pair, for CAS, and the record), or None if none yet.

    A head object that does not decode (seen with SeaweedFS: a writer killed
    during a conditional PUT can leave an empty object) falls back to the
    newest readable copy in ``meta/heads/`` (newest by the index and time
    inside it), which every publish writes *before* it swings the head, so it
    names only durable objects; the returned pair carries the damaged
    object's etag, so the next publish replaces it by CAS.
    """
    try:
        pair = kv.get(HEAD_KEY)
        return pair, HeadRecord.decode(codec.open(pair.value, HEAD_KEY.encode()))
    except KeyNotFoundError:
        return None
    except (ForeignObjectError, BlobError, PublishError) as exc:
        damage = exc
    try:
        _body, etag = kv.bucket.get(HEAD_KEY)
    except NotFoundError:
        return None
    copies = []
    for name in kv.bucket.list(HEAD_COPY_PREFIX):
        try:
            copies.append((HeadRecord.decode(_unpack(codec, name, kv.bucket.get(name)[0],
                                                     MAX_HEAD_BYTES)), name))
        except (BlobError, PublishError, NotFoundError):
            continue
    if copies:
        record, name = max(copies, key=lambda c: (c[0].last_index, c[0].time))
        log.warning("the head record is damaged (%s); using its copy %s", damage, name)
        return KVPair(HEAD_KEY, b"", etag), record
    raise PublishError(f"the bucket's {HEAD_KEY} is damaged ({damage}) and no copy of it "
                       f"in {HEAD_COPY_PREFIX} is readable")


# ------------------------------------------------------------ local record

def load_record(path: str) -> dict | None:
    """What this state dir last published: {"writer", "etag", "last_index"}."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PublishError(f"{path} is damaged ({exc}); clone the filesystem again") from None


def save_record(path: str, record: dict) -> None:
    from versionfs.blob.files import atomic_write
    atomic_write(path, json.dumps(record, sort_keys=True).encode())


# -------------------------------------------------------------------- publisher

@dataclass
class PublishStatus:
    published_index: int = 0
    # The oldest index a head record still in the bucket covers (the head and
    # its kept copies): a clone may restore any of them, so a chunk superseded
    # later than this is still needed there (versionfs.maint.reclaim).
    oldest_kept_index: int = 0
    last_publish: float | None = None
    last_error: str | None = None


class Publisher:
    """Ships one state dir's metadata to its slow store (see the module docstring).

    ``fence()`` is called right before the head swings; it must raise if this
    machine no longer holds the writer lease (it renews the lease by CAS, so a
    lease that lapsed while offline but that nobody took is still ours).
    """

    def __init__(self, meta: MVCCStore, paired, bucket, codec, record_path: str, *,
                 fs_id: str, fence: Callable[[], int] = lambda: 0,
                 checkpoint_interval: float = 3600.0, clock: Callable[[], float] = time.time,
                 watermark: HeadWatermark | None = None):
        self.meta = meta
        self.paired = paired
        self.bucket = bucket
        self.kv = bucket_kv(bucket)
        self.codec = codec
        self.record_path = record_path
        self.fs_id = fs_id
        self.fence = fence
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock
        self.watermark = watermark
        self.status = PublishStatus()
        self._lock = threading.Lock()
        # Held from choosing the WAL index to ship until the pending blobs it
        # needs are listed in _awaited (until the publish ends).
        self._pins = threading.Lock()
        self._awaited: tuple[int, frozenset] = (0, frozenset())
        self._head: tuple[KVPair, HeadRecord] | None = None
        self._writer = ""
        self._opened = False

    # -- start-up ------------------------------------------------------------
    def open(self) -> None:
        """Check that this state dir may publish on top of the bucket's head.

        ``StaleStateError`` when someone published since and nothing changed
        here (the caller fast-forwards with ``restore_meta``),
        ``DivergedError`` when both changed, ``RollbackError`` when the head
        is older than one this state dir has seen or published.
        """
        record = load_record(self.record_path) or {}
        if not record.get("writer"):
            # Saved before any head names it: a power cut right after the first
            # swing, before the record below, must still find that head ours.
            record = {**record, "writer": uuid.uuid4().hex}
            save_record(self.record_path, record)
        self._writer = record["writer"]
        head = read_head(self.kv, self.codec)
        published = int(record.get("last_index", 0))
        if head is not None:
            pair, rec = head
            if rec.fs != self.fs_id:
                raise PublishError(f"the slow store holds filesystem {rec.fs}, not {self.fs_id}")
            if self.watermark is not None:
                older = self.watermark.older(rec.seen())
                if older:
                    raise RollbackError(older)
                self.watermark.note(rec.seen())
            ours = pair.last_index == record.get("etag") or rec.writer == self._writer
            if not ours:
                local = self.meta.last_index
                if local > published:
                    raise DivergedError(
                        f"this state dir has {local - published} unpublished metadata change(s), "
                        f"and another machine published newer metadata (index {rec.last_index}, "
                        f"{iso(rec.time)}); mount it --read-only to copy your changes out, then "
                        f"clone the filesystem again (versionfs clone)")
                raise StaleStateError(
                    f"another machine published newer metadata (index {rec.last_index}, "
                    f"{iso(rec.time)})")
            if rec.last_index > self.meta.last_index:
                raise DivergedError(
                    f"the bucket's metadata (index {rec.last_index}) is ahead of this state dir "
                    f"(index {self.meta.last_index}); clone the filesystem again")
            published = rec.last_index
        self._head = head
        self.status.published_index = published
        self.status.oldest_kept_index = head[1].oldest_kept_index() if head else 0
        self._opened = True

    @contextlib.contextmanager
    def uploads_awaited(self):
        """While held, no publish picks the metadata it ships; yields (the WAL
        index the running publish ships, the blobs it waits for): the only
        pending blobs whose upload a published head may still need
        (versionfs.maint.reclaim)."""
        with self._pins:
            yield self._awaited

    # -- publishing ------------------------------------------------------------
    def pending(self) -> int:
        """Metadata entries written here and not yet published."""
        return max(0, self.meta.last_index - self.status.published_index)

    def publish(self, *, checkpoint: bool = False, timeout: float | None = None) -> bool:
        """Blobs, then metadata, then head.  False when there was nothing to publish.

        ``BlobsNotDurableError`` if the blobs do not reach the slow store within
        ``timeout``; slow store errors propagate.  Either way the bucket keeps
        its previous, complete head.
        """
        if not self._opened:
            raise PublishError("Publisher.open() must succeed before publishing")
        with self._lock:
            try:
                done = self._publish(checkpoint, timeout)
            except Exception as exc:
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                with self._pins:
                    self._awaited = (0, frozenset())
            self.status.last_error = None
            return done

    def _checkpoint_due(self, head: HeadRecord | None) -> bool:
        if head is None or len(head.wal) >= MAX_WAL_OBJECTS:
            return True
        return self.clock() - head.checkpoint.get("time", 0) >= self.checkpoint_interval

    def _publish(self, checkpoint: bool, timeout: float | None) -> bool:
        prev = self._head
        head = prev[1] if prev else None
        shipped = head.last_index if head else 0
        checkpoint = checkpoint or self._checkpoint_due(head)
        if not checkpoint and self.meta.last_index == shipped:
            return False
        with tempfile.TemporaryFile(dir=self.meta.dir) as copy:
            ckpt_index = 0
            if checkpoint:
                with BackupWriter(copy, CHECKPOINT_KIND, {"fs": self.fs_id}) as w:
                    ckpt_index = self.meta.backup_to(framed_copy(w))
            with self._pins:
                target = self.meta.last_index
                # 1. Blobs: the keys pending now include every chunk those entries name.
                keys = self.paired.pending_keys() if self.paired is not None else []
                self._awaited = (target, frozenset(keys))
            # Never publish what this state dir could still lose: entries are
            # fsynced at the next LMDB commit, and a power cut before it would
            # leave the bucket ahead of the local copy (a mount refusing for good).
            self.meta.sync()
            try:
                entries = read_entries(self.meta.wal_dir,
                                       ckpt_index + 1 if checkpoint else shipped + 1, target)
            except IndexNotFoundError:
                if checkpoint:
                    raise
                # The local log no longer holds what follows the last publish
                # (released after a long time offline): a checkpoint covers it.
                return self._publish(True, timeout)
            if keys and not self.paired.wait_durable(keys, timeout):
                raise BlobsNotDurableError(
                    f"{sum(self.paired.is_pending(k) for k in keys)} blob(s) the metadata refers "
                    f"to are not on the slow store yet; metadata stays unpublished until they are")
            # 2. Metadata, under names no earlier publish used (random ids), so
            # deleting a retired chain can never hit an object still referenced.
            uploaded: list[str] = []
            try:
                if checkpoint:
                    copy.seek(0)
                    ckpt, wal = self._upload_checkpoint(copy, ckpt_index, uploaded), []
                    retired, delete_after = (head.objects(), head.retired) if head else ([], [])
                else:
                    ckpt, wal = dict(head.checkpoint), list(head.wal)
                    retired, delete_after = list(head.retired), []
                wal += self._upload_wal(entries, uploaded)
                # 3. Head, by CAS, only while we still hold the writer lease.
                new = HeadRecord(fs=self.fs_id, writer=self._writer, checkpoint=ckpt, wal=wal,
                                 last_index=target, time=self.clock(), generation=self.fence(),
                                 revision=self.meta.head, snapshots=len(self.meta.revisions()),
                                 retired=retired)
                copy_name = _new_name(HEAD_COPY_PREFIX)
                kept = head.copies[-(HEAD_COPIES_KEPT - 1):] if head else []
                known = dict(zip(head.copies, head.copy_indexes)) if head else {}
                new.copies, new.copy_indexes = kept + [copy_name], [known.get(n, 0) for n in kept] + [target]
                self.bucket.put(copy_name, _pack(self.codec, copy_name, new.encode()))
                uploaded.append(copy_name)
                pair = self._swing(prev, new)
            except BaseException:
                self._forget(uploaded)
                raise
        self._head = (pair, new)
        save_record(self.record_path, {"writer": self._writer, "etag": pair.last_index,
                                       "last_index": target})
        if self.watermark is not None:
            self.watermark.note(new.seen())
        self.status.published_index = target
        self.status.last_publish = new.time
        # The chain before the previous checkpoint: a clone that read an older
        # head has had a whole checkpoint interval to fetch it.
        self._forget(delete_after)
        self._forget([n for n in self.bucket.list(HEAD_COPY_PREFIX) if n not in new.copies])
        self.status.oldest_kept_index = new.oldest_kept_index()
        return True

    def _upload_checkpoint(self, copy, index: int, uploaded: list[str]) -> dict:
        name = _new_name(CHECKPOINT_PREFIX)
        parts = total = 0
        while True:
            data = copy.read(PART_BYTES)
            if not data and parts:
                break
            part = f"{name}/part-{parts:06d}"
            self.bucket.put(part, _pack(self.codec, part, data))
            uploaded.append(part)
            parts += 1
            total += len(data)
            if len(data) < PART_BYTES:
                break
        return {"name": name, "parts": parts, "index": index, "bytes": total, "time": self.clock()}

    def _upload_wal(self, entries: list[Entry], uploaded: list[str]) -> list[dict]:
        out, batch, size = [], [], 0
        for e in entries + [None]:
            if e is not None:
                batch.append(e)
                size += len(e.data) + 16
            if batch and (e is None or size >= WAL_OBJECT_BYTES):
                first, last = batch[0].index, batch[-1].index
                name = _new_name(WAL_PREFIX)
                raw = msgpack.packb([[x.index, x.data] for x in batch])
                self.bucket.put(name, _pack(self.codec, name, raw))
                uploaded.append(name)
                out.append({"name": name, "first": first, "last": last, "bytes": len(raw)})
                batch, size = [], 0
        return out

    def _swing(self, prev: tuple[KVPair, HeadRecord] | None, new: HeadRecord) -> KVPair:
        sealed = self.codec.seal(new.encode(), HEAD_KEY.encode())
        try:
            return self.kv.atomic_put(HEAD_KEY, sealed, prev[0] if prev else None)
        except (KeyModifiedError, KeyExistsError, KeyNotFoundError):
            now = read_head(self.kv, self.codec)
            if now is None and prev is not None:
                self._head = None       # the next publish starts a whole new chain, by create
                raise PublishError(f"the bucket's {HEAD_KEY} was deleted behind this mount (by "
                                   f"whoever can write the bucket); the next publish writes it "
                                   f"again, with a full checkpoint") from None
            who = f"writer {now[1].writer[:12]} at {iso(now[1].time)}" if now else "nobody (deleted)"
            raise DivergedError(f"the bucket's head record changed behind this mount (now: {who}); "
                                f"nothing was overwritten; this mount stops publishing") from None

    def _forget(self, names: list[str]) -> None:
        for name in names:
            try:
                self.bucket.delete(name)
            except (BlobError, OSError) as exc:     # unreferenced: only costs space
                log.info("could not delete unreferenced %s: %s", name, exc)


# ----------------------------------------------------------------- restoring

def restore_meta(bucket, codec, dirpath: str, head: HeadRecord,
                 progress: Callable[[int], None] | None = None) -> None:
    """Build a metadata store in the new directory ``dirpath`` from ``head``.

    Downloads the checkpoint, restores it, appends the WAL objects after it,
    then opens the store once so the replay happens (and is checked) here,
    and checks that it ends exactly at the head's index.
    ``progress(nbytes)`` is called as published bytes arrive.
    """
    entries: list[Entry] = []
    want = head.checkpoint["index"] + 1
    for w in head.wal:
        raw = _unpack(codec, w["name"], _get(bucket, w["name"]), w["bytes"])
        if len(raw) != w["bytes"]:
            raise PublishError(f"published WAL object {w['name']} holds {len(raw)} bytes, "
                               f"the head record says {w['bytes']}")
        if progress:
            progress(len(raw))
        try:
            batch = msgpack.unpackb(raw)
            span = (batch[0][0], batch[-1][0])
        except (ValueError, TypeError, IndexError, KeyError):
            span = None
        if span != (w["first"], w["last"]):
            raise PublishError(f"published WAL object {w['name']} does not hold the entries "
                               f"{w['first']}..{w['last']} the head record names")
        for index, data in batch:
            if index < want:
                continue
            if index != want:
                raise PublishError(f"published WAL object {w['name']} skips from {want - 1} "
                                   f"to {index}")
            entries.append(Entry(index, data))
            want += 1
    if want - 1 < head.last_index:
        raise PublishError(f"published WAL ends at {want - 1}, the head says {head.last_index}")
    stream = _CheckpointStream(bucket, codec, head.checkpoint, progress)
    reader = BackupReader(stream, CHECKPOINT_KIND)
    MVCCStore.restore(dirpath, verified_stream(reader), entries)
    restored = MVCCStore.open(dirpath)
    try:
        got = restored.last_index
    finally:
        restored.close()
    if got != head.last_index:
        raise PublishError(f"the metadata restored from the bucket ends at index {got}, "
                           f"its head record says {head.last_index}")


def _get(bucket, name: str) -> bytes:
    try:
        return bucket.get(name)[0]
    except NotFoundError:
        raise PublishError(f"published object {name} is missing from the bucket (deleted by a "
                           f"newer publish? try again)") from None


class _CheckpointStream(io.RawIOBase):
    """The checkpoint's parts, fetched one at a time, as one readable stream."""

    def __init__(self, bucket, codec, ckpt: dict, progress):
        self._names: Iterator[str] = iter(f"{ckpt['name']}/part-{i:06d}" for i in range(ckpt["parts"]))
        self._bucket, self._codec, self._progress = bucket, codec, progress
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            name = next(self._names, None)
            if name is None:
                return 0
            data = _unpack(self._codec, name, _get(self._bucket, name), PART_BYTES)
            if self._progress:
                self._progress(len(data))
            self._buf = memoryview(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

