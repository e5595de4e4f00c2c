"""What changed between revisions: `diff`, `path_diff` and `log`.

They read the store at revisions through `TreeAt`, so the cost of `diff` and
`log` follows the size of the change, not of the tree:

* `MVCCStore.changed_keys(a, b)` lists only the keys written between the two
  revisions (one LMDB seek into the per-revision change index);
* each changed key is read at both ends (two O(log n) lookups) so writes that
  were undone again drop out;
* a changed inode's path comes from the reverse links (`b"P" ino parent name`),
  one lookup per directory level, instead of a walk of the tree.

Inode numbers are never reused, so one number means one object at every
revision: an entry that disappears at one path and appears at another with the
same inode is a rename, whatever happened in between.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from . import schema
from .at_revision import EMPTY_REV, TreeAt, norm_path
from .schema import ROOT_INO, Inode

_CONTENT_TAGS = (b"I", b"E", b"X", b"L")


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


# ----------------------------------------------------------------------- diff

@dataclass
class Change:
    """One line of a diff. `kind`: A added, D removed, M modified, R renamed."""

    kind: str
    path: str
    type: str
    old_path: str | None = None
    bytes: int = 0              # new data (A, M) or data no longer in the tree (D)
    content_changed: bool = False   # for R: the object was also modified

    def as_dict(self) -> dict:
        d = {"kind": self.kind, "path": self.path, "type": self.type, "bytes": self.bytes}
        if self.old_path is not None:
            d["old_path"] = self.old_path
        if self.kind == "R":
            d["modified"] = self.content_changed
        return d

    def line(self) -> str:
        slash = "/" if self.type == "dir" else ""
        if self.kind == "R":
            mark = "R*" if self.content_changed else "R"
            return f"{mark}\t{self.old_path}{slash} -> {self.path}{slash}"
        return f"{self.kind}\t{self.path}{slash}"


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    keys_examined: int = 0

    def summary(self) -> dict:
        count = {k: 0 for k in "ADMR"}
        for c in self.changes:
            count[c.kind] += 1
        return {
            "added": count["A"], "removed": count["D"], "modified": count["M"],
            "renamed": count["R"],
            "bytes_added": sum(c.bytes for c in self.changes if c.kind in "AM"),
            "bytes_removed": sum(c.bytes for c in self.changes if c.kind == "D"),
            "keys_examined": self.keys_examined,
        }

    def filtered(self, path: str) -> "Diff":
        """Only changes at `path` or below it (either end of a rename counts)."""
        path = norm_path(path)
        if not path:
            return self
        def under(p: str | None) -> bool:
            return p is not None and (p == path or p.startswith(path + "/"))
        return Diff([c for c in self.changes if under(c.path) or under(c.old_path)], self.keys_examined)


def _file_bytes(tree: TreeAt, ino: int) -> int:
    inode = tree.inode(ino)
    return inode.size if inode is not None and inode.is_reg else 0


def _attrs_differ(a: Inode, b: Inode) -> bool:
    """Did what a user sees change? (directory size/mtime/nlink move with their entries)"""
    if a.is_dir:
        return (a.mode, a.uid, a.gid) != (b.mode, b.uid, b.gid)
    return ((a.mode, a.uid, a.gid, a.rdev, a.size, a.mtime_ns)
            != (b.mode, b.uid, b.gid, b.rdev, b.size, b.mtime_ns))


def _owned(tree: TreeAt, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return [(k[len(prefix):], v) for k, v in tree.range(prefix)]


def same_object(ta: TreeAt, ia: Inode, tb: TreeAt, ib: Inode) -> bool:
    """Do two objects (different inodes) look the same to a user? Compares
    attributes, xattrs, symlink target and extents (blob pointers, not bytes)."""
    if _attrs_differ(ia, ib):
        return False
    if _owned(ta, schema.xattr_prefix(ia.ino)) != _owned(tb, schema.xattr_prefix(ib.ino)):
        return False
    if ia.is_lnk:
        return ta.get(schema.symlink_key(ia.ino)) == tb.get(schema.symlink_key(ib.ino))
    if ia.is_reg:
        return _owned(ta, schema.extent_prefix(ia.ino)) == _owned(tb, schema.extent_prefix(ib.ino))
    return True


def diff(meta, rev_a: int, rev_b: int | None) -> Diff:
    """What changed from revision `rev_a` to `rev_b` (None: the live head).

    `rev_a` may be EMPTY_REV (diff against nothing). Either order works.
    """
    head = meta.head
    ra = head if rev_a is None else rev_a
    rb = head if rev_b is None else rev_b
    ta, tb = TreeAt(meta, rev_a), TreeAt(meta, rev_b)
    result = Diff()
    if ra == rb:
        return result
    lo, hi = min(ra, rb), max(ra, rb)
    removed: dict[tuple[int, bytes], int] = {}
    added: dict[tuple[int, bytes], int] = {}
    touched: dict[int, set[bytes]] = {}
    for key in meta.changed_keys(lo, hi):
        result.keys_examined += 1
        tag = key[:1]
        if tag == b"D":
            va, vb = ta.get(key), tb.get(key)
            if va == vb:
                continue
            where = (schema.from_u64(key[1:9]), key[9:])
            if va is not None:
                removed[where] = schema.from_u64(va)
            if vb is not None:
                added[where] = schema.from_u64(vb)
        elif tag in _CONTENT_TAGS:
            touched.setdefault(schema.from_u64(key[1:9]), set()).add(key)
    changes = result.changes

    def content_change(ino: int) -> tuple[bool, int]:
        """(changed, bytes of new extents) for an object present at both ends."""
        keys = touched.get(ino)
        if not keys:
            return False, 0
        ia, ib = ta.inode(ino), tb.inode(ino)
        if ia is None or ib is None:
            return False, 0
        changed = _attrs_differ(ia, ib)
        old_pointers: set[bytes] = set()
        new_extents = []
        for key in keys:
            if key[:1] == b"I":
                continue
            va, vb = ta.get(key), tb.get(key)
            if va == vb:
                continue
            changed = True
            if key[:1] == b"E":
                if va is not None:
                    old_pointers.add(schema.unpack_extent(key, va)[2])
                if vb is not None:
                    new_extents.append(schema.unpack_extent(key, vb))
        return changed, _new_bytes(new_extents, old_pointers)

    # Renames: the same object left one entry and appeared at another.
    by_ino_removed: dict[int, list[tuple[int, bytes]]] = {}
    for where, ino in removed.items():
        by_ino_removed.setdefault(ino, []).append(where)
    renamed_inos = set()
    for where_b, ino in sorted(added.items()):
        olds = by_ino_removed.get(ino)
        if not olds:
            continue
        where_a = olds.pop(0)
        del removed[where_a]
        del added[where_b]
        renamed_inos.add(ino)
        inode = tb.inode(ino) or ta.inode(ino)
        changed, nbytes = content_change(ino)
        changes.append(Change("R", tb.entry_path(*where_b) or "?", kind_of(inode.mode) if inode else "other",
                              old_path=ta.entry_path(*where_a) or "?", bytes=nbytes,
                              content_changed=changed))
    # The same path removed and added with another object (an editor's
    # write-to-temp-and-rename save, or a restore): one modification of that
    # path, or none at all when the new object equals the old one.
    removed_at = {ta.entry_path(*w) or "?": (w, ino) for w, ino in removed.items()}
    added_at = {tb.entry_path(*w) or "?": (w, ino) for w, ino in added.items()}
    for path in sorted(set(removed_at) & set(added_at)):
        (_, old_ino), (_, new_ino) = removed_at[path], added_at[path]
        ia, ib = ta.inode(old_ino), tb.inode(new_ino)
        if ia is None or ib is None or ia.is_dir != ib.is_dir:
            continue
        del removed_at[path], added_at[path]
        if not same_object(ta, ia, tb, ib):
            changes.append(Change("M", path, kind_of(ib.mode), bytes=_file_bytes(tb, new_ino)))
    for path, (_, ino) in removed_at.items():
        inode = ta.inode(ino)
        gone = tb.inode(ino) is None
        changes.append(Change("D", path, kind_of(inode.mode) if inode else "other",
                              bytes=_file_bytes(ta, ino) if gone else 0))
    for path, (_, ino) in added_at.items():
        inode = tb.inode(ino)
        new = ta.inode(ino) is None
        changes.append(Change("A", path, kind_of(inode.mode) if inode else "other",
                              bytes=_file_bytes(tb, ino) if new else 0))
    # In-place modifications of objects that exist at both ends.
    for ino in sorted(touched):
        if ino == ROOT_INO or ino in renamed_inos:
            continue
        changed, nbytes = content_change(ino)
        if not changed:
            continue
        inode = tb.inode(ino)
        for path in tb.paths(ino):
            changes.append(Change("M", path, kind_of(inode.mode), bytes=nbytes))
    changes.sort(key=lambda c: (c.path, c.kind))
    return result


def _new_bytes(new_extents, old_pointers: set[bytes]) -> int:
    """Bytes of changed extents (unpacked) in chunks the old side did not use:
    what a small rewrite left of an old chunk (partial extents) is not new."""
    return sum(length for _off, length, pointer, _skip in new_extents
               if pointer not in old_pointers)


def _new_extent_bytes(ta: TreeAt, tb: TreeAt, ino_a: int, ino_b: int) -> int:
    prefix_a, prefix_b = schema.extent_prefix(ino_a), schema.extent_prefix(ino_b)
    before = _owned(ta, prefix_a)
    old_pointers = {schema.unpack_extent(prefix_a + k, v)[2] for k, v in before}
    before_set = set(before)
    return _new_bytes([schema.unpack_extent(prefix_b + k, v)
                       for k, v in _owned(tb, prefix_b) if (k, v) not in before_set], old_pointers)


def path_diff(meta, rev_a: int, rev_b: int | None, path: str) -> Diff | None:
    """What happened to the non-directory at `path` between two revisions,
    comparing just that object (cost: its own extents, not the revision's
    change). None when `path` is a directory at either end: then changes below
    it count, and the caller filters a full diff."""
    path = norm_path(path)
    ta, tb = TreeAt(meta, rev_a), TreeAt(meta, rev_b)
    ino_a, ino_b = ta.lookup(path), tb.lookup(path)
    ia = ta.inode(ino_a) if ino_a is not None else None
    ib = tb.inode(ino_b) if ino_b is not None else None
    if (ia is not None and ia.is_dir) or (ib is not None and ib.is_dir) or not path:
        return None
    d = Diff()
    if ia is None and ib is None:
        return d
    if ib is None:
        later = tb.inode(ino_a)
        new_paths = tb.paths(ino_a) if later is not None else []
        if new_paths:                                 # moved away from here
            changed = not same_object(ta, ia, tb, later)
            d.changes.append(Change("R", new_paths[0], kind_of(later.mode), old_path=path,
                                    bytes=_new_extent_bytes(ta, tb, ino_a, ino_a) if changed else 0,
                                    content_changed=changed))
        else:
            d.changes.append(Change("D", path, kind_of(ia.mode),
                                    bytes=ia.size if later is None and ia.is_reg else 0))
    elif ia is None or ino_a != ino_b:
        earlier = ta.inode(ino_b)
        if earlier is not None and ia is None:      # moved here from elsewhere
            old = ta.paths(ino_b)
            changed = not same_object(ta, earlier, tb, ib)
            d.changes.append(Change("R", path, kind_of(ib.mode), old_path=old[0] if old else "?",
                                    bytes=_new_extent_bytes(ta, tb, ino_b, ino_b) if changed else 0,
                                    content_changed=changed))
        elif ia is None:
            d.changes.append(Change("A", path, kind_of(ib.mode), bytes=_file_bytes(tb, ino_b)))
        elif not same_object(ta, ia, tb, ib):
            d.changes.append(Change("M", path, kind_of(ib.mode), bytes=_file_bytes(tb, ino_b)))
    elif not same_object(ta, ia, tb, ib):
        d.changes.append(Change("M", path, kind_of(ib.mode), bytes=_new_extent_bytes(ta, tb, ino_a, ino_b)))
    return d


# ------------------------------------------------------------------------ log

@dataclass
class LogEntry:
    rev: int | None            # None: the live tree's changes since the last snapshot
    name: str | None
    time: float | None
    dirname: str
    diff: Diff

    def as_dict(self) -> dict:
        return {"rev": self.rev, "name": self.name, "time": self.time, "dirname": self.dirname,
                **self.diff.summary()}


def log_entries(meta, path: str | None = None, *, include_live: bool = True,
                dirname=lambda info: str(info.rev)) -> list[LogEntry]:
    """Newest first: every retained revision with what changed since the one before.

    With `path`, only revisions where something at or below it changed; for a
    file that costs a comparison of the file at each step, not a diff.
    """
    revs = meta.revisions()
    steps: list[tuple[int, int | None, object]] = []
    prev = EMPTY_REV
    for info in revs:
        steps.append((prev, info.rev, info))
        prev = info.rev
    if include_live:
        steps.append((prev, None, None))
    out = []
    for a, b, info in reversed(steps):
        d = path_diff(meta, a, b, path) if path is not None else None
        if d is None:
            d = diff(meta, a, b)
            if path is not None:
                d = d.filtered(path)
        if info is None:
            if not d.changes:
                continue
            out.append(LogEntry(None, None, None, "live", d))
        elif path is None or d.changes:
            out.append(LogEntry(info.rev, info.name, info.time, dirname(info), d))
    return out


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def summary_text(s: dict) -> str:
    parts = [f"{s[k]} {k}" for k in ("added", "removed", "modified", "renamed") if s[k]]
    text = ", ".join(parts) if parts else "no changes"
    if s["bytes_added"]:
        text += f"; {human_size(s['bytes_added'])} new data"
    if s["bytes_removed"]:
        text += f"; {human_size(s['bytes_removed'])} removed"
    return text
