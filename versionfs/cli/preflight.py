"""Mount options and every check that can fail cheaply before a daemon starts."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from versionfs.cli import ctlclient
from versionfs.common import config as configmod
from versionfs.common import state as statemod

from .command import UserError

log = logging.getLogger("versionfs")

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
        if mountpoint.is_symlink() or ctlclient.is_stale_mount(mountpoint):
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


def check(state_dir: Path, mountpoint: Path, opts: MountOptions) -> configmod.Config:
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
            or not ctlclient.is_stale_mount(mountpoint)):
        return
    log.warning("clearing the stale mount left on %s by a daemon that died", mountpoint)
    result = fusermount(mountpoint, lazy=True)
    if result.returncode != 0:
        raise UserError(f"{mountpoint} is a stale mount (its daemon died) and clearing it "
                        f"failed: {result.stderr.strip() or result.returncode}")


def _mountpoint_of(state_dir: Path) -> str | None:
    for m in ctlclient.mounts():
        if m.is_versionfs and m.source == str(state_dir):
            return m.mountpoint
    return None


def fuse_options(state_dir: Path, cfg: configmod.Config, opts: MountOptions) -> list[str]:
    """FUSE options for the mount: ours (fsname = state dir, so umount finds it) + the user's."""
    escaped = str(state_dir).replace("\\", "\\\\").replace(",", "\\,")
    out = [f"fsname={escaped}", f"subtype={ctlclient.FS_SUBTYPE}"]
    for opt in list(cfg["mount.fuse_options"]) + opts.fuse:
        if opt not in out:
            out.append(opt)
    return out


def fusermount(mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        argv = ["umount"] + (["-l"] if lazy else []) + [str(mountpoint)]
    else:
        argv = [tool, "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(argv, capture_output=True, text=True)
