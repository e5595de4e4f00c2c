"""Helpers for the CLI tests: run the real ``versionfs`` command, clean up real mounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONFS = [sys.executable, "-m", "versionfs"]


def run_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``versionfs ARGS...`` as a user would type it; stdout/stderr captured as text."""
    full_env = dict(os.environ)
    full_env.pop("VERSIONFS_PASSPHRASE", None)
    full_env.pop("VERSIONFS_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run([*VERSIONFS, *map(str, args)], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Non-zero exit, exactly one line on stderr naming the problem, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, f"expected failure, got 0: {result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert lines[0].startswith("versionfs: error: "), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]


def mount_type(mountpoint: Path) -> str | None:
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == target:
                found = right.split()[0]
    return found


def daemon_pid(state_dir: Path) -> int | None:
    try:
        text = (Path(state_dir) / "lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def force_cleanup(mountpoint: Path, state_dir: Path | None = None) -> None:
    """Teardown: whatever a test left behind, unmount it and stop its daemon."""
    if mount_type(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    if state_dir is not None:
        pid = daemon_pid(state_dir)
        if pid and _alive(pid) and _is_versionfs(pid):
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _is_versionfs(pid: int) -> bool:
    try:
        return b"versionfs" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
