"""versionfs: a versioned FUSE filesystem for cloud-backed home directories.

The map, top to bottom. A package imports only from packages below it
(tests/test_layout.py checks every import, including those inside functions,
and that no modules import each other in a cycle):

    cli      the ``versionfs`` command: one module per command group, listed in
             cli/main.py; the mount daemon (cli/daemon.py); the ctl-file client
    fs       the mount: pyfuse3 Operations on trio, the data path (dirty areas,
             sealing into chunks, reads), snapshot views, services beside the
             mount; fs/ctl/ holds the control file's commands, one module per
             group, listed in fs/ctl/registry.py
    bucket   the bucket: publishing metadata, the writer lease, the mount's
             bucket session (catching up, renewing, shipping), clone
    maint    maintenance: retention, reclamation of superseded chunks, gc, fsck
    tree     the filesystem tree as kept in metadata: key schema, history
             (tree at a revision, diff, restore plans), snapshot names
    common   what commands and daemon share: config, units, the state
             directory (which assembles the stores below), logs, metrics
    meta     metadata engine: write-ahead log, LMDB backend, MVCC revisions,
             KV with compare-and-swap, records, backup
    blob     content-addressed blobs: pointers, codec, local/S3/remote stores,
             the fast/slow pair with its upload journal

Beside the package: ctl/ (the ctl-file protocol and a POSIX sh client),
contrib/ (install script, systemd units, fstab helper, completion), bench/.
"""

__version__ = "0.1.0"
