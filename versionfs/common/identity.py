"""The filesystem's identity in its slow store: ``versionfs.toml``.

A new machine reads it before it has the key, so on an encrypted filesystem
it keeps in the clear exactly what that machine needs to get the key and
open everything else, and nothing more:

    format      the state format
    id          the filesystem id: a recovery key names the filesystem it opens
    encrypted   whether to ask for a passphrase at all
    cipher      which AEAD opens the sealed objects (keys/master says its own KDF)

``sealed`` holds the whole identity (those fields and the rest, such as
``created``) ``Codec.seal``-ed under the master key with the object's name as
context.  Once the key is unlocked, ``verify`` opens it and refuses the
filesystem if it does not authenticate (forged, or the object of another
filesystem) or if a clear field differs from its sealed copy (tampered
with): the clear fields are authenticated too, only after the key.  Whoever
can write the bucket can still delete or damage the object (a new machine
then cannot clone; a read-write mount writes it back) but not change it
unnoticed.  An unencrypted filesystem's ``versionfs.toml`` is plain TOML: it
has nothing to hide and nothing to authenticate with.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from typing import Any

import tomli_w

from versionfs.blob.errors import BlobError

__all__ = ["FILESYSTEM_OBJECT", "PUBLIC_FIELDS", "IdentityError", "encode", "parse", "verify"]

FILESYSTEM_OBJECT = "versionfs.toml"        # identity of the filesystem in the slow store
PUBLIC_FIELDS = ("format", "id", "encrypted", "cipher")


class IdentityError(Exception):
    """``versionfs.toml`` is missing, damaged, forged or tampered with; ``str()`` is for the user."""


def encode(identity: dict[str, Any], codec) -> bytes:
    """The object's body for ``identity``: plain, or clear fields + sealed whole."""
    whole = tomli_w.dumps(identity).encode()
    if not codec.encrypted:
        return whole
    public = {k: identity[k] for k in PUBLIC_FIELDS if k in identity}
    public["sealed"] = base64.b64encode(codec.seal(whole, FILESYSTEM_OBJECT.encode())).decode()
    return tomli_w.dumps(public).encode()


def parse(raw: bytes, where: str) -> dict[str, Any]:
    """What the object says before the key is known (the clear fields)."""
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise IdentityError(f"{where}: {FILESYSTEM_OBJECT} is damaged ({e})") from None


def verify(public: dict[str, Any], codec, where: str) -> dict[str, Any]:
    """The whole identity, checked against the key (module doc); IdentityError naming
    the object and what is wrong with it."""
    if not codec.encrypted:
        return public
    sealed = public.get("sealed")
    if not isinstance(sealed, str):
        raise IdentityError(f"{where}: {FILESYSTEM_OBJECT} of an encrypted filesystem has no "
                            f"sealed copy (tampered with, or written by a versionfs before "
                            f"0.1.0: mount it read-write once where it is mounted, which "
                            f"writes it again)")
    try:
        whole = tomllib.loads(codec.open(base64.b64decode(sealed, validate=True),
                                         FILESYSTEM_OBJECT.encode()).decode())
    except (BlobError, binascii.Error, ValueError) as e:
        raise IdentityError(f"{where}: {FILESYSTEM_OBJECT} does not authenticate with this "
                            f"filesystem's key: forged, or replaced ({e})") from None
    for name in PUBLIC_FIELDS:
        if public.get(name) != whole.get(name):
            raise IdentityError(f"{where}: {FILESYSTEM_OBJECT} was tampered with: its {name} "
                                f"says {public.get(name)!r}, its sealed copy {whole.get(name)!r}")
    return whole
