"""Issue 12: a decompression bomb in an unencrypted bucket is a clear error, not
exhausted memory (Codec.decode's zstd output is bounded)."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc

import pytest

from versionfs.blob.codec import FMT_PLAIN_ZSTD, MAX_DECOMPRESSED, Codec
from versionfs.blob.errors import CorruptBlobError
from versionfs.blob.pointer import Pointer
from versionfs.fs.sealing import CHUNK_MAX

_RLE_BLOCK = 128 << 10


def rle_frame(total: int, declared: int | None) -> bytes:
    """A zstd frame of ``total`` zero bytes as RLE blocks (4 bytes per 128 KiB),
    its header declaring ``declared`` bytes (None: size not given)."""
    if declared is None:
        head = b"\x28\xb5\x2f\xfd" + bytes([0x00, 17 - 10 << 3])
    else:
        head = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 17 - 10 << 3]) + struct.pack("<Q", declared)
    blocks = []
    left = total
    while left:
        n = min(left, _RLE_BLOCK)
        left -= n
        blocks.append(struct.pack("<I", (1 if not left else 0) | (1 << 1) | (n << 3))[:3] + b"\0")
    return head + b"".join(blocks)


def plain_zstd_blob(frame: bytes) -> bytes:
    return struct.pack(">BI", FMT_PLAIN_ZSTD, len(frame)) + frame


def zeros_pointer(n: int) -> Pointer:
    h, block = hashlib.sha256(), bytes(1 << 20)
    for _ in range(n >> 20):
        h.update(block)
    return Pointer(h.digest())


def test_rle_frame_helper_is_real_zstd():
    size = 3 * _RLE_BLOCK + 5
    stored = plain_zstd_blob(rle_frame(size, size))
    pointer = Pointer(hashlib.sha256(bytes(size)).digest())
    assert Codec(None).decode(pointer, stored) == bytes(size)


@pytest.mark.parametrize("total, declared", [
    (256 << 20, 256 << 20),     # honest header, matching pointer: old code returned 256 MiB
    (1 << 30, None),            # no size in the header: 1 GiB would be produced
    (1 << 20, 1 << 40),         # a header claiming 1 TiB: zstd would try to allocate it
])
def test_decompression_bomb_is_a_clear_error(total, declared):
    stored = plain_zstd_blob(rle_frame(total, declared))
    assert len(stored) < total // 10000
    pointer = zeros_pointer(total)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptBlobError, match="more than") as err:
            Codec(None).decode(pointer, stored)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pointer.hex() in str(err.value)
    assert peak < 3 * MAX_DECOMPRESSED


def test_limit_covers_every_chunk_and_bigger_blobs_round_trip():
    assert 2 * CHUNK_MAX <= MAX_DECOMPRESSED
    codec = Codec(None)
    for size in (CHUNK_MAX, MAX_DECOMPRESSED + 1, 3 * MAX_DECOMPRESSED):
        data = b"compressible " * (size // 13) + b"x" * (size % 13)
        pointer, stored = codec.encode(data)
        assert codec.decode(pointer, stored) == data
