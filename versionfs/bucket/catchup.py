"""Catching a state dir's metadata up with the bucket's head, safely.

``fast_forward`` replaces the local metadata with the bucket's head when
another machine published since and nothing changed here (the caller checked
that).  Two rules keep it from ever losing anything:

* no rollback: a head older than the newest this state dir has seen or
  published, or older than the local metadata itself, is refused
  (``RollbackError`` naming both indexes and times), never restored;
* the local copy is removed only after its replacement is verified: the
  head is restored beside it (checkpoint and WAL objects checked as they are
  read, the result opened and its last index checked: ``restore_meta``); only then are
  the two directories swapped (atomically), the new copy opened in place and
  the old one deleted.  Any failure before that leaves the local copy as it was.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from pathlib import Path

from versionfs.blob.files import fsync_dir
from versionfs.bucket import publish
from versionfs.bucket.seen import HeadWatermark
from versionfs.common import state as statemod
from versionfs.meta.mvcc.store import MVCCStore

__all__ = ["fast_forward", "check_not_rollback"]

log = logging.getLogger(__name__)


def _exchange_dirs(a: Path, b: Path) -> None:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"cannot swap {a} and {b}: {os.strerror(e)}")


def check_not_rollback(state, head: publish.HeadRecord, watermark: HeadWatermark) -> None:
    """RollbackError unless ``head`` is at least as new as everything seen here."""
    older = watermark.older(head.seen())
    if older is None and head.last_index < state.meta.last_index:
        older = (f"the bucket's head ({head.seen().describe()}) is older than this state "
                 f"dir's metadata (index {state.meta.last_index})")
    if older:
        raise publish.RollbackError(older)


def fast_forward(state, bucket, head_pair, head: publish.HeadRecord, record: dict | None,
                 watermark: HeadWatermark) -> None:
    """Replace the state's metadata with the bucket's head (module doc); ``state.meta``
    is reopened on the new copy."""
    check_not_rollback(state, head, watermark)
    layout = state.layout
    incoming = layout.root / "meta.incoming"
    log.info("catching up with the bucket's head (%s); this state dir's metadata ends at "
             "index %d", head.seen().describe(), state.meta.last_index)
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        publish.restore_meta(bucket, state.codec, str(incoming), head)
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    options = statemod._meta_options(state.config)
    state.meta.close()
    try:
        _exchange_dirs(layout.meta, incoming)       # incoming now holds the old copy
    except BaseException:
        state.meta = MVCCStore.open(str(layout.meta), **options)   # nothing moved
        raise
    fsync_dir(layout.root)
    try:
        state.meta = MVCCStore.open(str(layout.meta), **options)
    except BaseException:
        _exchange_dirs(layout.meta, incoming)       # put the old copy back
        fsync_dir(layout.root)
        state.meta = MVCCStore.open(str(layout.meta), **options)
        raise
    writer = (record or {}).get("writer")
    rec = {"etag": head_pair.last_index, "last_index": head.last_index}
    if writer:
        rec["writer"] = writer
    publish.save_record(str(layout.root / publish.RECORD_NAME), rec)
    watermark.note(head.seen())
    shutil.rmtree(incoming, ignore_errors=True)     # the old copy, only now
