"""`VersionFS`: the pyfuse3 request handlers of a versionfs mount.

pyfuse3 calls the methods of one `Operations` object, and the handlers share
one cache of inodes, open files and handles. So `VersionFS` is one class,
composed of mixins that each hold one responsibility in their own module, on
top of `MountCore` (core.py), which sets up that shared state in one place
and keeps the inode cache and the metadata store in step:

    namespace.py       lookup, attributes, names (mknod, mkdir, symlink, link,
                       unlink, rmdir, rename), readdir, statfs
    special_dirs.py    lookups and listings inside /.versionfs and its snapshots
                       directory (their inode numbers: special_inodes.py)
    files.py           open, create and the I/O on file handles
    xattrs.py          extended attributes, among them POSIX ACLs (their format
                       and rules: acls.py)
    lifecycle.py       start, background sealing, snapshot, flush, status, shutdown
    durability.py      fsync through the dirty journal (journal.py), its replay

The mixins call each other's helpers through `self` (setattr truncates
through FileOps, a write schedules a seal in LifecycleOps). Every handler is
wrapped by `guard.guard` (errno mapping, metrics); pyfuse3.Operations comes
last and answers what no mixin handles.
"""

from __future__ import annotations

import pyfuse3

from .durability import DurabilityOps
from .files import FileOps
from .lifecycle import LifecycleOps
from .namespace import NamespaceOps
from .reclaiming import ReclaimOps
from .special_dirs import SpecialDirOps
from .xattrs import XattrOps


class VersionFS(NamespaceOps, SpecialDirOps, FileOps, XattrOps, LifecycleOps, DurabilityOps,
                ReclaimOps, pyfuse3.Operations):
    """One mount's request handlers; constructed with `MountCore`'s arguments."""

    enable_writeback_cache = True
    enable_acl = True                 # POSIX ACLs checked and cached by the kernel (acls.py)
    supports_dot_lookup = True
