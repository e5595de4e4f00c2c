"""``versionfs clone`` (recover a filesystem from its bucket) and ``versionfs
serve-store`` (serve a blob store to other machines)."""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading

from versionfs.blob.errors import BlobError
from versionfs.blob.remote import CLIENT_TIMEOUT, MAX_CONNECTIONS, StoreService, read_token_file
from versionfs.blob.url import open_store
from versionfs.bucket import publish
from versionfs.bucket.clone import clone

from .command import EXIT_ERROR, EXIT_OK, UserError, command, error
from .keys import add_secret_args, secret_source


def _setup_clone(p: argparse.ArgumentParser) -> None:
    p.add_argument("slow_url", metavar="SLOW_URL",
                   help="the filesystem's slow store: s3://bucket/prefix or file:///path")
    p.add_argument("state_dir", metavar="STATE_DIR", help="new (or empty) directory for this machine")
    add_secret_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


@command("clone", "recover a filesystem from its slow store onto this machine", _setup_clone)
def cmd_clone(args: argparse.Namespace) -> int:
    try:
        root = clone(args.slow_url, args.state_dir, secret_source(args, args.slow_url),
                     quiet=args.quiet)
    except (publish.PublishError, BlobError) as e:
        raise UserError(f"clone failed: {e}") from None
    print(f"mount it with: versionfs mount {root} MOUNTPOINT")
    return EXIT_OK


@command("serve-store", "serve a blob store to other machines (see serve-store --help)",
         lambda p: p.add_argument("args", nargs=argparse.REMAINDER))
def cmd_serve_store(args: argparse.Namespace) -> int:
    return run_serve_store(list(args.args))


def run_serve_store(argv: list[str]) -> int:
    """serve-store owns its whole argument list (``versionfs.cli.main`` sends it here)."""
    from .daemon import user_error_types
    try:
        return int(serve_store(argv) or 0)
    except user_error_types() as e:
        error(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def serve_store(argv: list[str]) -> int:
    """``versionfs serve-store URL --listen HOST:PORT --token-file F [--tls-cert C --tls-key K]``

    Serves the store at URL (``file:///…``, ``s3://bucket/prefix``, or another
    remote store) to other machines until SIGINT/SIGTERM. Clients use it as a
    slow store with the URL ``http[s]://HOST:PORT`` and the same token. The
    token file is created with a random token (mode 0600) if it does not exist.

    Only complete uploads are stored, and blobs only if they verify as far as
    the server can without the key; idle or stalled clients are disconnected
    after --timeout, and connections beyond --max-connections get a 503.
    """
    parser = argparse.ArgumentParser(prog="versionfs serve-store",
                                     description=serve_store.__doc__.split("\n\n")[1])
    parser.add_argument("url", help="the store to serve (file:///path, s3://bucket/prefix, …)")
    parser.add_argument("--listen", default="127.0.0.1:7480", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--token-file", required=True, help="file holding the bearer token")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    parser.add_argument("--timeout", type=float, default=CLIENT_TIMEOUT, metavar="SECONDS",
                        help="close a connection idle or stalled this long (default %(default)g)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                        help="refuse connections beyond N with a 503 (default %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--listen wants HOST:PORT, got {args.listen!r}")
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print("serve-store: warning: plain HTTP on a non-loopback address sends the token "
              "in the clear; use --tls-cert/--tls-key or a tunnel", file=sys.stderr)
    token = read_token_file(args.token_file, create=True)
    store = open_store(args.url)
    if args.timeout <= 0 or args.max_connections <= 0:
        parser.error("--timeout and --max-connections must be positive")
    service = StoreService(store, token, (host.strip("[]"), int(port)), ssl_context=context,
                           verbose=args.verbose, client_timeout=args.timeout,
                           max_connections=args.max_connections)

    def stop(signum, frame):
        threading.Thread(target=service.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serve-store: serving {args.url} on {service.url}", flush=True)
    try:
        service.serve_forever()
    finally:
        service.server_close()
        store.close()
    return 0
