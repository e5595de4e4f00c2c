"""S3 (and S3-compatible) storage: named objects with conditional writes, and
the blob store on top of them.

Configuration follows the AWS conventions so existing setups just work: the
endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or an
``?endpoint=`` URL parameter), the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` (default us-east-1), credentials from the usual chain.
Addressing is path-style (works with every S3-compatible server and with
bucket names containing dots), and checksums are only computed/validated when
the operation requires them, because several servers reject or mangle the
newer default trailing checksums. botocore's "standard" retry mode retries
throttling, 5xx and connection errors with exponential backoff.

Layout under ``s3://bucket/prefix``: blobs at ``prefix/blobs/<hex>``, named
objects (metadata) at ``prefix/<name>``, the same as DirectoryStore.
"""

from __future__ import annotations

import os
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from .errors import (BlobError, NotFoundError, PreconditionFailedError,
                     StoreUnavailableError)
from .pointer import Pointer, as_pointer
from .store import Buffer, Store

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def make_client(endpoint_url: str | None = None, region: str | None = None,
                max_attempts: int = 4, max_pool_connections: int = 32):
    """A thread-safe boto3 S3 client configured for S3-compatible servers."""
    import boto3
    from botocore.config import Config

    endpoint_url = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or None)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"mode": "standard", "max_attempts": max_attempts},
                    connect_timeout=3, read_timeout=60,
                    max_pool_connections=max_pool_connections)
    # Sessions are not thread-safe but the clients they make are.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                          region_name=region, config=config)


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``s3://bucket/prefix?endpoint=…&region=…`` -> (bucket, "prefix/", options)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 URL (want s3://bucket/prefix): {url!r}")
    prefix = parts.path.strip("/")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.netloc, (prefix + "/" if prefix else ""), options


def _etag(raw: str | None) -> str:
    # SeaweedFS returns some ETags (CopyObject) without quotes; compare bare.
    return (raw or "").strip('"')


def _translate(exc: Exception, what: str) -> Exception:
    """Map a botocore error to this layer's errors."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnError,
                                     NoCredentialsError)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND or status == 404 and code != "NoSuchBucket":
            return NotFoundError(f"not found: {what}")
        if code in _PRECONDITION or status in (409, 412):
            return PreconditionFailedError(f"conditional write lost: {what} changed or exists")
        if code == "NoSuchBucket":
            return BlobError(f"{what}: the bucket does not exist")
        if status is not None and status >= 500 or code in ("SlowDown", "RequestTimeout"):
            return StoreUnavailableError(f"{what}: server error {code}: {err.get('Message')}")
        return BlobError(f"{what}: S3 error {code}: {err.get('Message')}")
    if isinstance(exc, NoCredentialsError):
        return BlobError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, (BotoConnError, BotoCoreError, OSError)):
        return StoreUnavailableError(f"{what}: S3 endpoint unreachable: {exc}")
    return exc


class S3Bucket:
    """Raw named objects under ``prefix`` in one bucket, with conditional writes.

    Conditional operations give the metadata layer compare-and-swap:
    ``put_if_absent`` sends ``If-None-Match: *``, ``put_if_match`` and
    ``delete_if_match`` send ``If-Match: "etag"``. A lost race, or a missing
    object in a conditional operation, is PreconditionFailedError. ETags are
    returned without quotes.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client=None,
                 endpoint_url: str | None = None, region: str | None = None):
        self.bucket_name = bucket
        self.prefix = prefix
        self.client = client if client is not None else make_client(endpoint_url, region)

    @classmethod
    def from_url(cls, url: str, **kw) -> "S3Bucket":
        bucket, prefix, options = parse_s3_url(url)
        kw.setdefault("endpoint_url", options.get("endpoint"))
        kw.setdefault("region", options.get("region"))
        return cls(bucket, prefix, **kw)

    def __repr__(self) -> str:
        return f"S3Bucket(s3://{self.bucket_name}/{self.prefix})"

    def _key(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"bad object name {name!r}")
        return self.prefix + name

    def _call(self, what: str, fn, **kw):
        try:
            return fn(Bucket=self.bucket_name, **kw)
        except Exception as exc:  # noqa: BLE001 - translated, chained
            translated = _translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc

    def _what(self, name: str) -> str:
        return f"s3://{self.bucket_name}/{self.prefix}{name}"

    def get(self, name: str) -> tuple[bytes, str]:
        what = self._what(name)
        resp = self._call(what, self.client.get_object, Key=self._key(name))
        try:
            data = resp["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, what) from exc
        return data, _etag(resp.get("ETag"))

    def head(self, name: str) -> tuple[int, str]:
        """(size, etag) of an object; NotFoundError if absent."""
        resp = self._call(self._what(name), self.client.head_object, Key=self._key(name))
        return resp["ContentLength"], _etag(resp.get("ETag"))

    def put(self, name: str, data: Buffer) -> str:
        resp = self._call(self._what(name), self.client.put_object,
                          Key=self._key(name), Body=_as_bytes(data))
        return _etag(resp.get("ETag"))

    def put_if_absent(self, name: str, data: Buffer) -> str:
        resp = self._conditional(name, self.client.put_object, Key=self._key(name),
                                 Body=_as_bytes(data), IfNoneMatch="*")
        return _etag(resp.get("ETag"))

    def put_if_match(self, name: str, data: Buffer, etag: str) -> str:
        resp = self._conditional(name, self.client.put_object, Key=self._key(name),
                                 Body=_as_bytes(data), IfMatch=f'"{_etag(etag)}"')
        return _etag(resp.get("ETag"))

    def delete_if_match(self, name: str, etag: str) -> None:
        self._conditional(name, self.client.delete_object, Key=self._key(name),
                          IfMatch=f'"{_etag(etag)}"')

    def _conditional(self, name: str, fn, **kw):
        try:
            return self._call(self._what(name), fn, **kw)
        except NotFoundError:
            raise PreconditionFailedError(
                f"conditional write lost: {self._what(name)} does not exist") from None

    def delete(self, name: str) -> None:
        self._call(self._what(name), self.client.delete_object, Key=self._key(name))

    def delete_many(self, names: list[str]) -> None:
        """Delete up to any number of objects, 1000 per DeleteObjects request
        (garbage collection deletes tens of thousands). A per-object error fails
        the call naming the object; missing objects are not errors."""
        names = list(names)
        for i in range(0, len(names), 1000):
            part = names[i:i + 1000]
            resp = self._call(self._what(part[0]) + " (batch delete)", self.client.delete_objects,
                              Delete={"Objects": [{"Key": self._key(n)} for n in part],
                                      "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                raise StoreUnavailableError(
                    f"deleting s3://{self.bucket_name}/{e.get('Key')} failed: "
                    f"{e.get('Code')} {e.get('Message')} ({len(errors)} object(s) not deleted)")

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names (without this bucket's prefix) that start with ``prefix``, sorted."""
        what = self._what(prefix + "*")
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket_name, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][len(self.prefix):]
        except Exception as exc:  # noqa: BLE001
            translated = _translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc


def _as_bytes(data: Buffer) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


class S3Store(Store):
    """Blobs as objects ``prefix/blobs/<hex>``; ``.bucket`` holds named objects."""

    def __init__(self, url: str, *, client=None, endpoint_url: str | None = None,
                 region: str | None = None):
        bucket, prefix, options = parse_s3_url(url)
        if client is None:
            client = make_client(endpoint_url or options.get("endpoint"),
                                 region or options.get("region"))
        self.url = url
        self.bucket = S3Bucket(bucket, prefix, client=client)
        self._blobs = S3Bucket(bucket, prefix + "blobs/", client=client)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def get(self, key: Pointer) -> bytes:
        key = as_pointer(key)
        if not key:
            raise NotFoundError("not found: Null pointer")
        return self._blobs.get(key.hex())[0]

    def put(self, key: Pointer, data: Buffer) -> None:
        key = as_pointer(key)
        if not key:
            raise ValueError("cannot store a blob under the Null pointer")
        self._blobs.put(key.hex(), data)

    def delete(self, key: Pointer) -> None:
        self._blobs.delete(as_pointer(key).hex())

    def delete_many(self, keys) -> None:
        self._blobs.delete_many([as_pointer(k).hex() for k in keys])

    def contains(self, key: Pointer) -> bool:
        try:
            self._blobs.head(as_pointer(key).hex())
            return True
        except NotFoundError:
            return False

    def enumerate(self) -> Iterator[Pointer]:
        for name in self._blobs.list():
            if len(name) == 64:
                try:
                    yield Pointer.from_hex(name)
                except ValueError:
                    continue

    def close(self) -> None:
        self.bucket.client.close()
