"""The S3 fixture itself: a real server that honours conditional writes."""

import botocore.exceptions
import pytest

pytestmark = pytest.mark.s3


def test_conditional_create_and_cas(s3_server, s3_bucket):
    c = s3_server.client()
    first = c.put_object(Bucket=s3_bucket, Key="k", Body=b"v1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    c.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfMatch=first["ETag"])
    with pytest.raises(botocore.exceptions.ClientError):
        c.put_object(Bucket=s3_bucket, Key="k", Body=b"v3", IfMatch=first["ETag"])
