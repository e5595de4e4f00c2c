"""The mount daemon: started detached by ``versionfs mount`` (or in the foreground
under systemd), it opens the state dir, joins the bucket and serves the mount.

The parent waits on a pipe for one line, ``ready`` or ``error: ...``; systemd
gets READY=1 on $NOTIFY_SOCKET.

``detach`` forks the daemon from the ``versionfs mount`` process itself, which
has already paid for Python and the command's imports (half of a mount's time
was a second interpreter starting); ``spawn`` starts a fresh interpreter where
a fork is not safe (see ``_fork_is_safe``). The daemon imports what serves the
mount (``_daemon_modules``) after the fork: the command never loads it, so its
exit, the last step of a mount, has that much less to tear down. (A daemon
forked at the command's very start, importing while the command parses and
checks, measured no faster on an idle machine, since both then import the
command's modules, and slower on a busy one; see README, Mount and unmount.)
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from versionfs import __version__
from versionfs.cli import ctlclient
from versionfs.common import state as statemod
from versionfs.common.memory import bound_allocator

from . import preflight
from .command import EXIT_ERROR, EXIT_OK, UserError, user_error_types

log = logging.getLogger("versionfs")

READY_TIMEOUT_SECONDS = 300.0       # WAL replay after a crash may take a while


def read_fd_secret(passphrase_fd: int | None, recovery_key_fd: int | None):
    """What the parent sent through its pipe: a passphrase, a RecoveryKey, or None."""
    fd = passphrase_fd if passphrase_fd is not None else recovery_key_fd
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read().decode()
    if data and fd == recovery_key_fd:
        from versionfs.blob.keys import decode_recovery_key
        return decode_recovery_key(data)
    return data or None


def _daemon_modules() -> tuple:
    """What `run` serves a mount with (imported by the daemon, see the module doc)."""
    from versionfs.bucket import session
    from versionfs.fs import mount, services
    from versionfs.maint import gc as gcmod
    return session, mount, services, gcmod


def _fork_is_safe() -> bool:
    """A fork copies one thread and every lock as it is: safe only while this
    process runs no other thread and has opened no state (the caller has not).
    The passphrase variable would stay readable in the child's
    /proc/PID/environ (unsetenv does not erase the original block): a fresh
    interpreter gets an environment without it."""
    return threading.active_count() == 1 and statemod.PASSPHRASE_ENV not in os.environ


def detach(state_dir: Path, mountpoint: Path, opts: preflight.MountOptions,
           option_lists: list[str], passphrase) -> int:
    """Start the daemon in its own session, logging to STATE_DIR/versionfs.log,
    and wait for its readiness line: forked from this process when that is safe,
    else a fresh interpreter."""
    if not _fork_is_safe():
        return spawn(state_dir, mountpoint, option_lists, opts.read_only, passphrase)
    layout = statemod.Layout(state_dir)
    log_fd = os.open(layout.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # What the command's imports made is the daemon's for good: frozen, the
    # garbage collector skips it, in the daemon's collections and at this
    # process's exit (which took longer than the daemon's whole start without it).
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _serve_forked(log_fd, state_dir, mountpoint, opts, passphrase, ready_w)
    os.close(log_fd)
    os.close(ready_w)
    message = _wait_ready(ready_r, READY_TIMEOUT_SECONDS)
    if message is None:
        message = f"the daemon exited before the mount was ready (status {_exit_status(pid)})"

    def stop() -> None:
        try:
            if _exit_status(pid, 0) is None:
                os.kill(pid, signal.SIGTERM)
        except ChildProcessError:            # already reaped: it exited
            pass
    return _answer(message, layout, state_dir, mountpoint, pid, stop)


def _serve_forked(log_fd: int, state_dir: Path, mountpoint: Path, opts, passphrase,
                  ready_fd: int):
    """The forked child: what a spawned daemon's exec would give it (a new
    session, / as cwd, stdin from /dev/null, stdout and stderr to the log), then
    `run`; it never returns into the caller's stack."""
    code = EXIT_ERROR
    try:
        # A caller started with fd 0, 1 or 2 closed got one of these as a pipe end.
        log_fd, ready_fd = (fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
                            for fd in (log_fd, ready_fd))
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if null > 2:
            os.close(null)
        os.close(log_fd)
        os.closerange(3, ready_fd)               # what else the caller had open is not ours
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.environ.pop("NOTIFY_SOCKET", None)     # the parent, not the daemon, is the service
        code = run(state_dir, mountpoint, opts, passphrase, ready_fd)
    except BaseException:                        # noqa: BLE001 - the log is all it has
        log.exception("the mount daemon ends with an error")
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _exit_status(pid: int, timeout: float = 5.0) -> int | None:
    """The forked daemon's exit status, once it has exited (None: still running)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _answer(message: str, layout, state_dir: Path, mountpoint: Path, pid: int, stop) -> int:
    """What `versionfs mount` says once the daemon answered (`stop` ends a daemon that failed)."""
    if message != "ready":
        stop()
        if message.startswith(("unexpected ", "the daemon ")):
            message += f"; see {layout.log}"
        raise UserError(message)
    if not ctlclient.ctl_path(mountpoint).exists():
        raise UserError(f"the daemon reported ready but {mountpoint} does not answer; "
                        f"see {layout.log}")
    print(f"mounted {state_dir} on {mountpoint} (pid {pid}, log {layout.log})")
    return EXIT_OK


def spawn(state_dir: Path, mountpoint: Path, option_lists: list[str], read_only: bool,
                  passphrase) -> int:
    """Start ``versionfs mount --foreground`` detached, and wait for its readiness line.

    The child is a fresh interpreter (for when `detach` cannot fork safely) in its
    own session, logging to STATE_DIR/versionfs.log; the passphrase (or recovery
    key) travels through a pipe, never argv or the environment.
    """
    from versionfs.blob.keys import RecoveryKey, encode_recovery_key
    layout = statemod.Layout(state_dir)
    ready_r, ready_w = os.pipe()
    pass_r = pass_w = None
    argv = [sys.executable, "-m", "versionfs", "mount", str(state_dir), str(mountpoint),
            "--ready-fd", str(ready_w)]
    for o in option_lists:
        argv += ["-o", o]
    if read_only:
        argv.append("--read-only")
    fds = [ready_w]
    if isinstance(passphrase, RecoveryKey):
        secret = encode_recovery_key(passphrase.master, passphrase.fs_id).encode()
    else:
        secret = passphrase.encode() if passphrase else b""
    if passphrase is not None:
        pass_r, pass_w = os.pipe()
        argv += ["--recovery-key-fd" if isinstance(passphrase, RecoveryKey) else "--passphrase-fd",
                 str(pass_r)]
        fds.append(pass_r)
    env = dict(os.environ)
    env.pop(statemod.PASSPHRASE_ENV, None)
    env.pop("NOTIFY_SOCKET", None)
    with open(os.open(layout.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                pass_fds=fds, start_new_session=True, env=env, cwd="/")
    os.close(ready_w)
    if pass_r is not None and pass_w is not None:
        os.close(pass_r)
        with os.fdopen(pass_w, "wb") as f:
            f.write(secret)
    message = _wait_ready(ready_r, READY_TIMEOUT_SECONDS)
    if message is None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        message = f"the daemon exited before the mount was ready (status {proc.returncode})"
    return _answer(message, layout, state_dir, mountpoint, proc.pid,
                   lambda: proc.poll() is None and proc.terminate())


def _wait_ready(fd: int, timeout: float) -> str | None:
    """The daemon's first line: ``ready`` or the message of its ``error: ...``;
    None when it died without a word (EOF)."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"the daemon did not become ready within {timeout:.0f}s"
            readable, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    line = data.decode(errors="replace").strip().splitlines()[0] if data.strip() else ""
    if line == "ready":
        return "ready"
    if line.startswith("error: "):
        return line[len("error: "):]
    return None


class _Readiness:
    """Tells whoever waits (the parent's pipe, systemd's NOTIFY_SOCKET) that we are up."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _pipe(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None

    def ready(self) -> None:
        self._pipe("ready")
        _sd_notify("READY=1")

    def failed(self, message: str) -> None:
        self._pipe("error: " + message.replace("\n", " "))


def _sd_notify(message: str) -> None:
    """systemd Type=notify support without a dependency: one datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("could not notify systemd: %s", e)


def _setup_logging() -> None:
    from versionfs.common import logs as logsetup        # journal-aware under systemd (issue 6)
    logsetup.setup_logging()


def run(state_dir: Path, mountpoint: Path, opts: preflight.MountOptions, passphrase: str | None,
            ready_fd: int | None) -> int:
    """Run the mount in this process until it is unmounted (or signalled).

    SIGTERM/SIGINT are handled by the fs layer's serve(): it seals, syncs and
    unmounts, so systemd's stop and Ctrl-C in --foreground both end cleanly.
    """
    _setup_logging()
    bound_allocator()             # before any thread: freed buffers go back (common/memory.py)
    readiness = _Readiness(ready_fd)
    try:
        cloud, fsmount, services, gcmod = _daemon_modules()
        gc.freeze()                            # the imports' objects, as in detach
        if ready_fd is not None:               # preflight again: the world may have changed
            preflight.check(state_dir, mountpoint, opts)
        st = statemod.open_state(state_dir, passphrase, read_only=opts.read_only,
                                 start_uploads=not opts.read_only)
        try:                                   # writer lease, catching up, publishing
            session = cloud.CloudSession.start(st, read_only=opts.read_only,
                                               steal_lease=opts.steal_lease)
        except BaseException:
            st.close()
            raise
    except Exception as e:
        user_error = isinstance(e, user_error_types())
        message = str(e) if user_error else f"unexpected {type(e).__name__}: {e}"
        readiness.failed(message)
        if ready_fd is None:
            raise
        if user_error:
            log.error("mount failed: %s", message)
        else:
            log.exception("mount failed")
        return EXIT_ERROR
    from versionfs.common import logs as logsetup
    logsetup.set_level(st.config["mount.log_level"])
    log.info("versionfs %s mounting %s on %s (pid %d)", __version__, state_dir, mountpoint,
             os.getpid())
    try:
        # The guard is in the data path from the start, so a collection can
        # never begin while a write it does not know about is in flight.
        gcmod.GCGuard.install(st.blobs)
        fsmount.run(st.meta, st.blobs, st.paired, str(mountpoint), dirty_dir=st.dirty_dir,
                    read_only=opts.read_only,
                    fuse_options=tuple(preflight.fuse_options(state_dir, st.config, opts)),
                    ready=readiness.ready,
                    idle_seal_seconds=st.config["mount.idle_seal_seconds"],
                    seal_max_age_seconds=st.config["mount.seal_max_age_seconds"],
                    read_cache_bytes=st.config["mount.read_cache_bytes"],
                    read_cache_idle_seconds=st.config["mount.read_cache_idle_seconds"],
                    merge_quiet_seconds=st.config["mount.merge_quiet_seconds"],
                    metadata_sync_seconds=st.config["mount.metadata_sync_seconds"],
                    cloud=session, services=services.daemon_services(st.config))
    except BaseException as e:
        readiness.failed(f"mount failed: {e}")
        log.exception("mount failed")
        raise
    finally:
        try:
            session.close(st.config["mount.flush_timeout_seconds"])
            st.close()
        finally:
            log.info("versionfs daemon for %s exiting", state_dir)
    return EXIT_OK


