"""``versionfs mount`` and ``versionfs umount``."""

from __future__ import annotations

import argparse
import fcntl
import os
import threading
from pathlib import Path

from versionfs.cli import ctlclient
from versionfs.common import config as configmod
from versionfs.common import state as statemod

from . import preflight
from .preflight import parse_mount_options
from .command import EXIT_ERROR, EXIT_OK, UserError, command, warn
from .keys import add_secret_args, secret_source

DAEMON_EXIT_TIMEOUT_SECONDS = 120.0


def _setup_mount(p: argparse.ArgumentParser) -> None:
    p.add_argument("state_dir", metavar="STATE_DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground and log to stderr (for systemd)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: FUSE options (allow_other, ...), ro, nonempty, "
                        "passphrase_file=F; fstab-only options are ignored")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("--steal-lease", action="store_true",
                   help="take the writer lease from another machine you know is gone for good")
    add_secret_args(p)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--passphrase-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--recovery-key-fd", type=int, help=argparse.SUPPRESS)


@command("mount", "mount a filesystem; returns once it answers", _setup_mount)
def cmd_mount(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).absolute()
    mountpoint = Path(args.mountpoint).absolute()
    if getattr(args, "steal_lease", False):
        args.options = [*args.options, "steal_lease"]
    opts = parse_mount_options(args.options)
    opts.read_only = opts.read_only or args.read_only
    passphrase_file = args.passphrase_file or opts.passphrase_file
    from . import daemon          # not for umount: the daemon's own imports (start-up time)
    if args.ready_fd is not None:                    # we are the background daemon
        return daemon.run(state_dir, mountpoint, opts,
                          daemon.read_fd_secret(args.passphrase_fd, args.recovery_key_fd),
                          args.ready_fd)
    cfg = preflight.check(state_dir, mountpoint, opts)
    passphrase = None
    if cfg["encryption.enabled"]:
        args.passphrase_file = passphrase_file
        passphrase = secret_source(args, str(state_dir))()
    if args.foreground:
        return daemon.run(state_dir, mountpoint, opts, passphrase, None)
    return daemon.detach(state_dir, mountpoint, opts, args.options, passphrase)


def _setup_umount(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for uploads (default: mount.flush_timeout_seconds)")
    p.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if files are open; the daemon exits when they close")


def versionfs_mount(mountpoint: Path) -> ctlclient.Mount:
    found = ctlclient.find_mount(mountpoint)
    if found is None:
        if not mountpoint.exists() and not ctlclient.is_stale_mount(mountpoint):
            raise UserError(f"{mountpoint} does not exist")
        raise UserError(f"{mountpoint} is not mounted")
    if not found.is_versionfs:
        raise UserError(f"{mountpoint} is not a versionfs mount (it is {found.fstype})")
    return found


@command("umount", "flush uploads and unmount", _setup_umount, aliases=("unmount",))
def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    found = versionfs_mount(mountpoint)
    state_dir = Path(found.source)
    timeout = args.timeout
    if timeout is None:
        try:
            timeout = statemod.load_config(state_dir)["mount.flush_timeout_seconds"]
        except Exception:
            timeout = configmod.Config()["mount.flush_timeout_seconds"]
    try:
        ctlclient.command(mountpoint, f"flush {timeout:g}")
    except ctlclient.CtlError as e:
        warn(f"not everything is uploaded to the slow store yet ({e}); the rest is kept "
              f"in the state dir and uploaded at the next mount")
    result = preflight.fusermount(mountpoint, lazy=args.lazy)
    if result.returncode != 0:
        text = (result.stderr or result.stdout).strip()
        if "busy" in text.lower():
            raise UserError(f"{mountpoint} is busy: a process has files open there "
                            f"(see `fuser -vm {mountpoint}`), or use --lazy")
        raise UserError(f"unmounting {mountpoint} failed: {text.splitlines()[-1] if text else result.returncode}")
    if not wait_unlocked(state_dir, DAEMON_EXIT_TIMEOUT_SECONDS):
        warn(f"unmounted, but the daemon for {state_dir} is still running after "
             f"{DAEMON_EXIT_TIMEOUT_SECONDS:.0f}s")
        return EXIT_ERROR
    return EXIT_OK


def wait_unlocked(state_dir: Path, timeout: float) -> bool:
    """Wait until nobody holds the state dir open (True), at most `timeout`
    seconds (False). A blocking flock returns the moment the daemon lets go,
    where polling `read_pid` would sleep past it; a daemon thread carries it,
    since flock itself has no timeout."""
    try:
        fd = os.open(statemod.Layout(state_dir).lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(fd)
        return True
    except BlockingIOError:
        pass
    released = threading.Event()

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            released.set()
    threading.Thread(target=wait, name="vfs-wait-unlocked", daemon=True).start()
    if not released.wait(timeout):
        return False                 # the thread and its fd end with this process
    os.close(fd)
    return True
