"""bench/fsync.py and bench/smallfiles.py --quick run to the end on a real mount
and print their tables (the numbers of a smoke run mean little; this catches a
benchmark that rots)."""

from __future__ import annotations

import re
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


def test_smallfiles_bench_quick(tmp_path):
    proc = run_quick("smallfiles.py", tmp_path, 600)
    rows = [line for line in proc.stdout.splitlines()
            if line.startswith(("create", "ls -l", "delete", "untar", "git status"))]
    assert len(rows) == 7, proc.stdout
    if Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c").exists():
        assert "passthrough_ll: skipped" not in proc.stderr, proc.stderr
        # three ratios per row: passthrough_ll and versionfs to native, versionfs to the floor
        assert all(len(re.findall(r" \d+\.\dx", line)) == 3 for line in rows), proc.stdout
    assert list(tmp_path.iterdir()) == [], "the work directory was not removed"
