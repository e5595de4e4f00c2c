"""KV store with compare-and-swap (versionfs.meta.kv) on LMDB, S3 and a file:// directory.

Every test runs on real parts: LMDB files, the SeaweedFS S3 server from conftest,
and the blob layer's DirectoryBucket on a temporary directory.
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from versionfs.meta.kv import (BackendNotSupportedError, InvalidKeyError,
                               KeyExistsError, KeyModifiedError,
                               KeyNotFoundError, KVPair, KVStoreFullError,
                               LMDBKV, PreviousNotSpecifiedError, open_kv)

BACKENDS = ["lmdb", "s3", "dir"]


def make_kv(kind: str, tmp_path, request):
    if kind == "lmdb":
        return LMDBKV(tmp_path / "kv")
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return open_kv(f"s3://{bucket}/meta/")
    return open_kv(f"file://{tmp_path / 'slow'}")


@pytest.fixture(params=BACKENDS)
def kv(request, tmp_path):
    store = make_kv(request.param, tmp_path, request)
    yield store
    store.close()


def test_put_get_exists_list_delete(kv):
    assert not kv.exists("head")
    kv.put("head", b"one")
    pair = kv.get("head")
    assert pair.key == "head" and pair.value == b"one"
    assert kv.exists("head")
    kv.put("head", b"two")
    assert kv.get("head").value == b"two"
    assert kv.get("head").last_index != pair.last_index
    kv.put("dir/a", b"A")
    kv.put("dir/b", b"B")
    kv.put("dirx", b"X")
    assert [(p.key, p.value) for p in kv.list("dir/")] == [("dir/a", b"A"), ("dir/b", b"B")]
    assert kv.list("nothing/") == []
    kv.delete("dir/a")
    kv.delete("dir/a")  # deleting an absent key is not an error
    assert [p.key for p in kv.list("dir/")] == ["dir/b"]
    with pytest.raises(KeyNotFoundError, match="dir/a"):
        kv.get("dir/a")


def test_atomic_put_create_swap_and_every_error(kv):
    first = kv.atomic_put("lease", b"v1", None)
    assert kv.get("lease") == first
    with pytest.raises(KeyExistsError, match="lease"):
        kv.atomic_put("lease", b"again", None)
    second = kv.atomic_put("lease", b"v2", first)
    assert second.value == b"v2" and second.last_index != first.last_index
    with pytest.raises(KeyModifiedError, match="lease"):
        kv.atomic_put("lease", b"stale", first)
    assert kv.get("lease").value == b"v2"
    # Same bytes written again still gets a new version: no ABA.
    third = kv.atomic_put("lease", b"v2", second)
    assert third.last_index != second.last_index
    with pytest.raises(KeyModifiedError):
        kv.atomic_put("lease", b"stale", second)
    # Swap of a key deleted since it was read.
    kv.delete("lease")
    with pytest.raises(KeyNotFoundError):
        kv.atomic_put("lease", b"gone", third)
    assert not kv.exists("lease")


def test_atomic_delete_and_every_error(kv):
    pair = kv.atomic_put("k", b"v", None)
    with pytest.raises(PreviousNotSpecifiedError):
        kv.atomic_delete("k", None)
    newer = kv.atomic_put("k", b"w", pair)
    with pytest.raises(KeyModifiedError):
        kv.atomic_delete("k", pair)
    assert kv.get("k").value == b"w"
    kv.atomic_delete("k", newer)
    assert not kv.exists("k")
    with pytest.raises(KeyNotFoundError):
        kv.atomic_delete("k", newer)
    # Recreated key: the old pair must not match it (no ABA across delete).
    kv.atomic_put("k", b"w", None)
    with pytest.raises(KeyModifiedError):
        kv.atomic_delete("k", newer)


def test_bad_keys_and_values(kv):
    with pytest.raises(InvalidKeyError, match="empty"):
        kv.put("", b"x")
    with pytest.raises(InvalidKeyError, match="str"):
        kv.put(b"bytes-key", b"x")
    with pytest.raises(InvalidKeyError, match="limit"):
        kv.put("k" * 2000, b"x")
    with pytest.raises(TypeError, match="bytes"):
        kv.put("k", "text")
    if not isinstance(kv, LMDBKV):
        for bad in ("a//b", "a/../b", ".hidden", "dir/"):
            with pytest.raises(InvalidKeyError, match="segment"):
                kv.atomic_put(bad, b"x", None)


def test_open_kv_unknown_scheme():
    with pytest.raises(BackendNotSupportedError, match="ftp"):
        open_kv("ftp://host/x")


def race_round(kv, barrier: threading.Barrier, key: str) -> bool:
    """Everyone reads the same pair, then everyone swaps: return whether we won."""
    barrier.wait()
    previous = kv.get(key)
    barrier.wait()
    try:
        kv.atomic_put(key, previous.value + b".", previous)
        return True
    except KeyModifiedError:
        return False


@pytest.mark.parametrize("kind", BACKENDS)
def test_threads_racing_on_one_key_exactly_one_wins_each_round(kind, tmp_path, request):
    writers, rounds = 6, 6 if kind == "s3" else 30
    kv = make_kv(kind, tmp_path, request)
    kv.atomic_put("head", b"", None)
    barrier = threading.Barrier(writers)
    wins = [[False] * rounds for _ in range(writers)]

    def writer(w: int) -> None:
        for r in range(rounds):
            wins[w][r] = race_round(kv, barrier, "head")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in range(rounds):
        assert sum(wins[w][r] for w in range(writers)) == 1, f"round {r}"
    assert kv.get("head").value == b"." * rounds
    # Creation races too: exactly one create-only put wins.
    created = []

    def creator(w: int) -> None:
        barrier.wait()
        try:
            kv.atomic_put("fresh", str(w).encode(), None)
            created.append(w)
        except KeyExistsError:
            pass

    threads = [threading.Thread(target=creator, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(created) == 1 and kv.get("fresh").value == str(created[0]).encode()
    kv.close()


def _process_racer(url: str, barrier, results, worker: int, rounds: int) -> None:
    kv = open_kv(url)
    try:
        for r in range(rounds):
            results.put((r, worker, race_round(kv, barrier, "head")))
        # Then a CAS increment loop: the total must come out exact.
        for _ in range(50):
            while True:
                pair = kv.get("counter")
                try:
                    kv.atomic_put("counter", str(int(pair.value) + 1).encode(), pair)
                    break
                except KeyModifiedError:
                    continue
    finally:
        kv.close()


@pytest.mark.parametrize("kind", ["lmdb", "dir"])
def test_processes_racing_on_one_key(kind, tmp_path):
    ctx = multiprocessing.get_context("spawn")  # LMDB handles must not cross fork()
    writers, rounds = 4, 15
    url = f"lmdb://{tmp_path / 'kv'}" if kind == "lmdb" else f"file://{tmp_path / 'slow'}"
    with open_kv(url) as kv:
        kv.atomic_put("head", b"", None)
        kv.atomic_put("counter", b"0", None)
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_process_racer, args=(url, barrier, results, w, rounds))
             for w in range(writers)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(writers * rounds)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for r in range(rounds):
        assert sum(won for rr, _, won in outcomes if rr == r) == 1, f"round {r}"
    with open_kv(url) as kv:
        assert kv.get("head").value == b"." * rounds
        assert kv.get("counter").value == str(writers * 50).encode()


def test_lmdb_same_file_twice_in_one_process_shares_state(tmp_path):
    a, b = LMDBKV(tmp_path / "kv"), LMDBKV(tmp_path / "kv")
    pair = a.atomic_put("k", b"1", None)
    with pytest.raises(KeyModifiedError):
        b.atomic_put("k", b"x", KVPair("k", b"1", pair.last_index + 100))
    b.atomic_put("k", b"2", pair)
    a.close()
    assert b.get("k").value == b"2"  # closing one handle leaves the other working
    b.close()


def test_lmdb_full_store_is_a_clear_error_and_keeps_data(tmp_path):
    kv = LMDBKV(tmp_path / "kv", map_size=64 << 10)
    kv.put("keep", b"safe")
    with pytest.raises(KVStoreFullError, match="full"):
        for i in range(1000):
            kv.put(f"big{i}", b"x" * 4000)
    assert kv.get("keep").value == b"safe"
    kv.close()
    with LMDBKV(tmp_path / "kv", map_size=64 << 10) as again:
        assert again.get("keep").value == b"safe"


class ResponseLostBucket:
    """The real S3 bucket, except that the first conditional put's response is
    "lost": the write is applied, then the client sees 412 as a retry would.
    A real server cannot be made to drop one response on demand, hence this wrapper."""

    def __init__(self, bucket):
        self.bucket, self.tripped = bucket, False

    def __getattr__(self, name):
        return getattr(self.bucket, name)

    def _lose(self, fn, *args):
        from versionfs.blob.errors import PreconditionFailedError
        fn(*args)
        if not self.tripped:
            self.tripped = True
            raise PreconditionFailedError("conditional write lost (simulated retry)")

    def put_if_absent(self, name, data):
        return self._lose(self.bucket.put_if_absent, name, data)

    def put_if_match(self, name, data, etag):
        return self._lose(self.bucket.put_if_match, name, data, etag)


def test_s3_write_whose_response_was_lost_is_recognised_as_ours(s3_bucket):
    from versionfs.blob.s3 import S3Bucket
    from versionfs.meta.kv import S3KV

    real = S3Bucket(s3_bucket, "m/")
    kv = S3KV(ResponseLostBucket(real))
    created = kv.atomic_put("head", b"1", None)
    assert kv.get("head") == created
    kv.bucket.tripped = False
    swapped = kv.atomic_put("head", b"2", created)
    assert kv.get("head") == swapped and swapped.value == b"2"
    other = S3KV(real)
    other.put("head", b"3")  # a genuine loss is still reported as one
    kv.bucket.tripped = False
    with pytest.raises(KeyModifiedError):
        kv.atomic_put("head", b"4", swapped)
