"""The ``versionfs`` command line.

Each subcommand is a function registered with ``@command``; later issues add
theirs (clone, forget, gc, fsck, log, diff, restore) the same way, from their
own modules listed in ``EXTENSION_MODULES`` or by calling ``command`` directly.

Errors a user can make are ``UserError`` (or a layer's user-facing error) and
print one line, ``versionfs: error: ...``, with exit status 1; anything
unexpected prints one line too and the traceback only with VERSIONFS_DEBUG=1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from versionfs import __version__
from versionfs import config as configmod
from versionfs import ctlclient, state as statemod

log = logging.getLogger("versionfs")

EXIT_OK, EXIT_ERROR = 0, 1
READY_TIMEOUT_SECONDS = 300.0       # WAL replay after a crash may take a while
DAEMON_EXIT_TIMEOUT_SECONDS = 120.0


class UserError(Exception):
    """Something the user can fix; ``str()`` is the one line they see."""


# --- subcommand registry ------------------------------------------------------

@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    setup: Callable[[argparse.ArgumentParser], None] | None = None
    aliases: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {}
EXTENSION_MODULES: list[str] = []     # e.g. "versionfs.cloud.cli" (issue 5) registering more
EXTENSION_MODULES.append("versionfs.maint_cli")    # issue 5: forget, gc, fsck
EXTENSION_MODULES.append("versionfs.clone")    # issue 5: clone
EXTENSION_MODULES.append("versionfs.history_cli")    # issue 6: log, diff, restore


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] | None = None,
            aliases: Sequence[str] = ()) -> Callable[[Callable[[argparse.Namespace], int]],
                                                     Callable[[argparse.Namespace], int]]:
    """Register ``versionfs NAME``: ``setup`` adds its arguments, the function runs it."""
    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"versionfs {name} registered twice")
        COMMANDS[name] = Command(name, help, run, setup, tuple(aliases))
        return run
    return register


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSION_MODULES:
        importlib.import_module(module)
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


def _user_error_types() -> tuple[type[BaseException], ...]:
    from versionfs.blob.errors import BlobError
    return (UserError, statemod.StateError, configmod.ConfigError, ctlclient.CtlError, BlobError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve-store owns its whole argument list.
    if argv[:1] == ["serve-store"]:
        return _serve_store(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_error_types() as e:
        _error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as e:
        # Permissions, a full disk, a vanished path: the environment, said plainly.
        if os.environ.get("VERSIONFS_DEBUG"):
            raise
        _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        return EXIT_ERROR
    except Exception as e:
        if os.environ.get("VERSIONFS_DEBUG"):
            raise
        _error(f"unexpected {type(e).__name__}: {e} (run with VERSIONFS_DEBUG=1 for details)")
        return EXIT_ERROR


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"versionfs: error: {first}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"versionfs: warning: {message}", file=sys.stderr)


# --- init ---------------------------------------------------------------------

def _setup_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("state_dir", metavar="STATE_DIR",
                   help="directory for this machine's state (created if missing, must be empty)")
    p.add_argument("--slow", metavar="URL",
                   help="slow store: file:///path, s3://bucket/prefix or a remote store URL "
                        "(default: STATE_DIR/slow)")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt everything with a key wrapped by a passphrase")
    p.add_argument("--cipher", choices=["aes-256-gcm", "chacha20-poly1305"],
                   help="AEAD cipher for --encrypt (default aes-256-gcm)")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help=f"read the passphrase from FILE (else ${statemod.PASSPHRASE_ENV} or a prompt)")


@command("init", "create a new filesystem in a state directory", _setup_init)
def cmd_init(args: argparse.Namespace) -> int:
    passphrase = None
    if args.encrypt:
        passphrase = statemod.get_passphrase(args.passphrase_file, confirm=True,
                                             what="the new filesystem")
    elif args.passphrase_file:
        raise UserError("--passphrase-file only makes sense with --encrypt")
    root = statemod.init_state(args.state_dir, args.slow, encrypt=args.encrypt,
                               passphrase=passphrase, cipher=args.cipher)
    cfg = statemod.load_config(root)
    print(f"created versionfs filesystem in {root}")
    print(f"  slow store: {statemod.Layout(root).slow_url(cfg)}")
    if args.encrypt:
        print("  encrypted; keep the passphrase safe: without it the data cannot be read")
    print(f"mount it with: versionfs mount {root} MOUNTPOINT")
    return EXIT_OK


# --- mount --------------------------------------------------------------------

# Options that only mean something to mount(8)/fstab/systemd, never to FUSE.
_FSTAB_ONLY = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
               "_netdev", "nofail", "rw", "sw", "xx", "loop"}
_FSTAB_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")


@dataclass
class MountOptions:
    fuse: list[str] = field(default_factory=list)
    read_only: bool = False
    nonempty: bool = False
    passphrase_file: str | None = None
    steal_lease: bool = False


def parse_mount_options(option_lists: Sequence[str]) -> MountOptions:
    """Split ``-o a,b,c`` lists into FUSE options and the ones versionfs handles itself.

    fstab options (defaults, _netdev, noauto, x-systemd.*, ...) are dropped; ``ro``
    mounts read-only; ``nonempty`` allows a non-empty mountpoint;
    ``passphrase_file=F`` gives the passphrase source for an fstab line.
    """
    out = MountOptions()
    for option_list in option_lists:
        for opt in _split_commas(option_list):
            if not opt:
                continue
            if opt == "ro":
                out.read_only = True
            elif opt == "nonempty":
                out.nonempty = True
            elif opt == "steal_lease":
                out.steal_lease = True
            elif opt.startswith("passphrase_file="):
                out.passphrase_file = opt.split("=", 1)[1]
            elif opt in _FSTAB_ONLY or opt.startswith(_FSTAB_PREFIXES):
                continue
            elif opt not in out.fuse:
                out.fuse.append(opt)
    return out


def _split_commas(text: str) -> list[str]:
    """Split on commas not escaped with a backslash (libfuse's own escaping)."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


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
    p.add_argument("--passphrase-file", metavar="FILE")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--passphrase-fd", type=int, help=argparse.SUPPRESS)


def _check_fuse_access() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UserError("/dev/fuse does not exist: install fuse3 and load the module "
                        "(apt-get install fuse3; modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UserError("no permission to use /dev/fuse: run as root, or give your user "
                        "access to /dev/fuse")
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        raise UserError("fusermount3 not found: mounting as a normal user needs the fuse3 "
                        "package (apt-get install fuse3)")


def _check_mountpoint(mountpoint: Path, nonempty: bool) -> None:
    if not mountpoint.exists():
        if mountpoint.is_symlink() or _is_stale_mount(mountpoint):
            raise UserError(f"{mountpoint} is a stale mount (its daemon died): "
                            f"run `fusermount3 -u {mountpoint}` and mount again")
        raise UserError(f"mountpoint {mountpoint} does not exist (create it with mkdir)")
    if not mountpoint.is_dir():
        raise UserError(f"mountpoint {mountpoint} is not a directory")
    existing = ctlclient.find_mount(mountpoint)
    if existing is not None:
        what = "a versionfs filesystem" if existing.is_versionfs else f"a {existing.fstype} filesystem"
        raise UserError(f"{mountpoint} is already a mount point ({what} from {existing.source})")
    if not nonempty:
        try:
            with os.scandir(mountpoint) as entries:
                busy = next(entries, None) is not None
        except PermissionError:
            raise UserError(f"no permission to read mountpoint {mountpoint}") from None
        if busy:
            raise UserError(f"mountpoint {mountpoint} is not empty: mounting would hide its "
                            f"files (use -o nonempty to mount anyway)")


def _is_stale_mount(path: Path) -> bool:
    """A FUSE mount whose daemon is gone answers everything with ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _mount_preflight(state_dir: Path, mountpoint: Path, opts: MountOptions) -> configmod.Config:
    """Every check that can fail cheaply, before a daemon is started."""
    if not state_dir.exists():
        raise UserError(f"state dir {state_dir} does not exist (create one with "
                        f"`versionfs init {state_dir}`)")
    cfg = statemod.load_config(state_dir)        # NotAStateDirError / ConfigError
    pid = statemod.read_pid(state_dir)
    if pid is not None:
        where = _mountpoint_of(state_dir)
        raise UserError(f"{state_dir} is already mounted" + (f" on {where}" if where else "")
                        + (f" (versionfs pid {pid})" if pid > 0 else ""))
    _clear_stale_mount(state_dir, mountpoint)
    _check_mountpoint(mountpoint, opts.nonempty)
    _check_fuse_access()
    return cfg


def _clear_stale_mount(state_dir: Path, mountpoint: Path) -> None:
    """After a crash (kill -9, OOM) the kernel keeps a dead mount; clear ours, so a
    remount needs no manual step.  Only when it is this state dir's mount and no
    daemon holds the state dir (checked by the caller just before)."""
    found = ctlclient.find_mount(mountpoint)
    if (found is None or not found.is_versionfs or found.source != str(state_dir)
            or not _is_stale_mount(mountpoint)):
        return
    log.warning("clearing the stale mount left on %s by a daemon that died", mountpoint)
    result = _fusermount(mountpoint, lazy=True)
    if result.returncode != 0:
        raise UserError(f"{mountpoint} is a stale mount (its daemon died) and clearing it "
                        f"failed: {result.stderr.strip() or result.returncode}")


def _mountpoint_of(state_dir: Path) -> str | None:
    for m in ctlclient.mounts():
        if m.is_versionfs and m.source == str(state_dir):
            return m.mountpoint
    return None


def _fuse_options(state_dir: Path, cfg: configmod.Config, opts: MountOptions) -> list[str]:
    """FUSE options for the mount: ours (fsname = state dir, so umount finds it) + the user's."""
    escaped = str(state_dir).replace("\\", "\\\\").replace(",", "\\,")
    out = [f"fsname={escaped}", f"subtype={ctlclient.FS_SUBTYPE}"]
    for opt in list(cfg["mount.fuse_options"]) + opts.fuse:
        if opt not in out:
            out.append(opt)
    return out


@command("mount", "mount a filesystem; returns once it answers", _setup_mount)
def cmd_mount(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).absolute()
    mountpoint = Path(args.mountpoint).absolute()
    if getattr(args, "steal_lease", False):
        args.options = [*args.options, "steal_lease"]
    opts = parse_mount_options(args.options)
    opts.read_only = opts.read_only or args.read_only
    passphrase_file = args.passphrase_file or opts.passphrase_file
    if args.ready_fd is not None:                    # we are the background daemon
        return _daemon(state_dir, mountpoint, opts, _read_fd_passphrase(args.passphrase_fd),
                       args.ready_fd)
    cfg = _mount_preflight(state_dir, mountpoint, opts)
    passphrase = None
    if cfg["encryption.enabled"]:
        passphrase = statemod.get_passphrase(passphrase_file, what=str(state_dir))
    if args.foreground:
        return _daemon(state_dir, mountpoint, opts, passphrase, None)
    return _spawn_daemon(state_dir, mountpoint, args.options, opts.read_only, passphrase)


def _read_fd_passphrase(fd: int | None) -> str | None:
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read().decode()
    return data or None


def _spawn_daemon(state_dir: Path, mountpoint: Path, option_lists: list[str], read_only: bool,
                  passphrase: str | None) -> int:
    """Start ``versionfs mount --foreground`` detached, and wait for its readiness line.

    The child is a fresh interpreter (no state inherited through fork) in its own
    session, logging to STATE_DIR/versionfs.log; the passphrase travels through a
    pipe, never argv or the environment.
    """
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
    if passphrase is not None:
        pass_r, pass_w = os.pipe()
        argv += ["--passphrase-fd", str(pass_r)]
        fds.append(pass_r)
    env = dict(os.environ)
    env.pop(statemod.PASSPHRASE_ENV, None)
    env.pop("NOTIFY_SOCKET", None)
    with open(layout.log, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                pass_fds=fds, start_new_session=True, env=env, cwd="/")
    os.close(ready_w)
    if pass_r is not None and pass_w is not None:
        os.close(pass_r)
        with os.fdopen(pass_w, "wb") as f:
            f.write(passphrase.encode() if passphrase else b"")
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
    from versionfs import logsetup        # journal-aware under systemd (issue 6)
    logsetup.setup_logging()


def _daemon(state_dir: Path, mountpoint: Path, opts: MountOptions, passphrase: str | None,
            ready_fd: int | None) -> int:
    """Run the mount in this process until it is unmounted (or signalled).

    SIGTERM/SIGINT are handled by the fs layer's serve(): it seals, syncs and
    unmounts, so systemd's stop and Ctrl-C in --foreground both end cleanly.
    """
    _setup_logging()
    readiness = _Readiness(ready_fd)
    try:
        if ready_fd is not None:               # preflight again: the world may have changed
            _mount_preflight(state_dir, mountpoint, opts)
        st = statemod.open_state(state_dir, passphrase, read_only=opts.read_only,
                                 start_uploads=not opts.read_only)
        try:                                   # writer lease, catching up, publishing
            from versionfs import cloud
            session = cloud.CloudSession.start(st, read_only=opts.read_only,
                                               steal_lease=opts.steal_lease)
        except BaseException:
            st.close()
            raise
    except Exception as e:
        user_error = isinstance(e, _user_error_types())
        message = str(e) if user_error else f"unexpected {type(e).__name__}: {e}"
        readiness.failed(message)
        if ready_fd is None:
            raise
        if user_error:
            log.error("mount failed: %s", message)
        else:
            log.exception("mount failed")
        return EXIT_ERROR
    from versionfs import logsetup
    logsetup.set_level(st.config["mount.log_level"])
    log.info("versionfs %s mounting %s on %s (pid %d)", __version__, state_dir, mountpoint,
             os.getpid())
    try:
        from versionfs.fs import mount as fsmount
        from versionfs.fs.services import daemon_services
        from versionfs.gc import GCGuard
        # The guard is in the data path from the start, so a collection can
        # never begin while a write it does not know about is in flight.
        GCGuard.install(st.blobs)
        fsmount.run(st.meta, st.blobs, st.paired, str(mountpoint), dirty_dir=st.dirty_dir,
                    read_only=opts.read_only,
                    fuse_options=tuple(_fuse_options(state_dir, st.config, opts)),
                    ready=readiness.ready,
                    idle_seal_seconds=st.config["mount.idle_seal_seconds"],
                    services=daemon_services(st.config))
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


def _fusermount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        argv = ["umount"] + (["-l"] if lazy else []) + [str(mountpoint)]
    else:
        argv = [tool, "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(argv, capture_output=True, text=True)


# --- umount -------------------------------------------------------------------

def _setup_umount(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for uploads (default: mount.flush_timeout_seconds)")
    p.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if files are open; the daemon exits when they close")


def _versionfs_mount(mountpoint: Path) -> ctlclient.Mount:
    found = ctlclient.find_mount(mountpoint)
    if found is None:
        if not mountpoint.exists() and not _is_stale_mount(mountpoint):
            raise UserError(f"{mountpoint} does not exist")
        raise UserError(f"{mountpoint} is not mounted")
    if not found.is_versionfs:
        raise UserError(f"{mountpoint} is not a versionfs mount (it is {found.fstype})")
    return found


@command("umount", "flush uploads and unmount", _setup_umount, aliases=("unmount",))
def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    found = _versionfs_mount(mountpoint)
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
        _warn(f"not everything is uploaded to the slow store yet ({e}); the rest is kept "
              f"in the state dir and uploaded at the next mount")
    result = _fusermount(mountpoint, lazy=args.lazy)
    if result.returncode != 0:
        text = (result.stderr or result.stdout).strip()
        if "busy" in text.lower():
            raise UserError(f"{mountpoint} is busy: a process has files open there "
                            f"(see `fuser -vm {mountpoint}`), or use --lazy")
        raise UserError(f"unmounting {mountpoint} failed: {text.splitlines()[-1] if text else result.returncode}")
    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT_SECONDS
    while statemod.is_state_dir(state_dir) and statemod.read_pid(state_dir) is not None:
        if time.monotonic() > deadline:
            _warn(f"unmounted, but the daemon for {state_dir} is still running after "
                  f"{DAEMON_EXIT_TIMEOUT_SECONDS:.0f}s")
            return EXIT_ERROR
        time.sleep(0.05)
    return EXIT_OK


# --- ctl clients --------------------------------------------------------------

def _mountpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def _ctl(mountpoint: str, text: str) -> str:
    path = Path(mountpoint).absolute()
    if not path.exists() and not _is_stale_mount(path):
        raise UserError(f"{path} does not exist")
    return ctlclient.command(path, text)


def _setup_snapshot(p: argparse.ArgumentParser) -> None:
    _mountpoint_arg(p)
    p.add_argument("name", metavar="NAME", nargs="?", help="a name to find the snapshot by")


@command("snapshot", "freeze the tree as a new read-only revision (O(1))", _setup_snapshot)
def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.name is not None and (not args.name.strip() or any(c.isspace() for c in args.name)
                                  or "/" in args.name):
        raise UserError(f"snapshot name {args.name!r} must be one word without '/'")
    answer = _ctl(args.mountpoint, "snapshot" + (f" {args.name}" if args.name else ""))
    print(answer)
    return EXIT_OK


@command("snapshots", "list snapshots: directory, revision, time, name",
         _mountpoint_arg, aliases=("ls-snapshots",))
def cmd_snapshots(args: argparse.Namespace) -> int:
    answer = _ctl(args.mountpoint, "snapshots")
    if answer:
        print(answer)
    return EXIT_OK


def _setup_status(p: argparse.ArgumentParser) -> None:
    _mountpoint_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("status", "revision, pending uploads, cache use", _setup_status)
def cmd_status(args: argparse.Namespace) -> int:
    answer = _ctl(args.mountpoint, "status --json" if args.json else "status")
    if args.json:
        json.loads(answer)               # a daemon bug must not pass for JSON
    print(answer)
    return EXIT_OK


def _setup_flush(p: argparse.ArgumentParser) -> None:
    _mountpoint_arg(p)
    p.add_argument("--timeout", type=float, metavar="SECONDS")


@command("flush", "wait until everything is durable on the slow store", _setup_flush)
def cmd_flush(args: argparse.Namespace) -> int:
    answer = _ctl(args.mountpoint, "flush" + (f" {args.timeout:g}" if args.timeout else ""))
    if answer:
        print(answer)
    return EXIT_OK


# --- serve-store ----------------------------------------------------------------

def _serve_store(argv: list[str]) -> int:
    from versionfs.blob import remote
    try:
        return int(remote.serve_store_main(argv) or 0)
    except _user_error_types() as e:
        _error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


@command("serve-store", "serve a blob store to other machines (see serve-store --help)",
         lambda p: p.add_argument("args", nargs=argparse.REMAINDER))
def cmd_serve_store(args: argparse.Namespace) -> int:
    return _serve_store(list(args.args))


# --- demo -----------------------------------------------------------------------

def _default_demo_dirs() -> tuple[Path, Path]:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "versionfs" / "demo", Path.home() / "versionfs-demo"


def _self_command() -> str:
    """How the user can run this same versionfs again: plain ``versionfs`` if that is on PATH."""
    me = Path(sys.argv[0]).absolute() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("versionfs")
    if me is not None and me.name == "versionfs":
        if on_path and Path(on_path).resolve() == me.resolve():
            return "versionfs"
        return str(me)
    return "versionfs" if on_path else f"{sys.executable} -m versionfs"


def _setup_demo(p: argparse.ArgumentParser) -> None:
    state, mnt = _default_demo_dirs()
    p.add_argument("--state-dir", default=str(state), help=f"(default {state})")
    p.add_argument("--mountpoint", default=str(mnt), help=f"(default {mnt})")


@command("demo", "create (if needed) and mount a demo filesystem with the built-in defaults",
         _setup_demo, aliases=("quickstart",))
def cmd_demo(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).absolute()
    mountpoint = Path(args.mountpoint).absolute()
    found = ctlclient.find_mount(mountpoint)
    if found is not None and found.is_versionfs and found.source == str(state_dir):
        print(f"the demo filesystem is already mounted on {mountpoint}")
    else:
        if not statemod.is_state_dir(state_dir):
            statemod.init_state(state_dir)
            print(f"created a demo filesystem in {state_dir} "
                  f"(fast store + slow store directory {state_dir / 'slow'})")
        mountpoint.mkdir(parents=True, exist_ok=True)
        cmd_mount(argparse.Namespace(state_dir=str(state_dir), mountpoint=str(mountpoint),
                                     foreground=False, options=[], read_only=False,
                                     passphrase_file=None, ready_fd=None, passphrase_fd=None))
    m, vfs = mountpoint, _self_command()
    print(f"""
Try it:
  echo hello > {m}/hello.txt
  {vfs} snapshot {m} first
  echo changed > {m}/hello.txt
  cat {m}/.versionfs/snapshots/*first*/hello.txt
  {vfs} status {m}
  {vfs} umount {m}""")
    return EXIT_OK
