"""One LMDB environment per file per process, shared by everyone who opens it.

LMDB forbids opening the same environment twice in one process: its reader
table and POSIX locks are per process, so a second ``lmdb.open`` of the same
path corrupts locking and can lose reader slots.  The meta layer opens LMDB
files from several places (a KV store and a lease on the same file, tests that
open a store twice), so every opener goes through :func:`open_shared`, which
hands out one reference-counted ``lmdb.Environment`` per real path.

Environments must not cross ``fork()``: a child process opens its own.
"""

from __future__ import annotations

import os
import threading

import lmdb

_lock = threading.Lock()
_envs: dict[str, list] = {}  # realpath -> [env, refcount, pid]


def open_shared(path: str | os.PathLike, **options) -> lmdb.Environment:
    """Open (or reuse) the LMDB environment at ``path``.

    ``options`` are passed to ``lmdb.open`` the first time; later openers get
    the already-open environment with the options it was opened with.
    """
    os.makedirs(path, exist_ok=True)
    real = os.path.realpath(path)
    with _lock:
        entry = _envs.get(real)
        if entry is not None and entry[2] == os.getpid():
            entry[1] += 1
            return entry[0]
        env = lmdb.open(real, subdir=True, **options)
        _envs[real] = [env, 1, os.getpid()]
        return env


def release_shared(env: lmdb.Environment) -> None:
    """Drop one reference; the environment closes when the last one goes."""
    real = os.path.realpath(env.path())
    with _lock:
        entry = _envs.get(real)
        if entry is None or entry[0] is not env:
            env.close()
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _envs[real]
            env.close()
