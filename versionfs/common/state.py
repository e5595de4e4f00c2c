"""The state directory: everything one machine keeps for one filesystem.

Layout of ``STATE_DIR`` (created by ``init_state``)::

    state.toml     written once by init: format, filesystem id, encryption; its
                   presence is what makes a directory a versionfs state dir
    config.toml    user settings (see versionfs.common.config; only non-defaults listed)
    key            encrypted filesystems only: the master key wrapped by the
                   passphrase (also stored in the slow store as keys/master, so a
                   new machine recovers with the bucket and the passphrase)
    fast/          the fast local blob store (DiskStore)
    upload.journal the durable upload journal of the Paired store
    meta/          metadata: WAL + LMDB + MVCC revisions
    dirty/         file data written but not yet sealed into chunks
    slow/          the default slow store (DirectoryStore) when --slow is not given
    lock           flock()ed by the process that has the filesystem open, and
                   holding its pid, so one state dir has at most one daemon
    instance-id    a random id of this state dir (not of the filesystem: clones
                   differ); the writer lease in the bucket names it
    versionfs.log  the background daemon's log

The state dir is 0700 and what is in it 0600 (see versionfs.common.privacy);
``open_state`` tightens one an older version left 0755.

``open_state`` turns a state dir into live objects (``State``); the CLI and the
tests use nothing else to get at the layers underneath.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
import shutil
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from versionfs.common import config as configmod
from versionfs.common import identity as identitymod
from versionfs.common.privacy import tighten_dir

__all__ = ["StateError", "NotAStateDirError", "StateInUseError", "PassphraseError",
           "Layout", "State", "init_state", "open_state", "is_state_dir",
           "get_passphrase", "read_pid", "unlock_master", "read_master_key", "named_objects",
           "write_durably", "instance_id",
           "MASTER_KEY_OBJECT", "PASSPHRASE_ENV"]

STATE_FORMAT = 1
MASTER_KEY_OBJECT = "keys/master"          # wrapped master key in the slow store
PASSPHRASE_ENV = "VERSIONFS_PASSPHRASE"

log = logging.getLogger("versionfs.state")


class StateError(Exception):
    """A state dir problem a user can cause; ``str()`` is one line for them."""


class NotAStateDirError(StateError):
    pass


class StateInUseError(StateError):
    pass


class PassphraseError(StateError):
    pass


@dataclass(frozen=True)
class Layout:
    """Paths inside one state dir (pure; touches nothing)."""

    root: Path

    @property
    def marker(self) -> Path: return self.root / "state.toml"
    @property
    def config(self) -> Path: return self.root / "config.toml"
    @property
    def key(self) -> Path: return self.root / "key"
    @property
    def fast(self) -> Path: return self.root / "fast"
    @property
    def journal(self) -> Path: return self.root / "upload.journal"
    @property
    def meta(self) -> Path: return self.root / "meta"
    @property
    def dirty(self) -> Path: return self.root / "dirty"
    @property
    def slow(self) -> Path: return self.root / "slow"
    @property
    def lock(self) -> Path: return self.root / "lock"
    @property
    def log(self) -> Path: return self.root / "versionfs.log"

    def slow_url(self, cfg: configmod.Config) -> str:
        """The configured slow store, or the slow/ directory inside the state dir."""
        return cfg["store.slow"] or self.slow.resolve().as_uri()


def is_state_dir(path: str | os.PathLike[str]) -> bool:
    return Layout(Path(path)).marker.is_file()


# --- passphrases -------------------------------------------------------------

def get_passphrase(passphrase_file: str | os.PathLike[str] | None = None, *,
                   confirm: bool = False, env: dict[str, str] | None = None,
                   what: str = "this filesystem", prompt: str | None = None) -> str:
    """The passphrase from a file, ``$VERSIONFS_PASSPHRASE``, or a terminal prompt.

    A file's trailing newline is dropped (``echo secret > f`` must work).  With
    no terminal and no other source this is a PassphraseError naming the
    options, never a hang waiting for input nobody can give.
    """
    env = os.environ if env is None else env
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_text()
        except OSError as e:
            raise PassphraseError(f"cannot read passphrase file {passphrase_file}: "
                                  f"{e.strerror}") from None
        phrase = text[:-1] if text.endswith("\n") else text
        if phrase.endswith("\r"):
            phrase = phrase[:-1]
        if not phrase:
            raise PassphraseError(f"passphrase file {passphrase_file} is empty")
        return phrase
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV]
    if not have_tty():
        raise PassphraseError(f"{what} is encrypted: give --passphrase-file FILE or set "
                              f"{PASSPHRASE_ENV} (no terminal to ask on)")
    phrase = getpass.getpass(prompt or f"Passphrase for {what}: ")
    if not phrase:
        raise PassphraseError("empty passphrase")
    if confirm and getpass.getpass("Repeat passphrase: ") != phrase:
        raise PassphraseError("the passphrases did not match")
    return phrase


def have_tty() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


# --- the lock -----------------------------------------------------------------

def read_pid(path: str | os.PathLike[str]) -> int | None:
    """Pid of the process holding the state dir open, or None if nobody does."""
    layout = Layout(Path(path))
    try:
        fd = os.open(layout.lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _take_lock(layout: Layout, shared: bool) -> int:
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {text})" if text.isdigit() else ""
        raise StateInUseError(f"{layout.root} is already in use by another versionfs "
                              f"process{who}; is it mounted? (`versionfs umount MOUNTPOINT`)") from None
    if not shared:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# --- init ---------------------------------------------------------------------

def _marker_data(layout: Layout) -> dict[str, Any]:
    try:
        with open(layout.marker, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise NotAStateDirError(f"{layout.root} is not a versionfs state dir "
                                f"(create one with `versionfs init {layout.root}`)") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise StateError(f"{layout.marker}: unreadable ({e})") from None
    fmt = data.get("format")
    if fmt != STATE_FORMAT:
        raise StateError(f"{layout.root}: state format {fmt!r} is not supported by this "
                         f"versionfs (it reads format {STATE_FORMAT})")
    return data


def write_durably(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace a small state file so that a power cut leaves the old or the new one.

    The temporary file is fsynced before the rename and the directory after
    it: without the first a crash can leave the new name on an empty file,
    without the second the rename itself can be undone.  Private (0600) unless
    told otherwise.
    """
    from versionfs.blob.files import fsync_dir
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(str(path.parent))


_INSTANCE_ID = "instance-id"


def instance_id(state_dir: str | os.PathLike[str]) -> str:
    """The random id of this state directory (not of the filesystem: clones differ).

    The writer lease names it, so a daemon restarted on the same state dir
    after a crash or a power cut recognises the lease its dead predecessor
    left behind; that is why it is written durably before anything uses it.
    A file that does not hold an id (written by a versionfs that did not
    fsync it, then cut by a power failure) is replaced by a new id.
    """
    path = Path(state_dir) / _INSTANCE_ID
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    value = uuid.uuid4().hex
    write_durably(path, (value + "\n").encode())
    return value


def named_objects(store: Any) -> Any:
    """The slow store's named-object API (``get/put/put_if_absent``), or None.

    DirectoryStore and S3Store carry one as ``.bucket``; a store without it (the
    remote store) still works, but a new machine cannot then recover the key
    or the filesystem's identity from the slow store alone.
    """
    return getattr(store, "bucket", None)


def init_state(path: str | os.PathLike[str], slow_url: str | None = None, *,
               encrypt: bool = False, passphrase: str | None = None,
               cipher: str | None = None,
               settings: dict[str, Any] | None = None) -> Path:
    """Create a new filesystem's state dir at ``path``; returns its absolute path.

    Refuses a directory that is not empty (unless it already is exactly that),
    and a slow store that already holds a filesystem.  On any failure what init
    created is removed again, so a retry starts clean.
    """
    root = Path(path).absolute()
    layout = Layout(root)
    if root.exists() and not root.is_dir():
        raise StateError(f"{root} exists and is not a directory")
    if is_state_dir(root):
        raise StateError(f"{root} already holds a versionfs filesystem")
    if root.exists() and any(root.iterdir()):
        raise StateError(f"{root} is not empty and is not a versionfs state dir; "
                         f"give an empty or new directory")
    if encrypt and not passphrase:
        raise PassphraseError("an encrypted filesystem needs a passphrase")

    cfg = configmod.Config(path=layout.config)
    for dotted, value in (settings or {}).items():
        cfg.set(dotted, value)
    if slow_url:
        cfg.set("store.slow", _normalise_url(slow_url))
    cfg.set("encryption.enabled", bool(encrypt))
    if cipher:
        cfg.set("encryption.cipher", cipher)

    from versionfs.blob.files import fsync_dir
    created_root = not root.exists()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)           # private whatever the umask (versionfs.common.privacy)
    try:
        for d in (layout.fast, layout.meta, layout.dirty):
            d.mkdir(mode=0o700)
        if not cfg["store.slow"]:
            layout.slow.mkdir(mode=0o700)
        configmod.save(cfg, layout.config)
        fs_id = uuid.uuid4().hex
        identity = {"format": STATE_FORMAT, "id": fs_id,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "encrypted": bool(encrypt), "cipher": cfg["encryption.cipher"]}
        master = wrapped = None
        if encrypt:
            from versionfs.blob import keys
            master = keys.new_master_key()
            wrapped = keys.wrap_key(master, passphrase)
        slow = _open_slow(layout.slow_url(cfg))
        try:
            bucket = named_objects(slow)
            if bucket is not None:
                _claim_slow_store(bucket, layout.slow_url(cfg),
                                  identitymod.encode(identity, _make_codec(master, cfg)))
            if encrypt:
                write_durably(layout.key, wrapped, 0o600)
                if bucket is not None:
                    bucket.put(MASTER_KEY_OBJECT, wrapped)
        finally:
            slow.close()
        write_durably(layout.marker, tomli_w.dumps(identity).encode())
        fsync_dir(str(root.parent))
    except BaseException:
        _undo_init(root, created_root)
        raise
    return root


def _open_slow(url: str) -> Any:
    """The slow store; a URL it cannot use is a StateError naming the URL."""
    from versionfs.blob.url import open_store
    try:
        return open_store(url)
    except ValueError as e:
        raise StateError(f"slow store {url}: {e}") from None


def _claim_slow_store(bucket: Any, url: str, body: bytes) -> None:
    from versionfs.blob.errors import PreconditionFailedError
    try:
        bucket.put_if_absent(identitymod.FILESYSTEM_OBJECT, body)
    except PreconditionFailedError:
        raise StateError(f"the slow store {url} already holds a versionfs filesystem; "
                         f"use an empty location (a new prefix)") from None


def _undo_init(root: Path, created_root: bool) -> None:
    if created_root:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in list(root.iterdir()) if root.exists() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _normalise_url(url: str) -> str:
    """Plain paths become file:// URLs (absolute), other schemes pass unchanged."""
    if "://" not in url:
        return Path(url).absolute().as_uri()
    return url


# --- open ---------------------------------------------------------------------

# A passphrase, or a blob.keys.RecoveryKey; or a callable giving one (asked only when needed).
PassphraseSource = Any


class State:
    """An opened state dir: ``meta``, ``paired``, ``codec``, ``blobs``, ``config``.

    Holds the state dir's lock until ``close()``.  Opening is ordered so that a
    wrong passphrase or a held lock fails before anything is started.
    """

    def __init__(self, layout: Layout, cfg: configmod.Config, identity: dict[str, Any],
                 read_only: bool, lock_fd: int | None):
        self.layout = layout
        self.path = layout.root
        self.config = cfg
        self.identity = identity
        self.read_only = read_only
        self._lock_fd = lock_fd
        self.codec: Any = None
        self.fast: Any = None
        self.slow: Any = None
        self.paired: Any = None
        self.blobs: Any = None
        self.meta: Any = None
        self._closed = False

    @property
    def id(self) -> str:
        return str(self.identity.get("id", ""))

    @property
    def dirty_dir(self) -> Path:
        return self.layout.dirty

    @property
    def slow_url(self) -> str:
        return self.layout.slow_url(self.config)

    @property
    def encrypted(self) -> bool:
        return bool(self.identity.get("encrypted"))

    def close(self) -> None:
        """Close meta, then the paired store (its journal keeps what is unsent), then unlock."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        # Paired closes the two stores it pairs; close them directly only if it never opened.
        stores = (self.paired,) if self.paired is not None else (self.slow, self.fast)
        for obj in (self.meta, *stores):
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as e:         # close everything; report the first failure
                errors.append(e)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if errors:
            raise errors[0]

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_config(path: str | os.PathLike[str]) -> configmod.Config:
    """The state dir's validated config (ConfigError names the key and file)."""
    layout = Layout(Path(path).absolute())
    _marker_data(layout)
    if not layout.config.exists():
        return configmod.Config(path=layout.config)
    return configmod.load(layout.config)


def unlock_master(wrapped: bytes, secret: Any, identity: dict[str, Any], what: str) -> bytes:
    """The master key from a passphrase (unwrapping ``wrapped``) or a RecoveryKey.

    The KDF (Argon2id, 64 MiB) runs once per mount of an encrypted filesystem,
    in the daemon: 0.2-0.7 s on a 2-core machine. On purpose it is not cached:
    an unwrapped key kept on disk would let whoever reads the state dir read
    every file, and one kept by a helper process would outlive the mount."""
    from versionfs.blob import keys
    from versionfs.blob.errors import WrongPassphraseError
    if isinstance(secret, keys.RecoveryKey):
        if secret.fs_id != identity.get("id"):
            raise PassphraseError(f"the recovery key belongs to filesystem {secret.fs_id}, "
                                  f"not to {what} (filesystem {identity.get('id')})")
        return secret.master
    if not secret:
        raise PassphraseError(f"{what} is encrypted: give --passphrase-file FILE, "
                              f"--recovery-key-file FILE or set {PASSPHRASE_ENV}")
    try:
        return keys.unwrap_key(wrapped, secret)
    except WrongPassphraseError:
        raise PassphraseError(f"wrong passphrase for {what}") from None


def read_master_key(layout: Layout, identity: dict[str, Any], passphrase: PassphraseSource,
                    bucket: Any) -> tuple[bytes, str | None]:
    """The master key, and the etag of the slow store's ``keys/master`` (None if absent).

    The slow store's wrapped key is the one that counts: after ``versionfs key
    passwd`` on any machine it differs from the local ``key`` file, which is then
    replaced, so the old passphrase stops working here too. An unreachable or
    damaged copy in the slow store falls back to the local file (mounting
    offline works).
    """
    from versionfs.blob.errors import BlobError, NotFoundError
    try:
        local = layout.key.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{layout.root} is encrypted but its key file {layout.key} is "
                         f"missing") from None
    secret = passphrase() if callable(passphrase) else passphrase
    remote, etag = None, None
    if bucket is not None:
        try:
            remote, etag = bucket.get(MASTER_KEY_OBJECT)
        except NotFoundError:
            pass
        except BlobError as e:
            log.warning("cannot read %s from the slow store (%s); using the local key file",
                        MASTER_KEY_OBJECT, e)
    if remote is not None and remote != local:
        try:
            master = unlock_master(remote, secret, identity, str(layout.root))
        except BlobError as e:                   # damaged in the bucket: PassphraseError passes
            log.warning("the slow store's %s is unusable (%s); using the local key file",
                        MASTER_KEY_OBJECT, e)
        except PassphraseError:
            unlock_master(local, secret, identity, str(layout.root))   # wrong for both: says so
            raise PassphraseError(
                f"wrong passphrase for {layout.root}: it opens this state dir's key file but "
                f"not the slow store's {MASTER_KEY_OBJECT}, so the passphrase was changed on "
                f"another machine (give the new one) or {MASTER_KEY_OBJECT} was replaced in "
                f"the bucket") from None
        else:
            write_durably(layout.key, remote, 0o600)
            log.info("the passphrase was changed: %s updated from the slow store", layout.key)
            return master, etag
    return unlock_master(local, secret, identity, str(layout.root)), etag


def _make_codec(master: bytes | None, cfg: configmod.Config):
    from versionfs.blob.codec import Codec
    return Codec(master, compression_level=cfg["store.compression_level"],
                 cipher=cfg["encryption.cipher"])


def open_state(path: str | os.PathLike[str], passphrase: PassphraseSource = None, *,
               read_only: bool = False, lock: bool = True,
               start_uploads: bool = False) -> State:
    """Open a state dir: lock it, unlock the key, open stores and metadata.

    ``passphrase`` (a passphrase or a RecoveryKey) may be a callable, asked only
    if the filesystem is encrypted.
    With ``read_only`` the Paired store has no journal (puts fail) and the lock
    is shared, so several readers may coexist but not with a mounted daemon.
    """
    root = Path(path).absolute()
    if not root.exists():
        raise StateError(f"{root} does not exist")
    if not root.is_dir():
        raise NotAStateDirError(f"{root} is not a directory, so not a versionfs state dir")
    layout = Layout(root)
    identity = _marker_data(layout)
    tighten_dir(root)               # a state dir made by an older version may be 0755
    cfg = load_config(root)
    if bool(identity.get("encrypted")) != cfg["encryption.enabled"]:
        raise configmod.ConfigError(
            f"{layout.config}: encryption.enabled = {str(cfg['encryption.enabled']).lower()} "
            f"but this filesystem was created {'with' if identity.get('encrypted') else 'without'} "
            f"encryption; it cannot be changed after init")
    lock_fd = _take_lock(layout, shared=read_only) if lock else None
    state = State(layout, cfg, identity, read_only, lock_fd)
    try:
        state.slow = _open_slow(state.slow_url)
        master = None
        if identity.get("encrypted"):
            master = read_master_key(layout, identity, passphrase, named_objects(state.slow))[0]
        from versionfs.blob.blobstore import BlobStore
        from versionfs.blob.disk import DiskStore
        from versionfs.blob.paired import Paired
        state.codec = _make_codec(master, cfg)
        state.fast = DiskStore(layout.fast, max_bytes=cfg["store.fast_max_bytes"] or None)
        state.paired = Paired(state.fast, state.slow,
                              None if read_only else layout.journal,
                              **_paired_options(cfg))
        if start_uploads and not read_only:
            state.paired.start()
        state.blobs = BlobStore(state.paired, state.codec)
        from versionfs.meta.mvcc.store import MVCCStore
        state.meta = MVCCStore.open(str(layout.meta), **_meta_options(cfg))
    except BaseException:
        try:
            state.close()
        except Exception:
            pass
        raise
    return state


def _paired_options(cfg: configmod.Config) -> dict[str, Any]:
    return {"upload_threads": cfg["store.upload_concurrency"]}


def _meta_options(cfg: configmod.Config) -> dict[str, Any]:
    return {"batch_interval": cfg["meta.batch_interval"],
            "batch_limit": cfg["meta.batch_limit"],
            "quota_bytes": cfg["meta.quota_bytes"]}
