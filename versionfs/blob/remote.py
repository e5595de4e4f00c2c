"""Serve any store to another machine over HTTP, and the client that is itself
a store (seed 002: RemoteStore / StoreService, net/rpc there, HTTP here).

Protocol (every request carries ``Authorization: Bearer <token>``)::

    GET|HEAD|PUT|DELETE /v1/blobs/<64 hex>     one blob
    GET /v1/blobs                              all keys, one hex per line (chunked)
    GET|PUT|DELETE /v1/objects/<name>          named objects, if the served store
    GET /v1/objects?prefix=P                   has them (``.bucket``): ETag header,
                                               If-None-Match: * / If-Match: "etag"

Errors travel as status codes (404 not found, 412 precondition failed, 401 bad
token, 403 read-only, 422 blob fails verification, 503 unavailable, 507 full)
with the message as the body, and the client raises the same error classes the
served store raised. Blobs cross the wire as the codec wrote them, so with
encryption on the server never sees plaintext; the token is still a secret:
use ``--tls-cert``/``--tls-key`` (or a tunnel) on anything but loopback.

The server trusts no client to behave: a PUT body must declare its length
(Content-Length, once, a plain non-negative number; else 411 or 400) and
arrive whole, or nothing is stored (the client may have died mid-upload); a
blob body must also verify as far as the server can without the key
(``codec.check_without_key``: the length field, and the content of
unencrypted blobs; else 422). The served store writes atomically (a complete
body replaces the old object at once). Idle or stalled connections are closed
after a timeout, and connections beyond a limit get a 503 at once.
"""

from __future__ import annotations

import hmac
import http.client
import os
import secrets
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .codec import check_without_key
from .errors import (BlobError, CorruptBlobError, NotFoundError, NotHashPointerError,
                     NotImplementedStoreError, PreconditionFailedError, ReadOnlyError,
                     StoreFullError, StoreUnavailableError)
from .pointer import Pointer, as_pointer
from .store import Buffer, Store

MAX_BODY = 1 << 30
CLIENT_TIMEOUT = 60.0       # seconds a connection may be idle or stall mid-request
MAX_CONNECTIONS = 64
_STATUS_OF = [  # most specific first
    (NotFoundError, 404), (PreconditionFailedError, 412), (ReadOnlyError, 403),
    (CorruptBlobError, 422), (StoreFullError, 507), (StoreUnavailableError, 503),
    (NotImplementedStoreError, 501), (NotHashPointerError, 400), (ValueError, 400),
    (TimeoutError, 408),
]
_ERROR_OF = {404: NotFoundError, 412: PreconditionFailedError, 403: ReadOnlyError,
             422: CorruptBlobError, 507: StoreFullError, 503: StoreUnavailableError,
             501: NotImplementedStoreError, 400: ValueError, 411: ValueError, 413: ValueError,
             408: StoreUnavailableError}


class _Refused(Exception):
    """A request refused with ``status`` before the store saw it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StoreService"

    def log_message(self, fmt, *args):   # quiet by default; errors go to stderr below
        if self.server.verbose:
            super().log_message(fmt, *args)

    def setup(self) -> None:
        self.timeout = self.server.client_timeout     # the socket's, for every read and write
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()            # here, under the timeout (see StoreService)

    # -- plumbing ------------------------------------------------------------
    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        want = "Bearer " + self.server.token
        if hmac.compare_digest(got.encode(), want.encode()):
            return True
        self.close_connection = True
        self._send(401, b"missing or wrong bearer token")
        return False

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_lines(self, lines: Iterator[str]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        batch = []
        for line in lines:
            batch.append(line)
            if len(batch) >= 1024:
                self._chunk("".join(x + "\n" for x in batch).encode())
                batch = []
        if batch:
            self._chunk("".join(x + "\n" for x in batch).encode())
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _body(self) -> bytes:
        """The whole body, or _Refused (module doc): never a part of one."""
        if self.headers.get("Transfer-Encoding"):
            raise _Refused(411, "send the body with a Content-Length, not a Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _Refused(411, "a body needs a Content-Length")
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise _Refused(400, f"bad Content-Length {', '.join(lengths)!r}")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise _Refused(413, f"body of {length} bytes is over the {MAX_BODY}-byte limit")
        data = self.rfile.read(length)
        if len(data) != length:
            raise _Refused(400, f"body ended after {len(data)} of {length} bytes; nothing stored")
        return data

    def _dispatch(self) -> None:
        if not self._authorized():
            return
        try:
            parts = urlsplit(self.path)
            if parts.path == "/v1/blobs":
                self._require("GET")
                return self._send_lines(k.hex() for k in self.server.store.enumerate())
            if parts.path.startswith("/v1/blobs/"):
                return self._blob(Pointer.from_hex(parts.path[len("/v1/blobs/"):]))
            if parts.path == "/v1/objects" or parts.path.startswith("/v1/objects/"):
                bucket = getattr(self.server.store, "bucket", None)
                if bucket is None:
                    raise NotImplementedStoreError("the served store has no named objects")
                if parts.path == "/v1/objects":
                    self._require("GET")
                    prefix = parse_qs(parts.query).get("prefix", [""])[-1]
                    return self._send_lines(quote(n) for n in bucket.list(prefix))
                return self._object(bucket, unquote(parts.path[len("/v1/objects/"):]))
            self._send(404, b"no such endpoint")
        except Exception as exc:  # noqa: BLE001 - every error becomes a status code
            status = exc.status if isinstance(exc, _Refused) else next(
                (s for cls, s in _STATUS_OF if isinstance(exc, cls)), 500)
            if status == 500 or isinstance(exc, (_Refused, CorruptBlobError, TimeoutError)):
                print(f"serve-store: {self.command} {self.path} failed ({status}): {exc}",
                      file=sys.stderr)
            if self.command == "PUT":
                self.close_connection = True    # the body may be unread
            try:
                self._send(status, str(exc).encode())
            except OSError:                     # the client is gone
                self.close_connection = True

    def _require(self, *methods: str) -> None:
        if self.command not in methods:
            raise ValueError(f"{self.command} is not allowed here")

    def _blob(self, key: Pointer) -> None:
        store = self.server.store
        if self.command == "GET":
            self._send(200, store.get(key))
        elif self.command == "HEAD":
            self._send(200 if store.contains(key) else 404)
        elif self.command == "PUT":
            data = self._body()
            if self.server.verify is not None:
                self.server.verify(key, data)
            store.put(key, data)
            self._send(204)
        elif self.command == "DELETE":
            store.delete(key)
            self._send(204)

    def _object(self, bucket, name: str) -> None:
        if self.command == "GET":
            data, etag = bucket.get(name)
            self._send(200, data, {"ETag": f'"{etag}"'})
        elif self.command == "PUT":
            data = self._body()
            if self.headers.get("If-None-Match") == "*":
                etag = bucket.put_if_absent(name, data)
            elif self.headers.get("If-Match"):
                etag = bucket.put_if_match(name, data, self.headers["If-Match"].strip('"'))
            else:
                etag = bucket.put(name, data)
            self._send(200, b"", {"ETag": f'"{etag}"'})
        elif self.command == "DELETE":
            if self.headers.get("If-Match"):
                bucket.delete_if_match(name, self.headers["If-Match"].strip('"'))
            else:
                bucket.delete(name)
            self._send(204)
        else:
            raise ValueError(f"{self.command} is not allowed on objects")

    do_GET = do_HEAD = do_PUT = do_DELETE = _dispatch


class StoreService(ThreadingHTTPServer):
    """An HTTP server, one thread per connection (at most ``max_connections``),
    exposing ``store``.

    ``verify(key, body)`` checks a blob before it is stored (the default checks
    what it can without the key; None stores any bytes, for stores that hold
    something other than codec output). With TLS the handshake runs in the
    connection's thread under ``client_timeout``, not in the accepting one,
    where a client that never finishes it would stall every other.
    """

    daemon_threads = True

    def __init__(self, store: Store, token: str, address: tuple[str, int] = ("127.0.0.1", 0),
                 *, ssl_context: ssl.SSLContext | None = None, verbose: bool = False,
                 verify: Callable[[Pointer, bytes], None] | None = check_without_key,
                 client_timeout: float = CLIENT_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        if not token:
            raise ValueError("the store service needs a non-empty token")
        if client_timeout <= 0 or max_connections <= 0:
            raise ValueError("the client timeout and the connection limit must be positive")
        self.store = store
        self.token = token
        self.verbose = verbose
        self.verify = verify
        self.client_timeout = client_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self.scheme = "https" if ssl_context is not None else "http"

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        """Over the connection limit: a 503 at once (clients retry it), then close.
        Briefly, from the accepting thread; a TLS connection is just closed."""
        if not isinstance(request, ssl.SSLSocket):
            body = b"too many connections; retry later"
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """One line, not a traceback: a client that broke off (or failed the TLS
        handshake) is not the server's error."""
        exc = sys.exc_info()[1]
        print(f"serve-store: connection from {client_address[0]}: {exc!r}", file=sys.stderr)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def start_background(self) -> threading.Thread:
        """Serve from a daemon thread (for tests and embedding); stop with shutdown()."""
        t = threading.Thread(target=self.serve_forever, name="vfs-store-service", daemon=True)
        t.start()
        return t


class _Client:
    """One keep-alive HTTP connection per thread, re-opened once if stale."""

    def __init__(self, url: str, token: str, timeout: float, cafile: str | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a remote store URL (want http[s]://host:port): {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host, self.port, self.tls = parts.hostname, parts.port, parts.scheme == "https"
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=cafile) if self.tls else None
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.tls:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                   context=self.context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Buffer | None = None,
                headers: dict | None = None, what: str = "") -> http.client.HTTPResponse:
        """Send a request; on a non-2xx answer raise the matching error."""
        hdrs = {"Authorization": "Bearer " + self.token, **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(memoryview(body).nbytes)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._drop()
                # A kept-alive connection the server closed fails once; retry fresh.
                if attempt == 2 or isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                    raise StoreUnavailableError(f"{what or path}: remote store {self.url} "
                                                f"unreachable: {exc}") from exc
        if resp.status >= 300:
            message = resp.read().decode(errors="replace") or resp.reason
            if resp.will_close:
                self._drop()
            if resp.status == 401:
                raise BlobError(f"remote store {self.url} refused the token: {message}")
            raise _ERROR_OF.get(resp.status, BlobError)(
                f"{what or path}: {message}" if what and what not in message else message)
        return resp

    def read(self, method: str, path: str, **kw) -> tuple[bytes, http.client.HTTPResponse]:
        resp = self.request(method, path, **kw)
        try:
            return resp.read(), resp
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            self._drop()
            raise StoreUnavailableError(f"remote store {self.url}: {exc}") from exc

    def lines(self, path: str) -> Iterator[str]:
        data, _ = self.read("GET", path)
        return iter(data.decode().splitlines())

    def close(self) -> None:
        self._drop()


class RemoteStore(Store):
    """A Store served by a StoreService elsewhere; usable as a slow store."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, cafile: str | None = None):
        if not token:
            raise ValueError("a remote store needs its token (--token-file of serve-store)")
        self._client = _Client(url, token, timeout, cafile)
        self.url = self._client.url
        self.bucket = RemoteBucket(self._client)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def get(self, key: Pointer) -> bytes:
        key = as_pointer(key)
        return self._client.read("GET", f"/v1/blobs/{key.hex()}", what=f"blob {key.hex()}")[0]

    def put(self, key: Pointer, data: Buffer) -> None:
        key = as_pointer(key)
        self._client.read("PUT", f"/v1/blobs/{key.hex()}", body=data, what=f"blob {key.hex()}")

    def delete(self, key: Pointer) -> None:
        key = as_pointer(key)
        self._client.read("DELETE", f"/v1/blobs/{key.hex()}", what=f"blob {key.hex()}")

    def contains(self, key: Pointer) -> bool:
        try:
            self._client.read("HEAD", f"/v1/blobs/{as_pointer(key).hex()}")
            return True
        except NotFoundError:
            return False

    def enumerate(self) -> Iterator[Pointer]:
        for line in self._client.lines("/v1/blobs"):
            yield Pointer.from_hex(line)

    def close(self) -> None:
        self._client.close()


class RemoteBucket:
    """The served store's named objects, with the S3Bucket API."""

    def __init__(self, client: _Client):
        self._client = client

    def _path(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"bad object name {name!r}")
        return "/v1/objects/" + quote(name, safe="/")

    def get(self, name: str) -> tuple[bytes, str]:
        data, resp = self._client.read("GET", self._path(name), what=f"object {name!r}")
        return data, (resp.getheader("ETag") or "").strip('"')

    def _put(self, name: str, data: Buffer, headers: dict) -> str:
        _, resp = self._client.read("PUT", self._path(name), body=data, headers=headers,
                                    what=f"object {name!r}")
        return (resp.getheader("ETag") or "").strip('"')

    def put(self, name: str, data: Buffer) -> str:
        return self._put(name, data, {})

    def put_if_absent(self, name: str, data: Buffer) -> str:
        return self._put(name, data, {"If-None-Match": "*"})

    def put_if_match(self, name: str, data: Buffer, etag: str) -> str:
        return self._put(name, data, {"If-Match": f'"{etag.strip(chr(34))}"'})

    def delete_if_match(self, name: str, etag: str) -> None:
        self._client.read("DELETE", self._path(name), what=f"object {name!r}",
                          headers={"If-Match": f'"{etag.strip(chr(34))}"'})

    def delete(self, name: str) -> None:
        self._client.read("DELETE", self._path(name), what=f"object {name!r}")

    def list(self, prefix: str = "") -> Iterator[str]:
        for line in self._client.lines("/v1/objects?prefix=" + quote(prefix, safe="")):
            yield unquote(line)


def read_token_file(path: str | os.PathLike, create: bool = False) -> str:
    """The token in ``path``; with ``create``, make a random one (mode 0600) if absent."""
    try:
        with open(path) as f:
            token = f.read().strip()
    except FileNotFoundError:
        if not create:
            raise ValueError(f"token file {path} does not exist") from None
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        print(f"serve-store: wrote a new token to {path}", file=sys.stderr)
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
