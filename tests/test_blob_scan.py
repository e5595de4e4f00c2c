"""The fast store's index scan runs in the background (DiskStore class doc):
the store serves at once, and what it does while the scan runs is neither
undone nor counted twice when the scan merges, and eviction never picks on a
partial view.

The scan is held open by a subclass whose ``_scan`` stops halfway until the
test releases it: the real listing and merge run, paused at a point the test
chooses (a directory cannot be made slow to list for root, and a hook in the
store itself would be production code only tests use).
"""

from __future__ import annotations

import logging
import os
import threading

import pytest

from versionfs.blob.codec import Codec
from versionfs.blob.disk import DiskStore
from versionfs.blob.errors import NotFoundError
from versionfs.blob.pointer import Pointer


class HeldScan(DiskStore):
    """A DiskStore whose index scan pauses after ``hold_after`` blobs until
    ``release`` is set; ``halfway`` is set when it pauses."""

    def __init__(self, path, hold_after: int, **kw):
        self.hold_after = hold_after
        self.halfway = threading.Event()
        self.release = threading.Event()
        self.listed = 0
        super().__init__(path, **kw)

    def _scan(self):
        for entry in super()._scan():
            if self.listed == self.hold_after and not self.halfway.is_set():
                self.halfway.set()
                assert self.release.wait(60), "the test never released the scan"
            self.listed += 1
            yield entry


def _blob(i: int, size: int | None = None) -> tuple[Pointer, bytes]:
    data = i.to_bytes(4, "big") + os.urandom((size or 100 + i % 50) - 4)
    return Codec(None).pointer_for(data), data


def _filled(root, count: int, size: int | None = None) -> list[tuple[Pointer, bytes]]:
    """``count`` blobs put into a store at ``root``, with mtimes in put order."""
    items = [_blob(i, size) for i in range(count)]
    store = DiskStore(root)
    store.put_many(items)
    store.close()
    for n, (key, _) in enumerate(items):
        os.utime(store.path_for(key), (1_000_000 + n, 1_000_000 + n))
    return items


def _on_disk(store: DiskStore) -> dict[Pointer, int]:
    return {key: os.stat(store.path_for(key)).st_size for key in store.enumerate()}


def test_store_serves_while_its_scan_is_held_and_the_merge_undoes_nothing(tmp_path):
    items = _filled(tmp_path, 600)
    store = HeldScan(tmp_path, hold_after=300)
    assert store.halfway.wait(30)
    assert store.used_bytes is None and store.scan_state == "pending"

    assert all(store.get(k) == d for k, d in items)
    assert all(store.contains(k) for k, _ in items)
    assert not store.contains(Pointer.random())
    deleted = [k for k, _ in items[::7]]
    store.delete_many(deleted[:40])
    for key in deleted[40:]:
        store.delete(key)
    assert not any(store.contains(k) for k in deleted)
    with pytest.raises(NotFoundError):
        store.get(deleted[0])
    added = [_blob(10_000 + i) for i in range(50)]
    store.put_many(added)
    reput = [(k, d) for k, d in items[1::7]]
    store.put_many(reput)                       # already stored: indexed, not written twice
    back = items[0]                             # deleted, then put again
    store.put(*back)

    store.release.set()
    assert store.wait_scanned(30) and store.scan_state == "done"
    want = {k: len(d) for k, d in items + added if k not in set(deleted) or k == back[0]}
    assert dict(store._index) == want
    assert store.used_bytes == sum(want.values()) == sum(_on_disk(store).values())
    assert store.damaged_copies == 0
    reopened = DiskStore(tmp_path)
    assert reopened.wait_scanned(30) and reopened.used_bytes == store.used_bytes


def test_a_damaged_copy_re_put_during_the_scan_is_replaced(tmp_path):
    items = _filled(tmp_path, 40)
    key, data = items[35]                       # listed after the hold
    with open(DiskStore(tmp_path).path_for(key), "r+b") as f:
        f.truncate(10)                          # a copy torn by a power cut
    store = HeldScan(tmp_path, hold_after=5)
    assert store.halfway.wait(30)
    store.put_many_deferred([(key, data)])
    store.sync_deferred()
    store.release.set()
    assert store.wait_scanned(30)
    assert store.damaged_copies == 1
    assert open(store.path_for(key), "rb").read() == data
    assert store._index[key] == len(data)
    assert store.used_bytes == sum(_on_disk(store).values())


def test_eviction_waits_for_the_scan_keeps_guarded_blobs_and_ends_within_the_limit(tmp_path):
    items = _filled(tmp_path, 100, size=1000)   # exactly at the limit
    pinned = {k for k, _ in items[:30]}         # the oldest: first in line for eviction
    store = HeldScan(tmp_path, hold_after=50, max_bytes=100_000)
    store.set_eviction_guard(lambda k: k in pinned)
    assert store.halfway.wait(30)
    incoming = [_blob(5000 + i, 1000) for i in range(10)]
    putter = threading.Thread(target=store.put_many, args=(incoming,))
    putter.start()
    putter.join(0.5)
    assert putter.is_alive(), "a put evicted on a partial index"
    store.release.set()
    putter.join(30)
    assert not putter.is_alive()
    on_disk = _on_disk(store)
    assert pinned <= set(on_disk)
    assert all(k in on_disk for k, _ in incoming)
    evicted = {k for k, _ in items} - set(on_disk)
    assert evicted == {k for k, _ in items[30:40]}     # the oldest unguarded ones
    assert store.used_bytes == sum(on_disk.values()) <= 100_000


class FailingScan(DiskStore):
    """The listing fails with EIO: a mock, because a real disk error cannot be
    produced on demand (permissions do not stop root)."""

    def _scan(self):
        yield from ()
        raise OSError(5, "Input/output error")


def test_a_failed_scan_is_logged_and_shown_and_the_store_still_works(tmp_path, caplog):
    items = _filled(tmp_path, 20)
    with caplog.at_level(logging.ERROR, logger="versionfs.blob.disk"):
        store = FailingScan(tmp_path)
        assert store.wait_scanned(30)
    assert store.scan_state.startswith("failed: OSError") and store.used_bytes is None
    assert any("index scan failed" in r.getMessage() for r in caplog.records)
    assert store.get(items[0][0]) == items[0][1] and store.contains(items[1][0])
    store.put(*_blob(999))


def test_close_stops_a_running_scan(tmp_path):
    _filled(tmp_path, 100)
    store = HeldScan(tmp_path, hold_after=10)
    assert store.halfway.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    assert store._closing.wait(30)
    store.release.set()
    closer.join(30)
    assert not closer.is_alive() and not store._scanner.is_alive()
    assert store.listed == 11 and store.scan_state == "stopped"
    assert store.used_bytes is None
