"""``versionfs forget``, ``versionfs gc`` and ``versionfs fsck``.

``forget`` and ``gc`` on a MOUNTPOINT write the ctl commands of the same name
(versionfs.fs.ctl.maint): the daemon owns the stores while mounted.  With
``--state STATE_DIR`` they run here instead, on an unmounted filesystem.
``fsck`` always runs on an unmounted state dir.

Exit status: 0 success; 1 error (one line on stderr); 2 bad usage; fsck also
3 (problems found, all repaired) and 4 (problems remain).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from versionfs.maint import retention
from versionfs.common import state as statemod
from versionfs.tree.names import snapshot_dirname

from .command import EXIT_OK, UserError, command, ctl
from .mount import versionfs_mount


def _open(state_dir: str, passphrase_file: str | None, **kw):
    return statemod.open_state(
        state_dir, lambda: statemod.get_passphrase(passphrase_file, what=str(state_dir)), **kw)


def _keep_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retention policy (like restic forget; N = -1 means no limit)")
    g.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest snapshots")
    for period, unit in (("hourly", "hour"), ("daily", "day"), ("weekly", "ISO week"),
                         ("monthly", "month"), ("yearly", "year")):
        g.add_argument(f"--keep-{period}", type=int, metavar="N",
                       help=f"keep the newest snapshot of each of the last N {unit}s that have one")
    g.add_argument("--keep-within", metavar="DURATION",
                   help="keep every snapshot younger than DURATION (e.g. 7d, 1d12h)")
    g.add_argument("--keep-named", action="store_true", default=None,
                   help="keep every snapshot that has a name")


def _setup_forget(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MOUNTPOINT", nargs="?",
                   help="the mounted filesystem (omit with --state)")
    p.add_argument("refs", metavar="NAME", nargs="*",
                   help="snapshot directory name (r12-...), snapshot NAME, or revision number")
    p.add_argument("--state", metavar="STATE_DIR", help="work on an unmounted state dir")
    p.add_argument("--passphrase-file", metavar="FILE", help="with --state, for encrypted filesystems")
    p.add_argument("-n", "--dry-run", action="store_true", help="list what would be forgotten")
    _keep_options(p)
    p.epilog = ("Without NAMEs or --keep-* options the [snapshots] keep_* policy of the "
                "state dir's config.toml is applied. Forgotten snapshots' data is freed by "
                "`versionfs gc`.")


def _policy(args: argparse.Namespace) -> retention.Policy | None:
    values = {k: v for k, v in vars(args).items() if k.startswith("keep_") and v is not None}
    try:
        return retention.policy_from_args(values) if values else None
    except retention.PolicyError as e:
        raise UserError(str(e)) from None


def _split_target(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(mountpoint or None, snapshot refs): with --state every positional is a NAME."""
    words = ([args.target] if args.target is not None else []) + list(getattr(args, "refs", []))
    if args.state:
        return None, words
    if not words:
        raise UserError("give a MOUNTPOINT (or --state STATE_DIR for an unmounted filesystem)")
    return words[0], words[1:]


def _config_policy(mountpoint: str | None, state_dir: str | None) -> retention.Policy:
    if state_dir is None:
        found = versionfs_mount(Path(mountpoint).absolute())
        state_dir = found.source
    policy = retention.Policy.from_config(statemod.load_config(state_dir))
    if policy.empty:
        raise UserError("nothing to forget: give snapshot NAMEs or --keep-* options "
                            "(or set [snapshots] keep_* in the state dir's config.toml)")
    return policy


@command("forget", "forget snapshots (by name, or by a --keep-* retention policy)",
             _setup_forget)
def cmd_forget(args: argparse.Namespace) -> int:
    mountpoint, refs = _split_target(args)
    policy = _policy(args)
    if refs and policy is not None:
        raise UserError("give snapshot NAMEs or --keep-* options, not both")
    if not refs and policy is None:
        policy = _config_policy(mountpoint, args.state)
    if policy is not None and policy.empty:
        raise UserError("every --keep-* rule is 0: refusing to forget every snapshot")
    if mountpoint is not None:
        words = ["forget"] + (["--dry-run"] if args.dry_run else [])
        words += refs if policy is None else policy.args()
        answer = ctl(mountpoint, " ".join(_quote(w) for w in words))
        if answer:
            print(answer)
        return EXIT_OK
    with _open(args.state, args.passphrase_file, read_only=args.dry_run) as st:
        verb = "would forget" if args.dry_run else "forgot"
        try:
            if policy is None:
                for info in retention.forget_snapshots(st.meta, refs, dry_run=args.dry_run):
                    print(f"{verb} {snapshot_dirname(info)}")
            else:
                result = retention.apply_retention(st.meta, policy, dry_run=args.dry_run)
                for d in result.keep:
                    print(f"keep {snapshot_dirname(d.info)} ({', '.join(d.reasons)})")
                for d in result.remove:
                    print(f"{verb} {snapshot_dirname(d.info)}")
        except retention.PolicyError as e:
            raise UserError(str(e)) from None
        if not args.dry_run:
            st.meta.sync()
    return EXIT_OK


def _quote(word: str) -> str:
    import shlex
    return shlex.quote(word)


def _setup_gc(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MOUNTPOINT", nargs="?",
                   help="the mounted filesystem (omit with --state)")
    p.add_argument("--state", metavar="STATE_DIR", help="collect an unmounted state dir")
    p.add_argument("--passphrase-file", metavar="FILE", help="with --state, for encrypted filesystems")
    p.add_argument("-n", "--dry-run", action="store_true", help="count what would be deleted")
    p.add_argument("--full", action="store_true",
                   help="list the whole slow store instead of trusting the local index of "
                        "known blobs (finds blobs the index never learnt of)")
    p.epilog = ("Deletes, from the fast and the slow store, every blob that no retained "
                "snapshot, the live tree or a pending upload refers to. Safe while the "
                "filesystem is in use.")


@command("gc", "delete blobs nothing refers to (after forget)", _setup_gc)
def cmd_gc(args: argparse.Namespace) -> int:
    from versionfs.maint import gc as gcmod
    if (args.target is None) == (args.state is None):
        raise UserError("give a MOUNTPOINT or --state STATE_DIR (one of them)")
    if args.target is not None:
        words = ["gc"] + (["--dry-run"] if args.dry_run else []) + (["--full"] if args.full else [])
        answer = ctl(args.target, " ".join(words))
        if answer:
            print(answer)
        return EXIT_OK
    with _open(args.state, args.passphrase_file) as st:
        try:
            result = gcmod.collect_garbage(st.meta, st.paired, gcmod.index_path_for(st.meta),
                                           full=args.full, dry_run=args.dry_run,
                                           progress=sys.stderr.isatty())
        except gcmod.GCError as exc:
            raise UserError(str(exc)) from None
        st.meta.sync()
    print("\n".join(result.lines()))
    if result.failed:
        raise UserError(f"{result.failed} blob(s) could not be deleted (first error: "
                            f"{result.first_error}); run gc again")
    return EXIT_OK


def _setup_fsck(p: argparse.ArgumentParser) -> None:
    p.add_argument("state_dir", metavar="STATE_DIR", help="an unmounted filesystem's state dir")
    p.add_argument("--read-data", action="store_true",
                   help="also read every referenced blob (fast and slow copies) and verify it")
    p.add_argument("--repair", action="store_true",
                   help="repair what is safe to repair (never deletes user data)")
    p.add_argument("--passphrase-file", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.epilog = ("Exit status: 0 clean; 3 problems found and all repaired; 4 problems remain; "
                "1 fsck could not run (e.g. the filesystem is mounted).")


@command("fsck", "check metadata and blobs; repair what is safe", _setup_fsck)
def cmd_fsck(args: argparse.Namespace) -> int:
    from versionfs.maint import fsck
    # Not read-only even without --repair: the upload journal says which blobs are still
    # only in the fast store (pending), which a read-only open would not load.
    with _open(args.state_dir, args.passphrase_file) as st:
        report = fsck.check(st, read_data=args.read_data, repair=args.repair,
                            progress=not args.quiet and sys.stderr.isatty())
    print("\n".join(report.lines()))
    return report.exit_code
