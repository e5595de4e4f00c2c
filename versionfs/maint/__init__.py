"""Maintenance of a filesystem's metadata and blobs: ``retention`` (which
snapshots to keep), ``gc`` (delete blobs nothing refers to, with the guard that
keeps a collection from racing writes), ``fsck`` (check and repair)."""
