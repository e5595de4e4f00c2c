"""What a ``versionfs`` subcommand is, and what every command group shares.

A command group (a module of this package) marks each subcommand function
with ``@command(name, help, setup)``; ``versionfs.cli.main`` collects the
marked functions of every group into the parser.

Errors a user can make are ``UserError`` (or a layer's user-facing error) and
print one line, ``versionfs: error: ...``, with exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from versionfs.cli import ctlclient

EXIT_OK, EXIT_ERROR = 0, 1


class UserError(Exception):
    """Something the user can fix; ``str()`` is the one line they see."""


@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    setup: Callable[[argparse.ArgumentParser], None] | None = None
    aliases: tuple[str, ...] = ()


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] | None = None,
            aliases: Sequence[str] = ()) -> Callable[[Callable[[argparse.Namespace], int]],
                                                     Callable[[argparse.Namespace], int]]:
    """Mark ``versionfs NAME``: ``setup`` adds its arguments, the function runs it."""
    def mark(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        run.cli_command = Command(name, help, run, setup, tuple(aliases))
        return run
    return mark


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is all the user needs: one line, no traceback."""
    from versionfs.blob.errors import BlobError
    from versionfs.common import config as configmod
    from versionfs.common import state as statemod
    return (UserError, statemod.StateError, configmod.ConfigError, ctlclient.CtlError, BlobError)


def error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"versionfs: error: {first}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"versionfs: warning: {message}", file=sys.stderr)


def mountpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def ctl(mountpoint: str, text: str) -> str:
    """Run one ctl command on a mounted filesystem and return its answer."""
    path = Path(mountpoint).absolute()
    if not path.exists() and not ctlclient.is_stale_mount(path):
        raise UserError(f"{path} does not exist")
    return ctlclient.command(path, text)
