"""Single-writer lease (versionfs.bucket.lease) on LMDB and on the real S3 server.

Time is an injected clock (a plain counter the test advances), so expiry is
tested without sleeping; the stores are real.
"""

from __future__ import annotations

import threading

import pytest

from versionfs.meta.kv import LMDBKV, open_kv
from versionfs.bucket.lease import (CorruptLeaseError, Lease, LeaseHeldError,
                                  LeaseLostError)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["lmdb", "dir", "s3"])
def kv(request, tmp_path):
    if request.param == "lmdb":
        store = LMDBKV(tmp_path / "kv")
    elif request.param == "dir":
        store = open_kv(f"file://{tmp_path / 'slow'}")
    else:
        store = open_kv(f"s3://{request.getfixturevalue('s3_bucket')}/vfs/")
    yield store
    store.close()


def test_acquire_renew_release(kv):
    clock = Clock()
    a = Lease(kv, "lease", "laptop-a", ttl=60, clock=clock)
    info = a.acquire()
    assert (info.holder, info.expires, info.generation) == ("laptop-a", clock.now + 60, 1)
    assert a.held and a.read() == info
    clock.now += 30
    renewed = a.renew()
    assert renewed.expires == clock.now + 60 and renewed.generation == 1
    assert a.release() is True
    assert a.read() is None and not a.held
    assert a.release() is False


def test_second_holder_is_refused_with_holder_and_expiry(kv):
    clock = Clock()
    Lease(kv, "lease", "laptop-a", ttl=60, clock=clock).acquire()
    b = Lease(kv, "lease", "desktop-b", ttl=60, clock=clock)
    with pytest.raises(LeaseHeldError, match="laptop-a") as err:
        b.acquire()
    assert err.value.info.holder == "laptop-a"
    assert err.value.info.expires == clock.now + 60
    assert "until" in str(err.value)


def test_same_holder_reacquires_after_restart(kv):
    clock = Clock()
    Lease(kv, "lease", "laptop-a", ttl=60, clock=clock).acquire()
    again = Lease(kv, "lease", "laptop-a", ttl=60, clock=clock).acquire()
    assert again.holder == "laptop-a" and again.generation == 2


def test_expired_lease_is_taken_over_and_old_holder_loses(kv):
    clock = Clock()
    a = Lease(kv, "lease", "laptop-a", ttl=60, clock=clock)
    a.acquire()
    b = Lease(kv, "lease", "desktop-b", ttl=60, clock=clock)
    clock.now += 61
    assert not a.held
    info = b.acquire()
    assert info.holder == "desktop-b" and info.generation == 2
    with pytest.raises(LeaseLostError, match="desktop-b"):
        a.renew()
    assert a.release() is False  # must not delete b's lease
    assert b.read().holder == "desktop-b"


def test_steal_displaces_a_live_holder(kv):
    clock = Clock()
    a = Lease(kv, "lease", "laptop-a", ttl=600, clock=clock)
    a.acquire()
    b = Lease(kv, "lease", "desktop-b", ttl=600, clock=clock)
    displaced = b.steal()
    assert displaced.holder == "laptop-a" and displaced.generation == 1
    assert b.read().generation == 2
    with pytest.raises(LeaseLostError):
        a.renew()
    c = Lease(kv, "other", "c", ttl=10, clock=clock)
    assert c.steal() is None and c.held  # stealing a free lease just takes it


def test_steal_only_from_displaces_just_the_named_holder(kv):
    """A restarted daemon of the same state dir takes its dead predecessor's
    live lease, but never one a third machine holds."""
    clock = Clock()
    dead = Lease(kv, "lease", "laptop pid 1 [id-1]", ttl=600, clock=clock)
    dead.acquire()
    restarted = Lease(kv, "lease", "laptop pid 2 [id-1]", ttl=600, clock=clock)
    with pytest.raises(LeaseHeldError):
        restarted.acquire()
    displaced = restarted.steal(only_from="laptop pid 1 [id-1]")
    assert displaced.holder == "laptop pid 1 [id-1]"
    assert restarted.held and restarted.read().generation == 2
    with pytest.raises(LeaseLostError):
        dead.renew()
    other = Lease(kv, "lease", "desktop pid 9 [id-2]", ttl=600, clock=clock)
    with pytest.raises(LeaseHeldError):
        other.steal(only_from="laptop pid 1 [id-1]")  # not the holder any more
    assert restarted.read().holder == "laptop pid 2 [id-1]"


def test_renew_without_acquire_and_deleted_lease(kv):
    clock = Clock()
    a = Lease(kv, "lease", "laptop-a", ttl=60, clock=clock)
    with pytest.raises(LeaseLostError, match="acquire"):
        a.renew()
    a.acquire()
    kv.delete("lease")
    with pytest.raises(LeaseLostError, match="deleted"):
        a.renew()


def test_a_record_that_is_no_lease_locks_nobody_out_and_is_named(kv, caplog):
    """Damaged, or forged by whoever can write the bucket: it holds nothing."""
    kv.put("lease", b"not json")
    with pytest.raises(CorruptLeaseError, match="lease"):
        Lease(kv, "lease", "a", ttl=10).read()
    a = Lease(kv, "lease", "a", ttl=10)
    assert a.acquire().holder == "a" and a.held
    assert "holds no valid lease record" in a.overridden
    assert "holds no valid lease record" in caplog.text and "taken over" in caplog.text
    kv.put("lease", b"not json")
    assert Lease(kv, "lease", "b", ttl=10).steal().generation == 0


def test_release_keeps_the_generation_so_it_never_goes_back(kv):
    clock = Clock()
    a = Lease(kv, "lease", "laptop-a", ttl=60, clock=clock)
    a.acquire()
    a.renew()
    assert a.release() and a.read() is None
    b = Lease(kv, "lease", "desktop-b", ttl=60, clock=clock)
    assert b.acquire().generation == 2
    assert b.release() and Lease(kv, "lease", "c", ttl=60, clock=clock).steal() is None


def test_bad_ttl(kv):
    with pytest.raises(ValueError, match="ttl"):
        Lease(kv, "lease", "a", ttl=0)


def test_many_threads_racing_for_a_free_lease_one_wins(kv):
    clock = Clock()
    contenders, rounds = 6, 5
    for r in range(rounds):
        barrier = threading.Barrier(contenders)
        winners, refused = [], []
        leases = [Lease(kv, f"race{r}", f"m{i}", ttl=60, clock=clock) for i in range(contenders)]

        def contend(lease: Lease) -> None:
            barrier.wait()
            try:
                lease.acquire()
                winners.append(lease.holder)
            except LeaseHeldError as exc:
                refused.append(exc.info.holder)

        threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(winners) == 1, winners
        assert set(refused) == set(winners) and len(refused) == contenders - 1
