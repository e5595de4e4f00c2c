"""Key management of an encrypted filesystem: passphrase changes, recovery keys,
and the refusal of passphrases an attacker with the bucket could guess.

The master key never changes (that would mean re-encrypting the bucket); the
passphrase only wraps it (``versionfs.blob.keys``). A wrapped copy lives in
the state dir (``key``) and in the slow store (``keys/master``), so changing the
passphrase re-wraps both, the slow store first: every other machine's next
open and every ``clone`` read the new one (``state.read_master_key``), and the
old passphrase opens nothing any more. What it cannot undo: someone who had the
old passphrase *and* a copy of the old wrapped key, or a recovery key, still
has the master key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from versionfs.common import state as statemod
from versionfs.common.state import Layout, PassphraseError, StateError

__all__ = ["MIN_PASSPHRASE_LENGTH", "passphrase_weakness", "require_strong_passphrase",
           "read_recovery_key_file", "change_passphrase", "export_recovery_key"]

MIN_PASSPHRASE_LENGTH = 12
#: one class only (all lowercase, all digits, ...) needs this many characters
MIN_SINGLE_CLASS_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 6
_CLASSES = (("lowercase letters", r"[a-z]"), ("capital letters", r"[A-Z]"),
            ("digits", r"[0-9]"), ("other characters", r"[^a-zA-Z0-9]"))


def passphrase_weakness(phrase: str) -> str | None:
    """Why ``phrase`` is too weak to protect a bucket anyone may copy, or None.

    The wrapped key is in the bucket, so whoever can read the bucket can guess
    passphrases offline for as long as they like; Argon2id makes each guess cost
    but cannot save a short or one-pattern one. The rules are plain so the error
    can say exactly what to change.
    """
    if len(phrase) < MIN_PASSPHRASE_LENGTH:
        return f"it has {len(phrase)} characters; use at least {MIN_PASSPHRASE_LENGTH}"
    if len(set(phrase)) < MIN_DISTINCT_CHARACTERS:
        return (f"it uses only {len(set(phrase))} different characters; use at least "
                f"{MIN_DISTINCT_CHARACTERS}")
    if phrase in (phrase + phrase)[1:-1]:
        return "it is one short piece repeated"
    classes = [name for name, pattern in _CLASSES if re.search(pattern, phrase)]
    if len(classes) == 1 and len(phrase) < MIN_SINGLE_CLASS_LENGTH:
        return (f"it is only {classes[0]}; use at least {MIN_SINGLE_CLASS_LENGTH} characters "
                f"or mix in words, spaces, digits or capitals")
    return None


def require_strong_passphrase(phrase: str, allow_weak: bool = False) -> None:
    """PassphraseError naming what is wrong and the override, unless ``allow_weak``."""
    problem = passphrase_weakness(phrase)
    if problem and not allow_weak:
        raise PassphraseError(f"the passphrase is too weak: {problem} (a few random words "
                              f"work well; --allow-weak-passphrase to use it anyway)")


def read_recovery_key_file(path: str | os.PathLike[str]) -> Any:
    """The RecoveryKey written in ``path`` (as ``versionfs key export`` printed it)."""
    from versionfs.blob.errors import BlobError
    from versionfs.blob.keys import decode_recovery_key
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PassphraseError(f"cannot read recovery key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PassphraseError(f"recovery key file {path} is not text") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        return decode_recovery_key(" ".join(lines))
    except BlobError as e:
        raise PassphraseError(f"recovery key file {path}: {e}") from None


def _open_encrypted(state_dir: str | os.PathLike[str]) -> tuple[Layout, dict[str, Any], Any]:
    """(layout, identity, slow store) of an encrypted state dir; the caller closes the store."""
    root = Path(state_dir).absolute()
    layout = Layout(root)
    identity = statemod._marker_data(layout)
    if not identity.get("encrypted"):
        raise StateError(f"{root} is not encrypted: it has no key or passphrase")
    cfg = statemod.load_config(root)
    return layout, identity, statemod._open_slow(layout.slow_url(cfg))


def change_passphrase(state_dir: str | os.PathLike[str], old: Any, new: Any) -> None:
    """Re-wrap the master key under ``new``, in the slow store and then locally.

    ``old`` is the current passphrase or a RecoveryKey, ``new`` the new
    passphrase; either may be a callable giving it, asked in that order once
    the state dir is known to be encrypted and the old one opens it. The slow store's copy is replaced only if it is still the one read
    (a conditional write), so two machines changing it at once cannot both
    win; if the slow store cannot be reached nothing changes, because a
    passphrase changed only here would leave the old one working for clones.
    """
    from versionfs.blob import keys
    from versionfs.blob.errors import PreconditionFailedError
    layout, identity, slow = _open_encrypted(state_dir)
    try:
        bucket = statemod.named_objects(slow)
        if bucket is not None:      # fail now, before the passphrase is asked, if unreachable
            _reachable(bucket)
        master, etag = statemod.read_master_key(layout, identity, old, bucket)
        wrapped = keys.wrap_key(master, new() if callable(new) else new)
        if bucket is not None:
            try:
                if etag is None:
                    bucket.put_if_absent(statemod.MASTER_KEY_OBJECT, wrapped)
                else:
                    bucket.put_if_match(statemod.MASTER_KEY_OBJECT, wrapped, etag)
            except PreconditionFailedError:
                raise StateError("the key in the slow store changed meanwhile (a passphrase "
                                 "change on another machine?); nothing was changed, try "
                                 "again") from None
        statemod.write_durably(layout.key, wrapped, 0o600)
    finally:
        slow.close()


def _reachable(bucket: Any) -> None:
    from versionfs.blob.errors import BlobError, NotFoundError
    try:
        bucket.get(statemod.MASTER_KEY_OBJECT)
    except NotFoundError:
        pass
    except BlobError as e:
        raise StateError(f"cannot reach the slow store ({e}); the passphrase must change "
                         "there too, so nothing was changed") from None


def export_recovery_key(state_dir: str | os.PathLike[str], secret: Any) -> str:
    """The printable recovery key (``blob.keys.encode_recovery_key``) of ``state_dir``."""
    from versionfs.blob.keys import encode_recovery_key
    layout, identity, slow = _open_encrypted(state_dir)
    try:
        master, _ = statemod.read_master_key(layout, identity, secret,
                                             statemod.named_objects(slow))
    finally:
        slow.close()
    return encode_recovery_key(master, str(identity["id"]))
