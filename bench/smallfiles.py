#!/usr/bin/env python3
"""Small-file work on native ext4, on libfuse's C passthrough_ll (the FUSE floor) and on versionfs, in one run.

    .venv/bin/python bench/smallfiles.py [--workdir /var/tmp] [--files 10000] [--quick]

Workloads (issue 13): create N x 4 KiB files, ``ls -l`` of them cold (page
cache dropped, mounts remounted) and warm, delete them, untar a source tree
(the Python stdlib, a few thousand files), ``git init && git add -A`` on it
(setup, not timed) and ``git status`` cold and warm. passthrough_ll is
compiled at run time from Debian's libfuse3-dev example into the work
directory and serves a directory of the same disk; without the example or a
C compiler its column says why. Needs root (FUSE, drop_caches). Prints times,
the ratio of each to native (time / native time) and versionfs against the
floor (versionfs time / passthrough_ll time; the target for creates is <= 1.5),
and the daemons' CPU seconds. Every side's results are checked (file counts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import Daemon, arg_parser, fmt_time, load_average, native_and_mount, timed
from fs import create_files, delete_files, drop_caches, ls_l, source_tarball, untar

EXAMPLE = Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c")


class Passthrough(Daemon):
    """libfuse's passthrough_ll example serving `source` at `mnt` (foreground child)."""

    def __init__(self, workdir: Path):
        self.binary = workdir / "passthrough_ll"
        self.source = workdir / "pt-source"
        self.mnt = workdir / "pt-mnt"
        self.proc: subprocess.Popen | None = None
        cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                                capture_output=True, text=True).stdout.split()
        subprocess.run(["cc", "-O2", "-o", str(self.binary), str(EXAMPLE), *cflags], check=True,
                       capture_output=True)
        self.source.mkdir()
        self.mnt.mkdir()

    def mount(self) -> None:
        self.proc = subprocess.Popen([str(self.binary), "-f", "-o", f"source={self.source}",
                                      str(self.mnt)], stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not os.path.ismount(self.mnt):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("passthrough_ll did not mount")
            time.sleep(0.05)

    def umount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        self.proc.wait(30)
        self.proc = self.pid = None

    def cleanup(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)])
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def git(*argv, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *argv], cwd=cwd,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def count_files(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d))


def run(args) -> list[tuple[str, list[tuple[float | None, float | None]]]]:
    """Rows of (workload, [(seconds, daemon CPU) for native, passthrough_ll, versionfs])."""
    rows = []
    with native_and_mount(args.workdir, "vfs-small-", args.keep) as (workdir, native, vfs):
        pt = None
        try:
            if not EXAMPLE.exists():
                raise OSError(f"{EXAMPLE} missing (apt-get install libfuse3-dev)")
            pt = Passthrough(workdir)
            pt.mount()
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"passthrough_ll: skipped ({exc})", file=sys.stderr)
            pt = None
        try:
            sides = [("native", native, None), ("passthrough_ll", pt.mnt if pt else None, pt),
                     ("versionfs", vfs.mnt, vfs)]

            def each(name, fn, *args, remount=False):
                """fn(root, *args) on every side; remount=True: cold caches first."""
                out = []
                for side, root, daemon in sides:
                    if root is None:
                        out.append((None, None))
                        continue
                    if remount and daemon is not None:
                        daemon.umount()
                        daemon.mount()
                    if remount:
                        drop_caches()
                    if daemon is None:
                        out.append((timed(fn, root, *args), None))
                    else:
                        out.append(daemon.timed(fn, root, *args))
                rows.append((name, out))
                print(f"  {name} done", file=sys.stderr)

            n = args.files
            data = os.urandom(4096)
            each(f"create {n} x 4 KiB", lambda r: create_files(r / "small", n, data))
            for _, root, _ in sides:
                if root is not None and count_files(root / "small") != n:
                    raise SystemExit(f"{root}: expected {n} files")
            each(f"ls -l {n} files (cold)", lambda r: ls_l(r / "small"), remount=True)
            each(f"ls -l {n} files (warm)", lambda r: ls_l(r / "small"))
            each(f"delete {n} files", lambda r: delete_files(r / "small"))
            tarball, count = source_tarball(workdir)
            each(f"untar stdlib ({count} files)", lambda r: untar(tarball, r / "src"))
            for _, root, _ in sides:
                if root is not None:
                    if count_files(root / "src") != count:
                        raise SystemExit(f"{root}: expected {count} files from the tarball")
                    git("init", "-q", cwd=root / "src")
                    git("add", "-A", cwd=root / "src")
            each("git status (cold)", lambda r: git("status", cwd=r / "src"), remount=True)
            each("git status (warm)", lambda r: git("status", cwd=r / "src"))
            for _, root, _ in sides:
                if root is not None:
                    shutil.rmtree(root / "src")
        finally:
            if pt is not None:
                if pt.proc is not None:
                    pt.umount()
                pt.cleanup()
    return rows


def print_table(rows) -> None:
    header = (f"{'workload':<28} {'native':>9} {'pass_ll':>9} {'versionfs':>10} {'pass_ll/n':>10} "
              f"{'vfs/n':>8} {'vfs/pass_ll':>12} {'CPU pass_ll':>12} {'CPU vfs':>9}")
    print(header)
    print("-" * len(header))
    for name, ((tn, _), (tp, cp), (tv, cv)) in rows:
        def ratio(a, b):
            return f"{a / b:.1f}x" if a is not None and b else "-"
        print(f"{name:<28} {fmt_time(tn):>9} {fmt_time(tp):>9} {fmt_time(tv):>10} "
              f"{ratio(tp, tn):>10} {ratio(tv, tn):>8} {ratio(tv, tp):>12} "
              f"{fmt_time(cp):>12} {fmt_time(cv):>9}")
    print("\nratios are times (lower is better): pass_ll/n and vfs/n against native ext4, "
          "vfs/pass_ll against the C FUSE floor (target for creates: <= 1.5x)")
    print("CPU = user + system seconds of the FUSE daemon during the workload")
    print(f"load average at the end: {load_average()} on {os.cpu_count()} CPUs")


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--files", type=int, default=10_000, help="number of small files")
    p.add_argument("--quick", action="store_true", help="500 files (a smoke run)")
    args = p.parse_args()
    args.files = 500 if args.quick else args.files
    if os.geteuid():
        sys.exit("bench/smallfiles.py needs root (FUSE mounts, drop_caches)")
    print(f"load average at the start: {load_average()}", file=sys.stderr)
    print_table(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
