"""Typed records with secondary indexes on LMDB, with backup and restore (seed 003, cloudb).

A record is a JSON value stored under a unique ``id`` (bytes), optionally of a
registered :class:`Type`.  A type declares :class:`TypeKey` s — lists of fields
to index, unique or not — and every ``set``/``delete`` updates the record and
all its index entries in one LMDB write transaction, so readers never see one
without the other.  A unique key that another record already holds makes the
whole write fail with :class:`KeyConflictError`; nothing is written.

    types.py     ``Type``, ``TypeKey`` and the process-wide registry of types
    encoding.py  how records and index entries are laid out in LMDB
    indexes.py   keeping indexes in step with records; reindex, validate
    backup.py    backup, restore and checking a backup
    db.py        ``RecordDB``: open, set, get, delete, iterate, search
    errors.py    what can go wrong
"""
