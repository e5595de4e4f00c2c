"""A small key/value store with compare-and-swap (seed 001, libkv's ``Store``).

The filesystem keeps two records this way: its *head record* (which checkpoint
and WAL segment are current) and its *single-writer lease*.  Both must be
changed only by compare-and-swap, whether they live in a local LMDB file, in an
S3 bucket or in a ``file://`` slow store, so one interface serves all three:

* :class:`LMDBKV` — a local LMDB file.  A CAS is one LMDB write transaction,
  and LMDB serialises write transactions across threads *and* processes, so it
  is atomic for every process sharing the file.
* :class:`S3KV` — a bucket through the blob layer's ``S3Bucket``.  Create is
  ``PUT`` with ``If-None-Match: *``, swap is ``PUT`` with ``If-Match: <etag>``,
  atomic delete is ``DELETE`` with ``If-Match: <etag>``.
* :class:`DirectoryKV` — the same named-object protocol over the blob layer's
  ``DirectoryBucket`` (the ``file://`` slow store).

``KVPair.last_index`` is an opaque version token: pass back the pair you read
and the store refuses the write if anyone changed the key since.  On LMDB it is
an integer drawn from one store-wide sequence (so a key that is deleted and
created again never reuses an index: no ABA); on buckets it is the object's
ETag, and every write embeds a fresh random nonce so that writing the same
bytes twice still yields a new ETag (again no ABA — S3 ETags are content MD5s).

Keys are non-empty ``str``; values are ``bytes``.  ``list(prefix)`` returns an
empty list when nothing matches (libkv returns ``ErrKeyNotFound``; an empty
list is the Python idiom).
"""

from __future__ import annotations

import abc
import os
import secrets
import struct
from dataclasses import dataclass
from typing import Union

import lmdb

from .lmdb_env import open_shared, release_shared


class KVError(Exception):
    """Base class of every KV store error."""


class KeyModifiedError(KVError):
    """An atomic operation lost: the key changed since ``previous`` was read."""


class KeyExistsError(KVError):
    """``atomic_put(..., previous=None)`` found the key already present."""


class KeyNotFoundError(KVError, KeyError):
    """The key is not in the store."""

    __str__ = Exception.__str__  # KeyError would quote the message


class PreviousNotSpecifiedError(KVError, ValueError):
    """``atomic_delete`` needs the pair the caller read; ``None`` was given."""


class BackendNotSupportedError(KVError, ValueError):
    """``open_kv`` was given a URL scheme no KV backend serves."""


class KVStoreFullError(KVError):
    """The store has no room for the write; nothing was changed."""


class InvalidKeyError(KVError, ValueError):
    """A key that no backend can store (empty, not ``str``, too long)."""


class ForeignObjectError(KVError):
    """A bucket object under the KV prefix was not written by this KV store;
    ``pair`` holds its raw body and etag, so a caller can still replace it by CAS."""

    def __init__(self, message: str, pair: "KVPair | None" = None):
        super().__init__(message)
        self.pair = pair


LastIndex = Union[int, str]


@dataclass(frozen=True)
class KVPair:
    """One key, its value and the opaque version token of that value."""

    key: str
    value: bytes
    last_index: LastIndex


def check_key(key: str, max_bytes: int) -> bytes:
    """Return ``key`` encoded, or raise :class:`InvalidKeyError` saying why."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"KV keys are str, got {type(key).__name__}: {key!r}")
    raw = key.encode("utf-8")
    if not raw:
        raise InvalidKeyError("KV key is empty")
    if len(raw) > max_bytes:
        raise InvalidKeyError(f"KV key is {len(raw)} bytes, the limit is {max_bytes}: {key[:60]!r}...")
    return raw


def check_value(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"KV values are bytes, got {type(value).__name__}")
    return bytes(value)


class KVStore(abc.ABC):
    """libkv's ``Store``: plain and compare-and-swap operations on single keys."""

    @abc.abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Set ``key`` to ``value`` unconditionally."""

    @abc.abstractmethod
    def get(self, key: str) -> KVPair:
        """Return the pair at ``key``; :class:`KeyNotFoundError` if absent."""

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except KeyNotFoundError:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str) -> list[KVPair]:
        """Every pair whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        """Compare-and-swap.

        ``previous=None`` creates the key and fails with :class:`KeyExistsError`
        if it exists.  Otherwise the write happens only if the key still holds
        ``previous.last_index``: :class:`KeyModifiedError` if it changed,
        :class:`KeyNotFoundError` if it was deleted.  Returns the new pair.
        """

    @abc.abstractmethod
    def atomic_delete(self, key: str, previous: KVPair | None) -> None:
        """Delete ``key`` only if it still holds ``previous.last_index``.

        :class:`PreviousNotSpecifiedError` if ``previous`` is None,
        :class:`KeyNotFoundError` if absent, :class:`KeyModifiedError` if changed.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key`` whatever its version; deleting an absent key is fine."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def require_previous(previous: KVPair | None, key: str) -> KVPair:
    if previous is None:
        raise PreviousNotSpecifiedError(
            f"atomic_delete({key!r}) needs the pair previously read (got None)")
    return previous


# --------------------------------------------------------------------------- LMDB

_INDEX = struct.Struct(">Q")
_SEQ_KEY = b"sequence"


class LMDBKV(KVStore):
    """KV store in an LMDB directory, safe across threads and processes.

    The file holds two named databases: ``kv`` (key -> 8-byte big-endian index
    followed by the value) and ``kvmeta`` (the store-wide index sequence).
    Every commit is fsynced: these records are few and must survive power loss
    on their own, without a WAL in front of them.
    """

    MAX_KEY_BYTES = 511  # LMDB's compiled-in key limit

    def __init__(self, path: str | os.PathLike, map_size: int = 256 << 20):
        self.path = os.fspath(path)
        self._env = open_shared(self.path, map_size=map_size, max_dbs=8)
        self._db = self._env.open_db(b"kv")
        self._meta = self._env.open_db(b"kvmeta")
        self._closed = False

    # -- helpers
    def _txn(self, write: bool = False) -> lmdb.Transaction:
        if self._closed:
            raise KVError(f"LMDBKV at {self.path} is closed")
        return self._env.begin(write=write)

    def _next_index(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_SEQ_KEY, db=self._meta)
        index = (_INDEX.unpack(raw)[0] if raw else 0) + 1
        txn.put(_SEQ_KEY, _INDEX.pack(index), db=self._meta)
        return index

    @staticmethod
    def _pair(key: str, raw: bytes) -> KVPair:
        return KVPair(key, bytes(raw[_INDEX.size:]), _INDEX.unpack_from(raw)[0])

    def _write(self, fn):
        """Run ``fn(txn)`` in one write transaction; map-full is a clear error."""
        try:
            with self._txn(write=True) as txn:
                return fn(txn)
        except lmdb.MapFullError as exc:
            raise KVStoreFullError(
                f"LMDB KV store {self.path} is full (map size "
                f"{self._env.info()['map_size']} bytes); the write was not applied") from exc

    # -- KVStore
    def put(self, key: str, value: bytes) -> None:
        raw_key, value = check_key(key, self.MAX_KEY_BYTES), check_value(value)
        self._write(lambda txn: txn.put(raw_key, _INDEX.pack(self._next_index(txn)) + value, db=self._db))

    def get(self, key: str) -> KVPair:
        raw_key = check_key(key, self.MAX_KEY_BYTES)
        with self._txn() as txn:
            raw = txn.get(raw_key, db=self._db)
            if raw is None:
                raise KeyNotFoundError(f"key {key!r} not found in {self.path}")
            return self._pair(key, raw)

    def exists(self, key: str) -> bool:
        raw_key = check_key(key, self.MAX_KEY_BYTES)
        with self._txn() as txn:
            return txn.get(raw_key, db=self._db) is not None

    def list(self, prefix: str) -> list[KVPair]:
        raw_prefix = prefix.encode("utf-8")
        out = []
        with self._txn() as txn:
            cursor = txn.cursor(db=self._db)
            if cursor.set_range(raw_prefix):
                for raw_key, raw in cursor:
                    if not raw_key.startswith(raw_prefix):
                        break
                    out.append(self._pair(raw_key.decode("utf-8"), raw))
        return out

    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        raw_key, value = check_key(key, self.MAX_KEY_BYTES), check_value(value)

        def swap(txn: lmdb.Transaction) -> KVPair:
            current = txn.get(raw_key, db=self._db)
            check_previous(key, current and _INDEX.unpack_from(current)[0], previous)
            index = self._next_index(txn)
            txn.put(raw_key, _INDEX.pack(index) + value, db=self._db)
            return KVPair(key, value, index)

        return self._write(swap)

    def atomic_delete(self, key: str, previous: KVPair | None) -> None:
        raw_key = check_key(key, self.MAX_KEY_BYTES)
        previous = require_previous(previous, key)

        def remove(txn: lmdb.Transaction) -> None:
            current = txn.get(raw_key, db=self._db)
            check_previous(key, current and _INDEX.unpack_from(current)[0], previous)
            txn.delete(raw_key, db=self._db)

        self._write(remove)

    def delete(self, key: str) -> None:
        raw_key = check_key(key, self.MAX_KEY_BYTES)
        self._write(lambda txn: txn.delete(raw_key, db=self._db))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release_shared(self._env)


def check_previous(key: str, current_index: LastIndex | None, previous: KVPair | None) -> None:
    """The libkv CAS rule, given the key's current index (None = absent)."""
    if previous is None:
        if current_index is not None:
            raise KeyExistsError(f"key {key!r} already exists (create-only atomic_put)")
        return
    if current_index is None:
        raise KeyNotFoundError(f"key {key!r} no longer exists (it was deleted since it was read)")
    if current_index != previous.last_index:
        raise KeyModifiedError(
            f"key {key!r} was modified: expected version {previous.last_index!r}, "
            f"found {current_index!r}")


# ------------------------------------------------------------------ object buckets

_MAGIC = b"vkv\x01"
_NONCE_BYTES = 16


class BucketKV(KVStore):
    """KV store over a named-object bucket with conditional writes.

    ``bucket`` is anything with the blob layer's ``S3Bucket`` API:
    ``get(name) -> (bytes, etag)``, ``put``, ``put_if_absent -> etag``,
    ``put_if_match(name, data, etag) -> etag``, ``delete_if_match``,
    ``delete``, ``list(prefix)``, raising the blob layer's ``NotFoundError`` /
    ``PreconditionFailedError``.  Each key is the object ``prefix + key``; its
    body is ``b"vkv\\x01"``, a 16-byte random nonce, then the value.
    """

    MAX_KEY_BYTES = 900  # S3 object names stop at 1024 bytes, leave room for the prefix

    def __init__(self, bucket, prefix: str = ""):
        from versionfs.blob.errors import NotFoundError, PreconditionFailedError

        self.bucket = bucket
        self.prefix = prefix
        self._not_found = NotFoundError
        self._precondition = PreconditionFailedError

    def _name(self, key: str) -> str:
        check_key(key, self.MAX_KEY_BYTES)
        if any(part in ("", ".", "..") or part.startswith(".") for part in key.split("/")):
            # Object stores on directories map "/" to directories; keep keys
            # portable to every bucket kind.
            raise InvalidKeyError(
                f"KV key {key!r} has an empty or dot-leading path segment")
        return self.prefix + key

    @staticmethod
    def _body(value: bytes) -> bytes:
        return _MAGIC + secrets.token_bytes(_NONCE_BYTES) + check_value(value)

    def _pair(self, key: str, body: bytes, etag: str) -> KVPair:
        if not body.startswith(_MAGIC) or len(body) < len(_MAGIC) + _NONCE_BYTES:
            raise ForeignObjectError(
                f"object {self.prefix + key!r} was not written by the versionfs KV store "
                f"(bad header {body[:4]!r})", KVPair(key, body, etag))
        return KVPair(key, body[len(_MAGIC) + _NONCE_BYTES:], etag)

    def put(self, key: str, value: bytes) -> None:
        self.bucket.put(self._name(key), self._body(value))

    def get(self, key: str) -> KVPair:
        try:
            body, etag = self.bucket.get(self._name(key))
        except self._not_found as exc:
            raise KeyNotFoundError(f"key {key!r} not found under {self.prefix!r}") from exc
        return self._pair(key, body, etag)

    def list(self, prefix: str) -> list[KVPair]:
        out = []
        for name in sorted(self.bucket.list(self.prefix + prefix)):
            key = name[len(self.prefix):]
            try:
                out.append(self.get(key))
            except KeyNotFoundError:
                continue  # deleted between the listing and the read
        return out

    def _after_lost_race(self, key: str, body: bytes, previous: KVPair | None) -> KVPair:
        """A conditional put was refused: find out whether it really lost.

        A client that retries a request whose response was lost sees its own
        earlier success as a failed precondition.  Our body carries a random
        nonce, so if the object now holds exactly our body, the write was ours:
        return its pair.  Otherwise raise the libkv error that fits.
        """
        try:
            current, etag = self.bucket.get(self.prefix + key)
        except self._not_found:
            if previous is None:  # created and deleted again since: it existed
                raise KeyExistsError(f"key {key!r} already exists (create-only atomic_put)") from None
            raise KeyNotFoundError(
                f"key {key!r} no longer exists (it was deleted since it was read)") from None
        if current == body:
            return self._pair(key, current, etag)
        if previous is None:
            raise KeyExistsError(f"key {key!r} already exists (create-only atomic_put)")
        raise KeyModifiedError(
            f"key {key!r} was modified since version {previous.last_index!r} was read")

    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        name, body = self._name(key), self._body(value)
        try:
            if previous is None:
                etag = self.bucket.put_if_absent(name, body)
            else:
                etag = self.bucket.put_if_match(name, body, previous.last_index)
        except (self._precondition, self._not_found) as exc:
            lost = exc
        else:
            return KVPair(key, bytes(value), etag)
        try:
            return self._after_lost_race(key, body, previous)
        except KVError as err:
            raise err from lost

    def atomic_delete(self, key: str, previous: KVPair | None) -> None:
        name = self._name(key)
        previous = require_previous(previous, key)
        try:
            self.bucket.delete_if_match(name, previous.last_index)
        except (self._precondition, self._not_found) as exc:
            if not self.exists(key):
                raise KeyNotFoundError(
                    f"key {key!r} no longer exists (it was deleted since it was read)") from exc
            raise KeyModifiedError(
                f"key {key!r} was modified since version {previous.last_index!r} was read") from exc

    def delete(self, key: str) -> None:
        try:
            self.bucket.delete(self._name(key))
        except self._not_found:
            pass

    def close(self) -> None:
        close = getattr(self.bucket, "close", None)
        if close is not None:
            close()


class S3KV(BucketKV):
    """KV store in an S3 bucket (``versionfs.blob.s3.S3Bucket``) via conditional writes.

    A plain ``PUT``/``DELETE`` is atomic on the server, so ``put``/``delete``
    need no condition.
    """


class DirectoryKV(BucketKV):
    """KV store in a ``file://`` slow store (``versionfs.blob.directory.DirectoryBucket``).

    The bucket's conditional operations hold an exclusive ``flock`` across
    read-compare-write, but its plain ``put``/``delete`` do not take that lock,
    so an unconditional write landing between a CAS's compare and its write
    would be silently overwritten.  Here ``put`` and ``delete`` are therefore
    themselves CAS loops, which keeps every operation on a key atomic with
    respect to every other, across threads and processes on the machine.
    """

    def put(self, key: str, value: bytes) -> None:
        value = check_value(value)
        while True:
            try:
                previous = self.get(key)
            except KeyNotFoundError:
                previous = None
            try:
                self.atomic_put(key, value, previous)
                return
            except (KeyExistsError, KeyModifiedError, KeyNotFoundError):
                continue

    def delete(self, key: str) -> None:
        while True:
            try:
                self.atomic_delete(key, self.get(key))
                return
            except KeyNotFoundError:
                return
            except KeyModifiedError:
                continue


# ------------------------------------------------------------------------ factory

SUPPORTED_SCHEMES = ("lmdb", "s3", "file")


def open_kv(url: str) -> KVStore:
    """Open the KV store a URL names (libkv's ``NewStore``).

    ``lmdb:///path/to/dir`` — :class:`LMDBKV`; ``s3://bucket/prefix`` (with
    the blob layer's ``?endpoint=``/``?region=`` options) — :class:`S3KV`;
    ``file:///path`` — :class:`DirectoryKV`.  Any other scheme
    is :class:`BackendNotSupportedError`.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SUPPORTED_SCHEMES:
        raise BackendNotSupportedError(
            f"no KV backend for {url!r}; supported schemes: "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES))
    if scheme == "lmdb":
        return LMDBKV(rest)
    if scheme == "s3":
        from versionfs.blob.s3 import S3Bucket

        return S3KV(S3Bucket.from_url(url))
    from versionfs.blob.directory import DirectoryBucket

    return DirectoryKV(DirectoryBucket(rest))
