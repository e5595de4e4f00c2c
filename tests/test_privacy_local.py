"""Issue 12: another local user can read nothing versionfs keeps, and secrets stay
out of config.toml (a second, unprivileged user is created for the test)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from cli_util import assert_user_error, force_cleanup, mount_type, ok, run_cli

from versionfs.common import config as configmod


@pytest.fixture
def open_dir():
    """A world-traversable directory (pytest's tmp_path is 0700, which would hide everything)."""
    path = Path(tempfile.mkdtemp(prefix="vfs-privacy-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def readable_by(user: str, *roots: Path) -> list[str]:
    """Everything under ``roots`` (found as root) that ``user`` can list or read."""
    args = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            args.append(f"d:{dirpath}")
            for name in filenames:
                path = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    args.append(f"f:{path}")
    script = ('for a; do p=${a#?:}; case $a in '
              'd:*) ls -A "$p" >/dev/null 2>&1 && echo "$p";; '
              'f:*) head -c1 "$p" >/dev/null 2>&1 && echo "$p";; esac; done')
    r = subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script, "sh", *args],
                       capture_output=True, text=True, timeout=120, cwd="/")
    return r.stdout.split()


def open_modes(*roots: Path) -> list[str]:
    """Paths under ``roots`` with any group/other permission bit."""
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for path in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                    found.append(f"{oct(stat.S_IMODE(st.st_mode))} {path}")
    return found


def assert_private(user: str, *roots: Path) -> None:
    assert readable_by(user, *roots) == []
    assert open_modes(*roots) == []


def test_nothing_readable_by_another_user(open_dir, other_user):
    state, slow, mnt, clone = (open_dir / n for n in ("state", "slow", "mnt", "clone"))
    mnt.mkdir()
    mnt.chmod(0o755)
    ok(run_cli("init", state, "--slow", slow))
    assert_private(other_user, state, slow)
    try:
        ok(run_cli("mount", state, mnt))
        assert mount_type(mnt) == "fuse.versionfs"
        (mnt / "secret-name.txt").write_text("the contents of a 0600 file\n" * 1000)
        (mnt / "secret-name.txt").chmod(0o600)
        (mnt / "dir").mkdir()
        fd = os.open(mnt / "dir" / "unsealed", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"written and fsynced, not sealed yet")
        os.fsync(fd)                  # dirty data and its journal exist now
        os.close(fd)
        assert_private(other_user, state, slow)
        ok(run_cli("flush", mnt))
        assert_private(other_user, state, slow)
        ok(run_cli("umount", mnt))
    finally:
        force_cleanup(mnt, state)
    assert (state / "versionfs.log").exists()
    assert_private(other_user, state, slow)
    ok(run_cli("clone", slow, clone, "-q"))
    assert_private(other_user, clone, slow)
    try:                              # and after opening the clone (LMDB, WAL, catch-up)
        ok(run_cli("mount", clone, mnt, "--steal-lease"))
        assert (mnt / "secret-name.txt").read_text().startswith("the contents")
        ok(run_cli("umount", mnt))
    finally:
        force_cleanup(mnt, clone)
    assert_private(other_user, state, slow, clone)


def test_old_state_dir_is_tightened_when_opened(open_dir):
    state = open_dir / "state"
    ok(run_cli("init", state))
    state.chmod(0o755)                # as an older versionfs left it
    run_cli("fsck", state, "-q")     # any command that opens it (a new fs has no root yet)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_token_in_store_url_is_refused(tmp_path):
    url = "http://127.0.0.1:9/?token=s3cret-token"
    line = assert_user_error(run_cli("init", tmp_path / "s", "--slow", url), "token_file")
    assert "s3cret-token" not in line
    assert not (tmp_path / "s").exists()
    # A config.toml edited by hand says the same, without echoing the secret.
    ok(run_cli("init", tmp_path / "t"))
    config = tmp_path / "t" / "config.toml"
    config.write_text(f'[store]\nslow = "{url}"\n')
    with pytest.raises(configmod.ConfigError, match="token_file") as err:
        configmod.load(config)
    assert "s3cret-token" not in str(err.value)
    line = assert_user_error(run_cli("fsck", tmp_path / "t"), "token_file")
    assert "s3cret-token" not in line
    line = assert_user_error(run_cli("init", tmp_path / "u", "--slow",
                                     "https://me:hunter2@example.com/"), "password")
    assert "hunter2" not in line
