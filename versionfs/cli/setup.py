"""``versionfs init`` and ``versionfs demo``: a new filesystem, and one to try."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from versionfs.cli import ctlclient
from versionfs.common import state as statemod
from versionfs.common.keys import require_strong_passphrase

from .command import EXIT_OK, UserError, command
from .keys import add_allow_weak
from .mount import cmd_mount


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
    add_allow_weak(p)


@command("init", "create a new filesystem in a state directory", _setup_init)
def cmd_init(args: argparse.Namespace) -> int:
    passphrase = None
    if args.encrypt:
        passphrase = statemod.get_passphrase(args.passphrase_file, confirm=True,
                                             what="the new filesystem")
        require_strong_passphrase(passphrase, args.allow_weak_passphrase)
    elif args.passphrase_file:
        raise UserError("--passphrase-file only makes sense with --encrypt")
    root = statemod.init_state(args.state_dir, args.slow, encrypt=args.encrypt,
                               passphrase=passphrase, cipher=args.cipher)
    cfg = statemod.load_config(root)
    print(f"created versionfs filesystem in {root}")
    print(f"  slow store: {statemod.Layout(root).slow_url(cfg)}")
    if args.encrypt:
        print("  encrypted; keep the passphrase safe: without it the data cannot be read "
              "(`versionfs key export` prints a recovery key to keep offline)")
    print(f"mount it with: versionfs mount {root} MOUNTPOINT")
    return EXIT_OK


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
                                     passphrase_file=None, ready_fd=None, passphrase_fd=None,
                                     recovery_key_fd=None, recovery_key_file=None))
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
