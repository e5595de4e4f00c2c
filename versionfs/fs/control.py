"""The control file `/.versionfs/ctl` and its command table.

Protocol
--------
Open `/.versionfs/ctl` with O_RDWR. Write one command per write() (UTF-8,
optional trailing newline); the write returns its length on success. read()
on the same fd returns the result text, ending in "\\n" (reads are sequential
from the start of the latest result, whatever the file offset; the fd is not
seekable; a read after the whole result returns end-of-file). A bad or failed
command fails the write with EINVAL (ENOSPC/EROFS/EIO/ETIMEDOUT for real failures),
changes nothing, and read then returns "error: <message>\\n".

Commands:

    snapshot [NAME]     freeze the tree as a new read-only revision; prints the
                        new snapshot directory name, r<rev>-<YYYYmmddTHHMMSSZ>[-NAME]
    snapshots           one line per revision:
                        <dirname>\\t<rev>\\t<ISO-8601 UTC time>\\t<name or ->
    flush [SECONDS]     block until everything is durable on the slow store
                        (seals dirty files, syncs metadata, waits for uploads);
                        prints "flushed"
    status              "key: value" lines: revision, snapshots, dirty files,
                        pending uploads, pending bytes, fast store use,
                        last upload, last error
    status --json       the same as one JSON object
    help                this list

NAME: 1-100 characters of [A-Za-z0-9._@+:-], not starting with "." or "-",
unique, not all digits, and not itself shaped like a snapshot directory name.

Later issues add commands by registering them in `COMMANDS` with `command()`.
"""

from __future__ import annotations

import errno
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable

NAME_RE = re.compile(r"^[A-Za-z0-9_@+:][A-Za-z0-9._@+:-]{0,99}$")
DIRNAME_RE = re.compile(r"^r(\d+)-(\d{8}T\d{6}Z)(?:-(.+))?$")


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


COMMANDS: dict[str, Command] = {}
# Callables fs -> dict whose items `status` adds (scheduler, metrics, jobs; issue 6).
STATUS_EXTRAS: list[Callable[[object], dict]] = []


def command(name: str, usage: str, summary: str):
    """Register an async `run(fs, args) -> str` under `name`."""
    def register(fn):
        COMMANDS[name] = Command(name, usage, summary, fn)
        return fn
    return register


def iso_utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_dirname(info) -> str:
    """`r<rev>-<YYYYmmddTHHMMSSZ>[-NAME]` for a `RevisionInfo`."""
    stamp = datetime.fromtimestamp(info.time, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"r{info.rev}-{stamp}" + (f"-{info.name}" if info.name else "")


def check_snapshot_name(name: str) -> None:
    if not NAME_RE.match(name) or DIRNAME_RE.match(name) or name.isdigit():
        raise CommandError(
            f"bad snapshot name {name!r}: use 1-100 characters of letters, digits and ._@+:- "
            "not starting with '.' or '-', and not of the form r<rev>-<time>")


def _no_args(args, name):
    if args:
        raise CommandError(f"{name} takes no arguments (got {' '.join(args)!r})")


def _seconds(args, name) -> float | None:
    if not args:
        return None
    if len(args) > 1:
        raise CommandError(f"usage: {COMMANDS[name].usage}")
    try:
        value = float(args[0])
    except ValueError:
        raise CommandError(f"{name}: SECONDS must be a number, not {args[0]!r}") from None
    if not value > 0:
        raise CommandError(f"{name}: SECONDS must be positive")
    return value


@command("snapshot", "snapshot [NAME]", "freeze the tree as a new read-only revision")
async def _snapshot(fs, args):
    if len(args) > 1:
        raise CommandError("usage: snapshot [NAME]")
    name = args[0] if args else None
    if name is not None:
        check_snapshot_name(name)
        if any(r.name == name for r in fs.meta.revisions()):
            raise CommandError(f"a snapshot named {name!r} already exists")
    info = await fs.take_snapshot(name)
    return snapshot_dirname(info)


@command("snapshots", "snapshots", "list revisions: dirname, rev, time, name")
async def _snapshots(fs, args):
    _no_args(args, "snapshots")
    lines = [f"{snapshot_dirname(r)}\t{r.rev}\t{iso_utc(r.time)}\t{r.name or '-'}"
             for r in fs.meta.revisions()]
    return "\n".join(lines)


@command("flush", "flush [SECONDS]", "wait until everything is durable on the slow store")
async def _flush(fs, args):
    await fs.flush_all(_seconds(args, "flush"))
    return "flushed"


@command("status", "status [--json]", "revision, snapshots, dirty files, uploads, cache use")
async def _status(fs, args):
    if args not in ([], ["--json"]):
        raise CommandError("usage: status [--json]")
    st = fs.status()
    for extra in STATUS_EXTRAS:
        st.update(extra(fs))
    if args:
        return json.dumps(st, sort_keys=False)
    return "\n".join(f"{k.replace('_', ' ')}: {'-' if v is None else v}" for k, v in st.items())


@command("help", "help", "this list")
async def _help(fs, args):
    _no_args(args, "help")
    return "\n".join(f"{c.usage:<20} {c.summary}" for c in COMMANDS.values())


async def run_command(fs, text: str) -> str:
    """Parse and run one command line; CommandError on bad input or failure."""
    line = text.rstrip("\n")
    if "\n" in line:
        raise CommandError("one command per write")
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise CommandError(f"cannot parse command: {e}") from None
    if not words:
        raise CommandError("empty command; try 'help'")
    cmd = COMMANDS.get(words[0])
    if cmd is None:
        raise CommandError(f"unknown command {words[0]!r}; try 'help'")
    return await cmd.run(fs, words[1:])


@dataclass
class CtlHandle:
    """One open of the ctl file: the latest result and how much was read."""

    result: bytes = b""
    pos: int = 0
    busy: bool = field(default=False)

    async def write(self, fs, buf: bytes) -> int:
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            self._set("error: command is not valid UTF-8")
            raise CommandError("command is not valid UTF-8")
        try:
            out = await run_command(fs, text)
        except Exception as e:          # the caller maps the errno (EINVAL, EIO, ...)
            self._set(f"error: {e}")
            raise
        self._set(out)
        return len(buf)

    def _set(self, text: str) -> None:
        self.result = (text.rstrip("\n") + "\n").encode()
        self.pos = 0

    def read(self, size: int) -> bytes:
        data = self.result[self.pos:self.pos + size]
        self.pos += len(data)
        return data
