"""``versionfs snapshot``, ``snapshots``, ``status`` and ``flush``: ctl commands
written to a mounted filesystem's control file."""

from __future__ import annotations

import argparse
import json

from .command import EXIT_OK, UserError, command, ctl, mountpoint_arg


def _setup_snapshot(p: argparse.ArgumentParser) -> None:
    mountpoint_arg(p)
    p.add_argument("name", metavar="NAME", nargs="?", help="a name to find the snapshot by")


@command("snapshot", "freeze the tree as a new read-only revision (O(1))", _setup_snapshot)
def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.name is not None and (not args.name.strip() or any(c.isspace() for c in args.name)
                                  or "/" in args.name):
        raise UserError(f"snapshot name {args.name!r} must be one word without '/'")
    answer = ctl(args.mountpoint, "snapshot" + (f" {args.name}" if args.name else ""))
    print(answer)
    return EXIT_OK


@command("snapshots", "list snapshots: directory, revision, time, name",
         mountpoint_arg, aliases=("ls-snapshots",))
def cmd_snapshots(args: argparse.Namespace) -> int:
    answer = ctl(args.mountpoint, "snapshots")
    if answer:
        print(answer)
    return EXIT_OK


def _setup_status(p: argparse.ArgumentParser) -> None:
    mountpoint_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("status", "revision, pending uploads, cache use", _setup_status)
def cmd_status(args: argparse.Namespace) -> int:
    answer = ctl(args.mountpoint, "status --json" if args.json else "status")
    if args.json:
        json.loads(answer)               # a daemon bug must not pass for JSON
    print(answer)
    return EXIT_OK


def _setup_flush(p: argparse.ArgumentParser) -> None:
    mountpoint_arg(p)
    p.add_argument("--timeout", type=float, metavar="SECONDS")


@command("flush", "wait until everything is durable on the slow store", _setup_flush)
def cmd_flush(args: argparse.Namespace) -> int:
    answer = ctl(args.mountpoint, "flush" + (f" {args.timeout:g}" if args.timeout else ""))
    if answer:
        print(answer)
    return EXIT_OK
