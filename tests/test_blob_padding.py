"""Encrypted blobs are padded to Padmé size classes; blobs in the formats
written before padding (0x11-0x14) still decode."""

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from versionfs.blob import codec as codec_mod
from versionfs.blob.codec import MIN_STORED, Codec, padme
from versionfs.blob.errors import CorruptBlobError, TruncatedBlobError
from versionfs.blob.keys import new_master_key


def _old_format_blob(master: bytes, plaintext: bytes, fmt: int) -> tuple:
    """What the codec wrote before padding: header | nonce | AEAD(payload),
    AAD header + pointer, zstd frame for 0x12/0x14."""
    import zstandard
    aead = {codec_mod.FMT_AEAD: AESGCM, codec_mod.FMT_AEAD_ZSTD: AESGCM,
            codec_mod.FMT_CHACHA: ChaCha20Poly1305, codec_mod.FMT_CHACHA_ZSTD: ChaCha20Poly1305}[fmt]
    payload = plaintext
    if fmt in (codec_mod.FMT_AEAD_ZSTD, codec_mod.FMT_CHACHA_ZSTD):
        payload = zstandard.ZstdCompressor().compress(plaintext)
    pointer = Codec(master).pointer_for(plaintext)
    header = bytes([fmt]) + (12 + len(payload) + 16).to_bytes(4, "big")
    nonce = os.urandom(12)
    sealed = aead(codec_mod._subkey(master, b"blob")).encrypt(nonce, payload, header + pointer.bytes)
    return pointer, header + nonce + sealed


@pytest.mark.parametrize("fmt", [codec_mod.FMT_AEAD, codec_mod.FMT_AEAD_ZSTD,
                                 codec_mod.FMT_CHACHA, codec_mod.FMT_CHACHA_ZSTD])
def test_blobs_in_the_formats_before_padding_still_decode(fmt):
    master = new_master_key()
    text = b"written by an older versionfs " * 300
    pointer, stored = _old_format_blob(master, text, fmt)
    assert len(stored) < 12 + 16 + 5 + len(text) + 1     # really unpadded
    for cipher in codec_mod.CIPHERS:
        assert Codec(master, cipher=cipher).decode(pointer, stored) == text
    with pytest.raises(CorruptBlobError):
        Codec(new_master_key()).decode(pointer, stored)


def test_padme_rounds_to_classes_of_bounded_overhead():
    assert [padme(n) for n in (0, 1, 4, 9, 1000)] == [0, 1, 4, 10, 1024]
    for n in list(range(2, 5000)) + [(1 << 20) + k * 4099 for k in range(500)]:
        p = padme(n)
        assert n <= p <= n * 1.12 + 1 and padme(p) == p


@pytest.mark.parametrize("cipher", list(codec_mod.CIPHERS))
def test_encrypted_blob_sizes_are_classes_that_hide_exact_lengths(cipher):
    c = Codec(new_master_key(), cipher=cipher)
    sizes = {}
    for n in list(range(0, 400, 7)) + [1000, 1001, 1002, 300_000, 300_001, 1 << 20, (1 << 20) + 5]:
        data = os.urandom(n)
        pointer, stored = c.encode(data)
        assert c.decode(pointer, stored) == data
        assert len(stored) >= MIN_STORED and padme(len(stored)) == len(stored)
        assert len(stored) != n + 33
        sizes[n] = len(stored)
    # Every small payload looks alike; near sizes share a class.
    assert {sizes[n] for n in range(0, 400, 7)} == {MIN_STORED}
    assert sizes[1000] == sizes[1001] == sizes[1002]
    assert sizes[300_000] == sizes[300_001] and sizes[1 << 20] == sizes[(1 << 20) + 5]
    # Compressible data says nothing in the format byte: the flag is inside.
    _, packed = c.encode(b"a" * 100_000)
    _, raw = c.encode(os.urandom(100_000))
    assert packed[0] == raw[0] == codec_mod.CIPHERS[cipher][1]


def test_padded_blobs_detect_truncation_and_tampering():
    c = Codec(new_master_key())
    pointer, stored = c.encode(b"four")
    with pytest.raises(TruncatedBlobError, match=pointer.hex()):
        c.decode(pointer, stored[:-1])
    for at in (1, 20, len(stored) - 100, len(stored) - 1):
        bad = bytearray(stored)
        bad[at] ^= 1
        with pytest.raises((CorruptBlobError, TruncatedBlobError), match=pointer.hex()):
            c.decode(pointer, bytes(bad))


def test_chunking_seed_is_keyed_and_absent_without_a_key():
    key = new_master_key()
    assert Codec(None).chunking_seed() is None
    seed = Codec(key).chunking_seed()
    assert seed == Codec(key, cipher="chacha20-poly1305").chunking_seed()
    assert seed != Codec(new_master_key()).chunking_seed() and seed.bit_length() > 200
    assert seed.to_bytes(32, "big") != key
