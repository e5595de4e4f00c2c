"""versionfs: a versioned FUSE filesystem for cloud-backed home directories.

Layers (one-way dependencies, top to bottom; see README "How it works"):

    versionfs.cli.main, ctl/, contrib/   commands people type, service files
    versionfs.fs                    pyfuse3 Operations on trio
    versionfs.meta                  WAL + LMDB backend + MVCC, KV with CAS, records
    versionfs.blob                  content-addressed blobs and their stores

``meta`` and ``blob`` never import ``fs``; ``blob`` never imports ``meta``.
"""

__version__ = "0.1.0"
