"""ctl commands for history: `log`, `diff`, `restore`, `progress`.

They run inside the daemon because the daemon alone owns the store: `log` and
`diff` read it from a worker thread (reads are thread-safe and never block the
FUSE loop); `restore` writes the copied metadata from a worker thread too (the
copies are unreachable until linked in), then links the result into the live
tree on the trio thread in one atomic batch, so no request ever sees half of
it, and finally tells the kernel to drop what it cached for the replaced name.

The registry (registry.py) imports this module on the first use of one of them.
"""

from __future__ import annotations

import errno
import json
import logging
import weakref

import pyfuse3
import trio

from versionfs.tree import schema
from versionfs.tree.names import DIRNAME_RE, iso_utc, snapshot_dirname
from versionfs.tree.at_revision import EMPTY_REV, HistoryError, TreeAt, norm_path, split_path
from versionfs.tree.diff import diff, log_entries, summary_text
from versionfs.tree.restore import JOBS, Progress, iter_chunks, plan_restore, subtree_entries, write_restored
from versionfs.fs.special_inodes import CTL_DIR_NAME
from versionfs.tree.schema import ROOT_INO

from .command import CommandError, command

log = logging.getLogger(__name__)

_RESTORE_LOCKS: "weakref.WeakKeyDictionary[object, trio.Lock]" = weakref.WeakKeyDictionary()


def resolve_rev(meta, text: str) -> int | None:
    """A revision from what a user typed: a snapshot NAME, its directory name
    (r<rev>-<time>[-NAME]), a revision number, `latest`, or `live` (None)."""
    revs = meta.revisions()
    for info in revs:
        if info.name == text:
            return info.rev
    if text in ("live", "head"):
        return None
    if text == "latest":
        if not revs:
            raise CommandError("there are no snapshots yet", errno.ENOENT)
        return revs[-1].rev
    m = DIRNAME_RE.match(text)
    if m:
        for info in revs:
            if info.rev == int(m.group(1)) and snapshot_dirname(info) == text:
                return info.rev
    elif text.isdigit():
        for info in revs:
            if info.rev == int(text):
                return info.rev
    raise CommandError(f"no snapshot {text!r} (see `snapshots`; use a name, a directory name, "
                       f"a revision number, latest or live)", errno.ENOENT)


def _describe_rev(meta, rev: int | None) -> dict:
    if rev is None:
        return {"rev": meta.head, "name": "live", "time": None, "dirname": "live"}
    info = meta.revision(rev)
    return {"rev": rev, "name": info.name, "time": info.time, "dirname": snapshot_dirname(info)}


def _take_flags(args: list[str], *flags: str) -> tuple[set[str], list[str]]:
    """Split options from operands; after "--" everything is an operand."""
    found, rest = set(), []
    for i, a in enumerate(args):
        if a == "--":
            rest += args[i + 1:]
            break
        if a in flags:
            found.add(a)
        elif a.startswith("--"):
            raise CommandError(f"unknown option {a}")
        else:
            rest.append(a)
    return found, rest


async def _settle_live(fs) -> None:
    """Make the live tree's metadata current: the kernel's dirty pages and the
    not yet sealed writes become extents, as for a snapshot."""
    if not fs.read_only:
        await fs._kernel_writeback()
        await fs.seal_all()


def _errors_as_command_errors(fn):
    try:
        return fn()
    except HistoryError as e:
        raise CommandError(str(e), e.errno) from None


@command("log", "log [--json] [PATH]", "revisions with what changed; with PATH only where it did")
async def _log(fs, args):
    flags, rest = _take_flags(args, "--json")
    if len(rest) > 1:
        raise CommandError("usage: log [--json] [PATH]")
    path = norm_path(rest[0]) if rest else None
    await _settle_live(fs)
    entries = await trio.to_thread.run_sync(
        lambda: _errors_as_command_errors(lambda: log_entries(fs.meta, path, dirname=snapshot_dirname)))
    if "--json" in flags:
        return json.dumps({"path": path, "revisions": [e.as_dict() for e in entries]})
    lines = [f"{e.dirname}\t{'-' if e.rev is None else e.rev}\t{iso_utc(e.time)}\t"
             f"{e.name or '-'}\t{summary_text(e.diff.summary())}" for e in entries]
    return "\n".join(lines) if lines else "no changes"


@command("diff", "diff [--json] [--stat] REV_A [REV_B]",
         "what changed from REV_A to REV_B (default: the live tree)")
async def _diff(fs, args):
    flags, rest = _take_flags(args, "--json", "--stat")
    if not 1 <= len(rest) <= 2:
        raise CommandError("usage: diff [--json] [--stat] REV_A [REV_B]")
    ra = resolve_rev(fs.meta, rest[0])
    rb = resolve_rev(fs.meta, rest[1]) if len(rest) > 1 else None
    if ra is None or rb is None:
        await _settle_live(fs)
    d = await trio.to_thread.run_sync(
        lambda: _errors_as_command_errors(lambda: diff(fs.meta, ra, rb)))
    summary = d.summary()
    if "--json" in flags:
        return json.dumps({"from": _describe_rev(fs.meta, ra), "to": _describe_rev(fs.meta, rb),
                           "summary": summary,
                           "changes": [] if "--stat" in flags else [c.as_dict() for c in d.changes]})
    lines = [] if "--stat" in flags else [c.line() for c in d.changes]
    n = len(d.changes)
    lines.append(f"{n} change{'' if n == 1 else 's'}: {summary_text(summary)}")
    return "\n".join(lines)


@command("progress", "progress", "what a running restore has done so far (JSON)")
async def _progress(fs, args):
    if args:
        raise CommandError("progress takes no arguments")
    job = JOBS.get(fs)
    return json.dumps(job.as_dict() if job is not None else {})


@command("restore", "restore [--to DEST] REV PATH",
         "bring PATH back from REV into the live tree (no data copied)")
async def _restore(fs, args):
    dest = None
    rest = []
    it = iter(args)
    for a in it:
        if a == "--":
            rest += list(it)
            break
        if a == "--to":
            dest = next(it, None)
            if dest is None:
                raise CommandError("restore: --to needs a DEST")
        elif a.startswith("--to="):
            dest = a[len("--to="):]
        elif a.startswith("--") and a != "--":
            raise CommandError(f"restore: unknown option {a}")
        else:
            rest.append(a)
    if len(rest) != 2:
        raise CommandError("usage: restore [--to DEST] REV PATH")
    lock = _RESTORE_LOCKS.setdefault(fs, trio.Lock())
    if lock.locked():
        raise CommandError("another restore is running on this mount; wait for it", errno.EBUSY)
    async with lock:
        try:
            return await restore(fs, rest[0], rest[1], dest)
        finally:
            JOBS.pop(fs, None)


async def restore(fs, rev_text: str, path: str, dest: str | None) -> str:
    meta = fs.meta
    if fs.read_only:
        raise CommandError("the mount is read-only", errno.EROFS)
    rev = resolve_rev(meta, rev_text)
    if rev is None:
        raise CommandError("restore takes a snapshot, not the live tree (copy live files with cp)")
    src = norm_path(path)
    dst = norm_path(dest if dest is not None else path)
    if not dst:
        raise CommandError("cannot replace the root of the mount; restore into a directory "
                           "with --to DEST, or restore its entries one by one")
    dparent_path, _, leaf = dst.rpartition("/")
    name = split_path(leaf)[0]
    if len(name) > 255:
        raise CommandError(f"restore: name {leaf!r} is too long", errno.ENAMETOOLONG)
    if (not dparent_path and name == CTL_DIR_NAME) or leaf == "..":
        raise CommandError(f"restore: {dst!r} is not a place to restore to")
    tree = TreeAt(meta, rev)
    src_ino = tree.lookup(src)
    if src_ino is None:
        raise CommandError(f"{src or '/'} does not exist in snapshot {rev_text}", errno.ENOENT)
    dparent = _live_dir(fs, dparent_path)
    plan = await trio.to_thread.run_sync(lambda: _errors_as_command_errors(lambda: plan_restore(tree, src_ino)))
    before = fs._child(dparent, name)
    saved = None
    if before is not None:
        saved = await fs.take_snapshot(_pre_restore_name(meta))
    progress = Progress("restore", plan.total)
    JOBS[fs] = progress
    new_ino = {old: fs.alloc.allocate() for old in plan.objects}
    now = schema.now_ns()

    def report(done: int) -> None:
        progress.done = done

    await trio.to_thread.run_sync(write_restored, meta, tree, plan, new_ino, dparent, now, report,
                                  fs.blobs)
    # From here to the end of the swap nothing awaits: no request runs in between.
    try:
        dparent = _live_dir(fs, dparent_path)
    except CommandError:
        _discard(meta, new_ino, plan)
        raise
    existing = fs._child(dparent, name)
    if existing != before:
        _discard(meta, new_ino, plan)
        raise CommandError(f"{dst} changed while restoring; nothing was restored, try again", errno.EAGAIN)
    removed = _swap_in(fs, dparent, name, existing, new_ino[plan.root], plan.objects[plan.root].is_dir, now)
    await _invalidate(fs, dparent, name, existing, removed)
    log.info("restored %s from revision %d to %s (%d objects)", src or "/", rev, dst, plan.total)
    text = f"restored {src or '/'} from {snapshot_dirname(meta.revision(rev))} to {dst} ({plan.total} object{'' if plan.total == 1 else 's'})"
    if saved is not None:
        text += f"; the replaced version is kept in snapshot {snapshot_dirname(saved)}"
    return text


def _pre_restore_name(meta) -> str:
    names = {r.name for r in meta.revisions()}
    base = f"pre-restore-{meta.head}"
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}.{n}"
    return name


def _live_dir(fs, path: str) -> int:
    ino = TreeAt(fs.meta, None).lookup(path)
    if ino is None:
        raise CommandError(f"the directory {path or '/'} to restore into does not exist in the live "
                           f"tree (restore it first)", errno.ENOENT)
    if not fs._inode(ino).is_dir:
        raise CommandError(f"{path} is not a directory", errno.ENOTDIR)
    return ino


def _discard(meta, new_ino: dict[int, int], plan) -> None:
    """Remove copies written for a restore that could not be linked in."""
    with meta.write() as b:
        for old, ino in new_ino.items():
            prefix = schema.extent_prefix(ino)
            for k, v in meta.range(prefix, schema.prefix_end(prefix)):
                schema.delete_extent_record(b, k, v)
            for prefix in (schema.xattr_prefix(ino), schema.dirent_prefix(ino),
                           schema.link_prefix(ino)):
                for k, _ in meta.range(prefix, schema.prefix_end(prefix)):
                    b.delete(k)
            b.delete(schema.symlink_key(ino))
            b.delete(schema.inode_key(ino))


def _swap_in(fs, dparent: int, name: bytes, existing: int | None, new_root: int, new_is_dir: bool,
             now: int) -> list[tuple[int, bytes, int]]:
    """Atomically point dparent/name at the restored copy, then delete what it
    replaced (children first). Returns the entries deleted below the old object."""
    meta = fs.meta
    pinode = fs._inode(dparent)
    old = fs._inode(existing) if existing is not None else None
    below = []
    if old is not None and old.is_dir:
        below = subtree_entries(meta, existing, lambda i: fs._inode(i).is_dir)
    with meta.write() as b:
        if old is not None:
            schema.delete_dirent(b, dparent, name, existing)
            if old.is_dir:
                pinode.nlink -= 1
        schema.put_dirent(b, dparent, name, new_root)
        if new_is_dir:
            pinode.nlink += 1
        pinode.mtime_ns = pinode.ctime_ns = now
        fs._store_inode(pinode, b)
    # The replaced object is unreachable now; a crash from here on leaves at
    # worst unreachable inodes (fsck reports them), never a mixed tree.
    for chunk in iter_chunks(below, 500):
        with meta.write() as b:
            for parent, cname, child in chunk:
                ci, pi = fs._inode(child), fs._inode(parent)
                schema.delete_dirent(b, parent, cname, child)
                if ci.is_dir:
                    pi.nlink -= 1
                pi.mtime_ns = pi.ctime_ns = now
                fs._drop_link(ci, now, b)
                fs._store_inode(pi, b)
    if old is not None:
        with meta.write() as b:
            fs._drop_link(old, now, b)
        for _p, _n, child in below:
            fs._maybe_unload(child)
        fs._maybe_unload(existing)
    fs._meta_changed = True
    return below


async def _invalidate(fs, dparent: int, name: bytes, existing: int | None,
                      removed: list[tuple[int, bytes, int]]) -> None:
    """Tell the kernel that dparent/name (and what was below it) changed under it.

    The invalidations are done before the command answers (in a worker thread:
    they block), not queued with `invalidate_entry_async`: a queued one could
    reach the kernel after the caller's next lookup, which would still find a
    negative entry cached for a name the restore just created.
    """
    entries = [(dparent, name, existing or 0)]
    entries += [(parent, cname, child) for parent, cname, child in removed
                if fs.lookups.get(parent, 0) > 0 or parent == existing]
    try:
        with trio.move_on_after(10):
            await trio.to_thread.run_sync(_invalidate_kernel_cache, entries, dparent,
                                          abandon_on_cancel=True)
    except Exception:                # noqa: BLE001 - the store is right; only caches may lag
        log.exception("invalidating the kernel's cache after a restore failed")


def _invalidate_kernel_cache(entries: list[tuple[int, bytes, int]], dir_ino: int) -> None:
    for parent, name, deleted in entries:
        _ignoring_unknown(pyfuse3.invalidate_entry, parent, name, deleted)
    _ignoring_unknown(pyfuse3.invalidate_inode, dir_ino, True)


def _ignoring_unknown(invalidate, *args) -> None:
    """Run a kernel cache invalidation; an entry or inode the kernel does not
    hold (ENOENT) or a kernel without the notification (ENOSYS) is fine."""
    try:
        invalidate(*args)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOSYS):
            raise


__all__ = ["resolve_rev", "restore", "EMPTY_REV", "ROOT_INO"]
