"""MVCCStore against a plain-Python model: random writes, snapshots, compaction,
revision deletion and reopening; every retained revision must read back exactly."""

import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from meta_checks import abandon
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from versionfs.meta.mvcc.errors import RevisionNotFoundError
from versionfs.meta.mvcc.store import MVCCStore

# Keys chosen to stress the order-preserving key encoding (NULs, prefixes, 0xff).
KEYS = [b"", b"a", b"a\x00", b"a\x00b", b"a\x01", b"ab", b"b", b"\x00", b"\xff", b"a\xff", b"b\x00\x00"]
key_st = st.sampled_from(KEYS)
value_st = st.binary(max_size=12)


def model_range(state, start, end):
    return sorted((k, v) for k, v in state.items() if k >= start and (end is None or k < end))


class MVCCModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mvcc-model-")
        self.batch_limit = 3
        self.store = self._open()
        self.head = {}
        self.frozen = {}  # rev -> dict
        self.history = {}  # rev -> set of keys written at rev
        self.deleted = set()

    def _open(self):
        return MVCCStore.open(self.dir, batch_interval=0.002, batch_limit=self.batch_limit, segment_bytes=600)

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _written(self, key):
        self.history.setdefault(self.store.head, set()).add(key)

    @rule(key=key_st, value=value_st)
    def put(self, key, value):
        self.store.put(key, value)
        self.head[key] = value
        self._written(key)

    @rule(key=key_st)
    def delete(self, key):
        self.store.delete(key)
        self.head.pop(key, None)
        self._written(key)

    @rule(ops=st.lists(st.tuples(key_st, st.none() | value_st), min_size=1, max_size=6))
    def batch(self, ops):
        with self.store.write() as b:
            for k, v in ops:
                if v is None:
                    b.delete(k)
                    self.head.pop(k, None)
                else:
                    b.put(k, v)
                    self.head[k] = v
                self._written(k)

    @rule(named=st.booleans())
    def snapshot(self, named):
        rev = self.store.head
        info = self.store.snapshot(f"s{rev}" if named else None)
        assert info.rev == rev and self.store.head == rev + 1
        self.frozen[rev] = dict(self.head)

    @precondition(lambda self: self.frozen)
    @rule(data=st.data())
    def delete_revision(self, data):
        rev = data.draw(st.sampled_from(sorted(self.frozen)))
        self.store.delete_revision(rev)
        del self.frozen[rev]
        self.deleted.add(rev)

    @rule()
    def compact(self):
        self.store.compact()

    @rule()
    def flush(self):
        self.store.flush()

    @rule(kill=st.booleans())
    def reopen(self, kill):
        if kill:
            # A crash: queued LMDB batches are lost; the WAL file has every write.
            abandon(self.store)
        else:
            self.store.close()
        self.store = self._open()

    @rule(start=key_st, end=st.none() | key_st, limit=st.none() | st.integers(1, 4))
    def ranges(self, start, end, limit):
        for rev, state in [(None, self.head), *self.frozen.items()]:
            got = list(self.store.range(start, end, rev=rev, limit=limit))
            want = model_range(state, start, end)
            if limit is not None:
                want = want[:limit]
            assert got == want, (rev, start, end)

    @precondition(lambda self: len(self.frozen) >= 1)
    @rule(data=st.data())
    def changed(self, data):
        revs = sorted(self.frozen) + [self.store.head]
        a = data.draw(st.sampled_from(revs))
        b = data.draw(st.sampled_from([r for r in revs if r >= a]))
        got = list(self.store.changed_keys(a, b))
        assert len(got) == len(set(got))
        state_a = self.frozen.get(a, self.head)
        state_b = self.frozen.get(b, self.head)
        must = {k for k in KEYS if state_a.get(k) != state_b.get(k)}
        may = set().union(*(self.history.get(r, set()) for r in range(a + 1, b + 1)))
        assert must <= set(got) <= may

    @invariant()
    def every_revision_reads_back(self):
        assert self.store.head == max([0, *self.frozen, *self.deleted]) + 1 or self.store.head >= 1
        assert [i.rev for i in self.store.revisions()] == sorted(self.frozen)
        for rev, state in [(None, self.head), *self.frozen.items()]:
            for k in KEYS:
                assert self.store.get(k, rev) == state.get(k), (rev, k)
            assert list(self.store.range(b"", None, rev)) == model_range(state, b"", None)
        for rev in self.deleted:
            with pytest.raises(RevisionNotFoundError):
                self.store.get(b"a", rev)


MVCCModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_mvcc_matches_model = MVCCModel.TestCase
