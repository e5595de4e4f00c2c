"""MVCCStore.changed_keys, which diff and log are built on: exactly the keys whose
value may differ between two revisions, from the overlay and from LMDB alike."""

from __future__ import annotations

import random

from versionfs.meta.mvcc.store import MVCCStore


def _model_changed(history: dict[int, dict[bytes, bytes | None]], a: int, b: int) -> set[bytes]:
    return {k for r, writes in history.items() if a < r <= b for k in writes}


def test_changed_keys_matches_a_model_across_overlay_and_lmdb(tmp_path):
    rng = random.Random(6)
    # A long batch interval keeps recent writes in the overlay; flush() moves them to LMDB.
    store = MVCCStore.open(tmp_path / "m", batch_interval=30.0, batch_limit=10**6)
    history: dict[int, dict[bytes, bytes | None]] = {}
    try:
        for step in range(8):
            rev = store.head
            writes = history.setdefault(rev, {})
            for _ in range(rng.randint(0, 40)):
                k = b"k%03d" % rng.randrange(200)
                if rng.random() < 0.25:
                    store.delete(k)
                    writes[k] = None
                else:
                    store.put(k, b"v%d" % step)
                    writes[k] = b"v"
            if step % 3 == 1:
                store.flush()
            store.snapshot()
        head = store.head
        store.put(b"live-only", b"x")
        history.setdefault(head, {})[b"live-only"] = b"x"
        revs = [r.rev for r in store.revisions()] + [head]
        for i, a in enumerate(revs):
            for b in revs[i:]:
                got = list(store.changed_keys(a, b))
                assert len(got) == len(set(got)), "a key is reported once"
                assert set(got) == _model_changed(history, a, b), (a, b)
        # Old revisions are answered from LMDB only, with the head's writes still in the overlay.
        assert b"live-only" not in set(store.changed_keys(revs[0], revs[-2]))
    finally:
        store.close()


def test_changed_keys_after_forgetting_a_revision_still_covers_the_change(tmp_path):
    store = MVCCStore.open(tmp_path / "m")
    try:
        store.put(b"a", b"1")
        r1 = store.snapshot().rev
        store.put(b"a", b"2")
        store.put(b"tmp", b"x")
        r2 = store.snapshot().rev
        store.put(b"a", b"3")
        store.delete(b"tmp")
        r3 = store.snapshot().rev
        store.delete_revision(r2)
        store.compact()
        changed = set(store.changed_keys(r1, r3))
        assert b"a" in changed
        # tmp was created and deleted between r1 and r3: whatever is reported,
        # its value at both ends is absent, so a diff shows nothing for it.
        assert store.get(b"tmp", r1) is None and store.get(b"tmp", r3) is None
    finally:
        store.close()
