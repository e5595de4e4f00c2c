#!/usr/bin/env python3
"""Big-file throughput: sequential write + fsync and cold sequential read, native
and versionfs side by side in one run (issues 10 and 13).

    .venv/bin/python bench/throughput.py [--workdir /var/tmp] [--size-mib 1024]

Write: SIZE MiB of random data written in 1 MiB blocks, then fsync, timed up to
the fsync's return (what an application waits for). Cold read: the kernel's
page cache dropped on both sides, and for versionfs a remount after `flush`
(so no chunk of ours is in memory) and the fast store's blobs dropped from the
page cache too: the whole file comes from the disk. Both sides live on the same
disk (``--workdir``). Besides times it prints what the daemon did per byte
written (its CPU and page faults during the write; bytes sealed, bytes
journaled, blobs hard-linked into the slow store instead of copied, from
``status --json``). Needs root (FUSE, drop_caches).
"""

from __future__ import annotations

import hashlib
import os
import sys

from common import (MiB, arg_parser, drop_caches, load_average, minor_faults, native_and_mount,
                    timed, write_file)


def read_hash(path) -> str:
    """Read the whole file sequentially (4 MiB reads); its SHA-256, to check the content."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, 4 * MiB):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()


def run(args) -> int:
    size = args.size_mib * MiB
    with native_and_mount(args.workdir, "vfs-throughput-", args.keep) as (_, native, vfs):
        print(f"generating {args.size_mib} MiB of random data ...", file=sys.stderr)
        blocks = [os.urandom(MiB) for _ in range(args.size_mib)]
        digest = hashlib.sha256(b"".join(blocks)).hexdigest()

        print("write + fsync ...", file=sys.stderr)
        drop_caches()
        w_native = timed(write_file, native / "big", blocks)
        drop_caches()
        before, faults = vfs.status(), minor_faults(vfs.pid)
        w_vfs, w_cpu = vfs.timed(write_file, vfs.mnt / "big", blocks)
        faults = None if faults is None else minor_faults(vfs.pid) - faults
        del blocks
        vfs.flush()
        after = vfs.status()

        print("cold read ...", file=sys.stderr)
        drop_caches()
        r_native, native_hash = timed_value(read_hash, native / "big")
        vfs.remount()
        drop_caches()
        r_vfs, vfs_hash = timed_value(read_hash, vfs.mnt / "big")
        for side, got in (("native", native_hash), ("versionfs", vfs_hash)):
            if got != digest:
                print(f"error: the {side} file read back differs from what was written",
                      file=sys.stderr)
                return 1

    def counter(name):
        a, b = before.get(name), after.get(name)
        return None if a is None or b is None else b - a

    print(f"{'workload':<28} {'native':>12} {'versionfs':>12} {'ratio':>7}  target")
    for name, t_native, t_vfs, target in (
            (f"write {args.size_mib} MiB + fsync", w_native, w_vfs, 0.6),
            (f"cold read {args.size_mib} MiB", r_native, r_vfs, 0.7)):
        ratio = t_native / t_vfs
        verdict = "meets" if ratio >= target else "MISSES"
        print(f"{name:<28} {size / MiB / t_native:>7.0f} MiB/s {size / MiB / t_vfs:>7.0f} MiB/s "
              f"{ratio:>6.2f}x  >= {target}x ({verdict})")
    print("\nratio = native time / versionfs time (1.00x = as fast as the plain directory)")
    print(f"daemon CPU during the write: {w_cpu:.2f} s" if w_cpu is not None else "")
    if faults is not None:
        # pyfuse3's request buffers: 256 per MiB when each is a fresh mmap (common/memory.py).
        print(f"daemon page faults per MiB written: {faults / (size / MiB):.0f}")
    for name in ("sealed_bytes", "journal_bytes"):
        value = counter(name)
        if value is not None:
            print(f"{name.replace('_', ' ')} per byte written: {value / size:.2f}")
    print(f"uploads linked / copied into the slow store: {counter('uploads_linked')} / "
          f"{counter('uploads_copied')}")
    print(f"load average at the end: {load_average()} on {os.cpu_count()} CPUs "
          "(the machine is shared: ratios move with the load)")
    return 0


def timed_value(fn, *args):
    result = None

    def call():
        nonlocal result
        result = fn(*args)
    return timed(call), result


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the file (MiB)")
    args = p.parse_args()
    if args.size_mib <= 0:
        p.error(f"--size-mib must be positive, got {args.size_mib}")
    if os.geteuid() != 0:
        print("bench/throughput.py needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 1
    print(f"load average at the start: {load_average()}", file=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
