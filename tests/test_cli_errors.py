"""Every mistake a user can make gives one clear line, a non-zero exit and no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cli_util import VERSIONFS, assert_user_error, force_cleanup, mount_type, ok, run_cli


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "state"
    ok(run_cli("init", path))
    return path


def test_missing_state_dir(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_user_error(run_cli("mount", tmp_path / "nope", mnt), "does not exist", "init")


def test_not_a_state_dir(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x").write_text("x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_user_error(run_cli("mount", plain, mnt), "not a versionfs state dir")


def test_init_refuses_non_empty_and_existing(tmp_path, state):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious").write_text("keep me")
    assert_user_error(run_cli("init", busy), "not empty")
    assert (busy / "precious").read_text() == "keep me"
    assert sorted(os.listdir(busy)) == ["precious"]
    assert_user_error(run_cli("init", state), "already holds")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert_user_error(run_cli("init", afile), "not a directory")


def test_init_with_bad_slow_url(tmp_path):
    assert_user_error(run_cli("init", tmp_path / "s", "--slow", "ftp://host/x"), "store.slow")
    assert not (tmp_path / "s").exists(), "a failed init must leave nothing behind"


def test_mountpoint_missing_not_dir_not_empty(tmp_path, state):
    assert_user_error(run_cli("mount", state, tmp_path / "nomnt"), "does not exist")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert_user_error(run_cli("mount", state, afile), "not a directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "existing").write_text("")
    assert_user_error(run_cli("mount", state, full), "not empty", "nonempty")


def test_bad_config_names_key_and_file(tmp_path, state):
    (state / "config.toml").write_text("[store]\nupload_concurency = 4\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_user_error(run_cli("mount", state, mnt), "store.upload_concurency",
                      str(state / "config.toml"))
    (state / "config.toml").write_text("[store]\nupload_concurrency = 'four'\n")
    assert_user_error(run_cli("mount", state, mnt), "store.upload_concurrency", "integer")


def test_ctl_commands_on_something_that_is_not_a_mount(tmp_path):
    for cmd in (["status"], ["snapshots"], ["snapshot"], ["flush"]):
        assert_user_error(run_cli(*cmd, tmp_path), "not a versionfs mount")
    assert_user_error(run_cli("status", tmp_path / "nope"), "does not exist")
    assert_user_error(run_cli("umount", tmp_path), "not mounted")
    assert_user_error(run_cli("umount", tmp_path / "nope"), "does not exist")
    assert_user_error(run_cli("umount", "/proc"), "not a versionfs mount")


def test_encrypted_wrong_and_missing_passphrase(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("the right one\n")
    bad.write_text("the wrong one\n")
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    mnt.mkdir()
    ok(run_cli("init", state, "--encrypt", "--passphrase-file", good))
    try:
        assert_user_error(run_cli("mount", state, mnt, "--passphrase-file", bad),
                          "wrong passphrase")
        assert mount_type(mnt) is None
        assert_user_error(run_cli("mount", state, mnt, env={"VERSIONFS_PASSPHRASE": "nope"}),
                          "wrong passphrase")
        # No file, no variable and no terminal: say how to give it, do not hang.
        r = subprocess.run(["setsid", *VERSIONFS, "mount", str(state), str(mnt)],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=60, env={k: v for k, v in os.environ.items()
                                            if k != "VERSIONFS_PASSPHRASE"})
        assert_user_error(r, "passphrase-file", "VERSIONFS_PASSPHRASE")
        assert_user_error(run_cli("mount", state, mnt, "--passphrase-file", tmp_path / "none"),
                          "cannot read passphrase file")
    finally:
        force_cleanup(mnt, state)


def test_init_encrypt_needs_a_passphrase(tmp_path):
    r = subprocess.run(["setsid", *VERSIONFS, "init", str(tmp_path / "s"), "--encrypt"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "VERSIONFS_PASSPHRASE"})
    assert_user_error(r, "passphrase")
    assert not (tmp_path / "s").exists()
    assert_user_error(run_cli("init", tmp_path / "t", "--passphrase-file", "/etc/hostname"),
                      "--encrypt")


def test_snapshot_name_checked_before_sending(tmp_path):
    assert_user_error(run_cli("snapshot", tmp_path, "a/b"), "one word")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to switch to an unprivileged user")
def test_no_fuse_access_as_unprivileged_user(tmp_path):
    """As nobody, with /dev/fuse closed to them (here it is 0600 root, else hidden)."""
    base = Path(tempfile.mkdtemp(prefix="vfs-nobody-"))
    try:
        base.chmod(0o755)
        state, mnt = base / "state", base / "mnt"
        ok(run_cli("init", state))
        for p in [state, *state.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o055)
        mnt.mkdir()
        os.chown(mnt, 65534, 65534)
        inner = [*VERSIONFS, "mount", str(state), str(mnt)]
        if os.access("/dev/fuse", os.R_OK | os.W_OK) and os.stat("/dev/fuse").st_mode & 0o006:
            # World-accessible /dev/fuse: hide it in a private mount namespace.
            closed = base / "closed"
            closed.write_text("")
            closed.chmod(0o600)
            argv = ["unshare", "-m", "sh", "-c",
                    'mount --bind "$0" /dev/fuse && exec setpriv --reuid=65534 --regid=65534 '
                    '--clear-groups "$@"', str(closed), *inner]
        else:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *inner]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, cwd="/",
                           env=dict(os.environ, HOME="/nonexistent"))
        assert_user_error(r, "/dev/fuse")
        assert mount_type(mnt) is None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_usage_errors_are_not_tracebacks():
    r = run_cli("mount")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "usage" in r.stderr
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr
