"""MVCCStore.versions (every stored version, for gc/fsck) and check_indexes."""

from __future__ import annotations

import pytest

from versionfs.meta.mvcc.layout import _U64, CHANGES
from versionfs.meta.mvcc.store import MVCCStore


@pytest.fixture
def store(tmp_path):
    s = MVCCStore.open(str(tmp_path / "m"), batch_interval=0.01)
    yield s
    s.close()


def _collect(store, **kw):
    return [(k, r, v) for k, r, v in store.versions(b"a", b"z", **kw)]


def test_versions_lists_every_stored_version_newest_first(store):
    store.put(b"a1", b"v1")
    store.snapshot()                       # rev 1
    store.put(b"a1", b"v2")
    store.put(b"b", b"x")
    store.snapshot()                       # rev 2
    store.delete(b"b")
    store.put(b"zz", b"outside")
    assert _collect(store) == [(b"a1", 2, b"v2"), (b"a1", 1, b"v1"),
                               (b"b", 3, None), (b"b", 2, b"x")]


def test_retained_only_matches_what_compact_keeps(store):
    store.put(b"k", b"v1")
    store.snapshot()                       # rev 1 sees v1
    store.put(b"k", b"v2")
    store.snapshot()                       # rev 2 sees v2
    store.put(b"k", b"v3")                 # head
    store.put(b"gone", b"g")
    store.snapshot()                       # rev 3
    store.delete(b"gone")                  # head 4: tombstone
    store.delete_revision(2)
    store.delete_revision(3)
    kept = _collect(store, retained_only=True)
    # v2 was seen only by rev 2, "gone" only by rev 3 (the head has its tombstone,
    # which hides nothing once rev 3 is forgotten).
    assert kept == [(b"k", 3, b"v3"), (b"k", 1, b"v1")]
    assert (b"k", 2, b"v2") in _collect(store)
    store.compact()
    assert _collect(store) == kept


def test_versions_streams_many_keys_across_chunks(store):
    with store.write() as b:
        for i in range(10000):
            b.put(b"e%06d" % i, b"x")
    store.snapshot()
    with store.write() as b:
        for i in range(0, 10000, 2):
            b.put(b"e%06d" % i, b"y")
    got = list(store.versions(b"e", b"f"))
    assert len(got) == 15000
    assert [k for k, _, _ in got] == sorted(k for k, _, _ in got)


def test_check_indexes_finds_and_repairs_broken_changes_items(store):
    store.put(b"a", b"1")
    store.snapshot()
    store.put(b"b", b"2")
    assert store.check_indexes() == []
    store.flush()

    def damage(txn, dbs):
        txn.delete(_U64.pack(1) + b"a", db=dbs[CHANGES])
        txn.put(_U64.pack(7) + b"ghost", b"", db=dbs[CHANGES])
    store._backend.run(damage)
    problems = store.check_indexes()
    assert len(problems) == 2
    assert any("lacks revision 1" in p and "b'a'" in p for p in problems)
    assert any("ghost" in p for p in problems)
    assert store.check_indexes(repair=True) == problems
    assert store.check_indexes() == []
    assert list(store.changed_keys(0, 1)) == [b"a"]
