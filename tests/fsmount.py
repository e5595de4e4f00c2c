"""Test-only mount launcher for the fs tests: a real FUSE mount in a child process.

`python tests/fsmount.py STATE_DIR MOUNTPOINT` opens the state dir and serves
it with `versionfs.fs.mount.run`, printing READY once the mount answers. The
`Mount` class drives that child (start, clean unmount, kill -9) and always
leaves nothing mounted; the `vfs` fixture gives each test a fresh filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from versionfs.cli.ctlclient import read_answer

HERE = Path(__file__).resolve().parent


def _child(state_dir: str, mountpoint: str) -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from versionfs.fs import mount
    if os.environ.get("VFS_TEST_WRITE_DELAY"):
        _slow_writes(float(os.environ["VFS_TEST_WRITE_DELAY"]))
    if os.environ.get("VFS_TEST_SEAL_GATE"):
        _gated_seals(Path(state_dir))
    meta, blobs, paired = open_layers(Path(state_dir))
    try:
        mount.run(meta, blobs, paired, mountpoint, dirty_dir=os.path.join(state_dir, "dirty"),
                  ready=lambda: print("READY", flush=True),
                  fuse_options=("allow_other",),   # other uids reach the mount
                  idle_seal_seconds=float(os.environ.get("VFS_IDLE_SEAL", "2.0")),
                  merge_quiet_seconds=float(os.environ.get("VFS_MERGE_QUIET", "60.0")),
                  metadata_sync_seconds=float(os.environ.get("VFS_METADATA_SYNC", "5.0")))
    finally:
        meta.close()
        paired.close()


def _slow_writes(seconds: float) -> None:
    """Test hook: every WRITE of file data waits `seconds` before it is applied,
    as on a loaded machine, so the kernel's writeback is still in flight when
    a command arrives (a real daemon cannot be made that slow on demand)."""
    import trio
    from versionfs.fs.files import FileHandle
    from versionfs.fs.operations import VersionFS
    write = VersionFS.write

    async def slow_write(self, fh, off, buf):
        if isinstance(self.handles.get(fh), FileHandle):
            await trio.sleep(seconds)
        return await write(self, fh, off, buf)
    VersionFS.write = slow_write


def _gated_seals(state_dir: Path) -> None:
    """Test hook: a seal of a big file, once its layers are frozen, creates
    `state_dir/seal-started` and waits (in its worker thread) until the test
    creates `state_dir/seal-go` (at most 60 s), so the test can act while a
    seal is in flight (a real seal is over too fast to aim at)."""
    from versionfs.fs.sealing import Sealer
    seal_layers = Sealer.seal_layers

    def gated_seal_layers(self, *args, **kwargs):
        (state_dir / "seal-started").touch()
        deadline = time.monotonic() + 60
        while not (state_dir / "seal-go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return seal_layers(self, *args, **kwargs)
    Sealer.seal_layers = gated_seal_layers


def open_layers(root: Path):
    """The real layers under a test state dir: MVCC metadata, Paired(fast disk,
    file:// slow) with an upload journal, and a plain (unencrypted) codec.
    Built here rather than through versionfs.common.state so the fs tests exercise the
    fs layer only."""
    from versionfs.blob.blobstore import BlobStore
    from versionfs.blob.codec import Codec
    from versionfs.blob.disk import DiskStore
    from versionfs.blob.paired import Paired
    from versionfs.blob.url import open_store
    from versionfs.meta.mvcc.store import MVCCStore
    (root / "slow").mkdir(parents=True, exist_ok=True)
    paired = Paired(DiskStore(root / "fast"), open_store(f"file://{root / 'slow'}"),
                    str(root / "uploads.journal"))
    paired.start()
    return MVCCStore.open(root / "meta"), BlobStore(paired, Codec(None)), paired


def fusermount(mountpoint, lazy=False) -> None:
    argv = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    subprocess.run(argv, capture_output=True)


def is_mounted(mountpoint) -> bool:
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


class Mount:
    """A versionfs mount served by a child process."""

    def __init__(self, state_dir: Path, mountpoint: Path, idle_seal: float = 2.0):
        self.state_dir = Path(state_dir)
        self.mountpoint = Path(mountpoint)
        self.idle_seal = idle_seal
        self.proc: subprocess.Popen | None = None
        self.log = self.state_dir.parent / "mount.log"

    def start(self, timeout: float = 30.0) -> "Mount":
        self.mountpoint.mkdir(exist_ok=True)
        env = dict(os.environ, VFS_IDLE_SEAL=str(self.idle_seal))
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fsmount.py"),
                                      str(self.state_dir), str(self.mountpoint)],
                                     stdout=subprocess.PIPE, stderr=logf, env=env)
        logf.close()
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if line.strip() == b"READY" or not line:
                    break
            if self.proc.poll() is not None:
                break
        if line.strip() != b"READY":
            self.stop()
            raise RuntimeError(f"mount did not come up; log:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        """Unmount cleanly and wait for the daemon; force only if it hangs."""
        if self.proc is None:
            return None
        if is_mounted(self.mountpoint):
            fusermount(self.mountpoint)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if is_mounted(self.mountpoint):
            fusermount(self.mountpoint, lazy=True)
        self.proc.stdout.close()
        self.proc = None
        return rc

    def kill9(self) -> None:
        """Kill the daemon with SIGKILL, as a crash would, and clear the dead mount."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        fusermount(self.mountpoint, lazy=True)

    def path(self, *parts) -> str:
        return os.path.join(self.mountpoint, *parts)

    def ctl(self, command: str | bytes) -> tuple[int, str]:
        """Run one ctl command: (0 or the write's errno, answer text)."""
        fd = os.open(self.path(".versionfs", "ctl"), os.O_RDWR)
        try:
            data = command.encode() if isinstance(command, str) else command
            err = 0
            try:
                assert os.write(fd, data) == len(data)
            except OSError as e:
                err = e.errno
            return err, read_answer(fd)
        finally:
            os.close(fd)

    def ok(self, command: str) -> str:
        err, text = self.ctl(command)
        assert err == 0, f"{command!r} failed: {errno.errorcode.get(err)} {text}"
        return text.rstrip("\n")


def new_state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    root.mkdir()
    return root


@contextlib.contextmanager
def fresh_mount(tmp_path: Path, idle_seal: float = 2.0):
    """A fresh filesystem mounted on a new mountpoint; unmounted even on failure."""
    mnt = new_mountpoint()
    m = Mount(new_state(tmp_path), mnt, idle_seal)
    m.start()
    try:
        yield m
    finally:
        m.stop()
        os.rmdir(mnt)


@pytest.fixture
def vfs(tmp_path):
    """A fresh filesystem mounted at tmp_path/mnt; unmounted even if the test fails."""
    with fresh_mount(tmp_path) as m:
        yield m


def new_mountpoint() -> Path:
    """A mountpoint other users can reach (pytest's tmp dirs are 0700)."""
    mnt = Path(tempfile.mkdtemp(prefix="vfs-mnt-"))
    mnt.chmod(0o755)
    return mnt


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
