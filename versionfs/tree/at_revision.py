"""The filesystem tree at one revision of the MVCC store: paths <-> inodes.

`TreeAt` reads the store through the fs key layout (schema.py) at a revision,
never through the kernel. An inode's path comes from the reverse links
(`b"P" ino parent name`), one lookup per directory level, instead of a walk of
the tree; inode numbers are never reused, so one number means one object at
every revision.
"""

from __future__ import annotations

import errno
import logging
import posixpath
from typing import Iterator

from . import schema
from .schema import ROOT_INO, Inode

log = logging.getLogger(__name__)

EMPTY_REV = 0              # "before the first revision": nothing exists


class HistoryError(Exception):
    """A history request that cannot be served; `errno` is what ctl returns."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        super().__init__(message)
        self.errno = err


def show_name(name: bytes) -> str:
    """A file name for people and JSON: UTF-8, undecodable bytes as \\xNN."""
    return name.decode("utf-8", errors="backslashreplace")


class TreeAt:
    """Read-only view of the tree at one revision (`rev` None = the live head).

    Caches what it resolved, so resolving many paths in one directory costs
    one lookup per directory, once.
    """

    def __init__(self, meta, rev: int | None):
        self.meta = meta
        self.rev = rev
        self._paths: dict[int, str | None] = {ROOT_INO: ""}
        self._fallback: dict[int, tuple[int, bytes]] | None = None

    def get(self, key: bytes) -> bytes | None:
        if self.rev == EMPTY_REV:
            return None
        return self.meta.get(key, self.rev)

    def range(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        if self.rev == EMPTY_REV:
            return iter(())
        return self.meta.range(prefix, schema.prefix_end(prefix), self.rev, limit)

    def inode(self, ino: int) -> Inode | None:
        raw = self.get(schema.inode_key(ino))
        return None if raw is None else Inode.unpack(ino, raw)

    def child(self, parent: int, name: bytes) -> int | None:
        raw = self.get(schema.dirent_key(parent, name))
        return None if raw is None else schema.from_u64(raw)

    def links(self, ino: int) -> list[tuple[int, bytes]]:
        """(parent, name) of every entry naming `ino`, from the reverse links."""
        prefix = schema.link_prefix(ino)
        out = [(schema.from_u64(k[9:17]), k[17:]) for k, _ in self.range(prefix)]
        if not out and ino != ROOT_INO:
            found = self._reverse_map().get(ino)
            if found is not None:
                out = [found]
        return out

    def _reverse_map(self) -> dict[int, tuple[int, bytes]]:
        """Walk the whole tree once: only for revisions written before the
        reverse links existed (none of them has a b"P" key)."""
        if self._fallback is None:
            log.warning("revision %s has no reverse links; walking the tree to find paths", self.rev)
            self._fallback = {}
            todo = [ROOT_INO]
            while todo:
                d = todo.pop()
                prefix = schema.dirent_prefix(d)
                for k, v in self.range(prefix):
                    child = schema.from_u64(v)
                    self._fallback.setdefault(child, (d, k[len(prefix):]))
                    inode = self.inode(child)
                    if inode is not None and inode.is_dir:
                        todo.append(child)
        return self._fallback

    def dir_path(self, ino: int) -> str | None:
        """Path of a directory (or any object, through its first link), "" for the root."""
        if ino in self._paths:
            return self._paths[ino]
        chain = []
        cur = ino
        while cur not in self._paths:
            links = self.links(cur)
            if not links:
                path = None
                break
            parent, name = min(links)
            chain.append((cur, name))
            cur = parent
            if len(chain) > 4096:
                raise HistoryError(f"inode {ino}: directory chain too deep or looping at revision {self.rev}",
                                   errno.ELOOP)
        else:
            path = self._paths[cur]
        for node, name in reversed(chain):
            path = None if path is None else posixpath.join(path, show_name(name)) if path else show_name(name)
            self._paths[node] = path
        return self._paths.get(ino, path)

    def entry_path(self, parent: int, name: bytes) -> str | None:
        base = self.dir_path(parent)
        if base is None:
            return None
        return posixpath.join(base, show_name(name)) if base else show_name(name)

    def paths(self, ino: int) -> list[str]:
        """Every path naming `ino` (hard links give several)."""
        out = []
        for parent, name in self.links(ino):
            p = self.entry_path(parent, name)
            if p is not None:
                out.append(p)
        return sorted(out)

    def lookup(self, path: str) -> int | None:
        """Inode of a mount-relative path ("" or "/" is the root), or None."""
        ino = ROOT_INO
        if self.rev == EMPTY_REV:
            return None
        for part in split_path(path):
            if part == b"..":
                inode = self.inode(ino)
                ino = inode.parent if inode is not None and inode.parent else ROOT_INO
                continue
            inode = self.inode(ino)
            if inode is None or not inode.is_dir:
                return None
            child = self.child(ino, part)
            if child is None:
                return None
            ino = child
        return ino if self.inode(ino) is not None else None


def split_path(path: str) -> list[bytes]:
    """Mount-relative path -> name components (bytes), "." dropped."""
    return [p.encode("utf-8", "surrogateescape") for p in path.split("/") if p not in ("", ".")]


def norm_path(path: str) -> str:
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    return "/".join(parts)
