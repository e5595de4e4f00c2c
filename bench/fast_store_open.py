"""How long the fast store and a mount take to open over many blobs.

A DiskStore indexes its blobs (size and recency, for eviction and the status
figures) by listing its 256 directories and stating every blob. This prints,
for stores of 10,000 and 100,000 small blobs, the time from ``DiskStore(...)``
to a usable store and to a finished index (median of 3, page cache warm as at a
remount), and the mount time of a filesystem holding 10,000 files (median of 5).

    flock /tmp/bench.lock python bench/fast_store_open.py [--counts 10000,100000]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import Mount, arg_parser, fmt_time, load_average, timed

from versionfs.blob.disk import DiskStore
from versionfs.blob.pointer import Pointer


def fill(root: Path, count: int) -> None:
    """``count`` 64-byte blobs in the fan-out layout, written directly (no fsync)."""
    for i in range(256):
        (root / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    for _ in range(count):
        name = Pointer.random().hex()
        with open(root / name[:2] / name, "wb") as f:
            f.write(os.urandom(64))


def open_store(root: Path) -> tuple[float, float]:
    """(seconds until DiskStore(...) returns, seconds until its index is complete)."""
    start = time.perf_counter()
    store = DiskStore(root)
    usable = time.perf_counter() - start
    wait = getattr(store, "wait_scanned", None)     # absent before the background scan
    if wait is not None:
        wait()
    indexed = time.perf_counter() - start
    store.close()
    return usable, indexed


def bench_store(workdir: Path, count: int) -> None:
    root = workdir / f"fast-{count}"
    fill(root, count)
    runs = [open_store(root) for _ in range(3)]
    usable = statistics.median(r[0] for r in runs)
    indexed = statistics.median(r[1] for r in runs)
    print(f"  DiskStore over {count:>7,} blobs: usable {fmt_time(usable):>9}, "
          f"indexed {fmt_time(indexed):>9}")


def bench_mount(workdir: Path, files: int) -> None:
    vfs = Mount(workdir)
    try:
        vfs.mount()
        d = vfs.mnt / "many"
        d.mkdir()
        for i in range(files):
            (d / f"f{i:05d}").write_bytes(os.urandom(4096))
        vfs.flush()
        vfs.umount()
        blobs = sum(1 for _, _, names in os.walk(vfs.layout.fast) for n in names
                    if not n.startswith("."))
        times = []
        for _ in range(5):
            times.append(timed(vfs.mount))
            vfs.umount()
        print(f"  mount of a filesystem with {files:,} files ({blobs:,} fast-store blobs): "
              f"{fmt_time(statistics.median(times))} (median of 5; "
              f"{', '.join(fmt_time(t) for t in times)})")
    finally:
        vfs.cleanup()


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--counts", default="10000,100000", help="blob counts of the stores")
    p.add_argument("--files", type=int, default=10_000, help="files in the mounted filesystem")
    args = p.parse_args()
    print(f"load average {load_average()}")
    workdir = Path(tempfile.mkdtemp(prefix="vfs-bench-open-", dir=args.workdir))
    try:
        for count in (int(c) for c in args.counts.split(",")):
            bench_store(workdir, count)
        if args.files:
            bench_mount(workdir, args.files)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
