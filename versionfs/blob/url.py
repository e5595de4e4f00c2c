"""open_store: a Store from a URL, the way config files and the CLI name them.

    file:///path                 DirectoryStore (the embedded default slow store)
    s3://bucket/prefix[?endpoint=URL&region=R]   S3Store
    http[s]://host:port          RemoteStore; token from ``token=``/``token_file=``
                                 (keyword or URL query) or $VERSIONFS_STORE_TOKEN
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit

from .store import Store


def open_store(url: str, **opts) -> Store:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must be local (file:///path): {url!r}")
        from .directory import DirectoryStore
        return DirectoryStore(unquote(parts.path))
    if parts.scheme == "s3":
        from .s3 import S3Store
        return S3Store(url, **opts)
    if parts.scheme in ("http", "https"):
        from .remote import RemoteStore, read_token_file
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        token = opts.pop("token", None) or query.get("token")
        token_file = opts.pop("token_file", None) or query.get("token_file")
        if not token and token_file:
            token = read_token_file(token_file)
        token = token or os.environ.get("VERSIONFS_STORE_TOKEN")
        if not token:
            raise ValueError(f"remote store {parts.scheme}://{parts.netloc} needs a token: "
                             "token_file=… or $VERSIONFS_STORE_TOKEN")
        return RemoteStore(f"{parts.scheme}://{parts.netloc}", token, **opts)
    raise ValueError(f"unsupported store URL {url!r}: use file:///path, s3://bucket/prefix "
                     "or http[s]://host:port")
