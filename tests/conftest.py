"""Shared fixtures: the real S3-compatible server, one bucket per test; a second,
unprivileged local user."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid

import pytest

from s3server import S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS for the whole session (it takes a few seconds to start)."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket; AWS_* variables point at the test server for this test."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.new_bucket()


@pytest.fixture
def s3_url(s3_bucket):
    """``s3://bucket/prefix`` URL of a fresh bucket on the test server."""
    return f"s3://{s3_bucket}/vfs"


@pytest.fixture
def other_user():
    """The name of a new unprivileged user (no home), deleted after the test."""
    name = "vfsother" + uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def shm_dir():
    """A directory on /dev/shm (tmpfs): a file system other than tmp_path's."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm (tmpfs)")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield d
