"""Backing up a record store, restoring it, and checking a backup without restoring it.

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

import json
from typing import Any, BinaryIO

import lmdb

from ..backup import BackupCorruptError, BackupInfo, BackupReader, BackupWriter
from .encoding import FORMAT, _decode_record, _encode_record, _norm_id
from .errors import NotPristineError
from .types import Type, _check_name

__all__ = ["validate_backup"]

BACKUP_KIND = "versionfs.records"


class RecordBackup:
    """``RecordDB``'s backup and restore (a mixin)."""

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


def _restore_item(txn: lmdb.Transaction, db, item: Any, n: int) -> None:
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
