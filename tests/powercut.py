"""A test-only FUSE passthrough that can lose power.

``python tests/powercut.py DISK MOUNTPOINT [strict|ext4]`` serves DISK/live at
MOUNTPOINT (pyfuse3 + trio) in a process of its own, which outlives a kill -9 of
whatever runs on top, and prints READY.  SIGUSR1 is a power cut: DISK/live is
rewritten to its durable state, ``CUT {summary}`` printed, every request answered
EIO (the machine is off) and the mount goes away; starting it again on DISK is
the reboot.  SIGTERM is a clean shutdown.  ``PowerCutDisk`` drives it from a test.

Durability model: what survives a cut (at least as strict as ext4 with
data=ordered in its worst case):

* File data and size.  A write or a truncate (setattr size, open with O_TRUNC)
  survives only if fsync or fdatasync reached the file afterwards, through any
  of its handles (msync and O_SYNC/O_DSYNC writes reach us as fsync: the kernel
  sends one).  Everything since the file's last sync is reverted exactly,
  nothing half-kept: a file comes back as it was at its last sync, or empty if
  it never had one (a name that survived without its data, ext4's famous
  zero-length file).
* Names.  A create, link, mkdir, unlink, rmdir or rename
  survives only if it is committed.  Mode ``strict`` (default, POSIX; ext2 or
  ext4 without a journal): fsync of a directory commits every pending change
  to its entries; a rename between two directories is one change, so fsyncing
  either directory commits both of its sides.  fsync of a file commits no name.
  Mode ``ext4`` (ext4's jbd2 journal, worst case): the changes form one ordered
  log and fsync of a file or directory commits the log up to the last change
  that touched that inode (fdatasync: up to its creation), never beyond.
* Not modelled (kept as last written): permissions, owners, timestamps,
  sync()/syncfs() (they do not count as fsync).  Symlinks, device nodes,
  extended attributes and RENAME_EXCHANGE are not supported.

Shared writable mmap works: without direct_io the kernel writes dirty pages
back as ordinary WRITEs and turns msync into FSYNC.  LMDB's lock.mdb (mapped
MAP_SHARED, never synced, re-initialised by LMDB when the first process opens
the environment) needs nothing more; its POSIX and flock locks are kept by the
kernel, since this filesystem implements no lock operations.

How.  DISK/live is the tree as written.  Each write first saves the bytes it
overwrites and the old size in the file's undo list; a sync empties the list;
the cut replays the lists backwards.  Every non-directory is also hard-linked as
DISK/inodes/<id>, so a file whose unlink is not durable yet keeps its content.
Names are a model: the entries of each directory as committed (at start: as
found), plus the log of pending changes.  The cut rebuilds DISK/live from the
model with hard links and writes DISK/cut-report.json: names lost, names back,
files reverted.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
TIMEOUT = 1.0               # kernel attribute/entry cache, seconds


class Node:
    """One inode: a directory (known by parent and name) or anything else
    (known by its pinning link DISK/inodes/<id>)."""

    __slots__ = ("id", "is_dir", "parent", "name", "mode", "undo", "sync_seq", "datasync_seq")

    def __init__(self, nid: int, is_dir: bool, parent: int = 0, name: bytes = b"", mode: int = 0o755):
        self.id, self.is_dir, self.parent, self.name, self.mode = nid, is_dir, parent, name, mode
        self.undo: list[tuple[int, bytes, int]] = []   # (offset, old bytes, old size)
        self.sync_seq = self.datasync_seq = 0          # last name change touching it


def _op(fn):
    """A request handler: EIO once the power is off, OSError as its errno."""
    @functools.wraps(fn)
    async def handler(self, *args):
        if self.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return fn(self, *args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    return handler


class PowerCutFS(pyfuse3.Operations):
    def __init__(self, disk: Path, names: str = "strict"):
        super().__init__()
        assert names in ("strict", "ext4"), names
        self.disk, self.names = Path(disk), names
        self.live = os.fsencode(self.disk / "live")
        self.inodes = os.fsencode(self.disk / "inodes")
        for leftover in ("inodes", "cut-new", "cut-old"):
            shutil.rmtree(self.disk / leftover, ignore_errors=True)
        os.makedirs(self.live, exist_ok=True)
        os.mkdir(self.inodes)
        self.dead = False
        self.nodes: dict[int, Node] = {ROOT: Node(ROOT, True, mode=os.lstat(self.live).st_mode)}
        self.by_ino = {os.lstat(self.live).st_ino: ROOT}   # backing st_ino -> id
        self.next_id = ROOT + 1
        self.committed: dict[int, dict[bytes, int]] = {}   # dir id -> name -> id
        self.pending: list[tuple[int, tuple]] = []          # (seq, name change)
        self.seq = 0
        self.handles: dict[int, tuple[int, Node]] = {}      # fh -> (backing fd, node)
        self.dirs: dict[int, tuple[Node, list[bytes]]] = {}
        self.next_fh = 1
        self._adopt(self.nodes[ROOT])

    # ------------------------------------------------------------ the model

    def _adopt(self, d: Node) -> None:
        """At start everything found is durable."""
        entries = self.committed[d.id] = {}
        for e in os.scandir(self._path(d)):
            node = self._learn(d, e.name, e.stat(follow_symlinks=False))
            entries[e.name] = node.id
            if node.is_dir:
                self._adopt(node)

    def _learn(self, d: Node, name: bytes, st: os.stat_result) -> Node:
        nid = self.by_ino.get(st.st_ino)
        if nid is not None:
            return self.nodes[nid]
        node = Node(self.next_id, stat.S_ISDIR(st.st_mode), d.id, name, st.st_mode)
        self.next_id += 1
        self.nodes[node.id] = node
        self.by_ino[st.st_ino] = node.id
        if node.is_dir:
            self.committed.setdefault(node.id, {})
        else:
            os.link(os.path.join(self._path(d), name), self._pin(node), follow_symlinks=False)
        return node

    def _path(self, node: Node) -> bytes:
        parts = []
        while node.id != ROOT:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return os.path.join(self.live, *reversed(parts))

    def _pin(self, node: Node) -> bytes:
        return os.path.join(self.inodes, str(node.id).encode())

    def _where(self, node: Node) -> bytes:
        return self._path(node) if node.is_dir else self._pin(node)

    def _dir(self, nid: int) -> Node:
        node = self.nodes.get(nid)
        if node is None or not node.is_dir:
            raise OSError(errno.ENOENT, "no such directory")
        return node

    def _log(self, change: tuple, *touched: int, created: int = 0) -> None:
        """Record a name change: ("link"|"unlink", dir, name, id) or
        ("rename", dir, name, dir2, name2, id)."""
        self.seq += 1
        self.pending.append((self.seq, change))
        for nid in touched:
            self.nodes[nid].sync_seq = self.seq
        if created:
            self.nodes[created].datasync_seq = self.seq

    def _commit(self, keep) -> None:
        """Apply, in order, the pending name changes `keep(seq, change)` selects."""
        rest = []
        for seq, change in self.pending:
            if not keep(seq, change):
                rest.append((seq, change))
                continue
            kind, d, name, *more = change
            if kind == "link":
                self.committed[d][name] = more[0]
            else:
                nid = more[-1]
                if self.committed[d].get(name) == nid:
                    del self.committed[d][name]
                if kind == "rename":
                    self.committed[more[0]][more[1]] = nid
        self.pending = rest

    def _remember(self, node: Node, fd: int, off: int, length: int) -> None:
        """Save what a write or truncate of [off, off+length) is about to replace."""
        size = os.fstat(fd).st_size
        old = os.pread(fd, min(length, size - off), off) if off < size else b""
        node.undo.append((off, old, size))

    # ------------------------------------------------------------ the cut

    def power_cut(self) -> dict:
        """Drop everything not durable and rewrite DISK/live to what survived."""
        self.dead = True
        live, durable = self._walk_live(), {}
        new, old = self.disk / "cut-new", self.disk / "cut-old"
        os.mkdir(new, stat.S_IMODE(self.nodes[ROOT].mode))
        self._build(ROOT, os.fsencode(new), "", durable)
        reverted = {}
        for node in (n for n in self.nodes.values() if n.undo):
            fd = os.open(self._pin(node), os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                for off, data, old_size in reversed(node.undo):
                    os.pwrite(fd, data, off)
                    os.ftruncate(fd, old_size)
            finally:
                os.close(fd)
            for p in ([p for p, i in durable.items() if i == node.id]
                      or [p for p, i in live.items() if i == node.id]):
                reverted[p] = {"writes": len(node.undo), "size": [size, node.undo[0][2]],
                               "durable name": p in durable}
        os.rename(self.live, old)
        os.rename(new, self.live)
        shutil.rmtree(old)
        shutil.rmtree(self.inodes)
        report = {"lost": sorted(set(live) - set(durable)), "back": sorted(set(durable) - set(live)),
                  "replaced": sorted(p for p, i in live.items() if durable.get(p, i) != i),
                  "reverted": reverted}
        (self.disk / "cut-report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        return {k: len(v) for k, v in report.items()}

    def _build(self, did: int, path: bytes, prefix: str, out: dict[str, int]) -> None:
        """Create the committed tree under `path`; `out` gets relative path -> id."""
        for name, cid in self.committed[did].items():
            child, target, rel = self.nodes[cid], os.path.join(path, name), prefix + os.fsdecode(name)
            if not child.is_dir:
                os.link(self._pin(child), target, follow_symlinks=False)
            elif cid in out.values():
                continue                     # a directory has one name
            else:
                os.mkdir(target, stat.S_IMODE(child.mode))
                self._build(cid, target, rel + "/", out)
            out[rel] = cid

    def _walk_live(self) -> dict[str, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.live):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                out[os.fsdecode(os.path.relpath(p, self.live))] = self.by_ino.get(os.lstat(p).st_ino, 0)
        return out

    # ------------------------------------------------------------ requests

    def _attr(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        st = st or os.lstat(self._where(node))
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.generation = node.id, 0
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_nlink = st.st_nlink - (0 if node.is_dir else 1)     # not the pinning link
        for f in ("st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize", "st_blocks",
                  "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, f, getattr(st, f))
        return a

    def _entry(self, d: Node, name: bytes) -> tuple[bytes, Node]:
        path = os.path.join(self._path(d), name)
        return path, self._learn(d, name, os.lstat(path))

    def _new(self, d: Node, name: bytes, ctx) -> Node:
        """Adopt what create or mkdir just made at d/name."""
        path = os.path.join(self._path(d), name)
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        node = self._learn(d, name, os.lstat(path))
        self._log(("link", d.id, name, node.id), d.id, node.id, created=node.id)
        return node

    def _fh(self, fd: int, node: Node) -> pyfuse3.FileInfo:
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.handles[fh] = (fd, node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_op
    def lookup(self, parent, name, ctx):
        path, node = self._entry(self._dir(parent), name)
        return self._attr(node)

    @_op
    def getattr(self, inode, ctx):
        return self._attr(self.nodes[inode])

    @_op
    def setattr(self, inode, attr, fields, fh, ctx):
        node = self.nodes[inode]
        where = self._where(node)
        if fields.update_size:
            fd = self.handles[fh][0] if fh in self.handles else os.open(where, os.O_RDWR)
            size = os.fstat(fd).st_size
            self._remember(node, fd, min(size, attr.st_size), max(0, size - attr.st_size))
            os.ftruncate(fd, attr.st_size)
            if fh not in self.handles:
                os.close(fd)
        if fields.update_mode:
            os.chmod(where, stat.S_IMODE(attr.st_mode))
            node.mode = attr.st_mode
        if fields.update_uid or fields.update_gid:
            os.chown(where, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(where)
            os.utime(where, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return self._attr(node)

    @_op
    def open(self, inode, flags, ctx):
        node = self.nodes[inode]
        # O_RDWR always (undo needs to read); never O_APPEND (the kernel gives
        # the offset), O_SYNC or O_DIRECT (the kernel sends the fsync).
        fd = os.open(self._pin(node), os.O_RDWR)
        if flags & os.O_TRUNC:
            self._remember(node, fd, 0, os.fstat(fd).st_size)
            os.ftruncate(fd, 0)
        return self._fh(fd, node)

    @_op
    def create(self, parent, name, mode, flags, ctx):
        d = self._dir(parent)
        path = os.path.join(self._path(d), name)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode)))
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            node = self._entry(d, name)[1]
        else:
            node = self._new(d, name, ctx)
        fi = self.open.__wrapped__(self, node.id, flags, ctx)
        return fi, self._attr(node)

    @_op
    def read(self, fh, off, size):
        return os.pread(self.handles[fh][0], size, off)

    @_op
    def write(self, fh, off, buf):
        fd, node = self.handles[fh]
        self._remember(node, fd, off, len(buf))
        return os.pwrite(fd, buf, off)

    @_op
    def fsync(self, fh, datasync):
        node = self.handles[fh][1]
        node.undo.clear()
        if self.names == "ext4":
            upto = node.datasync_seq if datasync else node.sync_seq
            self._commit(lambda seq, change: seq <= upto)

    @_op
    def fsyncdir(self, fh, datasync):
        node = self.dirs[fh][0]
        if self.names == "ext4":
            self._commit(lambda seq, change: seq <= node.sync_seq)
        else:
            self._commit(lambda seq, change: node.id in (change[1], change[3] if len(change) > 4 else None))

    @_op
    def release(self, fh):
        os.close(self.handles.pop(fh)[0])

    @_op
    def mkdir(self, parent, name, mode, ctx):
        d = self._dir(parent)
        os.mkdir(os.path.join(self._path(d), name), stat.S_IMODE(mode))
        return self._attr(self._new(d, name, ctx))

    @_op
    def link(self, inode, new_parent, new_name, ctx):
        node, d = self.nodes[inode], self._dir(new_parent)
        os.link(self._pin(node), os.path.join(self._path(d), new_name), follow_symlinks=False)
        self._log(("link", d.id, new_name, node.id), d.id, node.id)
        return self._attr(node)

    @_op
    def unlink(self, parent, name, ctx):
        d = self._dir(parent)
        path, node = self._entry(d, name)
        os.unlink(path)
        self._log(("unlink", d.id, name, node.id), d.id, node.id)

    @_op
    def rmdir(self, parent, name, ctx):
        d = self._dir(parent)
        path, node = self._entry(d, name)
        ino = os.lstat(path).st_ino
        os.rmdir(path)
        del self.by_ino[ino]                 # the number may be reused by a new inode
        self._log(("unlink", d.id, name, node.id), d.id, node.id)

    @_op
    def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        d1, d2 = self._dir(parent_old), self._dir(parent_new)
        src, node = self._entry(d1, name_old)
        dst = os.path.join(self._path(d2), name_new)
        replaced = os.lstat(dst) if os.path.lexists(dst) else None
        if replaced and flags & pyfuse3.RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "exists")
        if replaced and self.by_ino.get(replaced.st_ino) == node.id:
            return                           # two links to one inode: rename does nothing
        os.rename(src, dst)
        if replaced and stat.S_ISDIR(replaced.st_mode):
            del self.by_ino[replaced.st_ino]
        if node.is_dir:
            node.parent, node.name = d2.id, name_new
        self._log(("rename", d1.id, name_old, d2.id, name_new, node.id), d1.id, d2.id, node.id)

    @_op
    def opendir(self, inode, ctx):
        node = self._dir(inode)
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.dirs[fh] = (node, sorted(os.listdir(self._path(node))))
        return fh

    @_op
    def readdir(self, fh, start_id, token):
        d, names = self.dirs[fh]
        for i in range(start_id, len(names)):
            try:
                node = self._entry(d, names[i])[1]
            except FileNotFoundError:
                continue                     # removed since opendir
            if not pyfuse3.readdir_reply(token, names[i], self._attr(node), i + 1):
                break

    @_op
    def releasedir(self, fh):
        del self.dirs[fh]

    @_op
    def statfs(self, ctx):
        st, out = os.statvfs(self.live), pyfuse3.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                  "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, f, getattr(st, f))
        return out


async def _serve(fs: PowerCutFS) -> None:
    async def on_signals():
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    print("CUT", json.dumps(fs.power_cut()), flush=True)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        print("READY", flush=True)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(disk: str, mountpoint: str, names: str = "strict") -> None:
    os.umask(0)                  # modes arrive with the caller's umask applied
    fs = PowerCutFS(Path(disk), names)
    pyfuse3.init(fs, mountpoint, set(pyfuse3.default_options) | {"fsname=powercut", "subtype=powercut"})
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)


# ---------------------------------------------------------------- the test side

class PowerCutDisk:
    """A disk that can lose power: DISK served at MOUNTPOINT by the harness."""

    def __init__(self, disk: Path, mountpoint: Path, names: str = "strict"):
        self.disk, self.mountpoint, self.names = Path(disk), Path(mountpoint), names
        self.proc: subprocess.Popen | None = None
        self.log = self.disk.with_name(self.disk.name + ".log")

    def start(self, timeout: float = 30) -> "PowerCutDisk":
        """Boot: serve what is on the disk."""
        self.disk.mkdir(exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.disk), str(self.mountpoint),
                                          self.names], stdout=subprocess.PIPE, stderr=log)
        if self._line(timeout) != "READY":     # printed once pyfuse3.init has mounted
            self.stop()
            raise RuntimeError(f"powercut did not start:\n{self.log.read_text()[-3000:]}")
        return self

    def cut(self, timeout: float = 60) -> dict:
        """Pull the plug; returns DISK/cut-report.json.  start() boots again."""
        self.proc.send_signal(signal.SIGUSR1)
        line = self._line(timeout)
        if not line.startswith("CUT"):
            raise RuntimeError(f"power cut failed ({line!r}):\n{self.log.read_text()[-3000:]}")
        self._wait(timeout)
        return json.loads((self.disk / "cut-report.json").read_text())

    def stop(self, timeout: float = 60) -> None:
        """Clean shutdown: everything written stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        from fsmount import fusermount, is_mounted
        if is_mounted(self.mountpoint):
            fusermount(self.mountpoint, lazy=True)

    def _line(self, timeout: float) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode().strip() if r else ""


if __name__ == "__main__":
    main(*sys.argv[1:])
