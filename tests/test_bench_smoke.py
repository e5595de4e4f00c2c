"""bench/fsync.py --quick and bench/peers.py --scale small run to the end on a real mount
and print their tables (the numbers of a smoke run mean little; this catches a
benchmark that rots)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_quick(script: str, workdir: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--workdir",
                           str(workdir)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_fsync_bench_quick(tmp_path):
    proc = run_quick("fsync.py", tmp_path, 300)
    out = proc.stdout
    for title in ("Time (ratio", "Time per operation", "Bytes on versionfs"):
        assert title in out, out
    for workload in ("SQLite WAL", "SQLite DELETE", "editor save", "append log", "git commit"):
        assert sum(line.startswith(workload) for line in out.splitlines()) >= 3, out
    assert "meets" in out or "MISSES" in out, out
    assert list(tmp_path.iterdir()) == [], "the work directory was not removed"


PEERS = BENCH / "peers.py"


def test_peers_bench_small(tmp_path):
    """bench/peers.py --scale small on native, versionfs and the FUSE floor (the
    other peers need downloads): every workload runs, checks its result, and
    the tables and memory lines are printed."""
    proc = subprocess.run([sys.executable, str(PEERS), "--scale", "small", "--workdir",
                           str(tmp_path), "--targets", "native,versionfs,passthrough_ll"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "WRONG" not in out, out
    for title in ("Time (", "Time / native time", "Time / passthrough_ll time",
                  "Daemon CPU seconds", "Daemon memory"):
        assert title in out, out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.split("Time / native")[0]
            .splitlines() if line and line[0].isalpha()}
    for workload in ("write 16 MiB + fsync", "read 16 MiB (cold)", "create 200 x 4 KiB",
                     "ls -l 200 (cold)", "ls -l 200 (warm)", "delete 200", "git status",
                     "git init + add + commit", "SQLite 50 transactions", "snapshot",
                     "CLI start-up (no-op)", "mount", "unmount"):
        assert workload in rows, out
    assert any(line.startswith("untar ") for line in rows), out
    assert rows["mount"][-2:] != ["-", "-"], out                 # versionfs and the floor
    assert "versionfs       peak" in out, out
    assert list(tmp_path.iterdir()) == [], "the work directory was not removed"


def test_peers_bench_names_an_unknown_target(tmp_path):
    proc = subprocess.run([sys.executable, str(PEERS), "--targets", "native,zfs", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown target zfs" in proc.stderr, proc.stderr


THROUGHPUT = BENCH / "throughput.py"


def test_throughput_bench_small(tmp_path):
    """bench/throughput.py at 64 MiB: both rows, verified contents, and the
    counters of the data path (every chunk linked into the same-disk slow
    store, nothing copied into the fsync journal)."""
    proc = subprocess.run([sys.executable, str(THROUGHPUT), "--size-mib", "64",
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for row in ("write 64 MiB + fsync", "cold read 64 MiB"):
        assert sum(line.startswith(row) for line in out.splitlines()) == 1, out
    assert "journal bytes per byte written: 0.00" in out, out
    linked = next(line for line in out.splitlines() if line.startswith("uploads linked"))
    n_linked, n_copied = (int(x) for x in linked.split(":")[1].split("/"))
    assert n_linked >= 32 and n_copied == 0, out
    assert list(tmp_path.iterdir()) == [], "the work directory was not removed"
