"""How records and their index entries are laid out in LMDB.

Indexing rules:

* A field is a top-level name or a dotted path into nested objects
  (``"owner.uid"``).  A record lacking any field of a key is not indexed under
  that key (a sparse index: two records both lacking an email do not
  conflict on a unique email key).
* Values match by their canonical JSON: ``1`` and ``1.0`` are different values.
* Every typed record is also indexed under its type name, so
  ``search(type, {})`` lists every record of a type.

LMDB layout (one environment, four named databases)::

    records  id -> b"\\x01" | u16 len(type) | type | canonical JSON value
    index    u16-length-prefixed (type, key name, field values, id) -> b""
             (field values: canonical JSON list; longer than 160 bytes it is
             replaced by b"\\xff" + SHA-256, and matches are confirmed against
             the record itself, so the hash can never give a wrong answer)
    types    type name -> canonical JSON definition
    meta     b"format" -> b"1"
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from ..backup import canonical_json
from .errors import RecordError
from .types import TYPE_INDEX, Type, TypeKey

__all__ = ["Record"]

FORMAT = b"1"
MAX_ID_BYTES = 200
MAX_INLINE_VALUES = 160

_U16 = struct.Struct(">H")
_RECORD_VERSION = b"\x01"


@dataclass(frozen=True)
class Record:
    """One record as read back: its id, type name ('' when untyped) and value."""

    id: bytes
    type: str
    value: Any


def _lp(raw: bytes) -> bytes:
    return _U16.pack(len(raw)) + raw


def _unlp(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = _U16.unpack_from(buf, pos)
    end = pos + 2 + n
    if end > len(buf):
        raise ValueError("length prefix runs past the end")
    return buf[pos + 2:end], end


def _norm_id(id: bytes | str) -> bytes:
    raw = id.encode() if isinstance(id, str) else bytes(id)
    if not raw:
        raise ValueError("record id is empty")
    if len(raw) > MAX_ID_BYTES:
        raise ValueError(f"record id is {len(raw)} bytes, the limit is {MAX_ID_BYTES}")
    return raw


def _encode_value(value: Any) -> bytes:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"record value is not JSON-serialisable: {exc}") from exc


def _encode_record(type_name: str, value_json: bytes) -> bytes:
    return _RECORD_VERSION + _lp(type_name.encode()) + value_json


def _decode_record(raw: bytes) -> tuple[str, bytes]:
    if raw[:1] != _RECORD_VERSION:
        raise RecordError(f"record stored in unknown format {raw[:1]!r}")
    type_raw, pos = _unlp(raw, 1)
    return type_raw.decode(), bytes(raw[pos:])


_MISSING = object()


def _field(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _values_blob(values: list) -> bytes:
    raw = canonical_json(values)
    return raw if len(raw) <= MAX_INLINE_VALUES else b"\xff" + hashlib.sha256(raw).digest()


def _index_prefix(type_name: str, key_name: str, values_blob: bytes | None = None) -> bytes:
    out = _lp(type_name.encode()) + _lp(key_name.encode())
    return out if values_blob is None else out + _lp(values_blob)


def _key_values(key: TypeKey, value: Any) -> list | None:
    values = [_field(value, f) for f in key.fields]
    return None if any(v is _MISSING for v in values) else values


def _index_entries(t: Type | None, type_name: str, id: bytes, value: Any) -> list[tuple[bytes, TypeKey | None, list]]:
    """Every index key a record owns: (index key, type key or None for @type, values)."""
    if not type_name:
        return []
    entries = [(_index_prefix(type_name, TYPE_INDEX, b"") + _lp(id), None, [])]
    for key in (t.keys if t else ()):
        values = _key_values(key, value)
        if values is not None:
            entries.append((_index_prefix(type_name, key.name, _values_blob(values)) + _lp(id), key, values))
    return entries


def _parse_index_key(raw: bytes) -> tuple[str, str, bytes, bytes]:
    type_raw, pos = _unlp(raw, 0)
    key_raw, pos = _unlp(raw, pos)
    values, pos = _unlp(raw, pos)
    id, pos = _unlp(raw, pos)
    if pos != len(raw):
        raise ValueError("trailing bytes")
    return type_raw.decode(), key_raw.decode(), values, id
