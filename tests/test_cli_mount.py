"""End to end through the real ``versionfs`` command on real FUSE mounts.

init, mount (background daemon), write, snapshot, snapshots, status, flush,
umount, remount; the shell ctl client; the fstab helper; --foreground with
SIGTERM; the demo command; an S3 slow store; an encrypted filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from versionfs.cli.mount import wait_unlocked
from versionfs.common import state as statemod

from cli_util import (REPO, VERSIONFS, assert_user_error, daemon_pid, force_cleanup, mount_type,
                      ok, run_cli, wait_gone)
from history_util import wait_for

pytestmark = pytest.mark.fuse

VFSCTL = REPO / "ctl" / "vfsctl"
MOUNT_HELPER = REPO / "contrib" / "mount.versionfs"


class Fs:
    """One state dir and one mountpoint in tmp_path, always cleaned up."""

    def __init__(self, root: Path):
        self.state = root / "state"
        self.mnt = root / "mnt"
        self.mnt.mkdir()

    def init(self, *extra: str, env: dict[str, str] | None = None) -> None:
        ok(run_cli("init", self.state, *extra, env=env))

    def mount(self, *extra: str, env: dict[str, str] | None = None) -> None:
        ok(run_cli("mount", self.state, self.mnt, *extra, env=env))
        assert mount_type(self.mnt) == "fuse.versionfs"

    def umount(self) -> None:
        pid = daemon_pid(self.state)
        ok(run_cli("umount", self.mnt))
        assert mount_type(self.mnt) is None
        assert statemod.read_pid(self.state) is None, "umount returned before the daemon let go"
        if pid:
            assert wait_gone(pid, 5), "umount returned before the daemon exited"


@pytest.fixture
def fs(tmp_path):
    f = Fs(tmp_path)
    try:
        yield f
    finally:
        force_cleanup(f.mnt, f.state)


def test_lifecycle_init_mount_write_snapshot_umount_remount(fs):
    out = ok(run_cli("init", fs.state))
    assert str(fs.state) in out and (fs.state / "state.toml").exists()
    fs.mount()
    pid = daemon_pid(fs.state)
    assert pid and pid != os.getpid()

    (fs.mnt / "docs").mkdir()
    (fs.mnt / "docs" / "a.txt").write_text("version one\n")
    # The control directory is reachable but not listed.
    assert ".versionfs" not in os.listdir(fs.mnt)
    assert (fs.mnt / ".versionfs" / "ctl").exists()

    name = ok(run_cli("snapshot", fs.mnt, "first")).strip()
    assert "first" in name and "\n" not in name
    (fs.mnt / "docs" / "a.txt").write_text("version two\n")
    frozen = fs.mnt / ".versionfs" / "snapshots" / name / "docs" / "a.txt"
    assert frozen.read_text() == "version one\n"

    listing = ok(run_cli("snapshots", fs.mnt)).splitlines()
    rows = [line.split("\t") for line in listing]
    assert any(r[0] == name and r[3] == "first" for r in rows), listing

    status = ok(run_cli("status", fs.mnt))
    assert status.strip()
    data = json.loads(ok(run_cli("status", fs.mnt, "--json")))
    assert isinstance(data, dict)

    ok(run_cli("flush", fs.mnt, "--timeout", "60"))
    fs.umount()

    fs.mount()
    assert (fs.mnt / "docs" / "a.txt").read_text() == "version two\n"
    again = fs.mnt / ".versionfs" / "snapshots" / name / "docs" / "a.txt"
    assert again.read_text() == "version one\n"
    fs.umount()


def test_a_mount_indexes_its_fast_store_in_the_background_and_reports_it(fs):
    fs.init()
    fs.mount()
    (fs.mnt / "data").write_bytes(os.urandom(300_000))
    ok(run_cli("flush", fs.mnt, "--timeout", "60"))
    fs.umount()
    fs.mount()

    def scanned() -> dict | None:
        st = json.loads(ok(run_cli("status", fs.mnt, "--json")))
        return st if st["fast_store_scan"] != "pending" else None

    st = wait_for(scanned, 30, "the fast store's index scan")
    assert st["fast_store_scan"] == "done"
    fast = statemod.Layout(fs.state).fast
    on_disk = sum(p.stat().st_size for p in Path(fast).rglob("*")
                  if p.is_file() and not p.name.startswith("."))
    assert on_disk >= 300_000 and st["fast_store_use"] == str(on_disk)
    fs.umount()


def _daemon_process(pid: int) -> dict:
    """What a detached daemon looks like from /proc: argv, session, cwd, fds 0-2."""
    proc = Path(f"/proc/{pid}")
    stat = proc.joinpath("stat").read_text().rsplit(") ", 1)[1].split()
    return {"argv": proc.joinpath("cmdline").read_bytes().split(b"\0"),
            "session": int(stat[3]), "cwd": os.readlink(proc / "cwd"),
            "fds": [os.readlink(proc / "fd" / str(fd)) for fd in (0, 1, 2)],
            "environ": proc.joinpath("environ").read_bytes()}


def test_mount_forks_a_detached_daemon(fs):
    """`versionfs mount` forks the daemon (no second interpreter start): it runs
    in its own session, in /, stdin from /dev/null, output to the log."""
    fs.init()
    fs.mount()
    pid = daemon_pid(fs.state)
    daemon = _daemon_process(pid)
    assert b"--ready-fd" not in daemon["argv"], daemon["argv"]      # not a spawned interpreter
    assert daemon["session"] == pid and daemon["cwd"] == "/"
    assert daemon["fds"] == ["/dev/null", str(fs.state / "versionfs.log"),
                             str(fs.state / "versionfs.log")]
    assert "mounting" in (fs.state / "versionfs.log").read_text()
    fs.umount()


def test_the_mount_command_leaves_the_daemons_imports_to_the_daemon(fs):
    """Mount time: the daemon imports what serves the mount (trio, pyfuse3, the
    filesystem layer, the stores, the metadata engine, the bucket code) after
    the fork; the command itself never loads any of it, so its exit, the last
    step of a mount, has that much less to tear down. `-X importtime` reports
    the command's imports on its stderr (the daemon's go to the log)."""
    fs.init()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "versionfs", "mount",
                             str(fs.state), str(fs.mnt)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert mount_type(fs.mnt) == "fuse.versionfs"
    command = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")}
    assert {"versionfs.cli.preflight", "versionfs.cli.daemon"} <= command
    daemons = {name for name in command if name.split(".")[0] in ("trio", "pyfuse3", "lmdb")
               or name.startswith(("versionfs.fs", "versionfs.bucket", "versionfs.meta",
                                   "versionfs.maint", "versionfs.blob.paired"))}
    assert daemons == set()
    log = (fs.state / "versionfs.log").read_text()
    assert "mounting" in log and "pyfuse3" in log       # the daemon's -X importtime lines
    fs.umount()


def test_a_started_daemon_imports_only_what_it_needs(fs):
    """Mount time: when the daemon answers, it has not imported the ctl command
    groups (imported on first use), prometheus_client (metrics are off) nor
    cryptography (the filesystem is not encrypted)."""
    fs.init()
    modules = fs.state.parent / "modules"
    code = ("import sys\nfrom versionfs.cli import daemon, main\n"
            "answer = daemon._Readiness.ready\n"
            "def ready(self):\n"
            "    answer(self)\n"
            "    open(sys.argv[1], 'w').write(' '.join(sorted(sys.modules)))\n"
            "daemon._Readiness.ready = ready\n"
            "sys.exit(main.main(['mount', '--foreground', sys.argv[2], sys.argv[3]]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(modules), str(fs.state), str(fs.mnt)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not modules.exists() or not modules.read_text():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        imported = set(modules.read_text().split())
        ok(run_cli("umount", fs.mnt))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert {"pyfuse3", "versionfs.fs.mount", "versionfs.bucket.session"} <= imported
    unneeded = {"prometheus_client", "versionfs.common.metrics_endpoint", "cryptography",
                "versionfs.fs.ctl.basic", "versionfs.fs.ctl.history", "versionfs.fs.ctl.maint"}
    assert imported & unneeded == set()


def test_wait_unlocked_returns_when_the_holder_lets_go(tmp_path):
    """What `versionfs umount` waits on: the daemon's lock, not a polling loop."""
    root = statemod.init_state(tmp_path / "s")
    st = statemod.open_state(root)
    try:
        assert wait_unlocked(root, 0.2) is False
        closed_at = []

        def close_later():
            time.sleep(0.3)
            closed_at.append(time.monotonic())
            st.close()
        threading.Thread(target=close_later).start()
        assert wait_unlocked(root, 60) is True
        assert closed_at and statemod.read_pid(root) is None
    finally:
        st.close()
    assert wait_unlocked(root, 0) is True


def test_already_mounted_and_busy(fs):
    fs.init()
    fs.mount()
    other = fs.mnt.parent / "other"
    other.mkdir()
    assert_user_error(run_cli("mount", fs.state, other), "already mounted", str(fs.mnt))
    # The same mountpoint with another filesystem: it is a mount point already.
    second = Fs.__new__(Fs)
    second.state, second.mnt = fs.mnt.parent / "state2", fs.mnt
    ok(run_cli("init", second.state))
    assert_user_error(run_cli("mount", second.state, fs.mnt), "already a mount point")
    # A file held open keeps the mount busy: umount refuses and the mount stays.
    with open(fs.mnt / "held", "w") as held:
        held.write("x")
        held.flush()
        assert_user_error(run_cli("umount", fs.mnt), "busy")
        assert mount_type(fs.mnt) == "fuse.versionfs"
    fs.umount()


def test_sh_ctl_client(fs):
    fs.init()
    fs.mount()
    (fs.mnt / "f").write_text("x")
    r = subprocess.run(["sh", VFSCTL, fs.mnt, "snapshot", "viash"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert "viash" in name
    assert (fs.mnt / ".versionfs" / "snapshots" / name / "f").read_text() == "x"
    r = subprocess.run(["sh", VFSCTL, fs.mnt, "snapshots"], capture_output=True, text=True)
    assert r.returncode == 0 and name in r.stdout
    r = subprocess.run(["sh", VFSCTL, fs.mnt, "status"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip()
    r = subprocess.run(["sh", VFSCTL, fs.mnt, "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("vfsctl: ") and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(["sh", VFSCTL, fs.mnt.parent, "status"], capture_output=True, text=True)
    assert r.returncode == 1 and "not a versionfs mount" in r.stderr
    fs.umount()


def test_bad_ctl_command_through_cli_is_one_line(fs):
    fs.init()
    fs.mount()
    assert_user_error(run_cli("snapshot", fs.mnt, "two words"), "one word")
    # Refused by the daemon (names may not start with a dot): its message, one line.
    line = assert_user_error(run_cli("snapshot", fs.mnt, ".hidden"))
    assert "name" in line.lower()
    ok(run_cli("snapshot", fs.mnt, "fine"))
    assert_user_error(run_cli("snapshot", fs.mnt, "fine"))      # names are unique
    fs.umount()


def test_fstab_helper_mounts_with_fstab_options(fs):
    fs.init()
    # mount(8) would run: mount.versionfs SPEC DIR -o OPTIONS
    env = dict(os.environ, VERSIONFS=str(REPO / ".venv" / "bin" / "versionfs"),
               MOUNT_VERSIONFS_NO_ENV="1")
    r = subprocess.run(["sh", MOUNT_HELPER, fs.state, fs.mnt, "-n", "-o",
                        "defaults,_netdev,noauto,x-systemd.automount,nofail,rw"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert mount_type(fs.mnt) == "fuse.versionfs"
    (fs.mnt / "f").write_text("via fstab")
    fs.umount()
    # ro from fstab gives a read-only mount.
    r = subprocess.run(["sh", MOUNT_HELPER, fs.state, fs.mnt, "-o", "ro,_netdev"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (fs.mnt / "f").read_text() == "via fstab"
    with pytest.raises(OSError):
        (fs.mnt / "g").write_text("no")
    fs.umount()


def test_foreground_mount_stops_cleanly_on_sigterm(fs):
    fs.init()
    proc = subprocess.Popen([*VERSIONFS, "mount", "--foreground", str(fs.state), str(fs.mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while mount_type(fs.mnt) != "fuse.versionfs":
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not (fs.mnt / ".versionfs" / "ctl").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (fs.mnt / "kept").write_text("kept")
        os.fsync(os.open(fs.mnt / "kept", os.O_RDONLY))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert mount_type(fs.mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
    fs.mount()
    assert (fs.mnt / "kept").read_text() == "kept"
    fs.umount()


def test_demo_creates_and_mounts(tmp_path):
    state, mnt = tmp_path / "demo-state", tmp_path / "demo-mnt"
    try:
        out = ok(run_cli("demo", "--state-dir", state, "--mountpoint", mnt))
        assert "versionfs snapshot" in out
        assert mount_type(mnt) == "fuse.versionfs"
        assert (state / "slow").is_dir()
        # Running it again is harmless.
        assert "already mounted" in ok(run_cli("demo", "--state-dir", state, "--mountpoint", mnt))
        ok(run_cli("umount", mnt))
    finally:
        force_cleanup(mnt, state)


@pytest.mark.s3
def test_s3_slow_store(fs, s3_server, s3_url):
    env = s3_server.env()
    fs.init("--slow", s3_url, env=env)
    fs.mount(env=env)
    payload = os.urandom(3 << 20)
    (fs.mnt / "big").write_bytes(payload)
    ok(run_cli("flush", fs.mnt, "--timeout", "60"))
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    keys = [o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    assert any("blobs/" in k for k in keys), keys
    fs.umount()
    # A second filesystem may not claim the same place in the bucket.
    assert_user_error(run_cli("init", fs.state.parent / "again", "--slow", s3_url, env=env),
                      "already holds")


def test_encrypted_filesystem(fs):
    secret = fs.mnt.parent / "pass"
    secret.write_text("correct horse\n")
    fs.init("--encrypt", "--passphrase-file", secret)
    assert (fs.state / "key").exists()
    assert (fs.state / "slow" / "keys" / "master").read_bytes() == (fs.state / "key").read_bytes()
    fs.mount("--passphrase-file", secret)
    (fs.mnt / "f").write_text("plain words here")
    ok(run_cli("flush", fs.mnt))
    fs.umount()
    for path in (fs.state / "slow").rglob("*"):
        if path.is_file():
            assert b"plain words here" not in path.read_bytes()
    # The environment variable works too, and the data comes back. The daemon
    # is then a fresh interpreter, not a fork: a fork would keep the
    # variable readable in /proc/PID/environ.
    fs.mount(env={"VERSIONFS_PASSPHRASE": "correct horse"})
    assert (fs.mnt / "f").read_text() == "plain words here"
    daemon = _daemon_process(daemon_pid(fs.state))
    assert b"--ready-fd" in daemon["argv"]
    assert b"correct horse" not in daemon["environ"]
    assert not any(b"correct horse" in arg for arg in daemon["argv"])
    fs.umount()


def test_remount_after_kill_9_needs_no_manual_step(fs):
    fs.init()
    fs.mount()
    fd = os.open(fs.mnt / "durable", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"fsynced before the crash")
    os.fsync(fd)
    os.close(fd)
    pid = daemon_pid(fs.state)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    # The kernel still has the (dead) mount; mount clears it and starts afresh.
    fs.mount()
    assert (fs.mnt / "durable").read_bytes() == b"fsynced before the crash"
    fs.umount()


@pytest.mark.s3
def test_umount_with_slow_store_down_warns_and_keeps_uploads(fs, s3_server, s3_url):
    env = s3_server.env()
    fs.init("--slow", s3_url, env=env)
    fs.mount(env=env)
    s3_server.stop()
    late = os.urandom(1 << 20)
    try:
        (fs.mnt / "late").write_bytes(late)
        r = run_cli("umount", fs.mnt, "--timeout", "2")
        assert r.returncode == 0, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("versionfs: warning: "), r.stderr
        assert "Traceback" not in r.stderr
        assert mount_type(fs.mnt) is None
    finally:
        s3_server.start()
    # The upload journal kept the blob; the next mount uploads it.
    fs.mount(env=env)
    ok(run_cli("flush", fs.mnt, "--timeout", "60"))
    assert (fs.mnt / "late").read_bytes() == late
    fs.umount()
    # ... to the slow store: without the fast store it still reads back in full.
    shutil.rmtree(fs.state / "fast")
    (fs.state / "fast").mkdir(mode=0o700)
    fs.mount(env=env)
    assert (fs.mnt / "late").read_bytes() == late
    fs.umount()
