"""bench/smallfiles.py --quick runs to the end on native, the compiled
passthrough_ll and a real versionfs mount, and prints its table (the numbers
of a smoke run mean little; this catches a benchmark that rots)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

BENCH = Path(__file__).resolve().parent.parent / "bench" / "smallfiles.py"


def test_smallfiles_bench_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines()
            if line.startswith(("create", "ls -l", "delete", "untar", "git status"))]
    assert len(rows) == 7, proc.stdout
    if Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c").exists():
        assert "passthrough_ll: skipped" not in proc.stderr, proc.stderr
        # three ratios per row: passthrough_ll and versionfs to native, versionfs to the floor
        assert all(len(re.findall(r" \d+\.\dx", line)) == 3 for line in rows), proc.stdout
    assert list(tmp_path.iterdir()) == [], "the work directory was not removed"
