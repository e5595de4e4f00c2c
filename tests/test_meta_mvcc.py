"""MVCCStore behaviour on real LMDB files: API, revisions, growth, threads, streaming."""

import threading
import types

import pytest
from meta_checks import abandon

from versionfs.meta.mvcc.errors import (
    KeyTooLongError,
    RevisionNotFoundError,
    StoreClosedError,
)
from versionfs.meta.mvcc.layout import KV
from versionfs.meta.mvcc.revisions import RevisionInfo
from versionfs.meta.mvcc.store import MVCCStore


@pytest.fixture
def store(tmp_path):
    s = MVCCStore.open(str(tmp_path / "meta"), batch_interval=0.01, batch_limit=100)
    yield s
    s.close()


def kv_items(store):
    store.flush()
    with store._backend.read_snapshot() as snap:
        return sum(1 for _ in snap.range(KV, b""))


def test_put_get_delete_range(store):
    assert store.head == 1
    assert store.get(b"x") is None
    store.put(b"x", b"1")
    with store.write() as b:
        b.put(b"y", b"2")
        b.put(b"z", b"3")
        b.delete(b"x")
    assert store.get(b"x") is None
    assert list(store.range(b"", None)) == [(b"y", b"2"), (b"z", b"3")]
    assert list(store.range(b"y", b"z")) == [(b"y", b"2")]
    assert list(store.range(b"", None, limit=1)) == [(b"y", b"2")]


def test_failed_batch_applies_nothing(store):
    with pytest.raises(RuntimeError):
        with store.write() as b:
            b.put(b"a", b"1")
            raise RuntimeError("boom")
    assert store.get(b"a") is None


def test_snapshots_and_names(store):
    store.put(b"k", b"v1")
    s1 = store.snapshot("first")
    assert isinstance(s1, RevisionInfo) and s1.rev == 1 and s1.name == "first"
    store.put(b"k", b"v2")
    s2 = store.snapshot()
    store.delete(b"k")
    assert store.get(b"k", s1.rev) == b"v1"
    assert store.get(b"k", s2.rev) == b"v2"
    assert store.get(b"k") is None
    assert store.revision("first") == s1
    assert store.revision(s2.rev) == s2
    assert [r.rev for r in store.revisions()] == [1, 2]
    with pytest.raises(ValueError, match="already exists"):
        store.snapshot("first")
    store.delete_revision("first")
    with pytest.raises(RevisionNotFoundError):
        store.get(b"k", s1.rev)
    with pytest.raises(RevisionNotFoundError):
        store.revision("first")
    with pytest.raises(RevisionNotFoundError):
        store.get(b"k", 99)
    store.compact()
    assert store.get(b"k", s2.rev) == b"v2"


def test_overwrite_within_revision_does_not_grow(store):
    for i in range(2000):
        store.put(b"same", b"%d" % i)
    assert kv_items(store) == 1
    used = store._backend.size_in_use()
    for i in range(2000):
        store.put(b"same", b"%d" % i)
    assert kv_items(store) == 1
    assert store._backend.size_in_use() == used
    assert store.get(b"same") == b"1999"


def test_snapshot_copies_nothing(store):
    with store.write() as b:
        for i in range(3000):
            b.put(b"k%05d" % i, b"v")
    n = kv_items(store)
    for _ in range(50):
        store.snapshot()
    assert kv_items(store) == n


def test_compact_drops_invisible_versions(store):
    store.put(b"k", b"1")
    s1 = store.snapshot()
    store.put(b"k", b"2")
    store.snapshot()
    store.put(b"k", b"3")
    store.delete(b"gone")
    assert kv_items(store) == 4
    store.delete_revision(s1.rev + 1)
    store.compact()
    # kept: version for s1 and the head's; the middle one and the bare tombstone go
    assert kv_items(store) == 2
    assert store.get(b"k", s1.rev) == b"1" and store.get(b"k") == b"3"
    store.defrag()
    assert store.get(b"k", s1.rev) == b"1" and store.get(b"k") == b"3"


def test_changed_keys(store):
    store.put(b"a", b"1")
    s1 = store.snapshot()
    store.put(b"b", b"1")
    store.delete(b"a")
    s2 = store.snapshot()
    store.put(b"c", b"1")
    assert sorted(store.changed_keys(s1.rev, s2.rev)) == [b"a", b"b"]
    assert sorted(store.changed_keys(s2.rev, store.head)) == [b"c"]
    assert sorted(store.changed_keys(0, store.head)) == [b"a", b"b", b"c"]
    with pytest.raises(ValueError):
        store.changed_keys(3, 1)


def test_range_streams(store):
    with store.write() as b:
        for i in range(20000):
            b.put(b"d/%06d" % i, b"x" * 20)
    it = store.range(b"d/", b"d0")
    assert isinstance(it, types.GeneratorType)
    first = [next(it) for _ in range(10)]
    assert first[0][0] == b"d/000000"
    # Writes between pulls are fine; the stream continues in key order.
    store.put(b"d/999999", b"late")
    rest = list(it)
    keys = [k for k, _ in first + rest]
    assert keys == sorted(keys) and len(keys) == 20001
    store.flush()
    assert sum(1 for _ in store.range(b"d/", b"d0")) == 20001


def test_bad_input(store):
    with pytest.raises(TypeError):
        store.put("str", b"v")
    with pytest.raises(TypeError):
        store.put(b"k", "v")
    with pytest.raises(KeyTooLongError):
        store.put(b"k" * 600, b"v")
    with pytest.raises(ValueError):
        store.snapshot("a/b")
    assert store.get(b"k") is None


def test_reopen_keeps_everything(tmp_path):
    path = str(tmp_path / "m")
    s = MVCCStore.open(path, batch_interval=10, batch_limit=10**9)  # nothing commits to LMDB
    for i in range(500):
        s.put(b"k%d" % i, b"v%d" % i)
    rev = s.snapshot("one").rev
    s.put(b"k0", b"new")
    abandon(s)  # without close: only the WAL has the data
    s2 = MVCCStore.open(path)
    try:
        assert s2.get(b"k0") == b"new" and s2.get(b"k0", rev) == b"v0"
        assert s2.get(b"k499") == b"v499" and s2.head == rev + 1
        assert s2.revision("one").rev == rev
    finally:
        s2.close()


def test_second_open_refused_and_closed_store(tmp_path):
    path = str(tmp_path / "m")
    s = MVCCStore.open(path)
    with pytest.raises(Exception, match="already open"):
        MVCCStore.open(path)
    s.close()
    with pytest.raises(StoreClosedError):
        s.get(b"x")


def test_threads(store):
    errors = []

    def writer(t):
        try:
            for i in range(500):
                with store.write() as b:
                    b.put(b"t%d/%04d" % (t, i), b"%d" % i)
                    b.put(b"t%d/last" % t, b"%d" % i)
                if i % 100 == 0:
                    store.snapshot()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        try:
            for _ in range(300):
                for t in range(3):
                    last = store.get(b"t%d/last" % t)
                    if last is not None:
                        assert store.get(b"t%d/%04d" % (t, int(last))) == last
                sum(1 for _ in store.range(b"t0/", b"t0/z"))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for t in range(3):
        assert store.get(b"t%d/last" % t) == b"499"
        assert sum(1 for _ in store.range(b"t%d/" % t, b"t%d/l" % t)) == 500
