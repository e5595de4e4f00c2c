"""Helpers for the issue 6 tests: a filesystem mounted through the real CLI with
a chosen config, always unmounted afterwards."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from cli_util import daemon_pid, force_cleanup, mount_type, ok, run_cli, wait_gone


class CliFs:
    def __init__(self, root: Path):
        self.state = root / "state"
        self.mnt = root / "mnt"
        self.mnt.mkdir()

    def init(self, **settings) -> "CliFs":
        """`versionfs init`, then config keys given as section__name=value."""
        ok(run_cli("init", self.state))
        if settings:
            from versionfs.common import config
            cfg = config.load(self.state / "config.toml")
            for key, value in settings.items():
                cfg.set(key.replace("__", "."), value)
            config.save(cfg, self.state / "config.toml")
        return self

    def mount(self) -> "CliFs":
        ok(run_cli("mount", self.state, self.mnt))
        assert mount_type(self.mnt) == "fuse.versionfs"
        return self

    def umount(self) -> None:
        pid = daemon_pid(self.state)
        ok(run_cli("umount", self.mnt))
        if pid:
            assert wait_gone(pid, 10)

    def cli(self, *args) -> str:
        return ok(run_cli(*args))

    def status(self) -> dict:
        return json.loads(self.cli("status", self.mnt, "--json"))

    def snapshots(self) -> list[list[str]]:
        return [line.split("\t") for line in self.cli("snapshots", self.mnt).splitlines()]

    def path(self, *parts) -> Path:
        return self.mnt.joinpath(*parts)


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture
def cli_fs(tmp_path):
    f = CliFs(tmp_path)
    try:
        yield f
    finally:
        force_cleanup(f.mnt, f.state)
