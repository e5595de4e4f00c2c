"""Whole-file copies of the LMDB database: defrag in place, backup to a stream, restore from one."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import BinaryIO

import lmdb

from ...blob.files import fsync_dir, make_dirs
from .errors import BackendError

__all__ = ["CompactCopies"]


class CompactCopies:
    """``Backend``'s compact copies of its file (a mixin: uses its environment and writer thread)."""

    def defrag(self) -> None:
        """Rewrite the database as a compact copy, returning free pages to the disk.

        Runs on the writer thread (so no write transaction can be open) and
        needs no read snapshot open.  A crash at any moment leaves either the
        old or the new file, both complete.
        """

        def job():
            if self._snapshots:
                raise BackendError(f"defrag needs no open read snapshots ({self._snapshots} open)")
            tmp = tempfile.mkdtemp(prefix=".defrag-", dir=self.path)
            try:
                self._env.copy(tmp, compact=True)
                fd = os.open(os.path.join(tmp, "data.mdb"), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._env.close()
                try:
                    os.rename(os.path.join(tmp, "data.mdb"), os.path.join(self.path, "data.mdb"))
                    fsync_dir(self.path)
                finally:
                    self._open_env()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        self.run(job, with_txn=False)

    def backup_to(self, stream: BinaryIO) -> int:
        """Write a compact, consistent copy of the database file to ``stream``.

        Returns the number of bytes written.  Restore with ``Backend.restore``.
        """
        with tempfile.TemporaryFile(dir=self.path) as tmp:
            self._env.copyfd(tmp.fileno(), compact=True)
            tmp.seek(0)
            n = 0
            while True:
                chunk = tmp.read(1 << 20)
                if not chunk:
                    return n
                stream.write(chunk)
                n += len(chunk)

    @staticmethod
    def restore(stream: BinaryIO, path: str) -> None:
        """Create a database directory at ``path`` from a ``backup_to`` stream, durably
        (a clone's metadata: its WAL holds nothing the copy covers)."""
        make_dirs(path)
        target = os.path.join(path, "data.mdb")
        if os.path.exists(target):
            raise FileExistsError(f"refusing to restore over existing database {target}")
        tmp = target + ".restore"
        with open(tmp, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
        # Validate by opening the copy itself before it takes the real name.
        try:
            env = lmdb.open(tmp, readonly=True, subdir=False, lock=False, max_dbs=16)
            env.close()
        except lmdb.Error as exc:
            os.unlink(tmp)
            raise BackendError(f"backup stream is not a valid LMDB database: {exc}") from exc
        os.rename(tmp, target)
        fsync_dir(path)
