#!/usr/bin/env python3
"""Cost of `diff` and `log PATH` for a one-file change, in trees of 10k and 100k files.

    .venv/bin/python bench/diff.py [--sizes 10000,100000] [--repeat 20]

The trees are written straight into an MVCC store with the filesystem's key
layout (versionfs/fs/schema.py): directories of 1,000 files, each file an inode
record, its directory entry and reverse link, and one extent. Then a snapshot,
one file changed in place (new extent, new size), another snapshot, and:

  diff A B     the one-file change between two snapshots
  diff A live  the same against the live tree
  log PATH     the history of the changed file
  walk         for contrast, visiting every entry of the tree once (what a
               diff without the change index would have to do)

`diff` should stay flat as the tree grows 10x; `walk` grows with it.
"""

from __future__ import annotations

import argparse
import os
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from versionfs.tree import schema  # noqa: E402
from versionfs.tree.at_revision import TreeAt  # noqa: E402
from versionfs.tree.diff import diff, log_entries  # noqa: E402
from versionfs.meta.mvcc.store import MVCCStore  # noqa: E402

PER_DIR = 1000


def build(meta: MVCCStore, files: int) -> int:
    """A tree of `files` files in directories of PER_DIR; returns the changed file's inode."""
    now = time.time_ns()
    ino = schema.FIRST_FREE_INO
    ndirs = (files + PER_DIR - 1) // PER_DIR
    root = schema.Inode(schema.ROOT_INO, stat.S_IFDIR | 0o755, 2 + ndirs, 0, 0,
                        atime_ns=now, mtime_ns=now, ctime_ns=now, parent=schema.ROOT_INO)
    meta.put(schema.inode_key(schema.ROOT_INO), root.pack())
    target = None
    made = 0
    for d in range(ndirs):
        dino = ino
        ino += 1
        with meta.write() as b:
            b.put(schema.inode_key(dino), schema.Inode(dino, stat.S_IFDIR | 0o755, 2, 0, 0, atime_ns=now,
                                                       mtime_ns=now, ctime_ns=now,
                                                       parent=schema.ROOT_INO).pack())
            schema.put_dirent(b, schema.ROOT_INO, b"d%04d" % d, dino)
            for f in range(min(PER_DIR, files - made)):
                fino = ino
                ino += 1
                b.put(schema.inode_key(fino), schema.Inode(fino, stat.S_IFREG | 0o644, 1, 0, 0, size=4096,
                                                           atime_ns=now, mtime_ns=now, ctime_ns=now,
                                                           stored=4096).pack())
                schema.put_dirent(b, dino, b"f%05d.txt" % f, fino)
                b.put(schema.extent_key(fino, 0), schema.pack_extent(4096, os.urandom(32)))
                made += 1
                if target is None and d == ndirs // 2 and f == PER_DIR // 2:
                    target = fino
        meta.flush()
    meta.put(schema.NEXT_INO_KEY, schema.u64(ino))
    meta.flush()
    return target if target is not None else ino - 1


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def run(files: int, repeat: int, workdir: str) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        meta = MVCCStore.open(os.path.join(tmp, "meta"), quota_bytes=8 * 1024**3)
        try:
            t0 = time.perf_counter()
            target = build(meta, files)
            build_s = time.perf_counter() - t0
            a = meta.snapshot("A").rev
            inode = schema.Inode.unpack(target, meta.get(schema.inode_key(target)))
            inode.size, inode.mtime_ns = 8192, time.time_ns()
            with meta.write() as b:
                b.put(schema.extent_key(target, 4096), schema.pack_extent(4096, os.urandom(32)))
                b.put(schema.inode_key(target), inode.pack())
            meta.flush()
            b_rev = meta.snapshot("B").rev
            path = TreeAt(meta, b_rev).paths(target)[0]
            d_ab, result = timed(lambda: diff(meta, a, b_rev), repeat)
            assert [(c.kind, c.path) for c in result.changes] == [("M", path)], result.changes
            d_live, _ = timed(lambda: diff(meta, a, None), repeat)
            d_log, entries = timed(lambda: log_entries(meta, path, include_live=False), max(1, repeat // 4))
            assert [e.rev for e in entries] == [b_rev, a]
            walk, n = timed(lambda: sum(1 for _ in meta.range(b"D", b"E", b_rev)), 3)
            assert n == files + (files + PER_DIR - 1) // PER_DIR
            return {"files": files, "build_s": build_s, "diff_ab_ms": d_ab * 1e3, "diff_live_ms": d_live * 1e3,
                    "log_path_ms": d_log * 1e3, "walk_ms": walk * 1e3, "keys_examined": result.keys_examined}
        finally:
            meta.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    rows = [run(int(n), args.repeat, args.workdir) for n in args.sizes.split(",")]
    print(f"{'files':>8} {'build s':>8} {'diff A B ms':>12} {'diff A live ms':>15} "
          f"{'log PATH ms':>12} {'keys seen':>10} {'walk tree ms':>13}")
    for r in rows:
        print(f"{r['files']:>8} {r['build_s']:>8.1f} {r['diff_ab_ms']:>12.3f} {r['diff_live_ms']:>15.3f} "
              f"{r['log_path_ms']:>12.3f} {r['keys_examined']:>10} {r['walk_ms']:>13.1f}")


if __name__ == "__main__":
    main()
