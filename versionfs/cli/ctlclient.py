"""Client side of the ctl file (``MOUNTPOINT/.versionfs/ctl``; protocol in ctl/PROTOCOL.md).

One command is one ``write()`` on a file descriptor opened read-write; the
answer is read back from the same descriptor.  A refused command fails the
write (EINVAL and friends) and the read then returns ``error: <message>``.
Also: finding our mounts in /proc/self/mountinfo, which ``umount`` needs to get
from a mountpoint back to its state dir.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CtlError", "NotAMountError", "command", "ctl_path", "Mount", "find_mount",
           "FS_SUBTYPE"]

FS_SUBTYPE = "versionfs"          # mounts show as type fuse.versionfs
CTL_RELATIVE = ".versionfs/ctl"


class CtlError(Exception):
    """The daemon refused or failed a command; ``str()`` is its one-line message."""


class NotAMountError(CtlError):
    """The path is not a (responding) versionfs mount."""


def ctl_path(mountpoint: str | os.PathLike[str]) -> Path:
    return Path(mountpoint) / CTL_RELATIVE


def read_answer(fd: int) -> str:
    """Everything the daemon answered on a ctl fd, after the command's write."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def command(mountpoint: str | os.PathLike[str], text: str) -> str:
    """Run one ctl command and return its answer (without the final newline)."""
    path = ctl_path(mountpoint)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotAMountError(f"{mountpoint} is not a versionfs mount (no {CTL_RELATIVE})") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise NotAMountError(f"{mountpoint}: the versionfs daemon is gone (transport "
                                 f"endpoint not connected); `fusermount3 -u {mountpoint}` "
                                 f"cleans up") from None
        raise CtlError(f"cannot open {path}: {e.strerror}") from None
    try:
        failure: OSError | None = None
        try:
            os.write(fd, text.encode())
        except OSError as e:
            failure = e
        try:
            answer = read_answer(fd)
        except OSError as e:
            answer = ""
            if failure is None:
                raise CtlError(f"reading the answer from {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    answer = answer[:-1] if answer.endswith("\n") else answer
    if failure is not None or answer.startswith("error: "):
        message = answer[len("error: "):] if answer.startswith("error: ") else ""
        if not message and failure is not None:
            message = f"{text.split()[0] if text.split() else text!r}: {failure.strerror}"
        raise CtlError(message.splitlines()[0] if message else "command failed")
    return answer


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo that we care about."""

    mountpoint: str
    fstype: str
    source: str

    @property
    def is_versionfs(self) -> bool:
        return self.fstype == f"fuse.{FS_SUBTYPE}"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[Mount]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if len(fields) < 5 or len(rest) < 2:
                continue
            found.append(Mount(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return found


def find_mount(mountpoint: str | os.PathLike[str]) -> Mount | None:
    """The mount whose mountpoint is exactly this path (the last one, if stacked)."""
    target = os.path.abspath(mountpoint)
    match = None
    for m in mounts():
        if m.mountpoint == target:
            match = m
    return match


def is_stale_mount(path: Path) -> bool:
    """A FUSE mount whose daemon is gone answers everything with ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False
