"""Key layout of the filesystem inside the MVCC store.

Every piece of filesystem metadata is one MVCC key, so a snapshot (which
freezes the whole key space at a revision) freezes the whole tree at once.
Keys start with a one-byte table tag followed by big-endian inode numbers, so
everything belonging to one inode (its extents, its xattrs, a directory's
entries) is one contiguous, sorted range that `MVCCStore.range` can stream.

    b"I" ino                      -> msgpack inode record (see `Inode`)
    b"D" parent_ino name          -> child ino (8 bytes, big endian)
    b"E" ino offset               -> msgpack [length, pointer bytes] or
                                     [length, pointer bytes, skip]: file bytes
                                     [offset, offset+length) are the blob's
                                     plain content from byte skip on (skip,
                                     written only when not 0, lets a small
                                     rewrite keep the rest of an old chunk as
                                     partial extents; versionfs/fs/sealing.py).
                                     With its b"R" key: `put_extent` /
                                     `delete_extent`
    b"X" ino name                 -> raw xattr value
    b"L" ino                      -> symlink target
    b"O" ino                      -> b"" (inode unlinked while open; deleted
                                     at the next start if a crash left it)
    b"P" ino parent_ino name      -> b"" (one per directory entry naming ino:
                                     the reverse of b"D", so `diff`/`log`
                                     find an inode's path without a tree walk)
    b"R" pointer ino offset       -> b"" (one per extent, partial ones too:
                                     the reverse of b"E",
                                     so "does anything still use this chunk?"
                                     is one short range read, at the head and,
                                     through `MVCCStore.versions`, in every
                                     retained snapshot; written only by
                                     `put_extent` / `delete_extent`)
    b"G" pointer                  -> 8-byte time (ns) of the latest deletion of
                                     an extent naming the chunk from the live
                                     tree: a reclamation candidate, drained by
                                     versionfs.maint.reclaim (a new time tells
                                     it the chunk was superseded again)
    b"W" pointer                  -> b"" (a candidate only retained snapshots
                                     still use: requeued when one is forgotten)
    b"Y" pointer                  -> its b"G" value + 8-byte WAL index: a drain
                                     saw that candidate when the metadata's
                                     last index was this (so a remount knows
                                     which published heads are past it)
    b"C" b"next_ino"              -> 8-byte counter (inode allocation)
    b"C" b"extent_refs"           -> 8-byte revision from which every extent
                                     has its b"R" key (set at the first mount)
    b"J" ino                      -> msgpack [journal id, index]: the file's
                                     sealed content includes every record of
                                     it in that dirty journal up to index
                                     (versionfs.fs.journal; written with the
                                     seal, so replay skips exactly those)

Inode numbers are never reused (the counter only grows), so a snapshot's
inode number always names the same object and `generation` can stay 0.
"""

from __future__ import annotations

import stat
import struct
import time
from dataclasses import dataclass

import msgpack

ROOT_INO = 1
# Inodes 2..15 are the control directory's virtual entries (see control.py).
FIRST_FREE_INO = 16
# Inode numbers are reserved from the store in blocks, so creating a file costs
# no extra write for the counter most of the time.
INO_RESERVE = 4096

_U64 = struct.Struct(">Q")

NEXT_INO_KEY = b"Cnext_ino"


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def prefix_end(prefix: bytes) -> bytes:
    """Smallest key greater than every key that starts with `prefix`."""
    p = bytearray(prefix)
    while p:
        if p[-1] != 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    raise ValueError("prefix has no upper bound")


def inode_key(ino: int) -> bytes:
    return b"I" + u64(ino)


def dirent_key(parent: int, name: bytes) -> bytes:
    return b"D" + u64(parent) + name


def dirent_prefix(parent: int) -> bytes:
    return b"D" + u64(parent)


def extent_key(ino: int, offset: int) -> bytes:
    return b"E" + u64(ino) + u64(offset)


def extent_prefix(ino: int) -> bytes:
    return b"E" + u64(ino)


def extent_ref_key(pointer: bytes, ino: int, offset: int) -> bytes:
    return b"R" + pointer + u64(ino) + u64(offset)


def extent_ref_prefix(pointer: bytes) -> bytes:
    return b"R" + pointer


RECLAIM_PREFIX = b"G"
WAITING_PREFIX = b"W"
SEEN_PREFIX = b"Y"
EXTENT_REFS_KEY = b"Cextent_refs"


def reclaim_key(pointer: bytes) -> bytes:
    return RECLAIM_PREFIX + pointer


def waiting_key(pointer: bytes) -> bytes:
    return WAITING_PREFIX + pointer


def seen_key(pointer: bytes) -> bytes:
    return SEEN_PREFIX + pointer


def queue_candidate(batch, pointer: bytes) -> None:
    """Queue a chunk as a reclamation candidate (a new time each time)."""
    batch.put(reclaim_key(pointer), u64(time.time_ns()))


def put_extent(batch, ino: int, offset: int, length: int, pointer: bytes, skip: int = 0) -> None:
    """Store an extent and its reverse reference, in one batch."""
    batch.put(extent_key(ino, offset), pack_extent(length, pointer, skip))
    batch.put(extent_ref_key(pointer, ino, offset), b"")


def delete_extent(batch, ino: int, offset: int, pointer: bytes, queue: bool = True) -> None:
    """Drop an extent and its reverse reference, and queue its chunk as a
    reclamation candidate, all in one batch (so a crash keeps them in step).
    `queue=False` when the same batch keeps the chunk in use (a seal that
    splits an extent into partial ones of the same chunk)."""
    batch.delete(extent_key(ino, offset))
    batch.delete(extent_ref_key(pointer, ino, offset))
    if queue:
        queue_candidate(batch, pointer)


def put_extent_record(batch, key: bytes, value: bytes) -> None:
    """`put_extent` for a stored (key, value) pair copied as it is (restore)."""
    offset, length, pointer, skip = unpack_extent(key, value)
    put_extent(batch, from_u64(key[1:9]), offset, length, pointer, skip)


def delete_extent_record(batch, key: bytes, value: bytes) -> None:
    """`delete_extent` for a stored (key, value) pair."""
    offset, _length, pointer, _skip = unpack_extent(key, value)
    delete_extent(batch, from_u64(key[1:9]), offset, pointer)


def link_key(ino: int, parent: int, name: bytes) -> bytes:
    return b"P" + u64(ino) + u64(parent) + name


def link_prefix(ino: int) -> bytes:
    return b"P" + u64(ino)


def put_dirent(batch, parent: int, name: bytes, ino: int) -> None:
    """Name `ino` as `parent`/`name`: the entry and its reverse link, in one batch."""
    batch.put(dirent_key(parent, name), u64(ino))
    batch.put(link_key(ino, parent, name), b"")


def delete_dirent(batch, parent: int, name: bytes, ino: int) -> None:
    """Remove the entry `parent`/`name` (which names `ino`) and its reverse link."""
    batch.delete(dirent_key(parent, name))
    batch.delete(link_key(ino, parent, name))


def xattr_key(ino: int, name: bytes) -> bytes:
    return b"X" + u64(ino) + name


def xattr_prefix(ino: int) -> bytes:
    return b"X" + u64(ino)


def symlink_key(ino: int) -> bytes:
    return b"L" + u64(ino)


def orphan_key(ino: int) -> bytes:
    return b"O" + u64(ino)


ORPHAN_PREFIX = b"O"


def journal_mark_key(ino: int) -> bytes:
    return b"J" + u64(ino)


def now_ns() -> int:
    return time.time_ns()


@dataclass(slots=True)
class Inode:
    """In-memory inode attributes; `pack`/`unpack` give the stored record.

    `parent` is kept for directories only (to answer lookups of "..").
    `size` and `stored` of a file with unsealed writes are the live values in
    memory; the stored record always carries the sealed ones.
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    parent: int = 0
    stored: int = 0     # bytes held in extents (for st_blocks of sparse files)

    def pack(self, size: int | None = None, stored: int | None = None) -> bytes:
        return msgpack.packb(
            [self.mode, self.nlink, self.uid, self.gid, self.rdev,
             self.size if size is None else size,
             self.atime_ns, self.mtime_ns, self.ctime_ns, self.parent,
             self.stored if stored is None else stored])

    @classmethod
    def unpack(cls, ino: int, raw: bytes) -> "Inode":
        f = msgpack.unpackb(raw)
        return cls(ino, *f[:11])

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


def pack_extent(length: int, pointer: bytes, skip: int = 0) -> bytes:
    """The b"E" record; skip only when not 0, so records without it read as 0."""
    return msgpack.packb([length, pointer, skip] if skip else [length, pointer])


def unpack_extent(key: bytes, raw: bytes):
    """(offset, length, pointer bytes, skip) of a stored extent; ValueError
    when the record is neither [length, pointer] nor [length, pointer, skip]."""
    fields = msgpack.unpackb(raw)
    if not isinstance(fields, list) or len(fields) not in (2, 3):
        raise ValueError("not [length, pointer] or [length, pointer, skip]")
    skip = fields[2] if len(fields) == 3 else 0
    if not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip {skip!r} is not a non-negative integer")
    return from_u64(key[9:17]), fields[0], fields[1], skip


class InodeAllocator:
    """Hands out never-reused inode numbers, reserving them in blocks.

    A crash loses at most the unused rest of one block of numbers.
    """

    def __init__(self, meta):
        self._meta = meta
        raw = meta.get(NEXT_INO_KEY)
        self._next = from_u64(raw) if raw else FIRST_FREE_INO
        self._limit = self._next

    def allocate(self) -> int:
        """Next inode number; persists a new reserved block when needed."""
        if self._next >= self._limit:
            self._meta.put(NEXT_INO_KEY, u64(self._next + INO_RESERVE))
            self._limit = self._next + INO_RESERVE
        ino = self._next
        self._next += 1
        return ino
