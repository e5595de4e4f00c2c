"""Maintenance of a filesystem's metadata and blobs: ``retention`` (which
snapshots to keep), ``reclaim`` (delete superseded chunks as they are
superseded, from a queue kept in the metadata), ``gc`` (delete blobs nothing
refers to, with the guard that keeps a collection from racing writes; the full
verifier behind ``reclaim``), ``fsck`` (check and repair)."""
