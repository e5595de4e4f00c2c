"""The framed, checksummed backup stream shared by every metadata store.

A backup must be restorable years later from a bucket, so it carries its own
proof of integrity: every part is CRC32C-checked, the frames are chained, and a
trailer counts them, so truncation anywhere — even exactly between two frames —
and any flipped bit are detected before anything is restored.  The record
store (``records.py``) and the MVCC backend's checkpoints use the same stream;
only the payloads differ, and the header says which ``kind`` of store wrote it.

Format, version 1 (integers big-endian)::

    header   magic    8 bytes  b"VFSBAK\\r\\n"  (\\r\\n catches text-mode mangling)
             version  u16      1
             metalen  u32      length of meta
             meta     metalen  canonical JSON object; always has "kind"
             crc      u32      CRC32C of every header byte before it
    frame*   tag      1 byte   b"R"
             length   u32      payload length
             payload  length   opaque to this module (often msgpack)
             crc      u32      CRC32C of tag, length and payload
    trailer  tag      1 byte   b"E"
             count    u64      number of frames
             chain    u32      CRC32C over every frame's bytes in order, seeded
                               with the header crc (catches dropped, repeated
                               or reordered frames and frames spliced in from
                               another backup)
             crc      u32      CRC32C of tag, count and chain
    then end of stream: anything after the trailer is corruption.

Nothing in the stream depends on the time or the machine, so the same content
always produces the same bytes.

Stores whose native backup is an opaque byte stream (the MVCC backend's
``Backend.backup_to`` writes a compact LMDB copy) get the same protection
through :func:`framed_copy` (cut the bytes into frames) and
:func:`verified_stream` (a file-like view of the payload bytes whose reads fail
with a :class:`BackupError` as soon as damage or truncation shows, including
at the very end)::

    with BackupWriter(out, "versionfs.mvcc", {"applied_index": n}) as w:
        backend.backup_to(framed_copy(w))
    Backend.restore(verified_stream(BackupReader(inp, "versionfs.mvcc")), path)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import crc32c
import msgpack

MAGIC = b"VFSBAK\r\n"
FORMAT_VERSION = 1
MAX_META_BYTES = 1 << 20
DEFAULT_MAX_PAYLOAD = 256 << 20

_HEAD = struct.Struct(">8sHI")
_U32 = struct.Struct(">I")
_FRAME = struct.Struct(">cI")
_TRAILER = struct.Struct(">cQI")
_FRAME_TAG, _END_TAG = b"R", b"E"


class BackupError(Exception):
    """Base class: the stream cannot be trusted or used."""


class BackupFormatError(BackupError):
    """Not a versionfs backup, an unknown format version, or the wrong kind."""


class BackupTruncatedError(BackupError):
    """The stream ends before the trailer: the backup is incomplete."""


class BackupCorruptError(BackupError):
    """A checksum, length, count or tag does not match: bytes were damaged."""


@dataclass(frozen=True)
class BackupInfo:
    """What a complete, verified backup holds."""

    meta: dict
    count: int
    size: int


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same object is always the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BackupWriter:
    """Write one backup: ``write(payload)`` per frame, then ``finish()``.

    Used as a context manager, the trailer is written only when the block ends
    without an exception, so a backup interrupted by an error is detectably
    incomplete rather than silently short.
    """

    def __init__(self, stream: BinaryIO, kind: str, meta: dict | None = None):
        doc = dict(meta or {})
        doc["kind"] = kind
        meta_bytes = canonical_json(doc)
        if len(meta_bytes) > MAX_META_BYTES:
            raise ValueError(f"backup meta is {len(meta_bytes)} bytes, the limit is {MAX_META_BYTES}")
        head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(meta_bytes)) + meta_bytes
        header_crc = crc32c.crc32c(head)
        self._stream = stream
        self._meta = doc
        self._chain = header_crc
        self._count = 0
        self._size = 0
        self._finished = False
        self._sinks: list[framed_copy] = []  # flushed before the trailer
        self._emit(head + _U32.pack(header_crc))

    def _emit(self, data: bytes) -> None:
        self._stream.write(data)
        self._size += len(data)

    def write(self, payload: bytes) -> None:
        if self._finished:
            raise BackupError("backup already finished")
        body = _FRAME.pack(_FRAME_TAG, len(payload)) + bytes(payload)
        frame = body + _U32.pack(crc32c.crc32c(body))
        self._chain = crc32c.crc32c(frame, self._chain)
        self._count += 1
        self._emit(frame)

    def write_item(self, obj: Any) -> None:
        """Write one msgpack-encoded object as a frame."""
        self.write(msgpack.packb(obj, use_bin_type=True))

    def finish(self) -> BackupInfo:
        """Write the trailer; the backup is complete only after this."""
        if not self._finished:
            for sink in self._sinks:
                sink.flush()
            body = _TRAILER.pack(_END_TAG, self._count, self._chain)
            self._emit(body + _U32.pack(crc32c.crc32c(body)))
            self._finished = True
            flush = getattr(self._stream, "flush", None)
            if flush is not None:
                flush()
        return BackupInfo(self._meta, self._count, self._size)

    def __enter__(self) -> "BackupWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()


class BackupReader:
    """Read and verify one backup.

    The header is checked on construction.  Iterating yields each payload
    after checking its frame; the trailer (count, chain, end of stream) is
    checked when iteration ends.  A consumer that applies payloads as they come
    must therefore apply them so they can be undone — e.g. in one transaction
    committed only after the iteration finished without error.
    """

    def __init__(self, stream: BinaryIO, kind: str | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD):
        self._stream = stream
        self._max_payload = max_payload
        self._offset = 0
        self.count = 0
        head = self._read(_HEAD.size, "header")
        magic, version, meta_len = _HEAD.unpack(head)
        if magic != MAGIC:
            raise BackupFormatError(f"not a versionfs backup (starts with {magic!r})")
        if version != FORMAT_VERSION:
            raise BackupFormatError(
                f"backup format version {version} is not supported (this build reads {FORMAT_VERSION})")
        if meta_len > MAX_META_BYTES:
            raise BackupCorruptError(f"backup header claims {meta_len} bytes of meta, over the limit")
        head += self._read(meta_len, "header")
        (crc,) = _U32.unpack(self._read(4, "header"))
        if crc != crc32c.crc32c(head):
            raise BackupCorruptError("backup header checksum mismatch")
        try:
            self.meta = json.loads(head[_HEAD.size:])
            self.kind = self.meta["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupCorruptError("backup header meta is not a JSON object with a kind") from exc
        if kind is not None and self.kind != kind:
            raise BackupFormatError(f"backup holds a {self.kind!r} store, expected {kind!r}")
        self._chain = crc
        self._done = False

    def _read(self, n: int, what: str) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self._stream.read(min(left, 1 << 20))
            if not chunk:
                raise BackupTruncatedError(
                    f"backup truncated in the {what} at byte {self._offset + n - left} "
                    f"({self.count} frames read)")
            chunks.append(chunk)
            left -= len(chunk)
        self._offset += n
        return b"".join(chunks)

    def __iter__(self) -> Iterator[bytes]:
        if self._done:
            raise BackupError("backup stream already consumed")
        while True:
            tag = self._read(1, "frame tag")
            if tag == _END_TAG:
                self._check_trailer(tag)
                return
            if tag != _FRAME_TAG:
                raise BackupCorruptError(f"bad frame tag {tag!r} at byte {self._offset - 1}")
            length_bytes = self._read(4, f"frame {self.count}")
            (length,) = _U32.unpack(length_bytes)
            if length > self._max_payload:
                raise BackupCorruptError(
                    f"frame {self.count} claims {length} bytes, over the {self._max_payload}-byte limit")
            payload = self._read(length, f"frame {self.count}")
            crc_bytes = self._read(4, f"frame {self.count}")
            body = tag + length_bytes + payload
            if _U32.unpack(crc_bytes)[0] != crc32c.crc32c(body):
                raise BackupCorruptError(f"frame {self.count} checksum mismatch at byte {self._offset - len(body) - 4}")
            self._chain = crc32c.crc32c(body + crc_bytes, self._chain)
            self.count += 1
            yield payload

    def items(self) -> Iterator[Any]:
        """Iterate msgpack-decoded payloads (written with ``write_item``)."""
        for payload in self:
            try:
                yield msgpack.unpackb(payload, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                raise BackupCorruptError(f"frame {self.count - 1} is not valid msgpack") from exc

    def _check_trailer(self, tag: bytes) -> None:
        rest = self._read(_TRAILER.size - 1, "trailer")
        (crc,) = _U32.unpack(self._read(4, "trailer"))
        body = tag + rest
        if crc != crc32c.crc32c(body):
            raise BackupCorruptError("backup trailer checksum mismatch")
        _, count, chain = _TRAILER.unpack(body)
        if count != self.count:
            raise BackupCorruptError(f"backup trailer counts {count} frames, the stream held {self.count}")
        if chain != self._chain:
            raise BackupCorruptError("backup frame chain checksum mismatch (frames dropped, reordered or spliced)")
        if self._stream.read(1):
            raise BackupCorruptError(f"unexpected bytes after the backup trailer at byte {self._offset}")
        self._done = True

    def info(self) -> BackupInfo:
        return BackupInfo(self.meta, self.count, self._offset)


class framed_copy:
    """A write-only file object that turns the bytes written to it into frames.

    Bytes are cut into ``frame_size`` frames; the last short frame goes out on
    ``flush``/``close`` or, at the latest, when the writer finishes.
    """

    def __init__(self, writer: BackupWriter, frame_size: int = 1 << 20):
        self._writer = writer
        writer._sinks.append(self)
        self._frame_size = frame_size
        self._buf = bytearray()
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buf += data
        while len(self._buf) >= self._frame_size:
            self._writer.write(bytes(self._buf[:self._frame_size]))
            del self._buf[:self._frame_size]
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._writer.write(bytes(self._buf))
            self._buf.clear()

    def close(self) -> None:
        self.flush()
        self.closed = True

    def __enter__(self) -> "framed_copy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class verified_stream:
    """A read-only file object over a backup's payload bytes, in order.

    ``read`` raises the reader's :class:`BackupError` when damage shows; the
    final ``read`` that returns ``b""`` happens only after the trailer (count,
    chain, end of stream) verified.  A consumer that writes to a temporary
    file and renames it only after reaching end-of-file therefore never
    installs a damaged copy.
    """

    def __init__(self, reader: BackupReader):
        self._frames = iter(reader)
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            try:
                self._buf += next(self._frames)
            except StopIteration:
                self._eof = True
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def validate_stream(stream: BinaryIO, kind: str | None = None,
                    max_payload: int = DEFAULT_MAX_PAYLOAD) -> BackupInfo:
    """Read a whole backup, checking everything; raises a :class:`BackupError` if unusable."""
    reader = BackupReader(stream, kind, max_payload)
    for _ in reader:
        pass
    return reader.info()
