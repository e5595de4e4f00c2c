"""``versionfs key passwd`` and ``versionfs key export``: an encrypted filesystem's keys.

Secrets come from files or a terminal prompt, never argv; ``export`` prints the
recovery key on stdout (or writes it to a new 0600 file with ``--output``).
"""

from __future__ import annotations

import argparse
import os
import sys

from versionfs.common import keys as keymod
from versionfs.common import state as statemod

from .command import EXIT_OK, UserError, command


def add_secret_args(p: argparse.ArgumentParser) -> None:
    """``--passphrase-file`` or ``--recovery-key-file``: how an encrypted filesystem is opened."""
    who = p.add_mutually_exclusive_group()
    who.add_argument("--passphrase-file", metavar="FILE",
                     help=f"read the passphrase from FILE (else ${statemod.PASSPHRASE_ENV} "
                          f"or a prompt)")
    who.add_argument("--recovery-key-file", metavar="FILE",
                     help="use the recovery key in FILE (from `versionfs key export`) "
                          "instead of the passphrase")


def secret_source(args: argparse.Namespace, what: str):
    """A callable giving the passphrase or recovery key the arguments name (asked when needed)."""
    if getattr(args, "recovery_key_file", None):
        key = keymod.read_recovery_key_file(args.recovery_key_file)
        return lambda: key
    return lambda: statemod.get_passphrase(args.passphrase_file, what=what)


def new_passphrase(path: str | None, allow_weak: bool) -> str:
    """A new passphrase from ``path`` or two prompts (not the environment), checked for strength."""
    if path is None and not statemod.have_tty():
        raise UserError("give the new passphrase with --new-passphrase-file FILE "
                        "(no terminal to ask on)")
    phrase = statemod.get_passphrase(path, confirm=True, env={}, prompt="New passphrase: ")
    keymod.require_strong_passphrase(phrase, allow_weak)
    return phrase


def add_allow_weak(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-weak-passphrase", action="store_true",
                   help="accept a passphrase shorter than 12 characters or of one kind only")


def _setup_key(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    sub.required = True
    pw = sub.add_parser("passwd", help="change the passphrase (here and in the slow store)",
                        description="Re-wrap the master key under a new passphrase in the state "
                                    "dir and in the slow store: the old passphrase stops working "
                                    "for every machine and for clone.")
    pw.add_argument("state_dir", metavar="STATE_DIR")
    add_secret_args(pw)
    pw.add_argument("--new-passphrase-file", metavar="FILE",
                    help="read the new passphrase from FILE (else asked twice)")
    add_allow_weak(pw)
    pw.set_defaults(_key_run=_passwd)
    ex = sub.add_parser("export", help="print a recovery key (opens the filesystem without "
                                       "the passphrase)")
    ex.add_argument("state_dir", metavar="STATE_DIR")
    add_secret_args(ex)
    ex.add_argument("-o", "--output", metavar="FILE",
                    help="write the recovery key to FILE (created, mode 0600) instead of stdout")
    ex.set_defaults(_key_run=_export)


@command("key", "manage an encrypted filesystem's keys: passwd, export", _setup_key)
def cmd_key(args: argparse.Namespace) -> int:
    return args._key_run(args)


def _passwd(args: argparse.Namespace) -> int:
    if args.new_passphrase_file and args.passphrase_file and \
            os.path.realpath(args.new_passphrase_file) == os.path.realpath(args.passphrase_file):
        raise UserError("--new-passphrase-file is the same file as --passphrase-file")
    old = secret_source(args, str(args.state_dir))
    keymod.change_passphrase(args.state_dir, old, lambda: new_passphrase(
        args.new_passphrase_file, args.allow_weak_passphrase))
    print(f"passphrase changed for {os.path.abspath(args.state_dir)} and its slow store; "
          f"the old one no longer opens it")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    text = keymod.export_recovery_key(args.state_dir, secret_source(args, str(args.state_dir)))
    note = ("# versionfs recovery key: opens this filesystem without the passphrase\n"
            "# (versionfs mount/clone --recovery-key-file FILE). Keep it offline.\n")
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UserError(f"{args.output} exists; give a new file name") from None
        with os.fdopen(fd, "w") as f:
            f.write(note + text + "\n")
        print(f"recovery key written to {args.output}", file=sys.stderr)
    else:
        print(note.rstrip("\n"), file=sys.stderr)
        print(text)
    return EXIT_OK
