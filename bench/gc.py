#!/usr/bin/env python3
"""Garbage collection time for a filesystem of N blobs (default 100,000) on SeaweedFS.

    .venv/bin/python bench/gc.py [--blobs 100000] [--garbage 0.5] [--workdir /var/tmp]

Builds a real state dir (``versionfs init --slow s3://...`` on a SeaweedFS
started here on 127.0.0.1) whose metadata has N extents in a snapshot, each
its own blob (small, so the figures are about gc, not bandwidth), all
uploaded.  Then a fraction (``--garbage``) of the files is deleted from the
live tree and the snapshot is forgotten, and it times:

1. the first ``gc`` (no local index yet: it lists the bucket once), which
   deletes the garbage from the fast and the slow store;
2. a second ``gc`` with the index and nothing to delete: the steady-state
   cost of a collection that never lists the bucket;
3. ``fsck --read-data``-free blob check (``versionfs.maint.fsck``) of what remains.

Everything it wrote is removed at exit.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from versionfs.maint import fsck
from versionfs.maint import gc
from versionfs.common import state as statemod  # noqa: E402
from versionfs.tree import schema  # noqa: E402


def load_s3server():
    spec = importlib.util.spec_from_file_location("s3server", ROOT / "tests" / "s3server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(state_dir: Path, url: str, n: int, garbage: float) -> int:
    """N one-extent files in a snapshot; the garbage fraction deleted from the head."""
    statemod.init_state(state_dir, url)
    with statemod.open_state(state_dir, start_uploads=True) as st:
        t = time.perf_counter()
        first = schema.FIRST_FREE_INO
        batch = 2000
        now = schema.now_ns()
        with st.meta.write() as b:
            b.put(schema.inode_key(schema.ROOT_INO),
                  schema.Inode(schema.ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0, atime_ns=now,
                               mtime_ns=now, ctime_ns=now, parent=schema.ROOT_INO).pack())
            b.put(schema.NEXT_INO_KEY, schema.u64(first + n))
        for start in range(0, n, batch):
            count = min(batch, n - start)
            payloads = [os.urandom(64) for _ in range(count)]
            pointers = st.blobs.put_many(payloads)
            with st.meta.write() as b:
                for i, p in enumerate(pointers):
                    ino = first + start + i
                    b.put(schema.inode_key(ino), schema.Inode(
                        ino, stat.S_IFREG | 0o644, 1, 0, 0, size=64, atime_ns=now, mtime_ns=now,
                        ctime_ns=now, stored=64).pack())
                    schema.put_dirent(b, schema.ROOT_INO, b"f%d" % ino, ino)
                    b.put(schema.extent_key(ino, 0), schema.pack_extent(64, p.bytes))
        st.paired.flush()
        print(f"  setup: {n} blobs stored and uploaded in {time.perf_counter() - t:.1f} s")
        info = st.meta.snapshot("all")
        dead = int(n * garbage)
        for start in range(0, dead, batch):
            with st.meta.write() as b:
                for ino in range(first + start, first + min(start + batch, dead)):
                    schema.delete_dirent(b, schema.ROOT_INO, b"f%d" % ino, ino)
                    b.delete(schema.inode_key(ino))
                    b.delete(schema.extent_key(ino, 0))
        st.meta.delete_revision(info.rev)
        st.meta.sync()
    return dead


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--garbage", type=float, default=0.5, help="fraction to collect")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-gc-", dir=args.workdir))
    server = load_s3server().S3Server(work / "seaweedfs")
    try:
        server.start()
        os.environ.update(server.env())
        url = f"s3://{server.new_bucket()}/bench"
        print(f"{os.cpu_count()} CPUs; {args.blobs} blobs, {args.garbage:.0%} garbage, slow store {url}")
        state_dir = work / "state"
        dead = build(state_dir, url, args.blobs, args.garbage)
        with statemod.open_state(state_dir) as st:
            index = gc.index_path_for(st.meta)
            r1 = gc.collect_garbage(st.meta, st.paired, index)
            assert r1.deleted == dead, (r1.deleted, dead)
            r2 = gc.collect_garbage(st.meta, st.paired, index)
            assert r2.deleted == 0 and not r2.listed_slow_store
            t = time.perf_counter()
            report = fsck.check(st)
            t_fsck = time.perf_counter() - t
            assert report.exit_code == fsck.EXIT_CLEAN, report.lines()
        print(f"  gc #1 (lists the bucket once, deletes {r1.deleted} from fast+slow): "
              f"{r1.seconds:.1f} s  ({r1.deleted / r1.seconds:.0f} blobs deleted/s)")
        print(f"  gc #2 (local index, nothing to delete, {r2.known} known blobs): {r2.seconds:.2f} s")
        print(f"  fsck (structure + every referenced blob exists, {report.stats['blobs']} blobs): "
              f"{t_fsck:.1f} s")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
