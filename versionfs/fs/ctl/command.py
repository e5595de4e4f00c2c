"""What a ctl command is, and the errors it answers with.

A command group (``basic``, ``history``, ``maint``) marks each of its async
``run(fs, args) -> str`` functions with ``@command(name, usage, summary)``;
``versionfs.fs.ctl.registry`` collects the marked functions of every group
into the one command table the ctl file serves.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Awaitable, Callable


class CommandError(Exception):
    """A command failed; `errno` is what the write() returns."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        super().__init__(message)
        self.errno = err


@dataclass
class Command:
    name: str
    usage: str
    summary: str
    run: Callable[..., Awaitable[str]]   # async run(fs, args: list[str]) -> text


def command(name: str, usage: str, summary: str):
    """Mark an async `run(fs, args) -> str` as the ctl command `name`."""
    def mark(fn):
        fn.ctl_command = Command(name, usage, summary, fn)
        return fn
    return mark


def no_args(args: list[str], name: str) -> None:
    if args:
        raise CommandError(f"{name} takes no arguments (got {' '.join(args)!r})")


def seconds_arg(args: list[str], name: str, usage: str) -> float | None:
    """The optional positive SECONDS argument of `flush` and its kind."""
    if not args:
        return None
    if len(args) > 1:
        raise CommandError(f"usage: {usage}")
    try:
        value = float(args[0])
    except ValueError:
        raise CommandError(f"{name}: SECONDS must be a number, not {args[0]!r}") from None
    if not value > 0:
        raise CommandError(f"{name}: SECONDS must be positive")
    return value
