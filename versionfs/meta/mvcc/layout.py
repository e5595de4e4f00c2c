"""How the store lays its data out: LMDB buckets, the key/revision encoding, WAL entries.

Storage (LMDB buckets):

* ``kv``: ``escape(key) + be64(~rev)`` -> ``b"\\x01" + value`` or ``b"\\x00"``
  (tombstone).  ``escape`` doubles NULs as ``00 ff`` and ends with ``00 01``,
  so byte order of encoded keys equals byte order of keys and no key's
  encoding is a prefix of another's; the inverted revision sorts a key's
  versions newest first, so "newest version <= r" is one ``set_range`` seek
  to ``escape(key) + be64(~r)``.  Writing a key again in the same revision
  overwrites the same LMDB item: the store does not grow.
* ``changes``: ``be64(rev) + key`` -> ``b""``, one item per version, so
  ``changed_keys(a, b)`` walks only what changed.
* ``revs``: ``be64(rev)`` -> msgpack ``[name, time]`` for retained snapshots.
* ``mvcc``: ``b"head"`` -> ``be64(head)``.

WAL entries (the log's metadata is ``WAL_METADATA``) are msgpack lists, one
per change of state: ``[OP_WRITE, rev, [key, value or None, ...]]``,
``[OP_SNAPSHOT, rev, name, time]`` and ``[OP_DELETE_REVISION, rev]``.
"""

from __future__ import annotations

import struct

from .errors import KeyTooLongError

KV = b"kv"
CHANGES = b"changes"
REVS = b"revs"
STATE = b"mvcc"
HEAD_KEY = b"head"
WAL_METADATA = b"versionfs-meta-mvcc/1"

PUT = b"\x01"
TOMB = b"\x00"
OP_WRITE = 1
OP_SNAPSHOT = 2
OP_DELETE_REVISION = 3

MAX_LMDB_KEY = 511
_U64 = struct.Struct(">Q")
_MASK = (1 << 64) - 1
_AFTER_VERSIONS = b"\xff" * 9  # sorts after every version of an encoded key
FIRST_REVISION = 1


def encode_key(key: bytes) -> bytes:
    return key.replace(b"\0", b"\0\xff") + b"\0\x01"


def decode_key(ek: bytes) -> bytes:
    return ek[:-2].replace(b"\0\xff", b"\0")


def _inv(rev: int) -> bytes:
    return _U64.pack(_MASK - rev)


def _check_key(key) -> tuple[bytes, bytes]:
    if not isinstance(key, bytes):
        if isinstance(key, (bytearray, memoryview)):
            key = bytes(key)
        else:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
    ek = encode_key(key)
    if len(ek) + 8 > MAX_LMDB_KEY:
        raise KeyTooLongError(
            f"key of {len(key)} bytes is too long for the metadata store "
            f"(at most {MAX_LMDB_KEY - 10} bytes, NUL bytes count twice)"
        )
    return key, ek


def _is_tomb(x) -> bool:
    return x is True or (isinstance(x, bytes) and x[:1] == TOMB)
