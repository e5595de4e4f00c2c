#!/usr/bin/env python3
"""The same workloads on a fresh versionfs mount and on a plain directory, side by side.

    .venv/bin/python bench/fs.py [--workdir /var/tmp] [--size-mib 1024] [--skip-100k]

Workloads (issue 4's list): 1 GiB sequential write ending in fsync; sequential
read of it with the kernel page cache dropped (and, for versionfs, after a
remount, so nothing of ours is in memory either); create, ``ls -l`` and delete
10,000 4 KiB files; untar a source tree (the Python stdlib, a few thousand
files); ``snapshot`` of trees of 1,000 and 100,000 files.

Both sides live on the same local disk (``--workdir``), so the ratio is the
cost of versionfs itself.  Needs root (FUSE, drop_caches).  Prints a table;
"speed" is native time / versionfs time (1.0 = as fast as native).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import (MiB, arg_parser, create_files, delete_files, drop_caches, fmt_time,
                    load_average, ls_l, native_and_mount, read_file, source_tarball, timed,
                    untar, write_file)


@dataclass
class Row:
    name: str
    native: float | None        # seconds
    vfs: float                  # seconds
    unit_bytes: int = 0         # for throughput rows
    target: str = ""
    vfs_cpu: float | None = None  # seconds of CPU the mount daemon used meanwhile


def make_tree(d: Path, n: int) -> None:
    """n small files in directories of 1,000 (a home directory's shape, roughly)."""
    d.mkdir()
    for start in range(0, n, 1000):
        sub = d / f"d{start // 1000:04d}"
        sub.mkdir()
        for i in range(min(1000, n - start)):
            fd = os.open(sub / f"f{i:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with native_and_mount(args.workdir, "vfs-bench-", args.keep) as (workdir, native, vfs):
        size = args.size_mib * MiB
        print(f"generating {args.size_mib} MiB of random data ...", file=sys.stderr)
        blocks = [os.urandom(MiB) for _ in range(args.size_mib)]

        print("sequential write ...", file=sys.stderr)
        t_native = timed(write_file, native / "big", blocks)
        t_vfs, c_vfs = vfs.timed(write_file, vfs.mnt / "big", blocks)
        rows.append(Row(f"write {args.size_mib} MiB + fsync", t_native, t_vfs, size, ">= 0.8x",
                        c_vfs))
        del blocks

        print("sequential read, caches dropped ...", file=sys.stderr)
        drop_caches()
        t_native = timed(read_file, native / "big")
        vfs.flush()
        vfs.remount()
        drop_caches()
        t_vfs, c_vfs = vfs.timed(read_file, vfs.mnt / "big")
        rows.append(Row(f"read {args.size_mib} MiB (cold)", t_native, t_vfs, size, vfs_cpu=c_vfs))
        os.unlink(native / "big")
        os.unlink(vfs.mnt / "big")

        n = args.files
        data = os.urandom(4096)
        print(f"{n} small files ...", file=sys.stderr)
        t_native = timed(create_files, native / "small", n, data)
        t_vfs, c_vfs = vfs.timed(create_files, vfs.mnt / "small", n, data)
        rows.append(Row(f"create {n} x 4 KiB", t_native, t_vfs, target=">= 0.5x", vfs_cpu=c_vfs))
        drop_caches()
        t_native = timed(ls_l, native / "small")
        vfs.remount()
        drop_caches()
        t_vfs, c_vfs = vfs.timed(ls_l, vfs.mnt / "small")
        rows.append(Row(f"ls -l {n} files (cold)", t_native, t_vfs, target="<= 3x time",
                        vfs_cpu=c_vfs))
        t_native = timed(ls_l, native / "small")
        t_vfs, c_vfs = vfs.timed(ls_l, vfs.mnt / "small")
        rows.append(Row(f"ls -l {n} files (warm)", t_native, t_vfs, vfs_cpu=c_vfs))
        t_native = timed(delete_files, native / "small")
        t_vfs, c_vfs = vfs.timed(delete_files, vfs.mnt / "small")
        rows.append(Row(f"delete {n} files", t_native, t_vfs, vfs_cpu=c_vfs))

        tarball, count = source_tarball(workdir)
        print(f"untar {count} files ...", file=sys.stderr)
        drop_caches()
        t_native = timed(untar, tarball, native / "src")
        t_vfs, c_vfs = vfs.timed(untar, tarball, vfs.mnt / "src")
        rows.append(Row(f"untar stdlib ({count} files)", t_native, t_vfs, vfs_cpu=c_vfs))
        shutil.rmtree(native / "src")
        shutil.rmtree(vfs.mnt / "src")

        sizes = [1000] + ([] if args.skip_100k else [100_000])
        for n_tree in sizes:
            print(f"snapshot of {n_tree} files ...", file=sys.stderr)
            make_tree(vfs.mnt / f"tree{n_tree}", n_tree)
            make_tree(native / f"tree{n_tree}", n_tree)
            vfs.snapshot()                       # seal what the tree-building left dirty
            (vfs.mnt / f"tree{n_tree}" / "d0000" / "f0000").write_bytes(b"changed")
            t_vfs = vfs.snapshot()
            # Native has no snapshot; the cheapest copy of a tree is a hard-link farm.
            t_native = timed(subprocess.run, ["cp", "-al", str(native / f"tree{n_tree}"),
                                              str(native / f"copy{n_tree}")])
            rows.append(Row(f"snapshot {n_tree} files (native: cp -al)", t_native, t_vfs,
                            target="<= 50 ms"))
    return rows


def print_table(rows: list[Row]) -> None:
    header = (f"{'workload':<40} {'native':>16} {'versionfs':>16} {'speed':>8} "
              f"{'daemon CPU':>11}  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.unit_bytes:
            nat = f"{r.unit_bytes / MiB / r.native:.0f} MiB/s" if r.native else "-"
            ours = f"{r.unit_bytes / MiB / r.vfs:.0f} MiB/s"
        else:
            nat, ours = fmt_time(r.native), fmt_time(r.vfs)
        speed = f"{r.native / r.vfs:.2f}x" if r.native else "-"
        cpu = fmt_time(r.vfs_cpu) if r.vfs_cpu is not None else "-"
        print(f"{r.name:<40} {nat:>16} {ours:>16} {speed:>8} {cpu:>11}  {r.target}")
    print("\nspeed = native time / versionfs time (1.00x = as fast as the plain directory)")
    print("daemon CPU = user + system CPU time of the mount daemon during the workload")
    print(f"load average at the end: {load_average()} "
          f"on {os.cpu_count()} CPUs")


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the sequential file")
    p.add_argument("--files", type=int, default=10_000, help="number of small files")
    p.add_argument("--skip-100k", action="store_true", help="skip the 100k-file snapshot")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/fs.py needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 1
    print(f"load average at the start: {load_average()}",
          file=sys.stderr)
    print_table(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
