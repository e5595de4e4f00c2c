"""A bucket scan of encrypted filesystems, as an attacker who holds the bucket
and knows the files: names, bodies and sizes give nothing away (real
``versionfs`` mounts on a ``file://`` slow store, issue 12)."""

from __future__ import annotations

import random
import re
import socket
import tomllib
from pathlib import Path

import pyfastcdc
import pytest

from cli_util import force_cleanup, ok, run_cli
from versionfs.blob.codec import MIN_STORED, padded_size, padme
from versionfs.common.identity import PUBLIC_FIELDS
from versionfs.fs.sealing import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN

pytestmark = pytest.mark.fuse

BIG = random.Random(12).randbytes(12 << 20)         # a file the attacker has too
TINY = {f"tiny-secretname-{n}.txt": b"TINYMARKER"[:n % 10 + 1] * (n // 10 + 1)
        for n in range(1, 60, 3)}
NAMES = ["bigfile-secretname.bin", "tiny-secretname", "secretdir"]
# Bytes of the big file an attacker would look for in bodies.
SAMPLES = [BIG[i:i + 32] for i in range(0, len(BIG), 1 << 20)]


def _encrypted_fs(root: Path, passphrase: str) -> Path:
    """A fresh encrypted filesystem holding BIG and TINY, flushed and unmounted;
    returns its file:// slow store (the bucket)."""
    state, mnt = root / "state", root / "mnt"
    mnt.mkdir(parents=True)
    secret = root / "pass"
    secret.write_text(passphrase + "\n")
    try:
        ok(run_cli("init", state, "--encrypt", "--passphrase-file", secret))
        ok(run_cli("mount", state, mnt, "--passphrase-file", secret))
        (mnt / "secretdir").mkdir()
        (mnt / "secretdir" / "bigfile-secretname.bin").write_bytes(BIG)
        for name, data in TINY.items():
            (mnt / "secretdir" / name).write_bytes(data)
        ok(run_cli("flush", mnt, timeout=300))
        ok(run_cli("umount", mnt))
    finally:
        force_cleanup(mnt, state)
    return state / "slow"


def _objects(bucket: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bucket)): p.read_bytes() for p in bucket.rglob("*") if p.is_file()}


def _blob_sizes(objects: dict[str, bytes]) -> list[int]:
    """Sizes of the data blobs (file:// keeps them under blobs/)."""
    return sorted(len(body) for name, body in objects.items() if name.startswith("blobs/"))


def _unkeyed_chunk_lengths(data: bytes) -> list[int]:
    cdc = pyfastcdc.FastCDC(CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
    return [ch.length for ch in cdc.cut_buf(data)]


@pytest.fixture(scope="module")
def buckets(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    return (_objects(_encrypted_fs(root / "one", "first passphrase here")),
            _objects(_encrypted_fs(root / "two", "second passphrase here")))


def test_no_object_name_or_body_reveals_names_or_contents(buckets):
    for objects in buckets:
        assert len(_blob_sizes(objects)) >= 11
        for name, body in objects.items():
            for plain in NAMES:
                assert plain not in name, name
                assert plain.encode() not in body, name
            assert b"TINYMARKER" not in body, name
            for sample in SAMPLES:
                assert sample not in body, name


def test_blob_sizes_are_padding_classes_and_hide_file_and_chunk_lengths(buckets):
    for objects in buckets:
        sizes = _blob_sizes(objects)
        # Every blob is a size class: its chunk's length is known only to within it.
        assert all(s >= MIN_STORED and padme(s) == s for s in sizes), sizes
        # Every tiny file looks the same, and no exact file size shows.
        assert sizes.count(MIN_STORED) >= len(TINY)
        exact = {len(d) + 33 for d in TINY.values()} | {len(d) for d in TINY.values()}
        assert not exact & set(sizes)


def test_attacker_running_the_unkeyed_chunker_cannot_predict_the_sizes(buckets):
    lengths = _unkeyed_chunk_lengths(BIG)
    assert len(lengths) >= 8
    for objects in buckets:
        big = [s for s in _blob_sizes(objects) if s > MIN_STORED]
        # The layout before padding (chunk + 33 bytes): not one size matches.
        assert not {n + 33 for n in lengths} & set(big)
        # Even knowing the padding, unkeyed cut points give another sequence.
        assert sorted(padded_size(n) for n in lengths) != big


def test_the_same_file_under_two_keys_gives_different_stored_sizes(buckets):
    one, two = ([s for s in _blob_sizes(objects) if s > MIN_STORED] for objects in buckets)
    assert one != two
    assert abs(sum(one) - sum(two)) < 0.15 * len(BIG)


def test_metadata_names_lease_and_identity_give_nothing_away(buckets):
    """meta/ names are random ids (no change counts), the lease is sealed (no host,
    pid or path), versionfs.toml keeps in the clear only what a new machine needs."""
    for objects in buckets:
        meta = [n for n in objects if n.startswith("meta/")]
        assert "meta/head" in meta and "meta/lease" in meta
        for name in meta:
            assert re.fullmatch(r"meta/(head|lease|(heads|wal)/[0-9a-f]{32}|"
                                r"checkpoints/[0-9a-f]{32}/part-\d{6})", name), name
        lease = objects["meta/lease"]
        assert socket.gethostname().encode() not in lease and b"pid" not in lease
        assert b"state" not in lease and b"holder" not in lease
        identity = tomllib.loads(objects["versionfs.toml"].decode())
        assert set(identity) == set(PUBLIC_FIELDS) | {"sealed"}
