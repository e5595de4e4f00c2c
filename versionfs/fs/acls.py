"""POSIX ACLs in the form the kernel hands them to a FUSE filesystem.

The mount negotiates FUSE_POSIX_ACL (`VersionFS.enable_acl`): the kernel
then checks permissions against the ACLs itself and caches them per inode,
so permission checks do not ask us (a READDIRPLUS reply drops the cached ACLs
of the inodes it refreshes, so `ls -l` still asks once per file). What stays ours (as in
ext4's fs/posix_acl.c): keeping the mode and the access ACL in step both ways
(setting an ACL sets the mode, chmod rewrites the ACL), applying a parent's
default ACL to what is created in it (instead of the umask), and not storing
an ACL that says no more than the mode. pyfuse3 does not ask for
FUSE_DONT_MASK, so the kernel applies the umask to a new node's mode before
we see it: under a default ACL the result is never looser than ext4's, but
can be tighter.

An ACL travels as the `system.posix_acl_access` / `system.posix_acl_default`
xattr value: a little-endian u32 version (2), then one (u16 tag, u16 perm,
u32 id) per entry, sorted by tag then id. pylibacl only reads ACLs of files
by path, so the 8-byte entries are packed here with `struct`.
"""

from __future__ import annotations

import errno
import struct

from pyfuse3 import FUSEError

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

Entry = tuple[int, int, int]          # (tag, perm, id)


def parse(value: bytes) -> list[Entry]:
    """The entries of an xattr value; EINVAL unless it is a valid ACL (the
    checks of the kernel's posix_acl_valid: one of each *_OBJ and OTHER, named
    entries need a MASK, ids unique and sorted, perms within rwx)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise FUSEError(errno.EINVAL)
    if _HEADER.unpack_from(value)[0] != VERSION:
        raise FUSEError(errno.EOPNOTSUPP)
    entries = [e for e in _ENTRY.iter_unpack(value[_HEADER.size:])]
    counts = {tag: 0 for tag in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER)}
    last = (0, -1)
    for tag, perm, ident in entries:
        if tag not in counts or perm & ~0o7:
            raise FUSEError(errno.EINVAL)
        counts[tag] += 1
        if tag in (USER, GROUP):
            if (tag, ident) <= last:
                raise FUSEError(errno.EINVAL)
            last = (tag, ident)
    if any(counts[t] != 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)) or counts[MASK] > 1:
        raise FUSEError(errno.EINVAL)
    if (counts[USER] or counts[GROUP]) and not counts[MASK]:
        raise FUSEError(errno.EINVAL)
    return entries


def pack(entries: list[Entry]) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in sorted(
        entries, key=lambda e: (e[0], e[2] if e[0] in (USER, GROUP) else 0)))


def is_minimal(entries: list[Entry]) -> bool:
    """True if the ACL says no more than a mode would (only the three *_OBJ/OTHER entries)."""
    return all(tag in (USER_OBJ, GROUP_OBJ, OTHER) for tag, _, _ in entries)


def mode_bits(entries: list[Entry]) -> int:
    """The rwxrwxrwx bits an access ACL gives the mode (group bits: the MASK if any)."""
    perms = {tag: perm for tag, perm, _ in entries}
    group = perms.get(MASK, perms[GROUP_OBJ])
    return perms[USER_OBJ] << 6 | group << 3 | perms[OTHER]


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after chmod(mode): owner, MASK (or GROUP_OBJ) and OTHER follow the mode."""
    has_mask = any(tag == MASK for tag, _, _ in entries)
    new = {USER_OBJ: mode >> 6 & 7, OTHER: mode & 7,
           MASK if has_mask else GROUP_OBJ: mode >> 3 & 7}
    return [(tag, new.get(tag, perm), ident) for tag, perm, ident in entries]


def inherit(default: list[Entry], mode: int) -> tuple[list[Entry], int]:
    """(access ACL, permission bits) of a node created with `mode` in a directory
    whose default ACL is `default` (the kernel's posix_acl_create_masq): the
    mode limits the ACL's owner, MASK (or GROUP_OBJ) and OTHER entries, and the
    resulting ACL decides the mode's bits. No umask applies."""
    has_mask = any(tag == MASK for tag, _, _ in default)
    limits = {USER_OBJ: mode >> 6 & 7, OTHER: mode & 7,
              MASK if has_mask else GROUP_OBJ: mode >> 3 & 7}
    access = [(tag, perm & limits[tag] if tag in limits else perm, ident)
              for tag, perm, ident in default]
    return access, mode_bits(access)
