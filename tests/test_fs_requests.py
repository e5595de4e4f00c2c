"""Issue 13: requests the kernel need not send. Counted with the mount's own
request counters (the Prometheus endpoint), never timed: FLUSH is answered
ENOSYS once and then never sent again; `ls -l` asks for one xattr per file,
not two (`ls` stops asking for SELinux labels after one EOPNOTSUPP; the POSIX
ACL is asked for once per file and listing, because the kernel drops its
cached ACLs of the inodes a READDIRPLUS reply refreshes). Long entry and attribute timeouts stay correct: a rename,
unlink or chmod made by one process is seen at once by another."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from history_util import cli_fs, free_port, scrape  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def requests(port: int, op: str) -> float:
    """FUSE requests of `op` the mount handled so far, ok or error."""
    got = scrape(port)
    return sum(got.get(f'versionfs_fuse_requests_total{{op="{op}",result="{r}"}}', 0)
               for r in ("ok", "error"))


def test_flush_is_answered_enosys_once(cli_fs):
    port = free_port()
    fs = cli_fs.init(metrics__listen=f"127.0.0.1:{port}").mount()
    for i in range(30):
        fs.path(f"f{i}").write_bytes(b"x" * 4096)
    assert 1 <= requests(port, "flush") <= 1 + 1                # a close racing the first answer
    assert requests(port, "create") == 30
    assert [fs.path(f"f{i}").read_bytes() for i in range(30)] == [b"x" * 4096] * 30


def test_ls_l_asks_for_one_xattr_per_file(cli_fs):
    port = free_port()
    fs = cli_fs.init(metrics__listen=f"127.0.0.1:{port}").mount()
    (fs.path("d")).mkdir()
    for i in range(100):
        fs.path("d", f"f{i:03d}").write_bytes(b"x")
    listing = subprocess.run(["ls", "-l", str(fs.path("d"))], check=True, capture_output=True,
                             text=True).stdout
    assert listing.count("\n") == 101                           # total + 100 files
    before = requests(port, "getxattr")
    subprocess.run(["ls", "-l", str(fs.path("d"))], check=True, capture_output=True)
    assert requests(port, "getxattr") - before <= 100 + 2       # 2 per file with labels kept


CHILD = """
import os, sys
p, q = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    what = line.split()[0]
    try:
        st = os.stat(p)
        print(what, oct(st.st_mode & 0o777), os.path.exists(q), flush=True)
    except FileNotFoundError:
        print(what, "gone", os.path.exists(q), flush=True)
"""


def test_changes_are_seen_at_once_by_another_process(cli_fs):
    fs = cli_fs.init().mount()
    p, q = fs.path("a"), fs.path("b")
    p.write_bytes(b"data")
    os.chmod(p, 0o644)
    watcher = subprocess.Popen([sys.executable, "-c", CHILD, str(p), str(q)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        def look(what: str) -> str:
            watcher.stdin.write(what + "\n")
            watcher.stdin.flush()
            return watcher.stdout.readline().split(" ", 1)[1].strip()
        assert look("start") == "0o644 False"                   # cached by the kernel now
        os.chmod(p, 0o600)
        assert look("chmod") == "0o600 False"
        os.rename(p, q)
        assert look("rename") == "gone True"
        os.rename(q, p)
        assert look("back") == "0o600 False"
        os.unlink(p)
        assert look("unlink") == "gone False"
    finally:
        watcher.stdin.close()
        watcher.wait(30)


def test_create_and_unlink_write_one_metadata_batch_per_file(cli_fs):
    """A created and written file is one metadata batch (the times the kernel
    sends at its close stay in memory until its seal); an unlinked file nothing
    has open is deleted in its unlink's batch, and the FORGET that follows
    writes nothing. The slack covers background seals and reclamation."""
    fs = cli_fs.init().mount()
    d = fs.path("d")
    d.mkdir()
    n, slack = 100, 25
    before = fs.status()["metadata_batches"]
    for i in range(n):
        (d / f"f{i:03d}").write_bytes(b"x" * 4096)
    created = fs.status()["metadata_batches"]
    assert created - before <= n + slack                        # was 2 per file
    os.stat(d / "f000")                                         # the kernel holds them
    for i in range(n):
        os.unlink(d / f"f{i:03d}")
    assert fs.status()["metadata_batches"] - created <= n + slack   # was 2 per file
    assert os.listdir(d) == []
    fs.umount()
    fs.mount()
    assert os.listdir(d) == [] and fs.status()["inodes_in_memory"] <= 3
