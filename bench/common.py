"""What the mount benchmarks share: a fresh versionfs mount driven through the
CLI, the CPU time of its daemon, and timing and formatting helpers.

Imported by bench/fs.py, bench/fsync.py and bench/peers.py (run as scripts, so this directory
is on sys.path); it also puts the repository on sys.path for ``versionfs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from versionfs.cli import ctlclient  # noqa: E402
from versionfs.common.state import Layout, read_pid  # noqa: E402

VERSIONFS = [sys.executable, "-m", "versionfs"]
MiB = 1 << 20


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The options every mount benchmark has: where both sides live, keep them."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--workdir", default="/var/tmp", help="where both sides live (same disk)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def write_file(path: Path, blocks: list[bytes]) -> None:
    """Write blocks as the whole content of path and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in blocks:
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        print(f"warning: cannot drop the page cache ({e.strerror}); reads may be cached",
              file=sys.stderr)


def read_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 4 * MiB):
            pass
    finally:
        os.close(fd)


def delete_files(d: Path) -> None:
    for entry in os.scandir(d):
        os.unlink(entry.path)
    os.rmdir(d)


def untar(tarball: Path, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True)


def source_tarball(workdir: Path, subdirs: tuple[str, ...] = ()) -> tuple[Path, int]:
    """The Python stdlib (no site-packages, no caches; only `subdirs` of it if
    given) as a tar file; and its file count."""
    tarball = workdir / "stdlib.tar"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    count = 0

    def keep(info: tarfile.TarInfo):
        nonlocal count
        parts = Path(info.name).parts
        if "site-packages" in parts or "__pycache__" in parts:
            return None
        if info.isfile():
            count += 1
        return info

    with tarfile.open(tarball, "w") as tar:
        for sub in subdirs or ("",):
            tar.add(stdlib / sub, arcname=str(Path("python-stdlib") / sub), filter=keep)
    return tarball, count


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int | None:
    """Minor page faults process `pid` has taken so far; None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except OSError:
        return None


class Mount:
    """A fresh filesystem (``versionfs init``, default embedded config: the
    ``file://`` slow store is STATE/slow) mounted with ``versionfs mount``."""

    def __init__(self, workdir: Path):
        self.state = workdir / "vfs-state"
        self.layout = Layout(self.state)
        self.mnt = workdir / "vfs-mnt"
        self.mnt.mkdir()
        self.pid: int | None = None
        subprocess.run([*VERSIONFS, "init", str(self.state)], check=True, stdout=subprocess.DEVNULL)

    def mount(self) -> None:
        subprocess.run([*VERSIONFS, "mount", str(self.state), str(self.mnt)], check=True,
                       stdout=subprocess.DEVNULL)
        self.pid = read_pid(self.state)       # the daemon holds the state dir's lock

    def cpu(self) -> float | None:
        """CPU seconds the mount daemon has used so far."""
        return None if self.pid is None else cpu_seconds(self.pid)

    def timed(self, fn, *args) -> tuple[float, float | None]:
        """(wall seconds, daemon CPU seconds) of fn(*args) on its mount."""
        c0 = self.cpu()
        t = timed(fn, *args)
        c1 = self.cpu()
        return t, (None if c0 is None or c1 is None else c1 - c0)

    def flush(self) -> None:
        """``versionfs flush``: seal everything and wait until every blob is in the slow store."""
        subprocess.run([*VERSIONFS, "flush", str(self.mnt)], check=True, stdout=subprocess.DEVNULL)

    def status(self) -> dict:
        return json.loads(ctlclient.command(self.mnt, "status --json"))

    def umount(self) -> None:
        subprocess.run([*VERSIONFS, "umount", str(self.mnt)], check=True)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def snapshot(self) -> float:
        return timed(ctlclient.command, self.mnt, "snapshot")

    def cleanup(self) -> None:
        if ctlclient.find_mount(self.mnt) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)])


@contextlib.contextmanager
def native_and_mount(parent: str, prefix: str, keep: bool = False):
    """(workdir, native dir, mounted Mount) side by side in a new directory of
    parent (so on the same disk); unmounted and removed (unless keep) after."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        native = workdir / "native"
        native.mkdir()
        vfs = Mount(workdir)
        try:
            vfs.mount()
            yield workdir, native, vfs
            vfs.umount()
        finally:
            vfs.cleanup()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
