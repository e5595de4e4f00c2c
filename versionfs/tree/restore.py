"""Restore: copying a subtree of an old revision into the live tree.

`restore` copies metadata only. The restored objects get fresh inode numbers
(the old ones may still be live elsewhere) but their extents point at the very
same blobs, so no file data is read, copied or uploaded. It runs inside the
daemon (ctl command), which alone may write the store.
"""

from __future__ import annotations

import contextlib
import errno
import weakref
from dataclasses import dataclass, field
from typing import Iterable

from . import schema
from .at_revision import HistoryError, TreeAt, show_name
from .schema import Inode

WRITE_BATCH_KEYS = 2000    # keys per MVCC batch while restoring a big tree


@dataclass
class RestorePlan:
    """The source subtree, read at a frozen revision, ready to be written live."""

    root: int
    objects: dict[int, Inode] = field(default_factory=dict)     # old ino -> record
    entries: list[tuple[int, bytes, int]] = field(default_factory=list)  # (old parent, name, old child)
    links_inside: dict[int, int] = field(default_factory=dict)  # old ino -> entries naming it

    @property
    def total(self) -> int:
        return len(self.objects)


def plan_restore(tree: TreeAt, root: int) -> RestorePlan:
    """Walk the subtree at a frozen revision (blocking; safe in a worker thread)."""
    plan = RestorePlan(root)
    inode = tree.inode(root)
    if inode is None:
        raise HistoryError("the object to restore does not exist at that revision", errno.ENOENT)
    plan.objects[root] = inode
    todo = [root] if inode.is_dir else []
    while todo:
        d = todo.pop()
        prefix = schema.dirent_prefix(d)
        for k, v in tree.range(prefix):
            child = schema.from_u64(v)
            plan.entries.append((d, k[len(prefix):], child))
            plan.links_inside[child] = plan.links_inside.get(child, 0) + 1
            if child not in plan.objects:
                ci = tree.inode(child)
                if ci is None:
                    raise HistoryError(f"revision {tree.rev} is inconsistent: entry "
                                       f"{show_name(k[len(prefix):])!r} names missing inode {child}", errno.EIO)
                plan.objects[child] = ci
                if ci.is_dir:
                    todo.append(child)
    return plan


def _referencing(blobs, pointers: list[bytes]):
    """The blob store's guard against a concurrent garbage collection, if any.

    The copies reference existing blobs without putting them, so a collection
    running meanwhile must learn of them (versionfs.maint.gc installs the guard as
    ``blobs.store``; duck-typed so this layer does not import it).
    """
    guard = getattr(getattr(blobs, "store", None), "referencing", None)
    return guard(pointers) if guard is not None else contextlib.nullcontext()


def write_restored(meta, tree: TreeAt, plan: RestorePlan, new_ino: dict[int, int], new_parent: int,
                   now_ns: int, progress=None, blobs=None) -> None:
    """Write fresh copies of every object of `plan` (blocking; worker thread is fine).

    The copies are unreachable until the caller links the root in: a reader of
    the live tree never sees a half-restored subtree.
    """
    subdirs: dict[int, int] = {}
    for parent, _name, child in plan.entries:
        if plan.objects[child].is_dir:
            subdirs[parent] = subdirs.get(parent, 0) + 1
    parent_of = {child: parent for parent, _n, child in plan.entries if plan.objects[child].is_dir}
    pending: list[tuple[bytes, bytes | None]] = []

    def flush():
        if pending:
            pointers = [schema.unpack_extent(k, v)[2] for k, v in pending
                        if k[:1] == schema.extent_prefix(0)[:1] and v is not None]
            with _referencing(blobs, pointers), meta.write() as b:
                for k, v in pending:
                    if k[:1] == schema.extent_prefix(0)[:1]:
                        schema.put_extent_record(b, k, v)
                    else:
                        b.put(k, v)
            pending.clear()

    done = 0
    for old, inode in plan.objects.items():
        ino = new_ino[old]
        rec = Inode(ino, inode.mode, 0, inode.uid, inode.gid, inode.rdev, inode.size,
                    inode.atime_ns, inode.mtime_ns, now_ns, 0, inode.stored)
        if inode.is_dir:
            rec.nlink = 2 + subdirs.get(old, 0)
            rec.parent = new_parent if old == plan.root else new_ino[parent_of[old]]
        else:
            rec.nlink = max(1, plan.links_inside.get(old, 0)) if old != plan.root else 1
        pending.append((schema.inode_key(ino), rec.pack()))
        for tag_prefix, make in ((schema.extent_prefix(old), lambda k: schema.extent_key(ino, schema.from_u64(k[9:17]))),
                                 (schema.xattr_prefix(old), lambda k: schema.xattr_key(ino, k[9:]))):
            for k, v in tree.range(tag_prefix):
                pending.append((make(k), v))
        if inode.is_lnk:
            target = tree.get(schema.symlink_key(old))
            if target is not None:
                pending.append((schema.symlink_key(ino), target))
        done += 1
        if len(pending) >= WRITE_BATCH_KEYS:
            flush()
            if progress is not None:
                progress(done)
    for parent, name, child in plan.entries:
        pending.append((schema.dirent_key(new_ino[parent], name), schema.u64(new_ino[child])))
        pending.append((schema.link_key(new_ino[child], new_ino[parent], name), b""))
        if len(pending) >= WRITE_BATCH_KEYS:
            flush()
    flush()
    if progress is not None:
        progress(done)


def subtree_entries(meta, root: int, is_dir) -> list[tuple[int, bytes, int]]:
    """(parent, name, child) of the live subtree below `root`, children before parents."""
    out: list[tuple[int, bytes, int]] = []
    todo = [root]
    order = []
    while todo:
        d = todo.pop()
        order.append(d)
        prefix = schema.dirent_prefix(d)
        for k, v in meta.range(prefix, schema.prefix_end(prefix)):
            child = schema.from_u64(v)
            out.append((d, k[len(prefix):], child))
            if is_dir(child):
                todo.append(child)
    depth = {root: 0}
    for parent, _n, child in out:
        depth[child] = depth[parent] + 1
    out.sort(key=lambda e: -depth[e[2]])
    return out


def iter_chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Progress:
    """What a long job has done so far, for the `progress` ctl command."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done = what, total, 0

    def as_dict(self) -> dict:
        return {"job": self.what, "done": self.done, "total": self.total}


JOBS: "weakref.WeakKeyDictionary[object, Progress]" = weakref.WeakKeyDictionary()
