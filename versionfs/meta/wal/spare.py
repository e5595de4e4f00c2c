"""Pre-zeroed segments: a WAL that syncs after every small append should
overwrite blocks that are already allocated and written, so that its
fdatasync commits data only, never a file-size or extent change (on ext4 the
latter is a journal commit of its own per sync). ``fallocate`` alone is not
enough: it leaves unwritten extents whose conversion on first write is again
a metadata change. So a segment is written full of zeros and fsynced once,
ahead of need, in a thread (etcd's WAL file pipeline, seed 004).

The decoder reads a zeroed tail as the end of the log (decode._scan), so a
power cut right after a segment is put in place loses nothing and adds
nothing.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

ZERO_CHUNK = bytes(1 << 20)
SPARE_SUFFIX = ".spare.wal.tmp"     # a leftover ".wal.tmp": removed by WAL.open_at_index


def write_zeros(fd: int, start: int, end: int) -> None:
    """Write zero bytes over [start, end) of fd (allocating real, written blocks)."""
    off = start
    while off < end:
        off += os.pwrite(fd, memoryview(ZERO_CHUNK)[: min(len(ZERO_CHUNK), end - off)], off)


def zeroed_file(path: str, size: int) -> None:
    """Create `path` holding `size` zero bytes, durable (fsynced); on failure
    (a full disk) nothing is left behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_zeros(fd, 0, size)
        os.fsync(fd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


class SpareSegment:
    """The next segment's file, zero-filled and fsynced by a thread of its own
    while the current segment fills up. ``take`` waits for it; a failure is
    logged when it happens and raised by ``take`` (the cut then writes the
    zeros itself, see WAL._cut)."""

    def __init__(self, dirpath: str, seq: int, size: int):
        self.path = os.path.join(dirpath, "%016x%s" % (seq, SPARE_SUFFIX))
        self.size = size
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._prepare, name="wal-spare-segment",
                                        daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            zeroed_file(self.path, self.size)
        except BaseException as exc:        # reported by take(), logged now
            log.error("could not prepare the next write-ahead log segment %s: %s",
                      self.path, exc)
            self.error = exc

    def take(self) -> str:
        """The prepared file's path (it is the caller's now)."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.path

    def discard(self) -> None:
        """Not needed after all (the WAL closes): wait for it and remove it
        (a failed preparation left nothing)."""
        self._thread.join()
        if self.error is not None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
