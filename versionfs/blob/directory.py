"""DirectoryStore: a plain local or network-mounted directory as the slow store.

This is the embedded default (``file:///path``), so trying the filesystem needs
no cloud account. Layout, shared with the S3 store so tools read both alike::

    ROOT/blobs/ab/abcdef…     blobs (fan-out, atomic durable writes)
    ROOT/<name>               named objects (metadata) via DirectoryBucket
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Iterator

from .errors import NotFoundError, PreconditionFailedError
from .files import FILE_MODE, TEMP_PREFIX, FanOutStore, atomic_write, fsync_dir, make_dirs, read_file
from .store import Buffer

LOCK_NAME = ".lock"


class DirectoryStore(FanOutStore):
    """Blobs under ``ROOT/blobs``; ``.bucket`` gives named objects under ROOT."""

    def __init__(self, path: str | os.PathLike):
        self.base = Path(path)
        make_dirs(self.base)                       # ours: private wherever it lives
        super().__init__(self.base / "blobs")
        self.bucket = DirectoryBucket(self.base)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.base)!r})"


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class DirectoryBucket:
    """Named objects in a directory, with the same API as ``S3Bucket``.

    The entity tag is a digest of the content. Conditional operations hold an
    exclusive ``flock`` on ``ROOT/.lock`` across read-compare-write, which makes
    them atomic between threads and processes on one machine (and on network
    file systems whose flock is real, such as NFSv4).
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        make_dirs(self.root)

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
            raise ValueError(f"bad object name {name!r}")
        parts = name.split("/")
        if any(p in ("", ".", "..") or p.startswith(TEMP_PREFIX) or p == LOCK_NAME for p in parts):
            raise ValueError(f"bad object name {name!r}: empty, dot or reserved path segment")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, path: Path, data: Buffer) -> str:
        make_dirs(path.parent)
        atomic_write(str(path), data)
        return _etag(bytes(data))

    def get(self, name: str) -> tuple[bytes, str]:
        try:
            data = read_file(str(self._path(name)))
        except NotFoundError:
            raise NotFoundError(f"no object {name!r} in {self.root}") from None
        return data, _etag(data)

    def put(self, name: str, data: Buffer) -> str:
        return self._write(self._path(name), data)

    def put_if_absent(self, name: str, data: Buffer) -> str:
        path = self._path(name)
        with self._locked():
            if path.exists():
                raise PreconditionFailedError(f"object {name!r} already exists in {self.root}")
            return self._write(path, data)

    def put_if_match(self, name: str, data: Buffer, etag: str) -> str:
        path = self._path(name)
        with self._locked():
            self._check_etag(name, etag)
            return self._write(path, data)

    def delete_if_match(self, name: str, etag: str) -> None:
        path = self._path(name)
        with self._locked():
            self._check_etag(name, etag)
            os.unlink(path)
            fsync_dir(path.parent)

    def _check_etag(self, name: str, etag: str) -> None:
        try:
            _, current = self.get(name)
        except NotFoundError:
            raise PreconditionFailedError(f"object {name!r} does not exist in {self.root}") from None
        if current != etag.strip('"'):
            raise PreconditionFailedError(
                f"object {name!r} changed: etag {current} is not {etag}")

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names starting with ``prefix``, sorted (as S3 lists them)."""
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for fname in filenames:
                if fname == LOCK_NAME or fname.startswith(TEMP_PREFIX):
                    continue
                name = rel + fname
                if name.startswith(prefix):
                    names.append(name)
        yield from sorted(names)
