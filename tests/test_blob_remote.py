"""RemoteStore + StoreService over real HTTP on 127.0.0.1, and open_store URLs."""

import os
import socket

import pytest
from blob_checks import ServeStore, check_named_object_contract

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.errors import BlobError, NotFoundError, StoreUnavailableError
from versionfs.blob.paired import Paired
from versionfs.blob.pointer import Pointer
from versionfs.blob.remote import RemoteStore, StoreService
from versionfs.blob.s3 import S3Store
from versionfs.blob.url import open_store


@pytest.fixture
def service(tmp_path):
    # verify=None: these tests store arbitrary bytes, not codec output
    svc = StoreService(DirectoryStore(tmp_path / "served"), "s3cret-token", verify=None)
    svc.start_background()
    yield svc
    svc.shutdown()
    svc.server_close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_remote_store_round_trip(service):
    remote = RemoteStore(service.url, "s3cret-token")
    items = {Pointer.random(): os.urandom(n) for n in (0, 1, 70_000, 2_000_000)}
    for key, data in items.items():
        remote.put(key, data)
    assert all(remote.get(k) == d for k, d in items.items())
    assert set(remote.enumerate()) == set(items)
    key = next(iter(items))
    assert remote.contains(key) and not remote.contains(Pointer.random())
    remote.delete(key)
    remote.delete(key)
    missing = Pointer.random()
    with pytest.raises(NotFoundError, match=missing.hex()):
        remote.get(missing)
    assert service.store.get(next(iter(list(items)[1:]))) is not None
    remote.close()


def test_remote_bucket_named_objects(service):
    check_named_object_contract(RemoteStore(service.url, "s3cret-token").bucket)


def test_wrong_token_is_refused(service):
    with pytest.raises(BlobError, match="token"):
        RemoteStore(service.url, "guess").get(Pointer.random())
    with pytest.raises(BlobError, match="token"):
        RemoteStore(service.url, "guess").put(Pointer.random(), b"x" * 100_000)


def test_unreachable_remote_is_store_unavailable():
    with pytest.raises(StoreUnavailableError):
        RemoteStore(f"http://127.0.0.1:{free_port()}", "t").get(Pointer.random())


def test_remote_as_slow_store_of_a_pair(tmp_path, service):
    pair = Paired(DiskStore(tmp_path / "fast"), RemoteStore(service.url, "s3cret-token"),
                  tmp_path / "journal")
    blobs = BlobStore(pair, Codec(None))
    data = [os.urandom(100_000) for _ in range(10)]
    pointers = [blobs.put(d) for d in data]
    pair.flush(timeout=30)
    assert all(service.store.contains(p) for p in pointers)
    for p in pointers:
        pair.fast.delete(p)
    assert [blobs.get(p) for p in pointers] == data
    assert all(pair.fast.contains(p) for p in pointers)
    pair.close()


def test_open_store_urls(tmp_path, monkeypatch, service):
    assert isinstance(open_store((tmp_path / "d").as_uri()), DirectoryStore)
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    remote = open_store(service.url, token_file=str(token_file))
    remote.put(Pointer.random(), b"hi")
    monkeypatch.setenv("VERSIONFS_STORE_TOKEN", "s3cret-token")
    assert len(list(open_store(service.url).enumerate())) == 1
    monkeypatch.delenv("VERSIONFS_STORE_TOKEN")
    with pytest.raises(ValueError, match="token"):
        open_store(service.url)
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://x/y")


def test_serve_store_main_subprocess(tmp_path):
    with ServeStore(tmp_path) as served:
        assert oct(served.token_file.stat().st_mode & 0o777) == "0o600"
        remote = open_store(served.url, token_file=str(served.token_file))
        key, blob = Codec(None).encode(b"served")      # serve-store keeps only blobs that verify
        remote.put(key, blob)
        assert DirectoryStore(tmp_path / "store").get(key) == blob
