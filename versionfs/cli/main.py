"""The ``versionfs`` command line: one module per command group, collected here.

``GROUPS`` is the one place that lists them (``INDEX`` says which group holds
which command, so a command imports only its own group); each marks its
subcommands with ``versionfs.cli.command.command``. Errors a user can make print one line,
``versionfs: error: ...``, with exit status 1; anything unexpected prints one
line too and the traceback only with VERSIONFS_DEBUG=1.
"""

from __future__ import annotations

import sys

from versionfs import __version__

# Everything else is imported where it is used: `versionfs --version` answers
# before argparse, logging or any command group is loaded (start-up time,
# checked by tests/test_cli_contrib.py).

# The command groups, one module each, and which commands each defines. The
# index lets `versionfs CMD` import only CMD's group (start-up time: the other
# groups pull in the stores, the metadata engine, the bucket code);
# tests/test_cli_contrib.py checks it against what the groups really define.
GROUPS = ("setup", "mount", "snapshots", "history", "maint", "bucket", "keys")
INDEX = {
    "init": "setup", "demo": "setup", "quickstart": "setup",
    "mount": "mount", "umount": "mount", "unmount": "mount",
    "snapshot": "snapshots", "snapshots": "snapshots", "ls-snapshots": "snapshots",
    "status": "snapshots", "flush": "snapshots",
    "log": "history", "diff": "history", "restore": "history",
    "forget": "maint", "gc": "maint", "fsck": "maint",
    "clone": "bucket", "serve-store": "bucket",
    "key": "keys",
}


def group(name: str):
    import importlib
    return importlib.import_module(f"versionfs.cli.{name}")


def commands(groups=GROUPS) -> dict:
    """The commands the given groups define (importing them), in group order."""
    from versionfs.common.marks import collect_marked
    from .command import Command
    return collect_marked(map(group, groups), "cli_command", Command)


def build_parser(groups=GROUPS):
    import argparse
    parser = argparse.ArgumentParser(
        prog="versionfs",
        description="A versioned FUSE filesystem for cloud-backed home directories.")
    parser.add_argument("--version", action="version", version=f"versionfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in commands(groups).values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, aliases=list(cmd.aliases))
        if cmd.setup:
            cmd.setup(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"versionfs {__version__}")
        return 0
    import os
    from versionfs.common.privacy import restrict_umask
    from .command import EXIT_ERROR, error, user_error_types
    restrict_umask()              # everything versionfs writes is private (common/privacy.py)
    # serve-store owns its whole argument list.
    if argv[:1] == ["serve-store"]:
        return group("bucket").run_serve_store(argv[1:])
    # Only the named command's group is imported; anything else (--help, a typo)
    # gets the whole parser.
    known = INDEX.get(argv[0]) if argv else None
    parser = build_parser((known,) if known else GROUPS)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except user_error_types() as e:
        error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except OSError as e:
        # Permissions, a full disk, a vanished path: the environment, said plainly.
        if os.environ.get("VERSIONFS_DEBUG"):
            raise
        error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        return EXIT_ERROR
    except Exception as e:
        if os.environ.get("VERSIONFS_DEBUG"):
            raise
        error(f"unexpected {type(e).__name__}: {e} (run with VERSIONFS_DEBUG=1 for details)")
        return EXIT_ERROR
