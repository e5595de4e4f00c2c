"""Metadata: write-ahead log, LMDB backend, MVCC revisions, KV with compare-and-swap, records."""
