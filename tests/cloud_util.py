"""Helpers for the issue-5 tests: machines (state dir + mountpoint) sharing one bucket."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from cli_util import daemon_pid, force_cleanup, mount_type, ok, run_cli, wait_gone

from versionfs.common import config as configmod


class Machine:
    """One state dir + mountpoint, as if on its own laptop; always cleaned up."""

    def __init__(self, root: Path, name: str):
        self.state = root / f"{name}-state"
        self.mnt = root / f"{name}-mnt"
        self.mnt.mkdir(parents=True)

    def configure(self, **settings) -> None:
        cfg = configmod.load(self.state / "config.toml")
        for dotted, value in settings.items():
            cfg.set(dotted, value)
        configmod.save(cfg, self.state / "config.toml")

    def mount(self, *extra, env=None) -> subprocess.CompletedProcess:
        return run_cli("mount", self.state, self.mnt, *extra, env=env)

    def mount_ok(self, *extra, env=None) -> None:
        ok(self.mount(*extra, env=env))
        assert mount_type(self.mnt) == "fuse.versionfs"

    def ctl(self, command, *args, timeout=120) -> str:
        """``versionfs COMMAND MOUNTPOINT ARGS...``"""
        return ok(run_cli(command, self.mnt, *args, timeout=timeout))

    def umount(self) -> None:
        pid = daemon_pid(self.state)
        ok(run_cli("umount", self.mnt))
        if pid:
            assert wait_gone(pid, 30)

    def kill9(self) -> None:
        """The laptop dies: the daemon gets SIGKILL, the dead mount is detached."""
        pid = daemon_pid(self.state)
        assert pid
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def cleanup(self) -> None:
        force_cleanup(self.mnt, self.state)


@pytest.fixture
def machines(tmp_path):
    """Simulated machines (state dir + mountpoint each), cleaned up after the test."""
    made: list[Machine] = []

    def make(name: str) -> Machine:
        m = Machine(tmp_path, name)
        made.append(m)
        return m
    try:
        yield make
    finally:
        for m in made:
            m.cleanup()


@pytest.fixture
def powered_laptop(tmp_path):
    """A machine whose state dir lives on the power-cut harness (tests/powercut.py,
    ext4's worst case for names): ``.disk.cut()`` after ``kill9()``, then ``.disk.start()``."""
    from powercut import PowerCutDisk
    m = Machine(tmp_path, "laptop")
    m.disk = PowerCutDisk(tmp_path / "disk", tmp_path / "disk-mnt", "ext4").start()
    m.state = m.disk.mountpoint / "laptop-state"
    try:
        yield m
    finally:
        try:
            m.cleanup()
        finally:
            m.disk.stop()


def status(machine) -> dict:
    return json.loads(machine.ctl("status", "--json"))


def wait_for(machine, predicate, what: str, timeout: float = 60.0) -> dict:
    """Poll the machine's status until ``predicate(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(machine)
        if predicate(st):
            return st
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}; status: {st}"
        time.sleep(0.2)


def metric(port: int, name: str) -> float:
    """One value from a mount's Prometheus endpoint (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def tree_digest(root: Path, skip_ctl: bool = True) -> dict[str, tuple]:
    """Every entry under root: type, mode, size, owner, mtime, xattrs, link target, SHA-256."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                  for k in os.listxattr(path, follow_symlinks=False)))
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size,
                        st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, xattrs, content)
    return out


def snapshots_digest(mnt: Path) -> dict[str, dict]:
    snaps = mnt / ".versionfs" / "snapshots"
    return {name: tree_digest(snaps / name) for name in sorted(os.listdir(snaps))}


def bucket_objects(s3_server, bucket: str) -> dict[str, bytes]:
    client = s3_server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out
