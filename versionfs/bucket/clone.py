"""``versionfs clone SLOW_URL STATE_DIR``: a working state dir from the bucket alone.

What the bucket gives a new machine: ``versionfs.toml`` (the filesystem's
identity, checked against the key once it is unlocked: ``common.identity``), ``keys/master`` (the master key wrapped by the passphrase, when
encrypted) and the published metadata (``meta/head`` and what it names, see
``versionfs.bucket.publish``).  Clone restores the metadata — latest checkpoint,
WAL objects replayed, every snapshot — and nothing else: file contents stay in
the bucket and are fetched on first read (the Paired store falls back to the
slow store and keeps a copy in the fast one), so the mount is usable at once.

The state dir is built under a temporary name beside STATE_DIR and renamed
into place only when complete (every file in it fsynced, then the rename),
so an interrupted clone or a power cut leaves nothing that looks like a
filesystem.  Clone says which head it restored (index, time, writer) and
remembers it as the newest head seen (``seen.HeadWatermark``), so the new
state dir never accepts an older one later.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import tomli_w

from versionfs.common import config as configmod
from versionfs.common import identity as identitymod
from versionfs.common import state as statemod
from versionfs.blob.errors import NotFoundError
from versionfs.blob.files import fsync_dir
from versionfs.bucket import publish
from versionfs.bucket.seen import HeadWatermark, iso

__all__ = ["clone"]


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=quiet, file=sys.stderr, leave=True)


def clone(slow_url: str, state_dir: str | os.PathLike[str], passphrase_source=None, *,
          quiet: bool = False) -> Path:
    """Build STATE_DIR from the filesystem in ``slow_url``; returns its absolute path.

    ``passphrase_source`` is a passphrase, a RecoveryKey, or a callable giving
    one, asked only when encrypted.
    """
    root = Path(state_dir).absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise statemod.StateError(f"{root} exists and is not an empty directory")
    url = slow_url if "://" in slow_url else Path(slow_url).absolute().as_uri()
    slow = statemod._open_slow(url)
    try:
        bucket = statemod.named_objects(slow)
        if bucket is None:
            raise statemod.StateError(f"{url} keeps no metadata (a remote store without named "
                                      f"objects); it cannot be cloned")
        try:
            identity = identitymod.parse(bucket.get(identitymod.FILESYSTEM_OBJECT)[0], url)
        except NotFoundError:
            raise statemod.StateError(f"{url} holds no versionfs filesystem "
                                      f"(no {identitymod.FILESYSTEM_OBJECT})") from None
        except identitymod.IdentityError as e:
            raise statemod.StateError(str(e)) from None
        wrapped = None
        master = None
        if identity.get("encrypted"):
            try:
                wrapped = bucket.get(statemod.MASTER_KEY_OBJECT)[0]
            except NotFoundError:
                raise statemod.StateError(f"{url} is encrypted but its wrapped key "
                                          f"{statemod.MASTER_KEY_OBJECT} is missing") from None
            secret = passphrase_source() if callable(passphrase_source) else passphrase_source
            master = statemod.unlock_master(wrapped, secret, identity, url)
        cfg = configmod.Config()
        cfg.set("store.slow", url)
        cfg.set("encryption.enabled", bool(identity.get("encrypted")))
        if identity.get("cipher"):
            cfg.set("encryption.cipher", identity["cipher"])
        codec = statemod._make_codec(master, cfg)
        try:
            identity = identitymod.verify(identity, codec, url)
        except identitymod.IdentityError as e:
            raise statemod.StateError(str(e)) from None
        found = publish.read_head(publish.bucket_kv(bucket), codec)
        if found is None:
            raise statemod.StateError(f"{url} has no published metadata yet: run `versionfs "
                                      f"flush MOUNTPOINT` on the machine that has it mounted")
        pair, head = found
        tmp = root.with_name(f".{root.name}.clone-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(mode=0o700, parents=True)
        try:
            layout = statemod.Layout(tmp)
            for d in (layout.fast, layout.dirty):
                d.mkdir(mode=0o700)
            total = head.checkpoint.get("bytes", 0) + sum(w.get("bytes", 0) for w in head.wal)
            start = time.monotonic()
            with _progress(total, "metadata", quiet) as bar:
                publish.restore_meta(bucket, codec, str(layout.meta), head, progress=bar.update)
            configmod.save(cfg, layout.config)
            if wrapped is not None:
                statemod.write_durably(layout.key, wrapped, 0o600)
            publish.save_record(str(tmp / publish.RECORD_NAME),
                                {"writer": uuid.uuid4().hex, "etag": pair.last_index,
                                 "last_index": head.last_index})
            HeadWatermark(tmp).note(head.seen())
            statemod.write_durably(layout.marker, tomli_w.dumps(identity).encode())
            for d in (layout.fast, layout.dirty):
                fsync_dir(d)
            if root.exists():
                root.rmdir()
            os.rename(tmp, root)
            fsync_dir(root.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not quiet:
            print(f"cloned {url} into {root}: the head published {iso(head.time)} by "
                  f"writer {head.writer[:12]} (metadata index {head.last_index}), "
                  f"{head.snapshots} snapshot(s), {time.monotonic() - start:.1f}s; file data is "
                  f"fetched on first read", file=sys.stderr)
        return root
    finally:
        slow.close()

