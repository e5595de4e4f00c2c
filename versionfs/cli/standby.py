"""The mount daemon forked at the very start of ``versionfs mount``.

Most of a mount's start is importing what serves it (trio, pyfuse3, the
filesystem layer, the stores, the metadata engine). A daemon forked before the
command has parsed anything does those imports on one core while the command
parses its arguments, checks the state dir and mountpoint and asks for the
passphrase on the other; `hand_over` then sends it the mount through a pipe
(the command's checks were its own, so an error is still one line from the
command). The command never loads the daemon's modules.

Nothing depends on a standby being there: without one (a foreground mount, the
passphrase in the environment, a fork that failed) the mount starts as before,
and a standby that is never handed a mount (``--help``, a refused mount)
reads end-of-file and exits without a word.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys

_started: "Standby | None" = None


class Standby:
    """A forked daemon waiting for its mount (see the module doc)."""

    def __init__(self, pid: int, request_fd: int, ready_fd: int):
        self.pid = pid
        self.request_fd = request_fd          # the command writes the mount here
        self.ready_fd = ready_fd              # and reads the daemon's readiness line here

    def hand_over(self, state_dir, mountpoint, opts, passphrase) -> int:
        """Send the daemon its mount; returns the fd its readiness line arrives on."""
        import pickle                     # not before the fork: the standby's to import
        data = pickle.dumps((state_dir, mountpoint, opts, passphrase))
        try:
            with os.fdopen(self.request_fd, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError:              # it died: the readiness pipe says so (EOF)
            pass
        return self.ready_fd

    def cancel(self) -> None:
        """End a standby that gets no mount, now (no orphan finishing its imports)."""
        os.close(self.request_fd)
        os.close(self.ready_fd)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def start(argv: list[str]) -> None:
    """Fork the standby for ``versionfs mount ARGV...`` unless the arguments
    say the mount runs in this process or not at all."""
    global _started
    if _started is not None or {"-f", "--foreground", "--ready-fd", "-h", "--help"} & set(argv):
        return
    request_r, request_w = os.pipe()
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (request_r, request_w, ready_r, ready_w):
            os.close(fd)
        return
    if pid == 0:
        os.close(request_w)
        os.close(ready_r)
        _child(request_r, ready_w)
    os.close(request_r)
    os.close(ready_w)
    _started = Standby(pid, request_w, ready_r)


def take() -> Standby | None:
    """The standby this command started, if any (once)."""
    global _started
    standby, _started = _started, None
    return standby


def _child(request_fd: int, ready_fd: int):
    """The standby itself: off the command's terminal and output pipes at once
    (a caller reading them would wait for us), the imports, then the mount it
    is handed (daemon.serve_forked); it never returns into the command's stack."""
    try:
        # A caller started with fd 0, 1 or 2 closed got a pipe end there.
        request_fd, ready_fd = (fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
                                for fd in (request_fd, ready_fd))
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        import pickle
        from versionfs.cli import daemon
        daemon.serving_modules()
        with os.fdopen(request_fd, "rb") as pipe:
            request = pipe.read()
        if not request:                    # the command mounts another way, or exited
            os._exit(0)
        state_dir, mountpoint, opts, passphrase = pickle.loads(request)
        daemon.serve_forked(state_dir, mountpoint, opts, passphrase, ready_fd)
    finally:
        os._exit(1)
