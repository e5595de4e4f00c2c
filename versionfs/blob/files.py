"""Durable file primitives and the fan-out directory layout shared by the
local stores (DiskStore, DirectoryStore).

A blob is written to a temporary file in its final directory, fsynced,
renamed into place and the directory fsynced: after a crash a name either
holds the whole blob or does not exist. Writing several blobs at once shares
the directory fsyncs, which is what lets the filesystem batch cheaply.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from .errors import NotFoundError, StoreUnavailableError
from .pointer import Pointer, as_pointer
from .store import Buffer, Store

TEMP_PREFIX = ".tmp-"
# Blobs are for the store's owner only, whatever the umask (a file:// slow store
# may live outside the private state dir).
FILE_MODE, DIR_MODE = 0o600, 0o700


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename/create/unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` that survives a power cut: each directory it creates is
    fsynced into its parent (a file fsynced inside a directory whose own entry
    was never synced is lost with it)."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
        fsync_dir(d.parent)


def _start_writeback_fn():
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) where Linux has it, else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return lambda fd: fn(fd, 0, 0, 2)      # 2 = SYNC_FILE_RANGE_WRITE


_start_writeback = _start_writeback_fn()


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting
    (a hint; errors show up at the next fsync): a later fsync finds little left."""
    if _start_writeback is not None:
        _start_writeback(fd)


def write_temp(directory: str, data: Buffer, *, sync: bool = True,
               writeback: bool = False) -> str:
    """Write ``data`` to a fresh temporary file in ``directory``; return its path.

    ``writeback`` (without ``sync``) asks the kernel to start writing the data
    now without waiting for it, so that a later fdatasync (a barrier) finds
    little left to do: the disk works while the caller goes on hashing.
    """
    temp = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data).cast("B")
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
        elif writeback:
            start_writeback(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    return temp


def atomic_write(path: str, data: Buffer, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once (temp, fsync, rename, dir fsync)."""
    directory = os.path.dirname(path)
    temp = write_temp(directory, data)
    try:
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    if sync_dir:
        fsync_dir(directory)


def fdatasync_path(path: str) -> bool:
    """fdatasync a file written earlier without it; False if it is gone meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return True


def read_file(path: str) -> bytes:
    """The whole file; NotFoundError if it does not exist."""
    fd = open_file(path)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def open_file(path: str) -> int:
    """A read-only descriptor of ``path``; NotFoundError if it does not exist."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"not found: {path}") from None


def read_fd(fd: int) -> bytes:
    """The whole content of the file open at ``fd`` (read from its start)."""
    remaining = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(remaining, 65536), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """Threads that write and fsync the blobs of one batch side by side."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vfs-blob-io")
        return _pool


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _is_hex_name(name: str) -> bool:
    if len(name) != 64:
        return False
    try:
        bytes.fromhex(name)
    except ValueError:
        return False
    return True


class FanOutStore(Store):
    """Blobs as files ``root/ab/abcdef…`` (256 sub-directories, created lazily).

    One level of 256 directories keeps directories small (a million 1 MiB
    chunks is ~4000 entries each) without a deep tree of fsyncs.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            make_dirs(self.root)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create store directory {self.root}: {exc}") from exc
        self._root_str = str(self.root)
        self._made_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()

    # -- layout ---------------------------------------------------------------
    def _dir_for(self, hexname: str) -> str:
        return os.path.join(self._root_str, hexname[:2])

    def path_for(self, key: Pointer) -> str:
        """Where ``key``'s blob lives (useful to tests and repair tools)."""
        hexname = as_pointer(key).hex()
        return os.path.join(self._dir_for(hexname), hexname)

    def _ensure_dir(self, directory: str) -> None:
        if directory in self._made_dirs:
            return
        # First put into a missing directory: make all 256 at once, so a fresh
        # store pays one root fsync instead of one per directory on its first puts.
        # Under a lock, and remembered only after the fsync: a concurrent put must
        # not use a directory whose own entry is not yet durable.
        with self._dirs_lock:
            if directory in self._made_dirs:
                return
            made = False
            dirs = [os.path.join(self._root_str, f"{i:02x}") for i in range(256)]
            for d in dirs:
                try:
                    os.mkdir(d, DIR_MODE)
                    made = True
                except FileExistsError:
                    pass
            if made:
                fsync_dir(self._root_str)
            self._made_dirs.update(dirs)

    # -- Store ----------------------------------------------------------------
    def get(self, key: Pointer) -> bytes:
        key = as_pointer(key)
        if not key:
            raise NotFoundError("not found: Null pointer")
        try:
            return read_file(self.path_for(key))
        except NotFoundError:
            raise NotFoundError(f"not found: blob {key.hex()} in {self.root}") from None

    def put(self, key: Pointer, data: Buffer) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Iterable[tuple[Pointer, Buffer]]) -> None:
        """Write every blob durably, sharing one fsync per touched directory."""
        self._write_files(items, sync=True)

    def _write_files(self, items: Iterable[tuple[Pointer, Buffer]], sync: bool) -> None:
        """Stage every blob in a temp file, rename them all, fsync the directories.

        A batch's fsyncs run in parallel: the disk and the file system's journal
        merge concurrent flushes, which roughly halves the cost per small blob.
        """
        staged = self._write_temps(self._jobs(items), sync)
        try:
            dirs = set()
            for temp, final in staged:
                os.replace(temp, final)
                dirs.add(os.path.dirname(final))
            staged.clear()
            if sync and len(dirs) > 1:
                list(_io_pool().map(fsync_dir, dirs))
            elif sync:
                fsync_dir(dirs.pop())
        finally:
            for temp, _ in staged:
                _unlink_quietly(temp)

    def _jobs(self, items: Iterable[tuple[Pointer, Buffer]]) -> list[tuple[str, Buffer]]:
        """(final path, data) per blob, its directory made."""
        jobs = []
        for key, data in items:
            key = as_pointer(key)
            if not key:
                raise ValueError("cannot store a blob under the Null pointer")
            final = self.path_for(key)
            self._ensure_dir(os.path.dirname(final))
            jobs.append((final, data))
        return jobs

    def _write_temps(self, jobs: list[tuple[str, Buffer]], sync: bool,
                     writeback: bool = False) -> list[tuple[str, str]]:
        """(temp, final) for each (final, data): the data in a temp file beside its final
        name, fsynced when ``sync``; several blobs are written side by side."""
        staged: list[tuple[str, str]] = []
        try:
            if len(jobs) == 1:
                final, data = jobs[0]
                staged.append((write_temp(os.path.dirname(final), data, sync=sync,
                                          writeback=writeback), final))
                return staged
            futures = [(_io_pool().submit(write_temp, os.path.dirname(final), data, sync=sync,
                                          writeback=writeback),
                        final) for final, data in jobs]
            errors = []
            for future, final in futures:
                try:
                    staged.append((future.result(), final))
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
            if errors:
                raise errors[0]
            return staged
        except BaseException:
            for temp, _ in staged:
                _unlink_quietly(temp)
            raise

    def open_blob(self, key: Pointer) -> int:
        """A read-only descriptor of ``key``'s blob file (NotFoundError if absent):
        what another store on the same file system can ``link_blob``."""
        key = as_pointer(key)
        try:
            return open_file(self.path_for(key))
        except NotFoundError:
            raise NotFoundError(f"not found: blob {key.hex()} in {self.root}") from None

    def link_blob(self, key: Pointer, fd: int) -> None:
        """Store ``key``'s blob as a hard link to the file open at ``fd`` (another
        store's blob on the same file system): a put without copying a byte.

        Linked through /proc/self/fd, so the name gets exactly the inode the
        caller opened (and verified), even if the other store's name was
        replaced meanwhile. Atomic and durable like a put: a temp link beside
        the final name, renamed into place, the directory fsynced. The data
        needs no fsync here: the caller links only blobs already durable
        where they are. OSError (EXDEV across file systems, EPERM where hard
        links are refused) tells the caller to copy instead.
        """
        final = self.path_for(key)
        directory = os.path.dirname(final)
        self._ensure_dir(directory)
        temp = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
        proc_fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd), temp, src_dir_fd=proc_fds, follow_symlinks=True)   # linkat(AT_SYMLINK_FOLLOW)
        finally:
            os.close(proc_fds)
        try:
            os.replace(temp, final)
        except BaseException:
            _unlink_quietly(temp)
            raise
        # Over a name that already is this inode (an upload redone after a
        # crash) rename() does nothing (POSIX): the temp name would stay.
        _unlink_quietly(temp)
        fsync_dir(directory)

    def same_file_system(self, other: "FanOutStore") -> bool:
        """Whether ``other``'s blobs live on this store's file system (so
        ``link_blob`` can take them without a copy)."""
        try:
            return os.stat(self.root).st_dev == os.stat(other.root).st_dev
        except OSError:
            return False

    def delete(self, key: Pointer) -> None:
        path = self.path_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(os.path.dirname(path))

    def delete_many(self, keys: Iterable[Pointer]) -> None:
        """Unlink several blobs, one fsync per directory touched instead of per blob."""
        dirs = set()
        for key in keys:
            path = self.path_for(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            dirs.add(os.path.dirname(path))
        for d in dirs:
            fsync_dir(d)

    def contains(self, key: Pointer) -> bool:
        key = as_pointer(key)
        return bool(key) and os.path.exists(self.path_for(key))

    def enumerate(self) -> Iterator[Pointer]:
        for key, _size, _mtime in self._scan():
            yield key

    def _scan(self) -> Iterator[tuple[Pointer, int, float]]:
        """(key, size, mtime) of every blob; removes temp files left by a crash."""
        try:
            subdirs = sorted(os.scandir(self._root_str), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for sub in subdirs:
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        self._remove_stale_temp(entry.path)
                        continue
                    if not _is_hex_name(entry.name) or not entry.name.startswith(sub.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield Pointer.from_hex(entry.name), st.st_size, st.st_mtime

    def _remove_stale_temp(self, path: str) -> None:
        """Hook: a DiskStore owns its directory and cleans temps; others leave them."""
