"""Checks and helpers shared by the blob tests: one contract, several
implementations; serve-store in a child process."""

import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from history_util import free_port

from versionfs.blob.errors import NotFoundError, PreconditionFailedError


def check_named_object_contract(bucket):
    """The named-object API (S3Bucket, DirectoryBucket) incl. conditional writes."""
    etag = bucket.put_if_absent("meta/head", b"v1")
    assert '"' not in etag
    with pytest.raises(PreconditionFailedError):
        bucket.put_if_absent("meta/head", b"v2")
    assert bucket.get("meta/head") == (b"v1", etag)
    etag2 = bucket.put_if_match("meta/head", b"v2", etag)
    with pytest.raises(PreconditionFailedError):
        bucket.put_if_match("meta/head", b"v3", etag)
    with pytest.raises(PreconditionFailedError):
        bucket.put_if_match("meta/missing", b"v3", etag)
    with pytest.raises(PreconditionFailedError):
        bucket.delete_if_match("meta/head", etag)
    bucket.put("meta/other", b"o")
    assert list(bucket.list("meta/")) == ["meta/head", "meta/other"]
    bucket.delete_if_match("meta/head", f'"{etag2}"')
    with pytest.raises(NotFoundError):
        bucket.get("meta/head")
    bucket.delete("meta/head")


class ServeStore:
    """``versionfs serve-store`` over ``ROOT/store`` in a child process on a free
    port; its stderr is read line by line so a test can wait for a log line."""

    def __init__(self, root, *options: str):
        self.root = root
        self.port = free_port()
        scheme = "https" if "--tls-cert" in options else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.token_file = root / "token"
        code = ("import sys; from versionfs.cli.bucket import serve_store; "
                "sys.exit(serve_store(sys.argv[1:]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, (root / "store").as_uri(), "--listen",
             f"127.0.0.1:{self.port}", "--token-file", str(self.token_file), *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_log, daemon=True).start()
        self.first_line = self.proc.stdout.readline()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.put(line)

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        """The first stderr line (from now on) that contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.log.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"serve-store logged nothing with {text!r} "
                                     f"in {timeout}s") from None
            if text in line:
                return line

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.proc.stdout.close()

    def __enter__(self) -> "ServeStore":
        assert self.url in self.first_line, f"serve-store did not start: {self.first_line!r}"
        return self

    def __exit__(self, *exc) -> None:
        assert self.stop() == 0
