"""Helpers for the gc/fsck/forget tests: a real filesystem driven through the CLI,
and read-only looks at its state dir between mounts."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from cli_util import daemon_pid, force_cleanup, mount_type, ok, run_cli, wait_gone


class Fs:
    """One state dir and mountpoint under ``root``; ``cleanup()`` always unmounts."""

    def __init__(self, root: Path):
        self.state = root / "state"
        self.mnt = root / "mnt"
        self.mnt.mkdir()

    def init(self, *extra: str) -> None:
        ok(run_cli("init", self.state, *extra))

    def mount(self) -> None:
        ok(run_cli("mount", self.state, self.mnt))
        assert mount_type(self.mnt) == "fuse.versionfs"

    def umount(self) -> None:
        pid = daemon_pid(self.state)
        ok(run_cli("umount", self.mnt))
        if pid:
            assert wait_gone(pid, 20)

    def cli(self, *args: str) -> str:
        return ok(run_cli(*args))

    def cleanup(self) -> None:
        force_cleanup(self.mnt, self.state)

    def wipe_fast(self) -> None:
        """Empty the fast store, so every later read must come from the slow store."""
        fast = self.state / "fast"
        shutil.rmtree(fast)
        fast.mkdir()


def slow_blobs(s3_server, bucket: str) -> set[bytes]:
    """Raw pointers of the blobs in a test bucket (slow store ``s3://bucket/vfs``)."""
    client = s3_server.client()
    out = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="vfs/blobs/"):
        for obj in page.get("Contents", []):
            out.add(bytes.fromhex(obj["Key"].rsplit("/", 1)[1]))
    return out


def fast_blobs(state: Path) -> set[bytes]:
    """Raw pointers of the blobs in a state dir's fast store."""
    return {bytes.fromhex(p.name) for p in (state / "fast").glob("??/*") if len(p.name) == 64}


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file (symlinks: their target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".versionfs"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "->" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def open_meta(state: Path):
    from versionfs.meta.mvcc.store import MVCCStore
    return MVCCStore.open(str(state / "meta"))


def file_pointers(meta, path: str, rev=None) -> list[bytes]:
    """Raw blob pointers of the file at ``path`` (relative to the root) in ``rev``."""
    from versionfs.tree import schema
    ino = schema.ROOT_INO
    for part in path.split("/"):
        raw = meta.get(schema.dirent_key(ino, part.encode()), rev)
        assert raw is not None, f"{path} not found in revision {rev}"
        ino = schema.from_u64(raw)
    prefix = schema.extent_prefix(ino)
    return [schema.unpack_extent(k, v)[2] for k, v in meta.range(prefix, schema.prefix_end(prefix), rev)]


def file_ino(meta, path: str, rev=None) -> int:
    from versionfs.tree import schema
    ino = schema.ROOT_INO
    for part in path.split("/"):
        ino = schema.from_u64(meta.get(schema.dirent_key(ino, part.encode()), rev))
    return ino
