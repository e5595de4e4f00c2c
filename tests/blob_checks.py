"""Checks shared by the blob tests: one contract, several implementations."""

import pytest

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
