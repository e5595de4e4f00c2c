"""The mount daemon: started detached by ``versionfs mount`` (or in the foreground
under systemd), it opens the state dir, joins the bucket and serves the mount.

The parent waits on a pipe for one line, ``ready`` or ``error: ...``; systemd
gets READY=1 on $NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
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


def spawn(state_dir: Path, mountpoint: Path, option_lists: list[str], read_only: bool,
                  passphrase) -> int:
    """Start ``versionfs mount --foreground`` detached, and wait for its readiness line.

    The child is a fresh interpreter (no state inherited through fork) in its own
    session, logging to STATE_DIR/versionfs.log; the passphrase (or recovery key)
    travels through a pipe, never argv or the environment.
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
    message = _wait_ready(ready_r, proc, READY_TIMEOUT_SECONDS)
    if message != "ready":
        if proc.poll() is None:
            proc.terminate()
        if message.startswith(("unexpected ", "the daemon ")):
            message += f"; see {layout.log}"
        raise UserError(message)
    if not ctlclient.ctl_path(mountpoint).exists():
        raise UserError(f"the daemon reported ready but {mountpoint} does not answer; "
                        f"see {layout.log}")
    print(f"mounted {state_dir} on {mountpoint} (pid {proc.pid}, log {layout.log})")
    return EXIT_OK


def _wait_ready(fd: int, proc: subprocess.Popen, timeout: float) -> str:
    """The daemon's first line: ``ready`` or ``error: ...``; EOF means it died."""
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
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return f"the daemon exited before the mount was ready (status {proc.returncode})"


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
        if ready_fd is not None:               # preflight again: the world may have changed
            preflight.check(state_dir, mountpoint, opts)
        st = statemod.open_state(state_dir, passphrase, read_only=opts.read_only,
                                 start_uploads=not opts.read_only)
        try:                                   # writer lease, catching up, publishing
            from versionfs.bucket import session as cloud
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
        from versionfs.fs import mount as fsmount
        from versionfs.fs.services import daemon_services
        from versionfs.maint.gc import GCGuard
        # The guard is in the data path from the start, so a collection can
        # never begin while a write it does not know about is in flight.
        GCGuard.install(st.blobs)
        fsmount.run(st.meta, st.blobs, st.paired, str(mountpoint), dirty_dir=st.dirty_dir,
                    read_only=opts.read_only,
                    fuse_options=tuple(preflight.fuse_options(state_dir, st.config, opts)),
                    ready=readiness.ready,
                    idle_seal_seconds=st.config["mount.idle_seal_seconds"],
                    seal_max_age_seconds=st.config["mount.seal_max_age_seconds"],
                    read_cache_bytes=st.config["mount.read_cache_bytes"],
                    read_cache_idle_seconds=st.config["mount.read_cache_idle_seconds"],
                    merge_quiet_seconds=st.config["mount.merge_quiet_seconds"],
                    cloud=session, services=daemon_services(st.config))
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


