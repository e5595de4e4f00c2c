"""``RecordDB``: the LMDB environment, and setting, getting, deleting, iterating and searching records."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import lmdb

from ..lmdb_env import open_shared, release_shared
from .backup import RecordBackup
from .encoding import (FORMAT, Record, _decode_record, _encode_record, _encode_value,
                       _index_entries, _index_prefix, _key_values, _norm_id, _values_blob)
from .errors import RecordError, RecordNotFoundError, RecordStoreFullError, UnknownTypeError
from .indexes import IndexMaintenance
from .types import TYPE_INDEX, Type, register_type

__all__ = ["RecordDB"]


class RecordDB(IndexMaintenance, RecordBackup):
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
