"""`versionfs log`, `versionfs diff`, `versionfs restore`: thin clients of the
ctl commands of the same names (versionfs/fs/ctl/history.py), which do the
work inside the daemon that owns the store.

PATH arguments: a path inside the mount (absolute, or relative to the current
directory when that is inside the mount) or a path relative to the mount's root.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
from pathlib import Path

from versionfs.cli import ctlclient

from .command import EXIT_OK, UserError, command, ctl


def mount_relative(mountpoint: str, path: str) -> str:
    """`path` as seen from the mount's root ("" = the root)."""
    mnt = os.path.realpath(mountpoint)
    full = os.path.abspath(path)
    for candidate in (full, os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))):
        if candidate == mnt:
            return ""
        if candidate.startswith(mnt + os.sep):
            rel = os.path.relpath(candidate, mnt)
            if rel.split(os.sep)[0] == ".versionfs":
                raise UserError(f"{path} is inside the control directory, not the tree")
            return rel
    if os.path.isabs(path):
        return path.lstrip("/")     # "/docs/a.txt" with the mount's root as "/"
    return path


def _words(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


# --- log ---------------------------------------------------------------------

def _setup_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="only revisions where something at or below PATH changed")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _print_answer(args: argparse.Namespace, words: list[str]) -> int:
    """Send a read-only query; print its answer (checked to be JSON with --json)."""
    answer = ctl(args.mountpoint, _words(*words))
    if args.json:
        json.loads(answer)
    print(answer)
    return EXIT_OK


@command("log", "revisions, newest first, with what each changed", _setup_log)
def cmd_log(args: argparse.Namespace) -> int:
    words = ["log"] + (["--json"] if args.json else [])
    if args.path is not None:
        words += ["--", mount_relative(args.mountpoint, args.path) or "/"]
    return _print_answer(args, words)


# --- diff --------------------------------------------------------------------

def _setup_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("rev_a", metavar="REV_A", help="snapshot name, directory name, revision number, "
                                                  "latest or live")
    p.add_argument("rev_b", metavar="REV_B", nargs="?", help="as REV_A (default: the live tree)")
    p.add_argument("--stat", action="store_true", help="only the summary")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("diff", "what changed between two revisions (A added, D removed, M modified, R renamed)",
         _setup_diff)
def cmd_diff(args: argparse.Namespace) -> int:
    words = ["diff"] + (["--json"] if args.json else []) + (["--stat"] if args.stat else [])
    words += ["--", args.rev_a] + ([args.rev_b] if args.rev_b else [])
    return _print_answer(args, words)


# --- restore -------------------------------------------------------------------

def _setup_restore(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("rev", metavar="REV", help="the snapshot to restore from")
    p.add_argument("path", metavar="PATH", help="file or directory, as it was named in REV")
    p.add_argument("--to", dest="dest", metavar="DEST",
                   help="where to put it in the live tree (default: PATH); an existing DEST is "
                        "replaced, and kept in a pre-restore snapshot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("restore", "bring a file or directory back from a snapshot (no data copied)", _setup_restore)
def cmd_restore(args: argparse.Namespace) -> int:
    src = mount_relative(args.mountpoint, args.path) or "/"
    words = ["restore"]
    if args.dest is not None:
        words += ["--to", mount_relative(args.mountpoint, args.dest) or "/"]
    words += ["--", args.rev, src]
    text = _words(*words)
    if args.no_progress:
        print(ctl(args.mountpoint, text))
        return EXIT_OK
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["answer"] = ctl(args.mountpoint, text)
        except BaseException as e:          # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = e

    worker = threading.Thread(target=run, name="restore", daemon=True)
    worker.start()
    _show_progress(args.mountpoint, worker)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    print(outcome["answer"])
    return EXIT_OK


def _show_progress(mountpoint: str, worker: threading.Thread) -> None:
    """A tqdm bar fed by the daemon's `progress` command while the restore runs
    (shown after a second, and only on a terminal)."""
    from tqdm import tqdm
    bar = None
    try:
        while worker.is_alive():
            worker.join(0.25)
            if not worker.is_alive():
                break
            try:
                job = json.loads(ctlclient.command(Path(mountpoint).absolute(), "progress") or "{}")
            except (ctlclient.CtlError, ValueError, OSError):
                continue
            if job.get("job") != "restore":
                continue
            if bar is None:
                bar = tqdm(total=job["total"], unit="obj", desc="restore", delay=1.0,
                           file=sys.stderr, disable=None)
            bar.n = job["done"]
            bar.refresh()
        if bar is not None:
            bar.n = bar.total
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
