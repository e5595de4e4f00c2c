"""open_store: a Store from a URL, the way config files and the CLI name them.

    file:///path                 DirectoryStore (the embedded default slow store)
    s3://bucket/prefix[?endpoint=URL&region=R]   S3Store
    http[s]://host:port          RemoteStore; token from ``token_file=`` (keyword or
                                 URL query), a ``token=`` keyword, or $VERSIONFS_STORE_TOKEN

A URL is not a place for a secret: it is saved in config.toml, shown by
``status`` and ``init``, written to the log and passed in argv (visible in
``ps``). So ``token=`` (or a password) in a URL is refused with the fix: put
the token in a file only you can read (0600) and name it with ``token_file=``.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit

from .store import Store


SECRET_QUERY_KEYS = ("token", "password", "secret", "secret_key", "aws_secret_access_key")


def check_no_secrets(url: str) -> None:
    """ValueError naming the fix if ``url`` carries a secret (see the module docstring)."""
    parts = urlsplit(url)
    found = sorted(k for k in parse_qs(parts.query) if k.lower() in SECRET_QUERY_KEYS)
    if parts.password:
        found.append("a password")
    if found:
        raise ValueError(f"the store URL holds a secret ({', '.join(found)}); URLs end up in "
                         "config.toml, logs and the process list. Put the token in a file only "
                         "you can read (install -m 0600 /dev/null FILE, then write it there) "
                         "and use token_file=FILE in the URL, or $VERSIONFS_STORE_TOKEN")


def open_store(url: str, **opts) -> Store:
    check_no_secrets(url)
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
        token = opts.pop("token", None)
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
