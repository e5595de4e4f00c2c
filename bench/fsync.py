#!/usr/bin/env python3
"""Programs that fsync all day, on a fresh versionfs mount and on a plain directory.

    .venv/bin/python bench/fsync.py [--workdir /var/tmp] [--quick] [--keep]
                                    [--only wal,delete,saves,lines,git]

Workloads (issue 10's list), each on both sides of the same disk in one run:
SQLite in WAL mode with synchronous=FULL (2,000 single-row transactions);
SQLite with journal_mode=DELETE (500 transactions); an editor's save loop
(write a temporary file, fsync, rename it over the target; a 200 KB file
saved 200 times, 100 bytes changed each time); an append-only log (a ~100-byte
line + fsync, 2,000 times); ``git add -A`` + ``git commit`` of a 5,000-file tree
with ``core.fsync=committed`` (git's default fsyncs no loose object).

For each: total time and the ratio to native; mean time per operation in the
first and the last quarter of the run (does an fsync get dearer as the file
grows?); CPU of the mount daemon during the workload and during the
``versionfs flush`` after it (sealing is coalesced, so much of the work lands
in the flush); what fsync journaled and sealing chunked (``status --json``);
blobs created and bytes added to the fast store (STATE/fast) and bytes
uploaded to the slow store (STATE/slow/blobs, the default ``file://`` store)
once the flush returned; then, a few seconds later (`SETTLE_SECONDS`: one
drain of the background reclamation), the chunks reclaimed (of which never
uploaded) and the blobs and bytes left in both stores. "written" is what the program passed to write()
(wchar of /proc/self/io, children included); "final" is the size of the files
it leaves (for SQLite the database after close, which checkpoints and removes
the -wal). The verdict column judges issue 10's targets.

Needs root (FUSE). ``--quick`` runs every workload with small counts (a smoke
run for tests/test_bench_smoke.py; its verdicts mean little).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (MiB, Mount, arg_parser, fmt_time, load_average, native_and_mount,
                    write_file)

from versionfs.fs.reclaiming import RECLAIM_INTERVAL
from versionfs.maint.reclaim import MIN_AGE

KB = 1000
# --only names (the keys of the counts below, "git" for git_files)
WORKLOADS = ("wal", "delete", "saves", "lines", "git")
FULL = {"wal": 2000, "delete": 500, "saves": 200, "lines": 2000, "git_files": 5000}
QUICK = {"wal": 200, "delete": 50, "saves": 20, "lines": 200, "git_files": 300}
EDITOR_FILE_BYTES = 200 * KB
# After the flush, long enough for one drain of the background reclamation.
SETTLE_SECONDS = RECLAIM_INTERVAL + MIN_AGE + 1.0


@dataclass
class Outcome:
    """One workload on one side, as the program saw it."""

    total: float                    # seconds
    op_times: list[float]           # seconds per operation, in order ([] if one big step)
    written: int                    # bytes passed to write() meanwhile
    final: int                      # size of the files it leaves
    note: str = ""


@dataclass
class Store:
    """What the state dir and the daemon hold at one moment."""

    blobs: int
    fast_bytes: int
    uploaded: int
    journaled: int
    sealed: int
    cpu: float | None
    reclaimed: int = 0
    before_upload: int = 0

    @classmethod
    def measure(cls, vfs: Mount) -> "Store":
        blobs, fast_bytes = _files_and_bytes(vfs.layout.fast)
        _, uploaded = _files_and_bytes(vfs.layout.slow / "blobs")
        st = vfs.status()
        return cls(blobs, fast_bytes, uploaded, st.get("journal_bytes") or 0,
                   st.get("sealed_bytes") or 0, vfs.cpu(), st.get("reclaimed_blobs") or 0,
                   st.get("reclaimed_before_upload") or 0)


@dataclass
class Result:
    name: str
    ops: int
    native: Outcome
    vfs: Outcome
    before: Store
    after_run: Store
    after_flush: Store
    flush_time: float
    settled: Store | None = None          # SETTLE_SECONDS after the flush
    time_target: float | None = None      # max vfs/native time
    flat_target: float | None = None      # max last/first quarter per-op (versionfs)
    upload_limit: int | None = None       # max bytes uploaded
    upload_target: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.vfs.total / self.native.total if self.native.total else float("inf")

    @property
    def uploaded(self) -> int:
        return self.after_flush.uploaded - self.before.uploaded


def _files_and_bytes(root: Path) -> tuple[int, int]:
    count = size = 0
    for d, _, files in os.walk(root):
        for name in files:
            try:
                size += os.lstat(os.path.join(d, name)).st_size
            except FileNotFoundError:
                continue
            count += 1
    return count, size


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _sizes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def _quarters(times: list[float], average=statistics.fmean) -> tuple[float, float] | None:
    """The average time per operation of the first and of the last quarter."""
    q = len(times) // 4
    if q == 0:
        return None
    return average(times[:q]), average(times[-q:])


# --- the workloads: each gets an empty directory and a count -----------------

def sqlite_transactions(d: Path, n: int, journal_mode: str) -> Outcome:
    """n single-row transactions, each BEGIN, INSERT, COMMIT (a browser's history)."""
    db = d / "app.db"
    rng = random.Random(10)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, at REAL, url TEXT)")
    times = []
    w0, start = _wchar(), time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO visits (at, url) VALUES (?, ?)",
                     (time.time(), f"https://example.org/{i}/{rng.randbytes(30).hex()}"))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    side = [d / "app.db-wal", d / "app.db-shm", d / "app.db-journal"]
    at_last_commit = _sizes(db, *side)
    conn.close()
    total = time.perf_counter() - start
    return Outcome(total, times, _wchar() - w0, _sizes(db, *side),
                   f"database files at the last commit {at_last_commit / KB:,.0f} KB "
                   f"(with -wal/-shm), after close")


def sqlite_wal(d: Path, n: int) -> Outcome:
    return sqlite_transactions(d, n, "WAL")


def sqlite_delete(d: Path, n: int) -> Outcome:
    return sqlite_transactions(d, n, "DELETE")


def editor_saves(d: Path, n: int) -> Outcome:
    """Save a 200 KB document n times the safe way: temp file, fsync, rename over it."""
    rng = random.Random(10)
    content = bytearray(rng.randbytes(EDITOR_FILE_BYTES))
    target, tmp = d / "document.txt", d / ".document.txt.tmp"
    times = []
    w0, start = _wchar(), time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        pos = rng.randrange(len(content) - 100)
        content[pos:pos + 100] = rng.randbytes(100)
        write_file(tmp, [content])
        os.rename(tmp, target)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return Outcome(total, times, _wchar() - w0, _sizes(target))


def append_log(d: Path, n: int) -> Outcome:
    """A ~100-byte line + fsync, n times (a shell history, a service's log)."""
    rng = random.Random(10)
    path = d / "service.log"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    w0, start = _wchar(), time.perf_counter()
    try:
        for i in range(n):
            t0 = time.perf_counter()
            line = f"{time.time():.6f} worker[{i % 7}] request {i:06d} ok {rng.randbytes(28).hex()}"
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    total = time.perf_counter() - start
    return Outcome(total, times, _wchar() - w0, _sizes(path))


def git_tree(d: Path, n: int) -> None:
    """n small generated source files in directories of 100, and ``git init`` (not timed)."""
    rng = random.Random(10)
    repo = d / "repo"
    repo.mkdir()
    for i in range(n):
        sub = repo / f"src{i // 100:03d}"
        if i % 100 == 0:
            sub.mkdir()
        lines = rng.randint(5, 60)
        (sub / f"module{i:05d}.py").write_text(
            "".join(f"value_{j} = {rng.getrandbits(48)}  # {rng.randbytes(8).hex()}\n"
                    for j in range(lines)))
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)


def git_commit(d: Path, n: int) -> Outcome:
    """``git add -A`` + ``git commit`` of the tree git_tree made.

    Git's default fsyncs only packs, so a commit of loose objects fsyncs
    nothing; ``core.fsync=committed`` (what a durability-minded user sets)
    fsyncs every loose object and ref, which is the case this bench is about."""
    repo = d / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.org",
           "-c", "gc.auto=0", "-c", "core.fsync=committed"]
    w0, start = _wchar(), time.perf_counter()
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "import"], check=True)
    total = time.perf_counter() - start
    _, size = _files_and_bytes(repo / ".git")
    return Outcome(total, [], _wchar() - w0, size, "core.fsync=committed; final = .git (the "
                   "tree was made and flushed before the clock started)")


# --- running ----------------------------------------------------------------

def measure(vfs: Mount, native_root: Path, name: str, fn, n: int, prepare=None) -> Result:
    """fn on native, then on the mount followed by `versionfs flush`.

    prepare (not measured) makes fn's starting point on both sides first; it
    is flushed and synced so its sealing and writeback do not land in fn."""
    slug = fn.__name__
    print(f"{name} ...", file=sys.stderr)
    (native_root / slug).mkdir()
    (vfs.mnt / slug).mkdir()
    if prepare is not None:
        prepare(native_root / slug, n)
        prepare(vfs.mnt / slug, n)
        vfs.flush()
    os.sync()
    native = fn(native_root / slug, n)
    os.sync()
    before = Store.measure(vfs)
    ours = fn(vfs.mnt / slug, n)
    after_run = Store.measure(vfs)
    t0 = time.perf_counter()
    vfs.flush()
    flush_time = time.perf_counter() - t0
    after_flush = Store.measure(vfs)
    time.sleep(SETTLE_SECONDS)
    return Result(name, n, native, ours, before, after_run, after_flush, flush_time,
                  Store.measure(vfs))


def run(args: argparse.Namespace) -> list[Result]:
    counts = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set(WORKLOADS)
    unknown = only - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"bench/fsync.py: unknown workload(s) {', '.join(sorted(unknown))}: "
                         f"--only takes {', '.join(WORKLOADS)}")
    results = []
    with native_and_mount(args.workdir, "vfs-bench-fsync-", args.keep) as (_, native, vfs):
        if "wal" in only:
            r = measure(vfs, native, f"SQLite WAL, {counts['wal']:,} txns", sqlite_wal,
                        counts["wal"])
            r.time_target, r.flat_target = 3.0, 1.2
            r.upload_limit, r.upload_target = 2 * r.vfs.final + MiB, "<= 2x final + 1 MiB"
            results.append(r)
        if "delete" in only:
            results.append(measure(vfs, native, f"SQLite DELETE, {counts['delete']:,} txns",
                                   sqlite_delete, counts["delete"]))
        if "saves" in only:
            r = measure(vfs, native, f"editor save 200 KB x {counts['saves']:,}", editor_saves,
                        counts["saves"])
            r.upload_limit, r.upload_target = 2 * r.vfs.written, "<= 2x written"
            results.append(r)
        if "lines" in only:
            r = measure(vfs, native, f"append log, {counts['lines']:,} lines", append_log,
                        counts["lines"])
            r.upload_limit, r.upload_target = 2 * r.vfs.written, "<= 2x written"
            results.append(r)
        if "git" in only:
            results.append(measure(vfs, native, f"git commit, {counts['git_files']:,} files",
                                   git_commit, counts["git_files"], prepare=git_tree))
    return results


# --- the report ---------------------------------------------------------------

def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 10 * MiB:
        return f"{n / MiB:,.1f} MiB"
    if abs(n) >= 10 * KB:
        return f"{n / KB:,.0f} KB"
    return f"{n:,} B"


def fmt_cpu(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else fmt_time(b - a)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("meets" if ok else "MISSES")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))
    print(f"\n{title}\n{line}\n{'-' * len(line)}")
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))).rstrip())


def report(results: list[Result]) -> None:
    rows = []
    for r in results:
        ok = None if r.time_target is None else r.ratio <= r.time_target
        rows.append([r.name, fmt_time(r.native.total), fmt_time(r.vfs.total), f"{r.ratio:.1f}x",
                     fmt_cpu(r.before.cpu, r.after_run.cpu), fmt_time(r.flush_time),
                     fmt_cpu(r.after_run.cpu, r.after_flush.cpu),
                     f"<= {r.time_target:g}x" if r.time_target else "", verdict(ok)])
    print_table("Time (ratio = versionfs / native; daemon CPU = user + system of the mount daemon)",
                ["workload", "native", "versionfs", "ratio", "daemon CPU", "flush",
                 "CPU in flush", "target", "verdict"], rows)

    rows = []
    for r in results:
        nq, vq = _quarters(r.native.op_times), _quarters(r.vfs.op_times)
        if nq is None or vq is None:
            rows.append([r.name] + ["-"] * 7 + ["", ""])
            continue
        growth = vq[1] / vq[0]
        median = _quarters(r.vfs.op_times, statistics.median)
        ok = None if r.flat_target is None else growth <= r.flat_target
        rows.append([r.name, fmt_time(nq[0]), fmt_time(nq[1]), f"{nq[1] / nq[0]:.2f}",
                     fmt_time(vq[0]), fmt_time(vq[1]), f"{growth:.2f}",
                     f"{median[1] / median[0]:.2f}",
                     f"<= {r.flat_target:g}" if r.flat_target else "", verdict(ok)])
    print_table("Time per operation, mean of the first and of the last quarter "
                "(and, for versionfs, the ratio of their medians)",
                ["workload", "native 1st", "native last", "last/1st", "versionfs 1st",
                 "versionfs last", "last/1st", "median", "target", "verdict"], rows)

    rows = []
    for r in results:
        b, a = r.before, r.after_flush
        ok = None if r.upload_limit is None else r.uploaded <= r.upload_limit
        rows.append([r.name, fmt_bytes(r.vfs.written), fmt_bytes(r.vfs.final),
                     fmt_bytes(a.journaled - b.journaled), fmt_bytes(a.sealed - b.sealed),
                     f"{a.blobs - b.blobs:,}", fmt_bytes(a.fast_bytes - b.fast_bytes),
                     fmt_bytes(r.uploaded),
                     f"{r.upload_target} ({fmt_bytes(r.upload_limit)})" if r.upload_limit else "",
                     verdict(ok)])
    print_table("Bytes on versionfs (after `versionfs flush`)",
                ["workload", "written", "final", "journaled", "sealed", "blobs +",
                 "fast store +", "uploaded", "target", "verdict"], rows)

    rows = []
    for r in results:
        b, s = r.before, r.settled
        rows.append([r.name, f"{s.reclaimed - b.reclaimed:,}",
                     f"{s.before_upload - b.before_upload:,}", f"{s.blobs - b.blobs:,}",
                     fmt_bytes(s.fast_bytes - b.fast_bytes), fmt_bytes(s.uploaded - b.uploaded)])
    print_table(f"Left after reclamation ({SETTLE_SECONDS:.0f} s after the flush)",
                ["workload", "reclaimed", "never uploaded", "blobs +", "fast store +",
                 "slow store +"], rows)

    print()
    for r in results:
        if r.vfs.note:
            print(f"{r.name}: {r.vfs.note} {fmt_bytes(r.vfs.final)}")
    print("written = bytes the program passed to write(); final = size of the files it leaves;")
    print("journaled / sealed = what fsync wrote to the dirty journal / what sealing chunked;")
    print("blobs + / fast store + = files and bytes added to STATE/fast; uploaded = bytes")
    print("added to the slow store's blobs (STATE/slow/blobs) once `versionfs flush` returned;")
    print("reclaimed = superseded chunks the mount deleted by itself (never uploaded: before")
    print("their upload); the last three columns: what the stores hold then, net")
    print(f"load average at the end: {load_average()} on {os.cpu_count()} CPUs")


def main() -> int:
    p = arg_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--only", help="comma-separated workloads to run (default all): "
                   + ",".join(WORKLOADS))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/fsync.py needs root (FUSE mounts)", file=sys.stderr)
        return 1
    if shutil.which("git") is None:
        print("bench/fsync.py needs git (apt-get install git)", file=sys.stderr)
        return 1
    print(f"load average at the start: {load_average()}", file=sys.stderr)
    report(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
