"""Metadata layer benchmark: prints the figures issue 3 asks for.

    .venv/bin/python bench/meta.py [--dir /path/on/the/disk/to/measure] [--quick]

* metadata writes/s: small records (~40-byte key, ~100-byte value), one
  ``write()`` batch per record, with no sync, one ``sync`` per 100 writes and
  one per write;
* point reads/s at the head and at an old revision (from LMDB, and right after
  writing, from the in-memory overlay);
* ``snapshot()`` time with 1k, 100k and 1M keys (must stay flat);
* WAL replay time for 100k records (a process writes them, syncs and exits
  without closing, so LMDB has none of them; then the store is reopened).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from versionfs.meta.mvcc.store import MVCCStore  # noqa: E402
from versionfs.meta.wal.wal import WAL  # noqa: E402

VALUE = b"v" * 100


def key(i: int) -> bytes:
    return b"inode/%016x/dirent/file-name-%08d" % (i // 50, i)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f}/s"


def bench_writes(base: str, n: int, sync_every: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process: caller plus LMDB writer thread)."""
    d = tempfile.mkdtemp(dir=base)
    s = MVCCStore.open(d)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        with s.write() as b:
            b.put(key(i), VALUE)
        if sync_every and (i + 1) % sync_every == 0:
            s.sync()
    s.flush()  # count the LMDB commits too
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    s.close()
    shutil.rmtree(d)
    return dt, cpu


def bench_reads(base: str, nkeys: int, nreads: int) -> dict:
    d = tempfile.mkdtemp(dir=base)
    s = MVCCStore.open(d)
    for start in range(0, nkeys, 1000):
        with s.write() as b:
            for i in range(start, min(start + 1000, nkeys)):
                b.put(key(i), VALUE)
    old = s.snapshot("old").rev
    for start in range(0, nkeys, 1000):  # overwrite half so old and head differ
        with s.write() as b:
            for i in range(start, min(start + 500, nkeys)):
                b.put(key(i), b"w" * 100)
    s.flush()
    rnd = random.Random(1)
    keys = [key(rnd.randrange(nkeys)) for _ in range(nreads)]
    out = {}
    for label, rev in (("head", None), ("old revision", old)):
        t0 = time.perf_counter()
        for k in keys:
            s.get(k, rev)
        out[label] = time.perf_counter() - t0
    # Reads served by the overlay: writes not yet committed to LMDB.
    s.close()
    s = MVCCStore.open(d, batch_interval=3600, batch_limit=10**9)
    with s.write() as b:
        for k in keys[:5000]:
            b.put(k, b"x" * 100)
    t0 = time.perf_counter()
    for k in keys:
        s.get(k)
    out["head, 5k keys in overlay"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in s.range(b"inode/", b"inode0"))
    out["range"] = (time.perf_counter() - t0, n)
    s.close()
    shutil.rmtree(d)
    return out


def bench_snapshot(base: str, sizes: list[int]) -> dict:
    d = tempfile.mkdtemp(dir=base)
    s = MVCCStore.open(d, quota_bytes=8 * 1024**3)
    have = 0
    out = {}
    for size in sizes:
        while have < size:
            with s.write() as b:
                for i in range(have, min(have + 5000, size)):
                    b.put(key(i), VALUE)
            have = min(have + 5000, size)
        s.flush()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            s.snapshot()
            times.append(time.perf_counter() - t0)
            with s.write() as b:
                b.put(key(random.randrange(size)), b"changed")
        times.sort()
        out[size] = (times[len(times) // 2], times[-1], s.stats()["db_size"])
    s.close()
    shutil.rmtree(d)
    return out


_REPLAY_CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from versionfs.meta.mvcc.store import MVCCStore
s = MVCCStore.open({d!r}, batch_interval=3600, batch_limit=10**9)
for i in range({n}):
    with s.write() as b:
        b.put(b"inode/%016x/dirent/file-name-%08d" % (i // 50, i), b"v" * 100)
s.sync()
os._exit(0)  # no close: LMDB never sees these writes, only the WAL has them
"""


def bench_replay(base: str, n: int) -> dict:
    d = tempfile.mkdtemp(dir=base)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", _REPLAY_CHILD.format(root=root, d=d, n=n)], check=True)
    out = {}
    t0 = time.perf_counter()
    w = WAL.open_at_index(os.path.join(d, "wal"), 1)
    _, _, entries = w.read_all()
    w.close()
    out["wal read_all"] = (time.perf_counter() - t0, len(entries))
    t0 = time.perf_counter()
    s = MVCCStore.open(d)
    out["open (replay into overlay)"] = time.perf_counter() - t0
    assert s.get(key(n - 1)) == VALUE
    s.flush()
    out["open + commit to LMDB"] = time.perf_counter() - t0
    s.close()
    shutil.rmtree(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (no 1M-key snapshot)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench-meta-", dir=args.dir)
    try:
        print(f"versionfs.meta benchmark in {base} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
        print("\nmetadata writes (one write() batch of one ~140-byte record each)")
        for label, n, every in (("no sync", 100_000, None), ("sync per 100 writes", 20_000, 100),
                                ("sync per write", 2_000, 1)):
            dt, cpu = bench_writes(base, n, every)
            print(f"  {label:<28} {rate(n, dt)}   ({n:,} writes in {dt:.2f} s; "
                  f"{rate(n, cpu).strip()} per CPU-second)")

        nreads = 200_000
        r = bench_reads(base, 100_000, nreads)
        print(f"\npoint reads (100k keys, {nreads:,} random gets)")
        for label in ("head", "old revision", "head, 5k keys in overlay"):
            print(f"  {label:<28} {rate(nreads, r[label])}")
        dt, n = r["range"]
        print(f"  range over {n:,} keys          {rate(n, dt)} keys streamed ({dt:.2f} s)")

        sizes = [1_000, 100_000] if args.quick else [1_000, 100_000, 1_000_000]
        print("\nsnapshot() time (median / max of 200, each after a write)")
        for size, (med, worst, db) in bench_snapshot(base, sizes).items():
            print(f"  {size:>9,} keys: {med * 1e6:8.1f} us / {worst * 1e6:8.1f} us   (db {db / 1e6:.0f} MB)")

        n = 100_000
        print(f"\nWAL replay of {n:,} records")
        for label, v in bench_replay(base, n).items():
            if isinstance(v, tuple):
                print(f"  {label:<28} {v[0]:.2f} s ({v[1]:,} entries)")
            else:
                print(f"  {label:<28} {v:.2f} s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
