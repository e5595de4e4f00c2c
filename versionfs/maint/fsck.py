"""``versionfs fsck``: check a filesystem's metadata and blobs; repair what is safe.

Checks, in order:

1. The metadata store's own index (``MVCCStore.check_indexes``: the
   ``changes`` index that ``log``/``diff`` use, against the stored versions).
2. The tree of the head revision and of every snapshot: a root directory;
   every record readable and well formed; every directory entry in a
   directory and naming an existing inode; link counts (files: their names;
   directories: 2 + subdirectories) and directories' parent fields; inodes no
   entry names (orphans; those marked unlinked-while-open are normal and
   deleted at the next mount); extents only on regular files, in order, not
   overlapping, within the file size, with the right ``stored`` total, a
   partial extent's skip a non-negative integer; every extent with its b"R"
   reverse reference and no reference without its extent; xattr
   and symlink records of inodes that exist; the reverse index of entries
   (``b"P" ino parent name``, used by ``log``/``diff``) mirroring them exactly.
3. Every blob an extent of a retained revision refers to exists: in the slow
   store, or (while its upload is pending) in the fast store.
4. With ``--read-data``: every copy (fast and slow) decodes and matches its
   pointer (the codec verifies the hash or the AEAD tag), and holds every
   byte the extents read from it (a partial extent's skip + length).

Repairs (``--repair``) touch only the head revision (snapshots are frozen and
are reported only) and never delete user data:

* the ``changes`` index is rebuilt from the stored versions, and the reverse
  entry index from the entries;
* entries naming an inode that does not exist are removed (there is nothing
  behind them);
* link counts, directories' parent fields and ``stored`` totals are set to
  what the tree says;
* orphan inodes, and extents whose inode record is gone, are linked into
  ``/lost+found`` as ``#<ino>`` (a regular file is recreated for the extents);
  xattr/symlink/unlinked marks of inodes that do not exist are removed;
* a blob the slow store lacks (or holds corrupted) but the fast store holds
  intact is uploaded again; a corrupted fast copy is replaced from the slow one.
  Every copy is verified against its pointer before it is written (with or
  without ``--read-data``): a damaged copy is never propagated.

Anything else (an overlapping extent, a missing blob with no good copy, an
unreadable record) is reported, not "fixed" by guessing.

Exit status (``versionfs fsck``): 0 clean; 3 problems were found and all were
repaired; 4 problems remain (found without ``--repair``, or not repairable);
1 fsck could not run (e.g. the filesystem is mounted); 2 bad usage.
"""

from __future__ import annotations

import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack

from versionfs.blob.errors import BlobError, CorruptBlobError, NotFoundError
from versionfs.blob.pointer import Pointer
from versionfs.tree import schema
from versionfs.tree.names import snapshot_dirname

__all__ = ["Finding", "FsckReport", "check", "EXIT_CLEAN", "EXIT_REPAIRED", "EXIT_PROBLEMS"]

EXIT_CLEAN, EXIT_REPAIRED, EXIT_PROBLEMS = 0, 3, 4
LOST_FOUND = b"lost+found"
# Above this many referenced blobs, one listing of the slow store is cheaper than a HEAD each.
LIST_THRESHOLD = 256
READ_WORKERS = 8


@dataclass
class Finding:
    where: str
    message: str
    repaired: bool = False

    def line(self) -> str:
        return f"{'repaired' if self.repaired else 'problem'}: {self.where}: {self.message}"


@dataclass
class FsckReport:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return len(self.findings)

    @property
    def unrepaired(self) -> int:
        return sum(1 for f in self.findings if not f.repaired)

    @property
    def exit_code(self) -> int:
        if not self.findings:
            return EXIT_CLEAN
        return EXIT_PROBLEMS if self.unrepaired else EXIT_REPAIRED

    def lines(self) -> list[str]:
        out = [f.line() for f in self.findings] + [f"note: {n}" for n in self.notes]
        stats = ", ".join(f"{k} {v}" for k, v in self.stats.items())
        if not self.findings:
            out.append(f"clean ({stats})")
        else:
            out.append(f"{self.problems} problem(s), {self.problems - self.unrepaired} repaired, "
                       f"{self.unrepaired} remaining ({stats})")
        return out


@dataclass
class _Tree:
    """One revision's records, as fsck needs them."""

    inodes: dict[int, schema.Inode] = field(default_factory=dict)
    dirents: list[tuple[int, bytes, int]] = field(default_factory=list)
    links: set[tuple[int, int, bytes]] = field(default_factory=set)   # reverse index: (ino, parent, name)
    extents: dict[int, list[tuple[int, int, bytes]]] = field(default_factory=dict)
    xattrs: dict[int, list[bytes]] = field(default_factory=dict)
    symlinks: set[int] = field(default_factory=set)
    orphans: set[int] = field(default_factory=set)
    journal_marks: set[int] = field(default_factory=set)
    # Reverse extent references (b"R" pointer ino offset), checked only in trees
    # written since they exist (those with schema.EXTENT_REFS_KEY).
    refs: set[tuple[bytes, int, int]] = field(default_factory=set)
    has_refs: bool = False
    bad: list[tuple[bytes, str]] = field(default_factory=list)
    lost_found: int | None = None       # set once repairs need /lost+found
    rewrite: set[int] = field(default_factory=set)  # inodes repairs changed silently


def _scan(meta: Any, rev: int | None) -> _Tree:
    t = _Tree()
    for key, value in meta.range(b"", None, rev):
        tag = key[:1]
        try:
            if tag == b"I" and len(key) == 9:
                ino = schema.from_u64(key[1:])
                t.inodes[ino] = schema.Inode.unpack(ino, value)
            elif tag == b"D" and len(key) > 9:
                if len(value) != 8:
                    raise ValueError("the entry's inode number is not 8 bytes")
                t.dirents.append((schema.from_u64(key[1:9]), key[9:], schema.from_u64(value)))
            elif tag == b"E" and len(key) == 17:
                offset, length, pointer, _skip = schema.unpack_extent(key, value)
                if not isinstance(length, int) or not isinstance(pointer, bytes):
                    raise ValueError("not [length, pointer] or [length, pointer, skip]")
                t.extents.setdefault(schema.from_u64(key[1:9]), []).append((offset, length, pointer))
            elif tag == b"P" and len(key) > 17:
                t.links.add((schema.from_u64(key[1:9]), schema.from_u64(key[9:17]), key[17:]))
            elif tag == b"X" and len(key) > 9:
                t.xattrs.setdefault(schema.from_u64(key[1:9]), []).append(key)
            elif tag == b"L" and len(key) == 9:
                t.symlinks.add(schema.from_u64(key[1:]))
            elif tag == b"O" and len(key) == 9:
                t.orphans.add(schema.from_u64(key[1:]))
            elif tag == b"J" and len(key) == 9:
                mark = msgpack.unpackb(value)
                if not (isinstance(mark, list) and len(mark) == 2 and isinstance(mark[1], int)):
                    raise ValueError("not [journal id, index]")
                t.journal_marks.add(schema.from_u64(key[1:]))
            elif tag == b"R" and len(key) == 49:
                t.refs.add((key[1:33], schema.from_u64(key[33:41]), schema.from_u64(key[41:49])))
            elif (tag in (schema.RECLAIM_PREFIX, schema.WAITING_PREFIX, schema.SEEN_PREFIX)
                  and len(key) == 33):
                pass            # reclamation candidates: any pointer may be one
            elif key == schema.EXTENT_REFS_KEY:
                t.has_refs = True
            elif key == schema.NEXT_INO_KEY:
                pass
            else:
                raise ValueError("unknown kind of record")
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            t.bad.append((key, f"unreadable record {key!r}: {e}"))
    return t


def _link(ops: list, parent: int, name: bytes, ino: int) -> None:
    """Ops naming ``ino`` as parent/name: the entry and its reverse index item."""
    ops.append((schema.dirent_key(parent, name), schema.u64(ino)))
    ops.append((schema.link_key(ino, parent, name), b""))


class _Checker:
    def __init__(self, state: Any, read_data: bool, repair: bool, progress: bool):
        self.state = state
        self.meta = state.meta
        self.read_data = read_data
        self.repair = repair
        self.progress = progress
        self.report = FsckReport()
        # Per blob: the furthest byte of its plain content an extent reads
        # (skip + length), and, with --read-data, how many it holds.
        self._needed: dict[bytes, int] = {}
        self._plain_sizes: dict[bytes, int] = {}

    def problem(self, where: str, message: str, repaired: bool = False) -> None:
        self.report.findings.append(Finding(where, message, repaired))

    # -- 1. the metadata index ------------------------------------------------------
    def check_meta_index(self) -> None:
        for p in self.meta.check_indexes(repair=self.repair):
            self.problem("metadata index", p, repaired=self.repair)

    # -- 2. trees -------------------------------------------------------------------
    def check_trees(self) -> _Tree:
        from tqdm import tqdm
        revs = self.meta.revisions()
        head_tree = None
        for info in tqdm([None, *revs], desc="fsck: trees", unit=" rev", disable=not self.progress):
            where = "live tree" if info is None else f"snapshot {snapshot_dirname(info)}"
            tree = _scan(self.meta, None if info is None else info.rev)
            ops = self._check_tree(tree, where, fixable=info is None)
            if info is None:
                head_tree = tree
                if ops and self.repair:
                    with self.meta.write() as b:
                        for key, value in ops:
                            (b.delete(key) if value is None else b.put(key, value))
                    self.meta.sync()
        self.report.stats["revisions"] = len(revs) + 1
        self.report.stats["inodes"] = len(head_tree.inodes)
        return head_tree

    def _check_tree(self, t: _Tree, where: str, fixable: bool) -> list[tuple[bytes, bytes | None]]:
        """Report problems of one tree; returns the repair ops (head only)."""
        ops: list[tuple[bytes, bytes | None]] = []
        fix = fixable and self.repair
        for key, msg in t.bad:
            self.problem(where, msg)
        root = t.inodes.get(schema.ROOT_INO)
        if root is None or not root.is_dir:
            self.problem(where, "the root directory is missing or not a directory")
            return ops
        named: set[tuple[int, int, bytes]] = set()   # (ino, parent, name) of good entries
        names: dict[int, int] = {}          # ino -> entries naming it
        subdirs: dict[int, int] = {}        # dir ino -> subdirectories
        parent_of: dict[int, int] = {}
        for parent, name, child in t.dirents:
            key = schema.dirent_key(parent, name)
            label = f"entry {name!r} in directory inode {parent}"
            pdir = t.inodes.get(parent)
            if pdir is None or not pdir.is_dir:
                self.problem(where, f"{label}: the directory does not exist or is not one")
                continue
            if child not in t.inodes:
                self.problem(where, f"{label} names inode {child}, which does not exist"
                             + ("; entry removed" if fix else ""), repaired=fix)
                ops.append((key, None))
                continue
            names[child] = names.get(child, 0) + 1
            named.add((child, parent, name))
            if t.inodes[child].is_dir:
                subdirs[parent] = subdirs.get(parent, 0) + 1
                parent_of.setdefault(child, parent)
                if names[child] > 1:
                    self.problem(where, f"directory inode {child} has more than one name")
        # The reverse index (b"P" ino parent name) must mirror the entries exactly.
        self._mirror(where, fix, ops, named, t.links, schema.link_key,
                     lambda ino, parent, name: f"reverse index lacks the entry {name!r} in "
                                               f"directory inode {parent} (inode {ino})",
                     lambda ino, parent, name: f"reverse index names inode {ino} as {name!r} in "
                                               f"directory inode {parent}, but no such entry exists")
        if t.has_refs:
            # So must the reverse extent references: a missing one would let
            # reclamation (versionfs.maint.reclaim) delete a chunk still in use.
            self._mirror(where, fix, ops,
                         {(p, ino, off) for ino, exts in t.extents.items() for off, _n, p in exts},
                         t.refs, schema.extent_ref_key,
                         lambda p, ino, off: f"inode {ino} extent at {off} lacks its reverse reference",
                         lambda p, ino, off: f"reverse reference to chunk {p.hex()} from inode "
                                             f"{ino} at {off}, which has no such extent")
        # Orphans: inodes no entry names.
        lost = [ino for ino in sorted(t.inodes) if ino != schema.ROOT_INO and ino not in names
                and ino not in t.orphans]
        recovered = sorted(set(t.extents) - set(t.inodes))
        if (lost or recovered) and fix:
            lf = self._lost_found(t, ops, names, subdirs)
            for ino in lost:
                _link(ops, lf, b"#%d" % ino, ino)
                names[ino] = 1
                if t.inodes[ino].is_dir:
                    subdirs[lf] = subdirs.get(lf, 0) + 1
                    parent_of[ino] = lf
                    t.inodes[lf].nlink += 1     # our own change, not a finding
                    t.rewrite.add(lf)
        for ino in lost:
            kind = "directory" if t.inodes[ino].is_dir else "inode"
            self.problem(where, f"{kind} {ino} has no name"
                         + ("; linked into /lost+found" if fix else ""), repaired=fix)
        unlinked = [ino for ino in t.orphans if ino in t.inodes and ino not in names]
        if unlinked and fixable:
            self.report.notes.append(f"{where}: {len(unlinked)} inode(s) unlinked while open; "
                                     "the next mount deletes them")
        for ino in sorted(t.orphans - set(t.inodes)):
            self.problem(where, f"unlinked-while-open mark for inode {ino}, which does not exist"
                         + ("; removed" if fix else ""), repaired=fix)
            ops.append((schema.orphan_key(ino), None))
        # Link counts and parents.
        for ino, inode in t.inodes.items():
            if ino in t.orphans and ino not in names:
                continue
            want = 2 + subdirs.get(ino, 0) if inode.is_dir else names.get(ino, 0)
            changed = False
            if ino != schema.ROOT_INO and want and inode.nlink != want:
                self.problem(where, f"inode {ino} has link count {inode.nlink}, the tree says {want}"
                             + ("; fixed" if fix else ""), repaired=fix)
                inode.nlink, changed = want, True
            elif ino == schema.ROOT_INO and inode.nlink != want:
                self.problem(where, f"root link count {inode.nlink}, the tree says {want}"
                             + ("; fixed" if fix else ""), repaired=fix)
                inode.nlink, changed = want, True
            if inode.is_dir and ino != schema.ROOT_INO and ino in parent_of \
                    and inode.parent != parent_of[ino]:
                self.problem(where, f"directory {ino} records parent {inode.parent}, but is in "
                             f"{parent_of[ino]}" + ("; fixed" if fix else ""), repaired=fix)
                inode.parent, changed = parent_of[ino], True
            if inode.is_lnk and ino not in t.symlinks:
                self.problem(where, f"symlink inode {ino} has no target")
            changed |= self._check_extents(t, ino, inode, where, fix)
            if changed or ino in t.rewrite:
                ops.append((schema.inode_key(ino), inode.pack()))
        for ino in sorted(recovered):
            self._recover_extents(t, ino, where, fix, ops, names)
        for ino in sorted((set(t.xattrs) | t.symlinks | t.journal_marks)
                          - set(t.inodes) - set(recovered)):
            self.problem(where, f"xattr/symlink/journal-mark records of inode {ino}, which does "
                         "not exist" + ("; removed" if fix else ""), repaired=fix)
            for key in t.xattrs.get(ino, []):
                ops.append((key, None))
            if ino in t.symlinks:
                ops.append((schema.symlink_key(ino), None))
            if ino in t.journal_marks:
                ops.append((schema.journal_mark_key(ino), None))
        return ops

    def _mirror(self, where: str, fix: bool, ops: list, want: set, have: set, key,
                missing, extra) -> None:
        """A reverse index must hold exactly ``want``: report what it lacks
        (``missing(*item)``) and what it has too much (``extra(*item)``);
        with ``fix`` rebuild and remove them (``key(*item)``)."""
        for item in sorted(want - have):
            self.problem(where, missing(*item) + ("; rebuilt" if fix else ""), repaired=fix)
            ops.append((key(*item), b""))
        for item in sorted(have - want):
            self.problem(where, extra(*item) + ("; removed" if fix else ""), repaired=fix)
            ops.append((key(*item), None))

    def _check_extents(self, t: _Tree, ino: int, inode: schema.Inode, where: str, fix: bool) -> bool:
        exts = t.extents.get(ino)
        if not exts:
            if inode.is_reg and inode.stored:
                return self._fix_stored(inode, 0, where, fix)
            return False
        if not inode.is_reg:
            self.problem(where, f"inode {ino} is not a regular file but has {len(exts)} extent(s)")
            return False
        end = 0
        for offset, length, pointer in exts:
            at = f"inode {ino} extent at {offset}"
            if length <= 0 or len(pointer) != 32:
                self.problem(where, f"{at}: broken (length {length}, pointer of {len(pointer)} bytes)")
            if offset < end:
                self.problem(where, f"{at} overlaps the previous extent (which ends at {end})")
            if offset + length > inode.size:
                self.problem(where, f"{at} ends at {offset + length}, beyond the file size {inode.size}")
            end = max(end, offset + length)
        return self._fix_stored(inode, sum(length for _, length, _ in exts), where, fix)

    def _fix_stored(self, inode: schema.Inode, stored: int, where: str, fix: bool) -> bool:
        if inode.stored == stored:
            return False
        self.problem(where, f"inode {inode.ino} records {inode.stored} stored bytes, its extents "
                     f"hold {stored}" + ("; fixed" if fix else ""), repaired=fix)
        inode.stored = stored
        return True

    def _lost_found(self, t: _Tree, ops: list, names: dict, subdirs: dict) -> int:
        """The head's /lost+found, created (as a repair of our own) if missing."""
        if t.lost_found is not None:
            return t.lost_found
        for parent, name, child in t.dirents:
            if parent == schema.ROOT_INO and name == LOST_FOUND and child in t.inodes \
                    and t.inodes[child].is_dir:
                t.lost_found = child
                return child
        ino = schema.InodeAllocator(self.meta).allocate()
        now = schema.now_ns()
        t.inodes[ino] = schema.Inode(ino, stat.S_IFDIR | 0o700, 2, 0, 0, atime_ns=now,
                                     mtime_ns=now, ctime_ns=now, parent=schema.ROOT_INO)
        _link(ops, schema.ROOT_INO, LOST_FOUND, ino)
        names[ino] = 1
        subdirs[schema.ROOT_INO] = subdirs.get(schema.ROOT_INO, 0) + 1
        t.inodes[schema.ROOT_INO].nlink += 1
        t.rewrite.update((ino, schema.ROOT_INO))
        t.lost_found = ino
        return ino

    def _recover_extents(self, t: _Tree, ino: int, where: str, fix: bool, ops: list,
                         names: dict) -> None:
        exts = t.extents[ino]
        self.problem(where, f"{len(exts)} extent(s) of inode {ino}, which does not exist"
                     + ("; recovered as /lost+found/#%d" % ino if fix else ""), repaired=fix)
        if not fix:
            return
        lf = self._lost_found(t, ops, names, {})   # already made by _check_tree
        now = schema.now_ns()
        f = schema.Inode(ino, stat.S_IFREG | 0o600, 1, 0, 0,
                         size=max(o + n for o, n, _ in exts), atime_ns=now, mtime_ns=now,
                         ctime_ns=now, stored=sum(n for _, n, _ in exts))
        ops.append((schema.inode_key(ino), f.pack()))
        _link(ops, lf, b"#%d" % ino, ino)

    # -- 3./4. blobs ------------------------------------------------------------------
    def _references(self) -> dict[bytes, str]:
        refs: dict[bytes, str] = {}
        for key, rev, value in self.meta.versions(b"E", b"F", retained_only=True):
            if value is None or len(key) != 17:
                continue
            try:
                offset, length, pointer, skip = schema.unpack_extent(key, value)
            except (ValueError, TypeError, msgpack.UnpackException):
                continue                    # reported by the tree check
            if not (isinstance(pointer, bytes) and len(pointer) == 32 and isinstance(length, int)):
                continue                    # reported by the tree check
            if pointer not in refs:
                refs[pointer] = f"inode {schema.from_u64(key[1:9])} offset {offset} (revision {rev})"
            self._needed[pointer] = max(self._needed.get(pointer, 0), skip + length)
        return refs

    def check_blobs(self) -> None:
        from tqdm import tqdm
        paired = self.state.paired
        fast, slow = paired.fast, paired.slow
        refs = self._references()
        self.report.stats["blobs"] = len(refs)
        in_slow: set[bytes] | None = None
        if len(refs) > LIST_THRESHOLD:
            in_slow = {p.bytes for p in tqdm(slow.enumerate(), desc="fsck: listing slow store",
                                              unit=" blobs", disable=not self.progress)}

        def slow_has(p: Pointer) -> bool:
            return p.bytes in in_slow if in_slow is not None else slow.contains(p)

        def one(raw: bytes) -> None:
            p = Pointer.from_bytes(raw)
            where = f"blob {p.hex()} ({refs[raw]})"
            has_fast, has_slow = fast.contains(p), slow_has(p)
            pending = paired.is_pending(p)
            if not has_fast and not has_slow:
                self.problem(where, "missing from the fast and the slow store")
                return
            good_fast = good_slow = None
            if self.read_data:
                good_fast = self._verify(fast, p) if has_fast else None
                good_slow = self._verify(slow, p) if has_slow else None
                if good_fast is False and good_slow is False:
                    self.problem(where, "corrupted in the fast and the slow store")
                    return
                if good_fast is False and good_slow is None:
                    self.problem(where, "corrupted in the fast store, and the slow store lacks it")
                    return
                if good_slow is False and good_fast is None:
                    self.problem(where, "corrupted in the slow store, and the fast store lacks it")
                    return
                if good_fast is False:
                    self._repair(where, "the fast copy is corrupted", lambda: self._refill_fast(p))
            if (not has_slow and not pending) or good_slow is False:
                what = "corrupted in the slow store" if good_slow is False else "missing from the slow store"
                self._repair(where, what, lambda: self._copy_verified(fast, slow, p))
            size = self._plain_sizes.get(raw)
            if size is not None and self._needed.get(raw, 0) > size:
                self.problem(where, f"holds {size} bytes, but an extent reads it up to byte "
                             f"{self._needed[raw]} (skip + length)")

        with ThreadPoolExecutor(READ_WORKERS if self.read_data else 4) as pool, \
                tqdm(total=len(refs), desc="fsck: " + ("reading blobs" if self.read_data else "blobs"),
                     unit=" blobs", disable=not self.progress) as bar:
            for fut in [pool.submit(one, raw) for raw in refs]:
                fut.result()
                bar.update()

    def _verify(self, store: Any, p: Pointer) -> bool | None:
        """True if the copy decodes and matches, False if corrupted, None if absent."""
        try:
            data = store.get(p)
        except NotFoundError:
            return None
        try:
            self._plain_sizes[p.bytes] = len(self.state.codec.decode(p, data))
            return True
        except CorruptBlobError:
            return False

    def _refill_fast(self, p: Pointer) -> None:
        fast = self.state.paired.fast
        fast.delete(p)
        self._copy_verified(self.state.paired.slow, fast, p)

    def _copy_verified(self, source: Any, target: Any, p: Pointer) -> None:
        """Copy a blob only if it verifies: a damaged copy (a cache fill cut short by
        a power cut) must never replace or stand in for the good one in the bucket."""
        data = source.get(p)
        try:
            self.state.codec.decode(p, data)
        except CorruptBlobError as e:
            raise CorruptBlobError(f"the only copy there is does not verify either, so it "
                                   f"was not copied ({e})") from None
        target.put(p, data)

    def _repair(self, where: str, what: str, fn) -> None:
        if not self.repair:
            self.problem(where, what)
            return
        try:
            fn()
        except (BlobError, OSError) as e:
            self.problem(where, f"{what}; repair failed: {e}")
            return
        self.problem(where, f"{what}; copied again", repaired=True)


def check(state: Any, *, read_data: bool = False, repair: bool = False,
          progress: bool = False) -> FsckReport:
    """Run every check on an opened state (versionfs.common.state.open_state)."""
    t0 = time.monotonic()
    c = _Checker(state, read_data, repair, progress)
    c.check_meta_index()
    c.check_trees()
    c.check_blobs()
    c.report.stats["seconds"] = round(time.monotonic() - t0, 2)
    return c.report
