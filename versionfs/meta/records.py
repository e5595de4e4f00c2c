"""Typed records with secondary indexes on LMDB, with backup and restore (seed 003, cloudb).

A record is a JSON value stored under a unique ``id`` (bytes), optionally of a
registered :class:`Type`.  A type declares :class:`TypeKey` s — lists of fields
to index, unique or not — and every ``set``/``delete`` updates the record and
all its index entries in one LMDB write transaction, so readers never see one
without the other.  A unique key that another record already holds makes the
whole write fail with :class:`KeyConflictError`; nothing is written.

Indexing rules:

* A field is a top-level name or a dotted path into nested objects
  (``"owner.uid"``).  A record lacking any field of a key is not indexed under
  that key (a sparse index: two records both lacking an email do not
  conflict on a unique email key).
* Values match by their canonical JSON: ``1`` and ``1.0`` are different values.
* Every typed record is also indexed under its type name, so
  ``search(type, {})`` lists every record of a type.
* The database stores each type's definition; when the registered definition
  differs from the stored one, that type is re-indexed in the same transaction
  as the write that noticed it.  Registered definitions win; a type that is no
  longer registered keeps indexing by its stored definition.

LMDB layout (one environment, four named databases)::

    records  id -> b"\\x01" | u16 len(type) | type | canonical JSON value
    index    u16-length-prefixed (type, key name, field values, id) -> b""
             (field values: canonical JSON list; longer than 160 bytes it is
             replaced by b"\\xff" + SHA-256, and matches are confirmed against
             the record itself, so the hash can never give a wrong answer)
    types    type name -> canonical JSON definition
    meta     b"format" -> b"1"

Backup format: the framed stream of :mod:`versionfs.meta.backup` with
``kind = "versionfs.records"``; each frame is a msgpack list, first every type
definition in name order — ``["type", name, definition_json]`` — then every
record in id order — ``["record", id, type, value_json]``.  Indexes are not in
the backup: ``restore_from`` rebuilds them, which re-checks uniqueness too.
The backup is taken from one read transaction, so it is a consistent
point-in-time copy while writes go on, and the same content always gives the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable, Iterator

import lmdb

from .backup import (BackupCorruptError, BackupInfo, BackupReader,
                     BackupWriter, canonical_json, validate_stream)
from .lmdb_env import open_shared, release_shared

BACKUP_KIND = "versionfs.records"
FORMAT = b"1"
TYPE_INDEX = "@type"  # implicit key every typed record is indexed under
MAX_ID_BYTES = 200
MAX_NAME_BYTES = 64
MAX_INLINE_VALUES = 160

_U16 = struct.Struct(">H")
_RECORD_VERSION = b"\x01"


class RecordError(Exception):
    """Base class of record store errors."""


class KeyConflictError(RecordError):
    """The record's unique key value already belongs to another record."""


class RecordNotFoundError(RecordError, KeyError):
    """No record has this id."""

    __str__ = Exception.__str__


class UnknownTypeError(RecordError, ValueError):
    """The type name was never registered nor stored in this database."""


class NotPristineError(RecordError):
    """``restore_from`` needs an empty database."""


class RecordStoreFullError(RecordError):
    """The LMDB map is full; the write was not applied."""


# ------------------------------------------------------------------------- types


@dataclass(frozen=True)
class TypeKey:
    """One secondary index: the fields it covers and whether values are unique."""

    name: str
    fields: tuple[str, ...]
    unique: bool = False

    def __init__(self, name: str, fields: Iterable[str], unique: bool = False):
        fields = (fields,) if isinstance(fields, str) else tuple(fields)
        if not fields:
            raise ValueError(f"type key {name!r} has no fields")
        _check_name(name, "key name")
        if name == TYPE_INDEX:
            raise ValueError(f"{TYPE_INDEX!r} is reserved for the implicit type index")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "unique", bool(unique))


@dataclass(frozen=True)
class Type:
    """A record type: its name, its index keys and a definition version."""

    name: str
    keys: tuple[TypeKey, ...] = field(default_factory=tuple)
    version: int = 0

    def __init__(self, name: str, keys: Iterable[TypeKey] = (), version: int = 0):
        _check_name(name, "type name")
        keys = tuple(keys)
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"type {name!r} declares a key name twice: {names}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "version", int(version))

    def definition(self) -> bytes:
        return canonical_json({"name": self.name, "version": self.version,
                               "keys": [{"name": k.name, "fields": list(k.fields), "unique": k.unique}
                                        for k in self.keys]})

    @classmethod
    def from_definition(cls, raw: bytes) -> "Type":
        doc = json.loads(raw)
        return cls(doc["name"], [TypeKey(k["name"], k["fields"], k["unique"]) for k in doc["keys"]],
                   doc["version"])

    def key_for(self, fields: Iterable[str]) -> TypeKey | None:
        wanted = set(fields)
        return next((k for k in self.keys if set(k.fields) == wanted), None)


_registry: dict[str, Type] = {}
_registry_lock = threading.Lock()


def register_type(t: Type) -> None:
    """Make ``t`` the definition every RecordDB in this process indexes by."""
    with _registry_lock:
        _registry[t.name] = t


def registered_type(name: str) -> Type | None:
    return _registry.get(name)


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty str, got {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {name[:40]!r}... is over {MAX_NAME_BYTES} bytes")


# ---------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class Record:
    """One record as read back: its id, type name ('' when untyped) and value."""

    id: bytes
    type: str
    value: Any


@dataclass(frozen=True)
class IndexProblem:
    """One inconsistency ``validate()`` found."""

    kind: str  # "orphan-entry" | "missing-entry" | "unknown-type" | "bad-entry"
    id: bytes
    type: str
    key: str
    detail: str


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


# ------------------------------------------------------------------------- store


class RecordDB:
    """Records and their indexes in an LMDB directory; thread- and process-safe."""

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 30):
        self.path = os.fspath(path)
        self._env = open_shared(self.path, map_size=map_size, max_dbs=8)
        self._records = self._env.open_db(b"records")
        self._index = self._env.open_db(b"index")
        self._types = self._env.open_db(b"types")
        self._meta = self._env.open_db(b"meta")
        self._closed = False
        with self._write() as txn:
            stored = txn.get(b"format", db=self._meta)
            if stored is None:
                txn.put(b"format", FORMAT, db=self._meta)
            elif stored != FORMAT:
                raise RecordError(f"{self.path} holds record format {stored!r}; this build reads {FORMAT!r}")

    # -- plumbing
    def _txn(self, write: bool = False) -> lmdb.Transaction:
        if self._closed:
            raise RecordError(f"RecordDB at {self.path} is closed")
        return self._env.begin(write=write)

    class _WriteTxn:
        """A write transaction whose map-full failure is a clear error."""

        def __init__(self, db: "RecordDB"):
            self.db = db

        def __enter__(self) -> lmdb.Transaction:
            self.txn = self.db._txn(write=True)
            return self.txn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is not None:
                self.txn.abort()
                if issubclass(exc_type, lmdb.MapFullError):
                    raise RecordStoreFullError(
                        f"record store {self.db.path} is full; the write was not applied") from exc
                return
            try:
                self.txn.commit()
            except lmdb.MapFullError as err:
                raise RecordStoreFullError(
                    f"record store {self.db.path} is full; the write was not applied") from err

    def _write(self) -> "_WriteTxn":
        return self._WriteTxn(self)

    def _type(self, txn: lmdb.Transaction, name: str) -> Type | None:
        """The definition indexes follow: the registered one, else the stored one."""
        t = _registry.get(name)
        if t is not None:
            return t
        raw = txn.get(name.encode(), db=self._types)
        return Type.from_definition(raw) if raw is not None else None

    def _sync_type(self, txn: lmdb.Transaction, t: Type) -> None:
        """Store ``t``'s definition; if it changed, re-index its records now."""
        stored = txn.get(t.name.encode(), db=self._types)
        definition = t.definition()
        if stored == definition:
            return
        txn.put(t.name.encode(), definition, db=self._types)
        if stored is not None:
            self._drop_index(txn, _lp(t.name.encode()))
            for id, raw in txn.cursor(db=self._records):
                type_name, value_json = _decode_record(raw)
                if type_name == t.name:
                    self._add_entries(txn, t, type_name, id, json.loads(value_json))

    def _drop_index(self, txn: lmdb.Transaction, prefix: bytes) -> None:
        cursor = txn.cursor(db=self._index)
        if cursor.set_range(prefix):
            while cursor.key().startswith(prefix):
                if not cursor.delete():
                    break

    def _add_entries(self, txn: lmdb.Transaction, t: Type | None, type_name: str,
                     id: bytes, value: Any) -> None:
        for index_key, key, values in _index_entries(t, type_name, id, value):
            if key is not None and key.unique:
                self._check_unique(txn, type_name, key, values, id)
            txn.put(index_key, b"", db=self._index)

    def _check_unique(self, txn: lmdb.Transaction, type_name: str, key: TypeKey,
                      values: list, id: bytes) -> None:
        for other in self._ids_at(txn, _index_prefix(type_name, key.name, _values_blob(values))):
            if other == id:
                continue
            raw = txn.get(other, db=self._records)
            if raw is not None and _key_values(key, json.loads(_decode_record(raw)[1])) == values:
                raise KeyConflictError(
                    f"record {id!r} of type {type_name!r}: unique key {key.name!r} "
                    f"{dict(zip(key.fields, values))} already belongs to record {other!r}")

    def _ids_at(self, txn: lmdb.Transaction, prefix: bytes) -> Iterator[bytes]:
        cursor = txn.cursor(db=self._index)
        if cursor.set_range(prefix):
            for index_key in cursor.iternext(keys=True, values=False):
                if not index_key.startswith(prefix):
                    return
                yield _parse_index_key(index_key)[3]

    def _remove(self, txn: lmdb.Transaction, id: bytes) -> bool:
        raw = txn.get(id, db=self._records)
        if raw is None:
            return False
        type_name, value_json = _decode_record(raw)
        t = self._type(txn, type_name) if type_name else None
        for index_key, _, _ in _index_entries(t, type_name, id, json.loads(value_json)):
            txn.delete(index_key, db=self._index)
        txn.delete(id, db=self._records)
        return True

    # -- records
    def set(self, id: bytes | str, value: Any, type: str | Type | None = None) -> None:
        """Store ``value`` under ``id`` (unique across types), updating its indexes.

        ``type`` is a registered type name (or a :class:`Type`, registered on
        the spot); None stores an untyped, unindexed record.
        """
        id = _norm_id(id)
        value_json = _encode_value(value)
        if isinstance(type, Type):
            register_type(type)
            type = type.name
        type_name = type or ""
        with self._write() as txn:
            t = None
            if type_name:
                t = self._type(txn, type_name)
                if t is None:
                    raise UnknownTypeError(f"record type {type_name!r} is not registered")
                self._sync_type(txn, t)
            self._remove(txn, id)
            self._add_entries(txn, t, type_name, id, json.loads(value_json))
            txn.put(id, _encode_record(type_name, value_json), db=self._records)

    def _load(self, id: bytes | str) -> tuple[bytes, str, bytes]:
        """(id, type name, value JSON) of a record; RecordNotFoundError if absent."""
        id = _norm_id(id)
        with self._txn() as txn:
            raw = txn.get(id, db=self._records)
        if raw is None:
            raise RecordNotFoundError(f"no record {id!r} in {self.path}")
        return (id, *_decode_record(raw))

    def get_record(self, id: bytes | str) -> Record:
        id, type_name, value_json = self._load(id)
        return Record(id, type_name, json.loads(value_json))

    def get(self, id: bytes | str) -> Any:
        """The record's value; :class:`RecordNotFoundError` if absent."""
        return self.get_record(id).value

    def get_raw(self, id: bytes | str) -> bytes:
        """The record's value as its stored canonical JSON."""
        return self._load(id)[2]

    def has(self, id: bytes | str) -> bool:
        id = _norm_id(id)
        with self._txn() as txn:
            return txn.get(id, db=self._records) is not None

    def delete(self, id: bytes | str) -> bool:
        """Delete the record and its index entries; False if it did not exist."""
        id = _norm_id(id)
        with self._write() as txn:
            return self._remove(txn, id)

    def __len__(self) -> int:
        with self._txn() as txn:
            return txn.stat(self._records)["entries"]

    # -- iteration and search (each iterator reads one consistent snapshot)
    def iterate(self, start: bytes | None = None, limit: bytes | None = None) -> Iterator[Record]:
        """Records with ``start <= id < limit`` in id order (None = open end)."""
        with self._txn() as txn:
            cursor = txn.cursor(db=self._records)
            found = cursor.set_range(start) if start else cursor.first()
            if not found:
                return
            for id, raw in cursor:
                if limit is not None and id >= limit:
                    return
                type_name, value_json = _decode_record(raw)
                yield Record(id, type_name, json.loads(value_json))

    def iterate_prefix(self, prefix: bytes) -> Iterator[Record]:
        """Records whose id starts with ``prefix``, in id order."""
        for record in self.iterate(prefix or None):
            if not record.id.startswith(prefix):
                return
            yield record

    def search(self, type: str, search: dict[str, Any]) -> Iterator[Record]:
        """Records of ``type`` whose fields equal ``search``.

        The field names must be exactly those of one of the type's keys (or
        empty, for every record of the type).
        """
        with self._txn() as txn:
            t = self._type(txn, type)
            if t is None:
                raise UnknownTypeError(f"record type {type!r} is not registered")
            if not search:
                key, values, prefix = None, [], _index_prefix(type, TYPE_INDEX, b"")
            else:
                key = t.key_for(search)
                if key is None:
                    raise ValueError(
                        f"type {type!r} has no key on fields {sorted(search)}; its keys: "
                        + ", ".join(f"{k.name}={list(k.fields)}" for k in t.keys))
                values = [search[f] for f in key.fields]
                prefix = _index_prefix(type, key.name, _values_blob(values))
            for id in self._ids_at(txn, prefix):
                raw = txn.get(id, db=self._records)
                if raw is None:
                    continue  # a broken index entry; validate() reports it
                type_name, value_json = _decode_record(raw)
                value = json.loads(value_json)
                if type_name == type and (key is None or _key_values(key, value) == values):
                    yield Record(id, type_name, value)

    def search_first(self, type: str, search: dict[str, Any]) -> Record | None:
        """The first record ``search`` finds, or None."""
        return next(iter(self.search(type, search)), None)

    # -- maintenance
    def reindex(self) -> None:
        """Rebuild every index entry from the records, in one transaction.

        Stores the effective definition of every type in use.  If the records
        violate a unique key, :class:`KeyConflictError` and nothing changes.
        """
        with self._write() as txn:
            self._rebuild(txn)

    def _rebuild(self, txn: lmdb.Transaction) -> None:
        txn.drop(self._index, delete=False)
        types: dict[str, Type | None] = {}
        for id, raw in txn.cursor(db=self._records):
            type_name, value_json = _decode_record(raw)
            if type_name and type_name not in types:
                types[type_name] = t = self._type(txn, type_name)
                if t is not None:
                    txn.put(type_name.encode(), t.definition(), db=self._types)
            self._add_entries(txn, types.get(type_name), type_name, id, json.loads(value_json))

    def validate(self) -> list[IndexProblem]:
        """Check indexes against records; an empty list means consistent.

        Finds index entries whose record is gone or no longer has those values
        (``orphan-entry``), entries a record should have but lacks
        (``missing-entry``), undecodable entries (``bad-entry``) and records
        whose type has no definition (``unknown-type``).
        """
        problems: list[IndexProblem] = []
        with self._txn() as txn:
            types: dict[str, Type | None] = {}

            def type_of(name: str) -> Type | None:
                if name not in types:
                    types[name] = self._type(txn, name)
                return types[name]

            expected: dict[bytes, bytes] = {}  # index key -> id, for the record pass
            for id, raw in txn.cursor(db=self._records):
                type_name, value_json = _decode_record(raw)
                t = type_of(type_name) if type_name else None
                if type_name and t is None:
                    problems.append(IndexProblem("unknown-type", id, type_name, "",
                                                 f"record {id!r} has unregistered type {type_name!r}"))
                for index_key, key, _ in _index_entries(t, type_name, id, json.loads(value_json)):
                    if txn.get(index_key, db=self._index) is None:
                        key_name = key.name if key else TYPE_INDEX
                        problems.append(IndexProblem("missing-entry", id, type_name, key_name,
                                                     f"record {id!r} is missing from index {type_name}/{key_name}"))
                    expected[index_key] = id
            for index_key in txn.cursor(db=self._index).iternext(keys=True, values=False):
                if index_key in expected:
                    continue
                try:
                    type_name, key_name, _, id = _parse_index_key(index_key)
                except (ValueError, UnicodeDecodeError):
                    problems.append(IndexProblem("bad-entry", b"", "", "",
                                                 f"undecodable index entry {index_key[:60]!r}"))
                    continue
                has_record = txn.get(id, db=self._records) is not None
                problems.append(IndexProblem(
                    "orphan-entry", id, type_name, key_name,
                    f"index {type_name}/{key_name} points at "
                    + (f"record {id!r} whose values do not match" if has_record
                       else f"record {id!r}, which does not exist")))
        return problems

    # -- backup
    def backup_to(self, stream: BinaryIO) -> BackupInfo:
        """Write a consistent, verifiable backup of every type and record to ``stream``."""
        with self._txn() as txn:
            with BackupWriter(stream, BACKUP_KIND, {"format": int(FORMAT)}) as writer:
                for name, definition in txn.cursor(db=self._types):
                    writer.write_item(["type", name.decode(), definition])
                for id, raw in txn.cursor(db=self._records):
                    type_name, value_json = _decode_record(raw)
                    writer.write_item(["record", id, type_name, value_json])
            return writer.finish()

    def is_pristine(self) -> bool:
        with self._txn() as txn:
            return all(txn.stat(db)["entries"] == 0 for db in (self._records, self._index, self._types))

    def restore_from(self, stream: BinaryIO) -> BackupInfo:
        """Load a backup into this (empty) database, rebuilding the indexes.

        Everything happens in one write transaction committed only after the
        whole stream verified, so a damaged backup leaves the database empty.
        """
        with self._write() as txn:
            counts = {name: txn.stat(db)["entries"] for name, db in
                      (("records", self._records), ("index entries", self._index),
                       ("type definitions", self._types))}
            if any(counts.values()):
                raise NotPristineError(
                    f"restore_from needs an empty database, but {self.path} holds "
                    + ", ".join(f"{n} {what}" for what, n in counts.items() if n))
            reader = BackupReader(stream, BACKUP_KIND)
            for item in reader.items():
                _restore_item(txn, self, item, reader.count - 1)
            self._rebuild(txn)
            return reader.info()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release_shared(self._env)

    def __enter__(self) -> "RecordDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RecordDB({self.path!r})"


def _check_item(item: Any, n: int) -> None:
    """Raise :class:`BackupCorruptError` unless ``item`` is a well-formed type or record frame."""
    try:
        if item[0] == "type" and len(item) == 3:
            Type.from_definition(item[2])
            _check_name(item[1], "type name")
        elif item[0] == "record" and len(item) == 4:
            _norm_id(item[1])
            if item[2]:
                _check_name(item[2], "type name")
            json.loads(item[3])
        else:
            raise ValueError(f"unknown frame {str(item)[:60]}")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise BackupCorruptError(f"backup frame {n} is not a record-store frame: {exc}") from exc


def _restore_item(txn: lmdb.Transaction, db: RecordDB, item: Any, n: int) -> None:
    _check_item(item, n)
    if item[0] == "type":
        txn.put(item[1].encode(), item[2], db=db._types)
    else:
        txn.put(item[1], _encode_record(item[2], item[3]), db=db._records)


def validate_backup(stream: BinaryIO) -> BackupInfo:
    """Verify a record-store backup end to end without restoring it.

    Checks the framing (truncation, checksums, count, chain; see
    :mod:`versionfs.meta.backup`) and that every frame is a well-formed type
    or record.  Raises a :class:`~versionfs.meta.backup.BackupError`.
    """
    reader = BackupReader(stream, BACKUP_KIND)
    for item in reader.items():
        _check_item(item, reader.count - 1)
    return reader.info()


__all__ = ["Type", "TypeKey", "register_type", "registered_type", "RecordDB", "Record",
           "IndexProblem", "KeyConflictError", "RecordNotFoundError", "UnknownTypeError",
           "NotPristineError", "RecordStoreFullError", "RecordError", "validate_backup",
           "validate_stream"]
