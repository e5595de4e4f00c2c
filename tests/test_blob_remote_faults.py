"""Issue 11, finding 3: ``versionfs serve-store`` under hostile or broken
clients. A real serve-store child process, real sockets and http.client: a
body that is cut off, has no honest length or fails verification is refused
and leaves nothing stored; idle and stalled connections are closed; the
number of connections is bounded."""

import http.client
import os
import socket

import pytest
from blob_checks import ServeStore
from history_util import wait_for

from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.errors import CorruptBlobError, NotFoundError, StoreUnavailableError
from versionfs.blob.keys import new_master_key
from versionfs.blob.pointer import Pointer
from versionfs.blob.remote import RemoteStore


@pytest.fixture
def served(tmp_path):
    with ServeStore(tmp_path, "--verbose") as s:
        yield s


@pytest.fixture
def impatient(tmp_path):
    """A serve-store that gives a silent client 2 seconds."""
    with ServeStore(tmp_path, "--timeout", "2") as s:
        yield s


def raw_request(served, head: str, body: bytes = b"", close_write: bool = True) -> bytes:
    """Send ``head`` (request line and headers, no blank line) and ``body`` on a
    fresh socket; the server's whole answer."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as s:
        s.sendall(f"{head}\r\nHost: x\r\nAuthorization: Bearer {served.token}\r\n\r\n".encode()
                  + body)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                break
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_client_disconnecting_mid_put_leaves_nothing_stored(served):
    """The issue's example: 10 of 100,000 bytes sent, then the client is gone.
    Neither the blob nor a named object (``meta/head``, which already holds a
    good value) may keep the fragment."""
    remote = RemoteStore(served.url, served.token)
    remote.bucket.put("meta/head", b"good head")
    key = Pointer.random()
    for path in (f"/v1/blobs/{key.hex()}", "/v1/objects/meta/head"):
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=20)
        conn.putrequest("PUT", path)
        conn.putheader("Authorization", f"Bearer {served.token}")
        conn.putheader("Content-Length", "100000")
        conn.endheaders()
        conn.send(os.urandom(10))
        conn.close()
        served.wait_for_log(f"PUT {path} ")         # the server is done with it
    store = DirectoryStore(served.root / "store")
    assert not store.contains(key), "a truncated upload was kept under the blob's name"
    assert store.bucket.get("meta/head")[0] == b"good head"


def test_put_needs_an_honest_content_length(served):
    store = DirectoryStore(served.root / "store")
    key = Pointer.random()
    path = f"/v1/blobs/{key.hex()}"
    assert status_of(raw_request(served, f"PUT {path} HTTP/1.1")) == 411
    answer = raw_request(served, f"PUT {path} HTTP/1.1\r\nContent-Length: -1", b"0123456789")
    assert status_of(answer) == 400, answer
    answer = raw_request(served, f"PUT {path} HTTP/1.1\r\nContent-Length: 12\r\n"
                         "Content-Length: 10", b"0123456789")
    assert status_of(answer) == 400, answer
    assert not store.contains(key)
    answer = raw_request(served, "PUT /v1/objects/meta/head HTTP/1.1\r\nContent-Length: -5",
                         b"0123456789")
    assert status_of(answer) == 400, answer
    with pytest.raises(NotFoundError):
        store.bucket.get("meta/head")


def test_blob_bodies_that_do_not_verify_are_refused(served):
    """What can be checked without the key is: the codec's length field, and
    for unencrypted blobs the content against the pointer."""
    remote = RemoteStore(served.url, served.token)
    store = DirectoryStore(served.root / "store")
    for codec in (Codec(None), Codec(new_master_key())):
        key, blob = codec.encode(os.urandom(5000))
        bad = [blob[:-10], blob[:3], b""]
        if not codec.encrypted:
            bad.append(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
        for body in bad:
            with pytest.raises(CorruptBlobError):
                remote.put(key, body)
            assert not store.contains(key)
        remote.put(key, blob)
        assert store.get(key) == blob


def test_idle_and_stalled_connections_are_closed(impatient):
    served = impatient
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as idle:
        assert idle.recv(100) == b"", "an idle connection was kept open"
    key = Pointer.random()
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as stalled:
        stalled.sendall(f"PUT /v1/blobs/{key.hex()} HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {served.token}\r\nContent-Length: 1000\r\n\r\n"
                        "0123456789".encode())
        answer = stalled.recv(1000)
        assert answer == b"" or status_of(answer) == 408, answer
    assert not DirectoryStore(served.root / "store").contains(key)


def test_connections_beyond_the_limit_are_refused(tmp_path):
    with ServeStore(tmp_path, "--max-connections", "2") as served:
        held = [socket.create_connection(("127.0.0.1", served.port), timeout=20)
                for _ in range(2)]
        with socket.create_connection(("127.0.0.1", served.port), timeout=20) as third:
            assert third.recv(100).startswith(b"HTTP/1.1 503 "), "no bound on connections"
        held.pop().close()
        remote = RemoteStore(served.url, served.token, timeout=20)

        def answers():
            try:
                return not remote.contains(Pointer.random())
            except StoreUnavailableError:       # refused until the slot is free
                return False
        wait_for(answers, 20, "a free connection slot")
        held[0].close()


def self_signed_cert(directory):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_client_that_never_handshakes_stalls_no_one(tmp_path):
    """The TLS handshake runs in the connection's thread, under the timeout: a
    client that connects and says nothing does not hold up the others."""
    cert, key = self_signed_cert(tmp_path)
    with ServeStore(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key),
                    "--timeout", "2") as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=20) as silent:
            remote = RemoteStore(served.url, served.token, timeout=10, cafile=str(cert))
            key_, blob = Codec(None).encode(b"over tls")
            remote.put(key_, blob)
            assert remote.get(key_) == blob
            assert silent.recv(100) == b""          # dropped after the timeout
