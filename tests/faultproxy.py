"""A TCP proxy on 127.0.0.1 that breaks the connections to a server on command.

Put it in front of the SeaweedFS the fixtures start (``tests/s3server.py``)
and point one machine's ``AWS_ENDPOINT_URL`` at ``proxy.endpoint``: that
machine alone sees the network faults, other machines talk to the server
directly.  Faults, each until ``heal()``:

* ``drop()``: every open connection is reset, new ones are reset at once
  (a dead link or a refusing firewall: requests fail fast);
* ``stall()``: connections stay open but no byte moves either way (a link
  that silently stopped: requests hang until the client's timeout, or until
  ``heal()`` resets them);
* ``truncate(n)``: each connection forwards at most ``n`` more bytes of what
  the client sends, then is reset (a request cut off mid-body).

``heal()`` resets the connections a fault left hanging, so clients retry on
fresh ones.  ``connections`` counts accepted connections (to check that the
client really went through the proxy).
"""

from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

CHUNK = 64 << 10
POLL = 0.05


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a broken link looks to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket, budget: int | None):
        self.client, self.upstream = client, upstream
        self.budget = budget            # client bytes still forwarded (truncate), None = all
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _reset(self.client)
            _reset(self.upstream)


class FaultProxy:
    """``FaultProxy(target_port).start()``; ``close()`` when done."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.truncate_bytes = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def env(self) -> dict[str, str]:
        """Environment that sends a versionfs process's S3 traffic through the proxy."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint}

    # -- commands ---------------------------------------------------------------
    def drop(self) -> None:
        with self._lock:
            self.mode = "drop"
            links = list(self._links)
        for link in links:
            link.close()

    def stall(self) -> None:
        with self._lock:
            self.mode = "stall"

    def truncate(self, nbytes: int) -> None:
        with self._lock:
            self.mode, self.truncate_bytes = "truncate", nbytes
            for link in self._links:
                link.budget = nbytes

    def heal(self) -> None:
        """Back to passing everything; connections a fault left hanging are reset."""
        with self._lock:
            was, self.mode = self.mode, "pass"
            links = list(self._links) if was in ("stall", "truncate") else []
        for link in links:
            link.close()

    def close(self) -> None:
        self._stop.set()
        _reset(self._listener)
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        self._thread.join(5)

    # -- plumbing ---------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], POLL)
                if not readable:
                    continue
                client, _addr = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "drop":
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            link = _Link(client, upstream,
                         self.truncate_bytes if self.mode == "truncate" else None)
            self._links.add(link)
        try:
            self._pump(link)
        finally:
            with self._lock:
                self._links.discard(link)
            link.close()

    def _pump(self, link: _Link) -> None:
        ends = {link.client: link.upstream, link.upstream: link.client}
        while not link.closed and not self._stop.is_set():
            if self.mode == "stall":
                self._stop.wait(POLL)
                continue
            try:
                readable, _, _ = select.select(list(ends), [], [], POLL)
            except (OSError, ValueError):
                return
            for src in readable:
                if self.mode != "pass" and self.mode != "truncate":
                    break
                try:
                    data = src.recv(CHUNK)
                except OSError:
                    return
                if not data:
                    return
                if src is link.client and link.budget is not None:
                    data = data[:link.budget]
                    link.budget -= len(data)
                try:
                    if data:
                        ends[src].sendall(data)
                except OSError:
                    return
                if src is link.client and link.budget == 0:
                    return                      # cut off mid-request: reset both sides


@pytest.fixture
def proxy(s3_server):
    """A FaultProxy in front of the test SeaweedFS, closed after the test."""
    p = FaultProxy(s3_server.ports["s3.port"]).start()
    try:
        yield p
    finally:
        p.close()
