"""The ``versionfs`` command line: one module per command group, collected here.

``GROUPS`` is the one place that lists them; each marks its subcommands with
``versionfs.cli.command.command``. Errors a user can make print one line,
``versionfs: error: ...``, with exit status 1; anything unexpected prints one
line too and the traceback only with VERSIONFS_DEBUG=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from versionfs import __version__
from versionfs.common.privacy import restrict_umask

from . import bucket, history, keys, maint, mount, setup, snapshots
from .command import EXIT_ERROR, Command, error
from .daemon import user_error_types

GROUPS = (setup, mount, snapshots, history, maint, bucket, keys)


def _collect() -> dict[str, Command]:
    table: dict[str, Command] = {}
    for module in GROUPS:
        for value in vars(module).values():
            cmd = getattr(value, "cli_command", None)
            if isinstance(cmd, Command) and value.__module__ == module.__name__:
                if cmd.name in table:
                    raise RuntimeError(f"versionfs {cmd.name} defined twice")
                table[cmd.name] = cmd
    return table


COMMANDS: dict[str, Command] = _collect()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="versionfs",
        description="A versioned FUSE filesystem for cloud-backed home directories.")
    parser.add_argument("--version", action="version", version=f"versionfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, aliases=list(cmd.aliases))
        if cmd.setup:
            cmd.setup(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    restrict_umask()              # everything versionfs writes is private (common/privacy.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve-store owns its whole argument list.
    if argv[:1] == ["serve-store"]:
        return bucket.run_serve_store(argv[1:])
    parser = build_parser()
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
