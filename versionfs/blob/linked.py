"""Uploads from the fast store to a slow store on the same file system: hard links.

The embedded default slow store (``file://``, STATE/slow) sits on the same
file system as the fast store (STATE/fast). Copying a blob there writes every
byte a second time to the same disk, for no safety a second name cannot give.
So when both stores are directories on one file system, an upload links the
fast store's blob file into the slow store instead (``FanOutStore.link_blob``):
no byte is read back for the copy or written again.

Why it is safe:

* Blobs are immutable and content-addressed. No store ever writes into a blob
  file: a put writes a temp file and renames it over the name, so a name is
  replaced by a new inode and the inode a link shares never changes.
* Only what verifies is linked: the upload opens the fast blob, checks those
  bytes against the pointer (as a copying upload does) and links exactly that
  open inode (through /proc/self/fd), not whatever the name holds a moment
  later.
* Only durable blobs are uploaded (the upload journal lists a blob only after
  its data was fsynced, Paired's barrier), so the link needs no data fsync;
  the slow store's directory is fsynced like after any put, so a power cut
  during uploads leaves a name either absent (the journal uploads it again)
  or pointing at the whole blob.
* The fast store evicting or deleting a blob removes its name only: the slow
  store's name keeps the inode and its data. A damaged fast copy replaced by
  a re-put gets a new inode; its upload then verifies the slow copy and links
  the good one over it if the shared one was the damaged one.

What a link does not give: a second physical copy. A slow store on the same
disk is no backup against that disk anyway; use an S3 bucket (or a directory
on another disk, which is then copied) for that. Reflinks would not add one
either (the extents are shared the same way), and hard links work on every
POSIX file system, so links it is.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from .errors import NotFoundError
from .files import read_fd
from .pointer import Pointer
from .store import Store

log = logging.getLogger(__name__)

# Errors after which linking is given up for copying: another file system
# (EXDEV), a file system that refuses hard links (EPERM, EOPNOTSUPP), too
# many links to one inode (EMLINK), /proc not mounted (ENOENT on it).
NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK}


class FastCopy:
    """The fast store's copy of one blob, to be verified and then sent: by link
    when `fd` is an open blob file on the slow store's file system, else by
    copying `data`. A context manager: it closes the descriptor."""

    def __init__(self, data: bytes, fd: int | None):
        self.data, self.fd = data, fd

    def __enter__(self) -> "FastCopy":
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Uploader:
    """How Paired moves a verified fast copy to the slow store: a hard link
    when both are directories on one file system (module docstring), else a
    copy. Counts both (``linked``, ``copied``) for status and tests."""

    def __init__(self, fast: Store, slow: Store):
        self.fast, self.slow = fast, slow
        self.linking = (hasattr(fast, "open_blob") and hasattr(slow, "link_blob")
                        and slow.same_file_system(fast))
        self.linked = 0
        self.copied = 0
        self._lock = threading.Lock()

    def fast_copy(self, key: Pointer) -> FastCopy:
        """The fast copy of ``key`` (NotFoundError if there is none)."""
        if self.linking:
            try:
                fd = self.fast.open_blob(key)
            except NotFoundError:
                pass                    # staged, or gone: the store's own get says which
            else:
                try:
                    return FastCopy(read_fd(fd), fd)
                except BaseException:
                    os.close(fd)
                    raise
        return FastCopy(self.fast.get(key), None)

    def send(self, key: Pointer, copy: FastCopy) -> None:
        """Put ``copy`` (verified by the caller) into the slow store."""
        if copy.fd is not None and self.linking:
            try:
                self.slow.link_blob(key, copy.fd)
            except OSError as exc:
                if exc.errno not in NO_LINK_ERRNOS and not _proc_missing(exc):
                    raise
                self.linking = False
                log.warning("cannot hard-link blobs into the slow store %r (%s); copying "
                            "them from now on", self.slow, exc)
            else:
                with self._lock:
                    self.linked += 1
                return
        self.slow.put(key, copy.data)
        with self._lock:
            self.copied += 1


def _proc_missing(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT and not os.path.isdir("/proc/self/fd")
