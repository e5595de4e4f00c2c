#!/usr/bin/env python3
"""`snapshot` of trees of 1,000 and 100,000 files, next to the cheapest native
copy of the same tree (a hard-link farm, ``cp -al``), in one run.

    .venv/bin/python bench/snapshot.py [--workdir /var/tmp] [--skip-100k]

A snapshot is O(1) in the metadata store (it freezes a revision), so its time
should not grow with the tree; the native copy walks every file. Before the
timed snapshot one file is changed, so the snapshot has something to seal.
The everyday workloads (big files, small files, untar, git, SQLite) are in
bench/peers.py. Needs root (FUSE).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import arg_parser, fmt_time, load_average, native_and_mount, timed


def make_tree(d: Path, n: int) -> None:
    """n one-byte files in directories of 1,000 (a home directory's shape, roughly)."""
    d.mkdir()
    for start in range(0, n, 1000):
        sub = d / f"d{start // 1000:04d}"
        sub.mkdir()
        for i in range(min(1000, n - start)):
            fd = os.open(sub / f"f{i:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)


def run(args) -> list[tuple[int, float, float]]:
    rows = []
    with native_and_mount(args.workdir, "vfs-snap-", args.keep) as (_workdir, native, vfs):
        for n in [1000] + ([] if args.skip_100k else [100_000]):
            print(f"snapshot of {n} files ...", file=sys.stderr)
            make_tree(vfs.mnt / f"tree{n}", n)
            make_tree(native / f"tree{n}", n)
            vfs.snapshot()                       # seal what building the tree left dirty
            (vfs.mnt / f"tree{n}" / "d0000" / "f0000").write_bytes(b"changed")
            t_vfs = vfs.snapshot()
            t_native = timed(subprocess.check_call, ["cp", "-al", str(native / f"tree{n}"),
                                                     str(native / f"copy{n}")])
            rows.append((n, t_native, t_vfs))
    return rows


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--skip-100k", action="store_true", help="only the 1,000-file tree")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/snapshot.py needs root (FUSE mounts)", file=sys.stderr)
        return 1
    print(f"load average at the start: {load_average()}", file=sys.stderr)
    print(f"{'files':>8} {'native cp -al':>14} {'versionfs snapshot':>19} {'ratio':>8}")
    for n, t_native, t_vfs in run(args):
        print(f"{n:>8} {fmt_time(t_native):>14} {fmt_time(t_vfs):>19} "
              f"{t_vfs / t_native:>7.3g}x")
    print(f"\nratio = versionfs time / native time; load average at the end: "
          f"{load_average()} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
