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

Each command group is a module of this package; `GROUPS` below is the one
place that lists them, and `INDEX` says which group defines which command, so
a group is imported on the first use of one of its commands, not when the
daemon starts (mount time; tests/test_fs_ctl.py keeps the index in step with
what the groups define).
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass, field

from versionfs.common.marks import collect_marked

from .command import Command, CommandError, command, no_args

GROUPS = ("basic", "history", "maint")
INDEX = {
    "snapshot": "basic", "snapshots": "basic", "flush": "basic", "status": "basic",
    "log": "history", "diff": "history", "progress": "history", "restore": "history",
    "forget": "maint", "gc": "maint",
}


def commands(groups=GROUPS) -> dict[str, Command]:
    """The commands the given groups define (importing them), in group order."""
    modules = (importlib.import_module(f"{__package__}.{name}") for name in groups)
    return collect_marked(modules, "ctl_command", Command)


@command("help", "help", "this list")
async def _help(fs, args):
    no_args(args, "help")
    table = {**commands(), "help": _help.ctl_command}
    return "\n".join(f"{c.usage:<20} {c.summary}" for c in table.values())


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
    if words[0] == "help":
        cmd = _help.ctl_command
    elif words[0] in INDEX:
        cmd = commands((INDEX[words[0]],))[words[0]]
    else:
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
