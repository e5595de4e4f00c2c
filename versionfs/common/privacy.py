"""Local privacy: what versionfs writes on this machine is for its owner only.

The state dir holds everything another local user must not see: metadata
(every file name, size, owner and xattr in plaintext, even on an encrypted
filesystem), the wrapped key, the upload journal, dirty file data, the log and
the config. A ``file://`` slow store holds the blobs themselves.

One rule covers all of it: the ``versionfs`` process runs with umask 077
(``restrict_umask``, called first thing by the CLI, so the mount daemon, clone,
catch-up from the bucket, LMDB, the WAL and the log all inherit it). A umask
rather than a chmod after each create, because files are created in many
layers (LMDB creates its own), a chmod after the fact leaves a window, and a
new file created later by new code is private without anyone remembering to.
The places that create the top of a tree (the state dir, a ``file://`` store)
also pass 0700/0600 explicitly, so a library caller that skipped the CLI still
gets a private root; and ``tighten_dir`` repairs a state dir made by an older
version (0755) when it is opened.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "restrict_umask",
           "tighten_dir"]

log = logging.getLogger("versionfs.privacy")

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def restrict_umask() -> int:
    """Make every file this process creates private (adds 077 to the umask); returns the old one."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def tighten_dir(path: str | os.PathLike[str]) -> None:
    """chmod ``path`` to 0700 if it is ours and group/other can get in (an old state dir)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return
    if st.st_uid != os.geteuid() or not stat.S_IMODE(st.st_mode) & 0o077:
        return
    try:
        os.chmod(path, PRIVATE_DIR_MODE)
        log.info("made %s private (mode 0700)", path)
    except OSError as e:
        log.warning("could not make %s private: %s", path, e.strerror)
