"""Pointer: the 32-byte name of a blob (SHA-256 or HMAC-SHA256 of its plaintext)."""

from __future__ import annotations

import os

from .errors import NotHashPointerError

POINTER_SIZE = 32


class Pointer:
    """An immutable, hashable 32-byte blob name.

    Stored as raw bytes (``.bytes``) in metadata to stay small; shown as 64 hex
    characters (``.hex()``) in file names and object keys.
    """

    __slots__ = ("_b",)

    def __init__(self, raw: bytes | bytearray | memoryview):
        raw = bytes(raw)
        if len(raw) != POINTER_SIZE:
            raise NotHashPointerError(
                f"not a hash pointer: need {POINTER_SIZE} bytes, got {len(raw)}")
        object.__setattr__(self, "_b", raw)

    def __setattr__(self, name, value):
        raise AttributeError("Pointer is immutable")

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> "Pointer":
        """Inverse of ``.bytes``; copies, so the caller keeps its buffer."""
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise NotHashPointerError(f"not a hash pointer: {type(raw).__name__}")
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> "Pointer":
        """Parse exactly 64 hex characters; anything else is NotHashPointerError."""
        if not isinstance(text, str) or len(text) != 2 * POINTER_SIZE:
            raise NotHashPointerError(f"not a hash pointer: {text!r} is not 64 hex characters")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise NotHashPointerError(f"not a hash pointer: {text!r} is not hex") from None

    @classmethod
    def random(cls) -> "Pointer":
        """A pointer to nothing known, e.g. the first key of a brand new node."""
        return cls(os.urandom(POINTER_SIZE))

    @property
    def bytes(self) -> bytes:
        return self._b

    def hex(self) -> str:
        return self._b.hex()

    def __bytes__(self) -> bytes:
        return self._b

    def __eq__(self, other) -> bool:
        return isinstance(other, Pointer) and other._b == self._b

    def __lt__(self, other: "Pointer") -> bool:
        return self._b < other._b

    def __hash__(self) -> int:
        return hash(self._b)

    def __bool__(self) -> bool:
        """False only for ``Null``."""
        return self._b != _NULL_BYTES

    def __repr__(self) -> str:
        return f"Pointer({self.hex()})"

    def __str__(self) -> str:
        return self.hex()

    def __reduce__(self):
        return (Pointer, (self._b,))


_NULL_BYTES = bytes(POINTER_SIZE)

#: The pointer that resolves to nothing: every store answers NotFoundError for it.
Null = Pointer(_NULL_BYTES)


def as_pointer(key) -> Pointer:
    """Accept a Pointer (or its 32 raw bytes); refuse anything else clearly."""
    if isinstance(key, Pointer):
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return Pointer(key)
    raise NotHashPointerError(f"not a hash pointer: {key!r}")
