"""Pointer, codec and key wrapping: formats, verification and the distinct errors."""

import hashlib
import os

import pytest

from versionfs.blob import codec as codec_mod
from versionfs.blob.codec import Codec
from versionfs.blob.errors import (CorruptBlobError, NotHashPointerError,
                                   TruncatedBlobError, WrongPassphraseError)
from versionfs.blob.keys import new_master_key, unwrap_key, wrap_key
from versionfs.blob.pointer import Null, Pointer

FAST_KDF = dict(memory_kib=8 * 1024, iterations=1, lanes=1)


def test_pointer_round_trips_and_refuses_non_pointers():
    p = Pointer.random()
    assert len(p.bytes) == 32 and len(p.hex()) == 64
    assert Pointer.from_hex(p.hex()) == p == Pointer.from_bytes(p.bytes)
    assert hash(p) == hash(Pointer.from_hex(p.hex()))
    assert not Null and p
    for bad in ("", "ab", "zz" * 32, p.hex() + "00"):
        with pytest.raises(NotHashPointerError):
            Pointer.from_hex(bad)
    with pytest.raises(NotHashPointerError):
        Pointer.from_bytes(b"x" * 31)
    with pytest.raises(AttributeError):
        p._b = b"0" * 32


def test_plain_codec_uses_sha256_and_compresses_only_when_it_pays():
    c = Codec(None)
    text = b"the same line again\n" * 5000
    p, stored = c.encode(text)
    assert p.bytes == hashlib.sha256(text).digest()
    assert stored[0] == codec_mod.FMT_PLAIN_ZSTD and len(stored) < len(text) // 10
    assert c.decode(p, stored) == text
    noise = os.urandom(100_000)
    p, stored = c.encode(noise)
    assert stored[0] == codec_mod.FMT_PLAIN and len(stored) == len(noise) + codec_mod.HEADER_SIZE
    assert c.decode(p, stored) == noise
    p, stored = c.encode(b"")
    assert c.decode(p, stored) == b""


@pytest.mark.parametrize("shape", ["noise", "noise then zeros", "zeros then noise", "text in the middle"])
def test_big_chunks_are_probed_before_compressing_and_still_compress_when_it_pays(shape):
    """Chunks of PROBE_MIN and more are sampled at start, middle and end first:
    incompressible ones skip the whole zstd pass, but a chunk that is
    compressible in any of those places is still compressed."""
    c = Codec(None)
    n = 1 << 20
    noise, zeros = os.urandom(n // 2), bytes(n // 2)
    data = {"noise": os.urandom(n), "noise then zeros": noise + zeros,
            "zeros then noise": zeros + noise,
            "text in the middle": os.urandom(n // 3) + b"abc" * (n // 9) + os.urandom(n // 3)}[shape]
    p, stored = c.encode(data)
    assert stored[0] == (codec_mod.FMT_PLAIN if shape == "noise" else codec_mod.FMT_PLAIN_ZSTD)
    assert c.decode(p, stored) == data


@pytest.mark.parametrize("encrypted", [False, "aes-256-gcm", "chacha20-poly1305"])
def test_tampered_and_truncated_blobs_fail_naming_the_pointer(encrypted):
    c = Codec(new_master_key(), cipher=encrypted) if encrypted else Codec(None)
    p, stored = c.encode(os.urandom(5000))
    flipped = bytearray(stored)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(CorruptBlobError) as err:
        c.decode(p, bytes(flipped))
    assert not isinstance(err.value, TruncatedBlobError)
    assert p.hex() in str(err.value) and err.value.pointer_hex == p.hex()
    with pytest.raises(TruncatedBlobError, match=p.hex()):
        c.decode(p, stored[:-10])
    with pytest.raises(TruncatedBlobError, match=p.hex()):
        c.decode(p, stored[:3])
    with pytest.raises(CorruptBlobError, match="unknown format"):
        c.decode(p, b"\x7f" + stored[1:])
    other = Pointer.random()
    with pytest.raises(CorruptBlobError, match=other.hex()):
        c.decode(other, stored)


def test_encrypted_pointers_are_keyed_and_ciphertext_hides_plaintext():
    key = new_master_key()
    c = Codec(key)
    text = b"secret diary entry " * 1000
    p, stored = c.encode(text)
    assert p.bytes != hashlib.sha256(text).digest()
    assert p == Codec(key).pointer_for(text) != Codec(new_master_key()).pointer_for(text)
    assert b"secret" not in stored and stored[0] == codec_mod.FMT_PAD_AEAD
    assert c.decode(p, stored) == text
    with pytest.raises(CorruptBlobError):
        Codec(new_master_key()).decode(p, stored)
    with pytest.raises(WrongPassphraseError):
        Codec(None).decode(p, stored)
    chacha = Codec(key, cipher="chacha20-poly1305")
    p2, stored2 = chacha.encode(text)
    assert p2 == p and stored2[0] == codec_mod.FMT_PAD_CHACHA
    assert c.decode(p2, stored2) == text == chacha.decode(p, stored)
    with pytest.raises(ValueError, match="unknown cipher"):
        Codec(key, cipher="rot13")
    plain_p, plain_stored = Codec(None).encode(text)
    with pytest.raises(CorruptBlobError, match="unencrypted"):
        c.decode(plain_p, plain_stored)


@pytest.mark.parametrize("encrypted", [False, "aes-256-gcm", "chacha20-poly1305"])
def test_seal_and_open_bind_the_context(encrypted):
    c = Codec(new_master_key(), cipher=encrypted) if encrypted else Codec(None)
    sealed = c.seal(b"metadata record", b"meta/000001")
    assert c.open(sealed, b"meta/000001") == b"metadata record"
    assert (b"metadata record" in sealed) is (not encrypted)
    with pytest.raises(CorruptBlobError, match="meta/000002"):
        c.open(sealed, b"meta/000002")
    with pytest.raises(TruncatedBlobError):
        c.open(sealed[:-1], b"meta/000001")
    bad = bytearray(sealed)
    bad[8] ^= 0x40
    with pytest.raises(CorruptBlobError):
        c.open(bytes(bad), b"meta/000001")


@pytest.mark.parametrize("kdf", ["argon2id", "scrypt"])
def test_wrapped_key_distinguishes_wrong_passphrase_damage_and_truncation(kdf):
    master = new_master_key()
    opts = FAST_KDF if kdf == "argon2id" else dict(scrypt_log2_n=12)
    wrapped = wrap_key(master, "correct horse", kdf=kdf, **opts)
    assert master not in wrapped
    assert unwrap_key(wrapped, "correct horse") == master
    with pytest.raises(WrongPassphraseError):
        unwrap_key(wrapped, "battery staple")
    damaged = bytearray(wrapped)
    damaged[40] ^= 1
    with pytest.raises(CorruptBlobError):
        unwrap_key(bytes(damaged), "correct horse")
    with pytest.raises(TruncatedBlobError):
        unwrap_key(wrapped[:-5], "correct horse")
    with pytest.raises(CorruptBlobError, match="magic"):
        unwrap_key(b"garbage" * 20, "correct horse")
    with pytest.raises(ValueError, match="empty"):
        wrap_key(master, "")
    assert Codec.from_wrapped_key(wrapped, "correct horse").encrypted


def test_decode_buffer_verifies_a_plain_blob_without_copying_it():
    """The read path's decode: an unencrypted, uncompressed plaintext is a view
    into the stored bytes (one 1 MiB buffer per chunk read, not two), still
    verified against its pointer; ``decode`` keeps returning bytes."""
    codec = Codec(None)
    data = os.urandom(1 << 20)
    p, stored = codec.encode(data)
    view = codec.decode_buffer(p, stored)
    assert isinstance(view, memoryview) and view.obj is stored and view == data
    assert type(codec.decode(p, stored)) is bytes
    tampered = bytearray(stored)
    tampered[1000] ^= 1
    with pytest.raises(CorruptBlobError):
        codec.decode_buffer(p, bytes(tampered))
