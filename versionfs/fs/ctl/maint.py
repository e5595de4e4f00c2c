"""The ``forget`` and ``gc`` commands of a mounted filesystem's ctl file.

While mounted, the daemon owns the metadata and the stores, so forgetting
snapshots and collecting garbage run inside it (the CLI's ``versionfs forget
MOUNTPOINT`` and ``versionfs gc MOUNTPOINT`` just write these commands).
``versionfs.fs.ctl.registry`` lists this module among the command groups.

    forget [--dry-run] REF...        forget snapshots: directory name, NAME or revision
    forget [--dry-run] --keep-RULE N ...
                                     apply a retention policy (versionfs.maint.retention)
    gc [--dry-run] [--full]          delete blobs nothing refers to (versionfs.maint.gc)
"""

from __future__ import annotations

import errno
import logging
import os

import trio

from versionfs.fs.special_inodes import SNAPS_DIR_INO
from versionfs.maint import gc as gcmod
from versionfs.maint import retention
from versionfs.tree.names import snapshot_dirname

from .command import CommandError, command

log = logging.getLogger(__name__)

_INT_RULES = ("last", *retention.PERIODS)
# How long gc waits for another collection or a reclamation drain to finish.
GC_WAIT_SECONDS = 60.0


def parse_forget_args(words: list[str]) -> tuple[list[str], retention.Policy | None, bool]:
    """(snapshot refs, policy or None, dry_run) from ``forget`` arguments."""
    refs: list[str] = []
    values: dict[str, object] = {}
    dry_run = False
    it = iter(words)
    for w in it:
        if w == "--dry-run":
            dry_run = True
        elif w == "--keep-named":
            values["keep_named"] = True
        elif w.startswith("--keep-"):
            rule = w[len("--keep-"):]
            if rule not in (*_INT_RULES, "within"):
                raise CommandError(f"forget: unknown option {w}")
            arg = next(it, None)
            if arg is None:
                raise CommandError(f"forget: {w} needs a value")
            if rule == "within":
                values["keep_within"] = arg
            else:
                try:
                    values[f"keep_{rule}"] = int(arg)
                except ValueError:
                    raise CommandError(f"forget: {w} needs a whole number, not {arg!r}") from None
        elif w.startswith("-") and not w.lstrip("-").isdigit():
            raise CommandError(f"forget: unknown option {w}")
        else:
            refs.append(w)
    try:
        policy = retention.policy_from_args(values) if values else None
    except retention.PolicyError as e:
        raise CommandError(f"forget: {e}") from None
    if refs and policy is not None:
        raise CommandError("forget: give snapshots to forget or --keep-* rules, not both")
    if not refs and policy is None:
        raise CommandError("usage: forget [--dry-run] REF... | forget [--dry-run] --keep-RULE N...")
    if policy is not None and policy.empty:
        raise CommandError("forget: empty policy (every --keep-* is 0): refusing to forget "
                           "every snapshot")
    return refs, policy, dry_run


def _invalidate(fs, infos) -> None:
    """Drop the kernel's cached entries for forgotten snapshot directories."""
    import pyfuse3
    for info in infos:
        for name in (snapshot_dirname(info), info.name):
            if name:
                try:
                    pyfuse3.invalidate_entry_async(SNAPS_DIR_INO, os.fsencode(name))
                except Exception:       # noqa: BLE001 - only a cache; it expires anyway
                    log.debug("invalidating %s failed", name, exc_info=True)


@command("forget", "forget [--dry-run] REF...|--keep-RULE N...",
         "forget snapshots by name/dir/rev, or by retention policy")
async def _forget(fs, args):
    refs, policy, dry_run = parse_forget_args(args)
    if fs.read_only and not dry_run:
        raise CommandError("the mount is read-only", errno.EROFS)
    verb = "would forget" if dry_run else "forgot"
    try:
        if policy is None:
            gone = retention.forget_snapshots(fs.meta, refs, dry_run=dry_run)
            lines = [f"{verb} {snapshot_dirname(i)}" for i in gone]
        else:
            result = retention.apply_retention(fs.meta, policy, dry_run=dry_run)
            gone = [d.info for d in result.remove]
            lines = [f"keep {snapshot_dirname(d.info)} ({', '.join(d.reasons)})" for d in result.keep]
            lines += [f"{verb} {snapshot_dirname(d.info)}" for d in result.remove]
    except retention.PolicyError as e:
        raise CommandError(str(e)) from None
    if not dry_run and gone:
        fs.snaps.refresh()
        _invalidate(fs, gone)
        await trio.to_thread.run_sync(fs.meta.sync)
    if not gone:
        lines.append("nothing to forget")
    return "\n".join(lines)


@command("gc", "gc [--dry-run] [--full]", "delete blobs no snapshot or live file refers to")
async def _gc(fs, args):
    unknown = [a for a in args if a not in ("--dry-run", "--full")]
    if unknown:
        raise CommandError(f"usage: gc [--dry-run] [--full] (got {' '.join(unknown)!r})")
    dry_run, full = "--dry-run" in args, "--full" in args
    if fs.paired is None:
        raise CommandError("this mount has no paired store to collect")
    if fs.read_only and not dry_run:
        raise CommandError("the mount is read-only", errno.EROFS)
    guard = gcmod.GCGuard.install(fs.blobs)
    # The background reclamation (fs/reclaiming.py) holds it for one short drain.
    if not await trio.to_thread.run_sync(lambda: guard.running.acquire(timeout=GC_WAIT_SECONDS)):
        raise CommandError("a garbage collection is already running", errno.EBUSY)
    try:
        await trio.to_thread.run_sync(guard.begin)  # 1. puts from now on are recorded
        try:
            await fs.seal_all()         # 2. every seal running before the epoch is done
            live = fs.held_chunks()
            try:
                result = await trio.to_thread.run_sync(
                    lambda: gcmod.collect_garbage(fs.meta, fs.paired, gcmod.index_path_for(fs.meta),
                                                  guard=guard, live=live, full=full,
                                                  dry_run=dry_run))
            except gcmod.GCError as exc:      # e.g. an extent record that does not decode
                raise CommandError(str(exc), errno.EIO) from None
        finally:
            guard.end()
    finally:
        guard.running.release()
    if not dry_run:
        await trio.to_thread.run_sync(fs.meta.sync)
    text = "\n".join(result.lines())
    if result.failed:
        raise CommandError(text.replace("\n", "; "), errno.EIO)
    return text
