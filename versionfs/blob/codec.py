"""Codec: how a blob's plaintext becomes the bytes a store keeps, and back.

Stored layout (big-endian)::

    format u8 | payload length u32 | payload

    0x01 plain        payload = plaintext
    0x02 plain+zstd   payload = zstd frame
    0x11 AEAD         payload = nonce[12] | AES-256-GCM(ciphertext | tag)
    0x12 AEAD+zstd    as 0x11, over the zstd frame
    0x13 AEAD         as 0x11 with ChaCha20-Poly1305
    0x14 AEAD+zstd    as 0x12 with ChaCha20-Poly1305
    0x15 padded AEAD  payload = nonce[12] | AES-256-GCM(padded)
    0x16 padded AEAD  as 0x15 with ChaCha20-Poly1305
         padded = packed u8 (1: zstd frame) | data length u32 | data | zeros
    0x21 sealed plain payload = data | SHA-256(context, header, data)
    0x22 sealed AEAD  payload = nonce[12] | AES-256-GCM(data)   (AAD: header, context)
    0x23 sealed AEAD  as 0x22 with ChaCha20-Poly1305

The format byte lets later versions add formats while old blobs stay readable.
The length field is what tells a truncated blob from a tampered one.

Pointers are SHA-256 of the plaintext, or, when encrypted, HMAC-SHA256 under a
key derived from the master key (so a name reveals nothing about content, not
even to someone who guesses the content). Plain blobs are verified by
re-hashing; encrypted blobs by the AEAD tag, whose associated data binds the
header and the pointer (a blob copied under another name fails). Nonces are
random: at 2^32 blobs per key the collision risk is 2^-33, far beyond a home
directory's life. zstd is used only when it saves at least 1/32 of the size,
so incompressible data costs one fast zstd pass and no decompression later.

Encrypted blobs are written padded (0x15/0x16; 0x11-0x14 are still read): the
stored size is a Padmé size class (`padded_size`: at most ~12% larger, about
3% at 1 MiB, and never below `MIN_STORED`), with the padding and whether zstd
was used inside the AEAD. A stored size then tells a content-defined chunk's
length only to within its class, and a small file's size only to within
`MIN_STORED` (a 4-byte file used to be a 37-byte blob). Together with keyed
chunking (versionfs.fs.chunking, seeded by `Codec.chunking_seed`) this is what
keeps a bucket listing from confirming a known file (README, "What the bucket
reveals"). Unencrypted blobs stay unpadded: their names are content hashes,
which reveal more than any size.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading

import zstandard

from .errors import CorruptBlobError, TruncatedBlobError, WrongPassphraseError
from .keys import MASTER_KEY_SIZE, unwrap_key
from .pointer import Pointer

FMT_PLAIN = 0x01
FMT_PLAIN_ZSTD = 0x02
FMT_AEAD = 0x11
FMT_AEAD_ZSTD = 0x12
FMT_CHACHA = 0x13
FMT_CHACHA_ZSTD = 0x14
FMT_PAD_AEAD = 0x15
FMT_PAD_CHACHA = 0x16
FMT_SEAL_PLAIN = 0x21
FMT_SEAL_AEAD = 0x22
FMT_SEAL_CHACHA = 0x23

# cipher name -> (AEAD class in cryptography's aead module, padded blob format,
# seal format). cryptography is imported only by a Codec with a key
# (`_aead_class`): a plain filesystem's mount never loads it (start-up time).
CIPHERS = {
    "aes-256-gcm": ("AESGCM", FMT_PAD_AEAD, FMT_SEAL_AEAD),
    "chacha20-poly1305": ("ChaCha20Poly1305", FMT_PAD_CHACHA, FMT_SEAL_CHACHA),
}
# format -> (cipher, packed); packed None: the padded layout says it.
_BLOB_AEAD = {FMT_AEAD: ("aes-256-gcm", False), FMT_AEAD_ZSTD: ("aes-256-gcm", True),
              FMT_CHACHA: ("chacha20-poly1305", False), FMT_CHACHA_ZSTD: ("chacha20-poly1305", True),
              FMT_PAD_AEAD: ("aes-256-gcm", None), FMT_PAD_CHACHA: ("chacha20-poly1305", None)}
_SEAL_AEAD = {FMT_SEAL_AEAD: "aes-256-gcm", FMT_SEAL_CHACHA: "chacha20-poly1305"}

_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_BLOB = 0xFFFFFFFF
# Data this small is not worth a zstd frame.
MIN_COMPRESS = 128
# Most bytes one zstd payload may decompress to: twice the chunker's largest
# chunk (fs.sealing.CHUNK_MAX, 4 MiB), leaving room for padding. A zstd frame
# can claim or produce gigabytes from a few kilobytes (a decompression bomb
# planted in an unencrypted bucket), so decode checks the claimed size before
# allocating and stops at this many bytes; bigger plaintexts are stored raw.
MAX_DECOMPRESSED = 8 << 20
# Chunks at least this big are probed with samples before a whole zstd pass.
PROBE_MIN = 256 << 10
PROBE_BYTES = 16 << 10
# Inside a padded blob: packed u8 | data length u32.
_PAD_HEAD = struct.Struct(">BI")
_AEAD_OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
# The smallest stored size of an encrypted blob: every chunk or file whose
# payload is under ~470 bytes looks the same.
MIN_STORED = 512


def padme(n: int) -> int:
    """Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files
    and Communication with PURBs", PETS 2019): round ``n`` up so that only its
    top ~log2(log2(n)) + 1 bits may be non-zero. Leaks O(log log n) bits of
    the length at most ~12% overhead (less for bigger sizes)."""
    if n < 2:
        return n
    e = n.bit_length() - 1                  # floor(log2 n)
    mask = (1 << (e - e.bit_length())) - 1  # e.bit_length() = floor(log2 e) + 1
    return (n + mask) & ~mask


def padded_size(payload: int) -> int:
    """Stored size of an encrypted blob whose (maybe compressed) payload has
    ``payload`` bytes: a Padmé class, at least MIN_STORED."""
    need = _AEAD_OVERHEAD + _PAD_HEAD.size + payload
    return max(need, min(padme(max(need, MIN_STORED)), HEADER_SIZE + MAX_BLOB))


def _aead_class(name: str):
    from cryptography.hazmat.primitives.ciphers import aead
    return getattr(aead, name)


def _subkey(master: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"versionfs/" + purpose).derive(master)


class Codec:
    """Encode/decode blobs; thread-safe (zstd contexts are per thread).

    ``cipher`` chooses what new blobs are written with; blobs of either cipher
    are read, since the format byte says which one made them.
    """

    def __init__(self, master_key: bytes | None, compression_level: int = 3,
                 cipher: str = "aes-256-gcm"):
        if master_key is not None and len(master_key) != MASTER_KEY_SIZE:
            raise ValueError(f"a master key is {MASTER_KEY_SIZE} bytes, got {len(master_key)}")
        if cipher not in CIPHERS:
            raise ValueError(f"unknown cipher {cipher!r}: use one of {', '.join(CIPHERS)}")
        self.encrypted = master_key is not None
        self.cipher = cipher
        self.compression_level = compression_level
        self._local = threading.local()
        if self.encrypted:
            self._pointer_key = _subkey(master_key, b"pointer")
            blob_key, seal_key = _subkey(master_key, b"blob"), _subkey(master_key, b"seal")
            self._blob_aead = {name: _aead_class(c[0])(blob_key) for name, c in CIPHERS.items()}
            self._seal_aead = {name: _aead_class(c[0])(seal_key) for name, c in CIPHERS.items()}
            from cryptography.exceptions import InvalidTag
            self._invalid = (InvalidTag, ValueError)       # what a failed AEAD open raises
            _, self._fmt_blob, self._fmt_seal = CIPHERS[cipher]
            self._chunking_seed = int.from_bytes(_subkey(master_key, b"chunking"), "big")

    @classmethod
    def from_wrapped_key(cls, wrapped: bytes, passphrase: str | bytes, **kw) -> "Codec":
        return cls(unwrap_key(wrapped, passphrase), **kw)

    # -- per-thread zstd (a ZstdCompressor must never be shared by threads) ----
    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.compression_level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def _maybe_compress(self, data) -> tuple[bool, bytes]:
        n = len(data)
        if self.compression_level <= 0 or n < MIN_COMPRESS or n > MAX_DECOMPRESSED:
            return False, data
        if n >= PROBE_MIN and not self._probe_pays(data):
            return False, data
        packed = self._compressor().compress(data)
        if len(packed) <= n - (n >> 5):
            return True, packed
        return False, data

    def _probe_pays(self, data) -> bool:
        """Whether any of three samples (start, middle, end) compresses by 1/32:
        already-compressed media or encrypted files then cost three small zstd
        passes instead of one over the whole chunk."""
        view = memoryview(data).cast("B")
        n = len(view)
        compress = self._compressor().compress
        for start in (0, (n - PROBE_BYTES) // 2, n - PROBE_BYTES):
            sample = view[start:start + PROBE_BYTES]
            if len(compress(sample)) <= PROBE_BYTES - (PROBE_BYTES >> 5):
                return True
        return False

    def chunking_seed(self) -> int | None:
        """A 256-bit secret for keyed content-defined chunking (its own HKDF
        context, so it reveals nothing about the other keys), or None when
        not encrypted: plain filesystems chunk unkeyed, for dedup."""
        return self._chunking_seed if self.encrypted else None

    # -- blobs -----------------------------------------------------------------
    def pointer_for(self, plaintext) -> Pointer:
        if self.encrypted:
            return Pointer(hmac.digest(self._pointer_key, plaintext, "sha256"))
        return Pointer(hashlib.sha256(plaintext).digest())

    def encode(self, plaintext) -> tuple[Pointer, bytes]:
        if len(plaintext) > MAX_BLOB:
            raise ValueError(f"blob of {len(plaintext)} bytes is over the {MAX_BLOB}-byte limit")
        pointer = self.pointer_for(plaintext)
        packed, payload = self._maybe_compress(plaintext)
        if not self.encrypted:
            fmt = FMT_PLAIN_ZSTD if packed else FMT_PLAIN
            return pointer, b"".join((_HEADER.pack(fmt, len(payload)), payload))
        stored_size = padded_size(len(payload))
        header = _HEADER.pack(self._fmt_blob, stored_size - HEADER_SIZE)
        padding = bytes(stored_size - _AEAD_OVERHEAD - _PAD_HEAD.size - len(payload))
        inner = b"".join((_PAD_HEAD.pack(packed, len(payload)), payload, padding))
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._blob_aead[self.cipher].encrypt(nonce, inner, header + pointer.bytes)
        return pointer, b"".join((header, nonce, sealed))

    def decode(self, pointer: Pointer, stored) -> bytes:
        """Plaintext of ``stored``, verified against ``pointer``."""
        return bytes(self._open_blob(pointer, stored, unpack=True))

    def decode_buffer(self, pointer: Pointer, stored) -> bytes | memoryview:
        """``decode`` without copying an unencrypted, uncompressed plaintext out of
        ``stored``: a read-only view of it (which keeps ``stored`` alive). For the
        read path, where every copy of a 1 MiB chunk is a fresh mmap of 256
        zeroed pages (common/memory.py pins the mmap threshold)."""
        return self._open_blob(pointer, stored, unpack=True)

    def verify(self, pointer: Pointer, stored) -> None:
        """CorruptBlobError unless ``stored`` is a good copy of ``pointer``'s blob.

        What a store is given to check copies before trusting or propagating
        them (``Paired.set_verifier``). An AEAD blob is checked by its tag alone:
        the tag covers the compressed payload, so decompressing adds nothing.
        """
        self._open_blob(pointer, stored, unpack=False)

    def _open_blob(self, pointer: Pointer, stored, unpack: bool) -> bytes | memoryview | None:
        ptr = pointer.hex()
        what = f"blob {ptr}"
        fmt, payload = _split(stored, what, ptr)
        if fmt in (FMT_PLAIN, FMT_PLAIN_ZSTD):
            if self.encrypted:
                raise CorruptBlobError(f"{what}: unencrypted blob in an encrypted filesystem",
                                       ptr)
            plaintext = self._unpack(payload, what, ptr) if fmt == FMT_PLAIN_ZSTD else payload
            if hashlib.sha256(plaintext).digest() != pointer.bytes:
                raise CorruptBlobError(f"{what}: content does not match its pointer", ptr)
            return plaintext
        if fmt in _BLOB_AEAD:
            self._need_key(what)
            cipher, packed = _BLOB_AEAD[fmt]
            header = bytes(stored[:HEADER_SIZE])
            try:
                payload = self._blob_aead[cipher].decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:],
                                                          header + pointer.bytes)
            except self._invalid:
                raise CorruptBlobError(f"{what}: authentication failed (tampered, or stored "
                                       "under another name)", ptr) from None
            if not unpack:
                return None
            if packed is None:
                packed, payload = _unpad(payload, what, ptr)
            return self._unpack(payload, what, ptr) if packed else payload
        raise CorruptBlobError(f"{what}: unknown format byte 0x{fmt:02x}", ptr)

    def _unpack(self, payload, what: str, pointer_hex: str) -> bytes:
        """Decompress at most MAX_DECOMPRESSED bytes (``decompress_at_most``)."""
        try:
            plaintext = decompress_at_most(payload, MAX_DECOMPRESSED, self._decompressor())
        except zstandard.ZstdError as exc:
            raise CorruptBlobError(f"{what}: bad zstd data: {exc}", pointer_hex) from None
        if plaintext is None:
            raise CorruptBlobError(f"{what}: decompresses to more than {MAX_DECOMPRESSED} "
                                   "bytes, more than any blob versionfs writes (a "
                                   "decompression bomb?)", pointer_hex)
        return plaintext

    def _need_key(self, what: str) -> None:
        if not self.encrypted:
            raise WrongPassphraseError(f"{what} is encrypted, but no key was given")

    # -- non-blob data (metadata published to the bucket) ----------------------
    def seal(self, data, context: bytes) -> bytes:
        """Protect ``data`` bound to ``context`` (e.g. the object's name)."""
        if self.encrypted:
            header = _HEADER.pack(self._fmt_seal, NONCE_SIZE + len(data) + TAG_SIZE)
            nonce = os.urandom(NONCE_SIZE)
            sealed = self._seal_aead[self.cipher].encrypt(nonce, data, header + context)
            return b"".join((header, nonce, sealed))
        header = _HEADER.pack(FMT_SEAL_PLAIN, len(data) + 32)
        return b"".join((header, data, _seal_digest(header, data, context)))

    def open(self, sealed, context: bytes) -> bytes:
        """Inverse of ``seal``; CorruptBlobError / TruncatedBlobError naming ``context``."""
        what = f"sealed data {context!r}"
        fmt, payload = _split(sealed, what)
        header = bytes(sealed[:HEADER_SIZE])
        if fmt == FMT_SEAL_PLAIN:
            if self.encrypted:
                raise CorruptBlobError(f"{what}: unencrypted data in an encrypted filesystem")
            if len(payload) < 32:
                raise CorruptBlobError(f"{what}: too short for its digest")
            data = bytes(payload[:-32])
            if _seal_digest(header, data, context) != payload[-32:]:
                raise CorruptBlobError(f"{what}: content does not match its digest")
            return data
        if fmt in _SEAL_AEAD:
            self._need_key(what)
            try:
                return self._seal_aead[_SEAL_AEAD[fmt]].decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:],
                                               header + context)
            except self._invalid:
                raise CorruptBlobError(f"{what}: authentication failed (tampered, or sealed "
                                       "for another context)") from None
        raise CorruptBlobError(f"{what}: unknown format byte 0x{fmt:02x}")


def decompress_at_most(payload, limit: int,
                       decompressor: zstandard.ZstdDecompressor | None = None) -> bytes | None:
    """The zstd frame ``payload`` decompressed, or None if that is more than ``limit``
    bytes: a frame claiming more is refused before anything is allocated (zstd
    would trust the claim), one not saying its size is cut off at the limit.
    Bad data is ``zstandard.ZstdError``."""
    if zstandard.frame_content_size(payload) > limit:
        return None
    with (decompressor or zstandard.ZstdDecompressor()).stream_reader(payload) as reader:
        data = reader.read(limit + 1)
    return None if len(data) > limit else data


_KEYLESS = Codec(None)


def check_without_key(pointer: Pointer, stored) -> None:
    """CorruptBlobError unless ``stored`` may be a good copy of ``pointer``'s blob,
    judged without the key, as a store server must: the length field always
    (a cut-off body fails), the content itself for unencrypted blobs; an AEAD
    blob's tag needs the key, so only its shape is checked."""
    fmt, payload = _split(stored, f"blob {pointer.hex()}", pointer.hex())
    if fmt in _BLOB_AEAD:
        if len(payload) < NONCE_SIZE + TAG_SIZE:
            raise TruncatedBlobError(f"blob {pointer.hex()}: {len(payload)} payload bytes "
                                     "cannot hold a nonce and a tag", pointer.hex())
        return
    _KEYLESS.verify(pointer, stored)


def _unpad(inner: bytes, what: str, pointer_hex: str) -> tuple[bool, bytes]:
    """(packed, payload) of an authenticated padded plaintext."""
    if len(inner) < _PAD_HEAD.size:
        raise CorruptBlobError(f"{what}: padded blob too short for its length field", pointer_hex)
    packed, length = _PAD_HEAD.unpack_from(inner)
    end = _PAD_HEAD.size + length
    if packed > 1 or end > len(inner):
        raise CorruptBlobError(f"{what}: bad padded layout", pointer_hex)
    return bool(packed), memoryview(inner)[_PAD_HEAD.size:end]


def _seal_digest(header: bytes, data, context: bytes) -> bytes:
    h = hashlib.sha256(struct.pack(">I", len(context)))
    h.update(context)
    h.update(header)
    h.update(data)
    return h.digest()


def _split(stored, what: str, pointer_hex: str | None = None) -> tuple[int, memoryview]:
    """(format, payload) after checking the length field."""
    view = memoryview(stored).cast("B")
    if len(view) < HEADER_SIZE:
        raise TruncatedBlobError(f"{what}: truncated: {len(view)} bytes, not even a header",
                                 pointer_hex)
    fmt, length = _HEADER.unpack_from(view)
    have = len(view) - HEADER_SIZE
    if have < length:
        raise TruncatedBlobError(f"{what}: truncated: {have} of {length} payload bytes",
                                 pointer_hex)
    if have > length:
        raise CorruptBlobError(f"{what}: {have - length} stray bytes after the payload",
                               pointer_hex)
    return fmt, view[HEADER_SIZE:]
