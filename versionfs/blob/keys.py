"""Master keys and their passphrase wrapping.

A filesystem's data is encrypted under a random 32-byte master key; the user's
passphrase only wraps that key (through a memory-hard KDF, then AES-256-GCM).
Changing the passphrase re-wraps 60 bytes instead of re-encrypting the bucket,
and a weak passphrase cannot be attacked cheaply on GPUs.

Wrapped layout (all integers big-endian)::

    "VFSKEY" | version u8 | kdf u8 | p1 u32 | p2 u32 | p3 u32 | salt[16]
    | nonce[12] | AES-GCM(kek, master)[48] | SHA-256 of everything before[32]

kdf 1 = Argon2id (p1 memory KiB, p2 iterations, p3 lanes);
kdf 2 = scrypt (p1 log2 N, p2 r, p3 p). The trailing digest is not secret: it
tells a damaged key file (CorruptBlobError) apart from a wrong passphrase
(WrongPassphraseError), which a bare AEAD failure cannot.

A recovery key is the master key itself, printable: version, the
filesystem's id (16 bytes) and the key, then 4 bytes of SHA-256 so a typo is
caught, in base32 groups of five (``encode_recovery_key``). It opens the
filesystem without the passphrase and, since changing the passphrase only
re-wraps the same master key, it stays valid for the filesystem's lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

from .errors import CorruptBlobError, TruncatedBlobError, WrongPassphraseError

MASTER_KEY_SIZE = 32
_MAGIC = b"VFSKEY"
_VERSION = 1
_KDF_ARGON2ID = 1
_KDF_SCRYPT = 2
_HEAD = struct.Struct(">6sBBIII16s12s")
_WRAPPED_SIZE = _HEAD.size + MASTER_KEY_SIZE + 16 + 32

#: Argon2id defaults: 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommendation).
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4


def new_master_key() -> bytes:
    """A fresh random master key."""
    return os.urandom(MASTER_KEY_SIZE)


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    raw = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    if not raw:
        raise ValueError("the passphrase is empty")
    return raw


def _derive(kdf: int, p1: int, p2: int, p3: int, salt: bytes, passphrase: bytes) -> bytes:
    # cryptography is imported where a key is wrapped or unwrapped, not with the
    # module: a plain filesystem's mount and commands never load it (start-up time).
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    if kdf == _KDF_ARGON2ID:
        return Argon2id(salt=salt, length=32, iterations=p2, lanes=p3, memory_cost=p1).derive(passphrase)
    if kdf == _KDF_SCRYPT:
        return Scrypt(salt=salt, length=32, n=1 << p1, r=p2, p=p3).derive(passphrase)
    raise CorruptBlobError(f"wrapped key uses unknown KDF {kdf}")


def wrap_key(master: bytes, passphrase: str | bytes, *, kdf: str = "argon2id",
             memory_kib: int = ARGON2_MEMORY_KIB, iterations: int = ARGON2_ITERATIONS,
             lanes: int = ARGON2_LANES, scrypt_log2_n: int = 17) -> bytes:
    """Wrap ``master`` under ``passphrase``; the result is safe to store anywhere."""
    if len(master) != MASTER_KEY_SIZE:
        raise ValueError(f"a master key is {MASTER_KEY_SIZE} bytes, got {len(master)}")
    if kdf == "argon2id":
        kdf_id, params = _KDF_ARGON2ID, (memory_kib, iterations, lanes)
    elif kdf == "scrypt":
        kdf_id, params = _KDF_SCRYPT, (scrypt_log2_n, 8, 1)
    else:
        raise ValueError(f"unknown KDF {kdf!r}: use 'argon2id' or 'scrypt'")
    salt, nonce = os.urandom(16), os.urandom(12)
    head = _HEAD.pack(_MAGIC, _VERSION, kdf_id, *params, salt, nonce)
    kek = _derive(kdf_id, *params, salt, _passphrase_bytes(passphrase))
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    body = head + AESGCM(kek).encrypt(nonce, master, head)
    return body + hashlib.sha256(body).digest()


def unwrap_key(wrapped: bytes, passphrase: str | bytes) -> bytes:
    """The master key; WrongPassphraseError if ``passphrase`` does not open it."""
    wrapped = bytes(wrapped)
    if not wrapped.startswith(_MAGIC[: len(wrapped)]) or len(wrapped) < len(_MAGIC):
        raise CorruptBlobError("not a versionfs wrapped key (bad magic)")
    if len(wrapped) < _WRAPPED_SIZE:
        raise TruncatedBlobError(f"wrapped key is truncated: {len(wrapped)} of {_WRAPPED_SIZE} bytes")
    if len(wrapped) > _WRAPPED_SIZE:
        raise CorruptBlobError(f"wrapped key has {len(wrapped) - _WRAPPED_SIZE} stray trailing bytes")
    body, digest = wrapped[:-32], wrapped[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptBlobError("wrapped key is damaged (checksum mismatch)")
    _magic, version, kdf_id, p1, p2, p3, salt, nonce = _HEAD.unpack_from(body)
    if version != _VERSION:
        raise CorruptBlobError(f"wrapped key has unknown version {version}")
    kek = _derive(kdf_id, p1, p2, p3, salt, _passphrase_bytes(passphrase))
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    try:
        return AESGCM(kek).decrypt(nonce, body[_HEAD.size:], body[:_HEAD.size])
    except InvalidTag:
        raise WrongPassphraseError("wrong passphrase: it does not unlock this filesystem's key") from None


# --- recovery keys -------------------------------------------------------------

_RECOVERY_VERSION = 1
_RECOVERY_SIZE = 1 + 16 + MASTER_KEY_SIZE + 4
RECOVERY_GROUP = 5


@dataclass(frozen=True)
class RecoveryKey:
    """A master key as the user keeps it, bound to one filesystem's id (hex)."""

    fs_id: str
    master: bytes

    def __repr__(self) -> str:                   # never print the key by accident
        return f"RecoveryKey(fs_id={self.fs_id!r})"


def encode_recovery_key(master: bytes, fs_id: str) -> str:
    """``master`` of filesystem ``fs_id`` (32 hex digits) as printable groups."""
    if len(master) != MASTER_KEY_SIZE:
        raise ValueError(f"a master key is {MASTER_KEY_SIZE} bytes, got {len(master)}")
    body = bytes([_RECOVERY_VERSION]) + bytes.fromhex(fs_id) + master
    text = base64.b32encode(body + hashlib.sha256(body).digest()[:4]).decode().rstrip("=")
    return "-".join(text[i:i + RECOVERY_GROUP] for i in range(0, len(text), RECOVERY_GROUP))


def decode_recovery_key(text: str) -> RecoveryKey:
    """Inverse of ``encode_recovery_key``; spaces, dashes and case do not matter.

    A mistyped key is a CorruptBlobError (the checksum), never a wrong key.
    """
    letters = "".join(ch for ch in text.upper() if ch.isalnum())
    try:
        raw = base64.b32decode(letters + "=" * (-len(letters) % 8))
    except ValueError:
        raise CorruptBlobError("not a versionfs recovery key (letters A-Z and digits 2-7 "
                               "in groups)") from None
    if len(raw) != _RECOVERY_SIZE or raw[0] != _RECOVERY_VERSION:
        raise CorruptBlobError(f"not a versionfs recovery key ({len(letters)} characters; "
                               f"a recovery key has {-(-_RECOVERY_SIZE * 8 // 5)})")
    body, check = raw[:-4], raw[-4:]
    if hashlib.sha256(body).digest()[:4] != check:
        raise CorruptBlobError("the recovery key is mistyped (its checksum does not match)")
    return RecoveryKey(body[1:17].hex(), body[17:])
