"""Child process for tests/test_meta_crash.py: writes through MVCCStore until killed.

Batch i atomically puts n<i> and last=i (and deletes n<i-3> when i % 5 == 0);
every 20th batch takes snapshot s<i> and deletes s<i-60>; every 50th compacts.
After each sync it prints the last synced batch number.
"""

import random
import sys

from versionfs.meta.mvcc.store import MVCCStore


def finish(store: MVCCStore, i: int) -> None:
    if i and i % 20 == 0:
        names = {r.name for r in store.revisions()}
        if f"s{i}" not in names:
            store.snapshot(f"s{i}")
        if f"s{i - 60}" in names:
            store.delete_revision(f"s{i - 60}")


def main(path: str, seed: int) -> None:
    rnd = random.Random(seed)
    store = MVCCStore.open(
        path,
        batch_interval=rnd.choice([0.001, 0.01, 0.05]),
        batch_limit=rnd.choice([7, 100, 5000]),
        segment_bytes=rnd.choice([4096, 64 * 1024]),
    )
    last = store.get(b"last")
    i = int(last) if last is not None else 0
    finish(store, i)  # the previous child may have died between a batch and its snapshot
    print("ready", i, flush=True)
    sync_every = rnd.choice([1, 10, 50])
    while True:
        i += 1
        with store.write() as b:
            b.put(b"n%08d" % i, b"value-%d-" % i + b"x" * (i % 50))
            b.put(b"last", b"%d" % i)
            if i % 5 == 0 and i > 3:
                b.delete(b"n%08d" % (i - 3))
        finish(store, i)
        if i % 50 == 0:
            store.compact()
        if i % sync_every == 0:
            store.sync()
            print(i, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
