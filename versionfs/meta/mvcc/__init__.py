"""Multi-version key/value store: revisions over the LMDB backend, journaled by the WAL.

This is the only thing the filesystem needs from ``versionfs.meta``.

Model.  The store has a *head* revision that takes writes and any number of
frozen revisions (snapshots).  ``snapshot()`` freezes the head and opens the
next revision; reading revision ``r`` sees, for every key, its newest version
written at a revision ``<= r``.

One module per responsibility; ``MVCCStore`` (store.py) is assembled from them:

    layout.py      LMDB buckets, key/revision encoding, WAL entries
    writes.py      ``WriteBatch`` and the write side at the head
    overlay.py     the in-memory generations reads consult first
    revisions.py   the revision catalogue: snapshots, names, delete_revision
    reads.py       get and range at a revision
    changes.py     the ``changes`` index: changed_keys, check_indexes
    compaction.py  compact, versions, defrag
    store.py       open and replay, backend hooks, checkpoints, close
    errors.py      what can go wrong
"""
