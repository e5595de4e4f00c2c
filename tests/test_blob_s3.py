"""S3Bucket and S3Store against the real SeaweedFS server."""

import os
import threading

import pytest
from blob_checks import check_named_object_contract

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.errors import NotFoundError, PreconditionFailedError
from versionfs.blob.keys import new_master_key
from versionfs.blob.pointer import Pointer
from versionfs.blob.s3 import S3Bucket, S3Store, parse_s3_url

pytestmark = pytest.mark.s3


def test_parse_s3_url():
    assert parse_s3_url("s3://b/a/b/") == ("b", "a/b/", {})
    assert parse_s3_url("s3://b") == ("b", "", {})
    assert parse_s3_url("s3://b/p?region=eu-west-1")[2] == {"region": "eu-west-1"}
    with pytest.raises(ValueError):
        parse_s3_url("http://b/p")


def test_bucket_conditional_writes(s3_url):
    check_named_object_contract(S3Bucket.from_url(s3_url))


def test_two_concurrent_conditional_writers_exactly_one_wins(s3_url):
    """Two clients (own connections) race If-Match on one key, many rounds."""
    a, b = S3Bucket.from_url(s3_url), S3Bucket.from_url(s3_url)
    for round_ in range(10):
        name = f"cas/{round_}"
        etag = a.put(name, b"start")
        barrier = threading.Barrier(2)
        results = {}

        def writer(who, bucket):
            barrier.wait()
            try:
                bucket.put_if_match(name, who.encode() * 1000, etag)
                results[who] = "won"
            except PreconditionFailedError:
                results[who] = "lost"

        threads = [threading.Thread(target=writer, args=w) for w in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == ["lost", "won"], results
        winner = next(w for w, r in results.items() if r == "won")
        assert a.get(name)[0] == winner.encode() * 1000


def test_s3_store_blob_round_trip(s3_url):
    store = S3Store(s3_url)
    blobs = BlobStore(store, Codec(None))
    data = os.urandom(200_000)
    p = blobs.put(data)
    assert blobs.get(p) == data and blobs.contains(p)
    assert list(store.enumerate()) == [p]
    assert not store.contains(Pointer.random())
    with pytest.raises(NotFoundError):
        store.get(Pointer.random())
    blobs.delete(p)
    assert not blobs.contains(p)
    store.close()


def test_with_encryption_no_bucket_object_contains_the_plaintext(s3_server, s3_bucket, s3_url):
    codec = Codec(new_master_key())
    store = S3Store(s3_url)
    blobs = BlobStore(store, codec)
    secrets = [b"my tax return %d " % i * 400 for i in range(5)] + [os.urandom(1000) + b"PLAINTEXT-MARKER"]
    pointers = [blobs.put(s) for s in secrets]
    store.bucket.put("meta/root", codec.seal(b"filename: diary.txt", b"meta/root"))
    client = s3_server.client()
    objects = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert len(objects) == len(secrets) + 1
    for obj in objects:
        body = client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
        for s in secrets:
            assert s[:32] not in body and b"PLAINTEXT-MARKER" not in body
        assert b"diary" not in body
    assert [blobs.get(p) for p in pointers] == secrets
