"""`versionfs log/diff/restore` through the real command on a real mount, and
one clear line for bad values of the issue 6 config keys."""

from __future__ import annotations

import json
import os

import pytest

from cli_util import assert_user_error, run_cli
from history_util import cli_fs  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def test_log_diff_restore_commands(cli_fs):
    fs = cli_fs.init().mount()
    os.makedirs(fs.path("proj", "src"))
    fs.path("proj", "src", "main.py").write_text("print('v1')\n")
    fs.path("proj", "notes with space.txt").write_text("n\n")
    fs.cli("snapshot", fs.mnt, "v1")
    fs.path("proj", "src", "main.py").write_text("print('v2')\n")
    os.rename(fs.path("proj", "notes with space.txt"), fs.path("proj", "notes.txt"))
    fs.cli("snapshot", fs.mnt, "v2")
    os.unlink(fs.path("proj", "src", "main.py"))

    assert fs.cli("diff", fs.mnt, "v1", "v2").splitlines() == [
        "R\tproj/notes with space.txt -> proj/notes.txt",
        "M\tproj/src/main.py",
        "2 changes: 1 modified, 1 renamed; 12 B new data",
    ]
    assert fs.cli("diff", fs.mnt, "v2").splitlines()[0] == "D\tproj/src/main.py"
    stat = json.loads(fs.cli("diff", fs.mnt, "--stat", "--json", "v1"))
    assert stat["summary"]["removed"] == 1 and stat["changes"] == []
    # PATH: absolute inside the mount, or relative to the mount's root.
    by_abs = fs.cli("log", fs.mnt, str(fs.path("proj", "src", "main.py")))
    by_rel = fs.cli("log", fs.mnt, "proj/src/main.py")
    assert by_abs == by_rel
    assert [line.split("\t")[0] for line in by_rel.splitlines()][0] == "live"
    assert len(by_rel.splitlines()) == 3
    out = fs.cli("restore", fs.mnt, "v1", str(fs.path("proj", "src", "main.py")))
    assert out.startswith("restored proj/src/main.py from ")
    assert fs.path("proj", "src", "main.py").read_text() == "print('v1')\n"
    fs.cli("restore", fs.mnt, "v1", "proj/notes with space.txt", "--to", "proj/old notes.txt")
    assert fs.path("proj", "old notes.txt").read_text() == "n\n"
    r = run_cli("restore", fs.mnt, "v9", "proj")
    assert_user_error(r, "no snapshot 'v9'")
    r = run_cli("diff", fs.mnt, "nope")
    assert_user_error(r, "no snapshot 'nope'")
    fs.umount()


@pytest.mark.parametrize("key,value,words", [
    ("snapshots.interval", "every hour", "snapshots.interval not a duration"),
    ("snapshots.interval", 3600, "snapshots.interval must be a string"),
    ("snapshots.interval", "0s", "at least 1s"),
    ("metrics.listen", "9108", "metrics.listen must be HOST:PORT"),
    ("mount.log_level", "chatty", "mount.log_level must be one of"),
])
def test_bad_issue6_config_is_one_clear_line(tmp_path, key, value, words):
    import tomli_w
    state = tmp_path / "state"
    (tmp_path / "mnt").mkdir()
    assert run_cli("init", state).returncode == 0
    section, name = key.split(".")
    with open(state / "config.toml", "ab") as f:
        f.write(b"\n" + tomli_w.dumps({section: {name: value}}).encode())
    r = run_cli("mount", state, tmp_path / "mnt")
    line = assert_user_error(r, words)
    assert "config.toml" in line
