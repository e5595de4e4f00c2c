"""Keeping the indexes in step with the records: type definitions, unique keys, reindex, validate.

The database stores each type's definition; when the registered definition
differs from the stored one, that type is re-indexed in the same transaction
as the write that noticed it.  Registered definitions win; a type that is no
longer registered keeps indexing by its stored definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import lmdb

from .encoding import (_decode_record, _index_entries, _index_prefix, _key_values, _lp,
                       _parse_index_key, _values_blob)
from .errors import KeyConflictError
from .types import TYPE_INDEX, Type, TypeKey, registered_type

__all__ = ["IndexProblem"]


@dataclass(frozen=True)
class IndexProblem:
    """One inconsistency ``validate()`` found."""

    kind: str  # "orphan-entry" | "missing-entry" | "unknown-type" | "bad-entry"
    id: bytes
    type: str
    key: str
    detail: str


class IndexMaintenance:
    """``RecordDB``'s index upkeep (a mixin: its ``_records``, ``_index`` and ``_types`` databases)."""

    def _type(self, txn: lmdb.Transaction, name: str) -> Type | None:
        """The definition indexes follow: the registered one, else the stored one."""
        t = registered_type(name)
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
