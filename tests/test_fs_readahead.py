"""Cold sequential reads: the mount raises its kernel read-ahead window, so reads
arrive as 1 MiB requests that span chunk boundaries; they must return exactly
the bytes written (fetched ahead in parallel from the fast store, verified)."""

from __future__ import annotations

import concurrent.futures
import json
import mmap
import os

from fsmount import vfs  # noqa: F401  (fixture)

from versionfs.fs.mount import READ_AHEAD_KB

MiB = 1 << 20


def _bdi_read_ahead_kb(path) -> int:
    st = os.stat(path)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as f:
        return int(f.read())


def _drop_kernel_caches() -> None:
    """Empty the kernel's page cache: what is read next comes through the daemon."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def test_mount_raises_read_ahead_and_big_cold_reads_return_the_right_bytes(vfs):
    assert _bdi_read_ahead_kb(vfs.mountpoint) == READ_AHEAD_KB
    data = os.urandom(9 * (1 << 20) + 12345)       # several chunks, ragged end
    with open(vfs.path("f"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    vfs.stop()
    vfs.start()                                     # nothing of ours in memory
    _drop_kernel_caches()
    assert _bdi_read_ahead_kb(vfs.mountpoint) == READ_AHEAD_KB
    got = bytearray()
    with open(vfs.path("f"), "rb") as f:
        while block := f.read(3 << 20):
            got += block
    assert bytes(got) == data
    with open(vfs.path("f"), "rb") as f:            # and at odd offsets across chunk ends
        for off in (0, (1 << 20) - 7, 5 * (1 << 20) + 3, len(data) - 100):
            f.seek(off)
            assert f.read(1 << 20) == data[off:off + (1 << 20)]


def _read_counters(vfs) -> dict:
    st = json.loads(vfs.ok("status --json"))
    return {k: v for k, v in st.items() if k.startswith("read_") and k != "read_cache_bytes"}


def _stored_chunks(vfs) -> int:
    """Blobs in the fast store (a fresh filesystem holding one file: its chunks)."""
    return sum(1 for _, _, files in os.walk(vfs.state_dir / "fast")
               for name in files if len(name) >= 64)


def test_cold_sequential_read_fetches_each_chunk_once_off_the_loop_in_big_requests(vfs):
    size = 12 * MiB + 777
    data = os.urandom(size)
    with open(vfs.path("f"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    vfs.ok("flush")
    chunks = _stored_chunks(vfs)
    assert chunks >= 4                              # several chunks (about 1 MiB each)
    vfs.stop()
    vfs.start()
    _drop_kernel_caches()
    before = _read_counters(vfs)
    got = bytearray()
    with open(vfs.path("f"), "rb") as f:
        while block := f.read(4 * MiB):
            got += block
    assert bytes(got) == data
    after = _read_counters(vfs)
    done = {k: after[k] - before[k] for k in after}
    # Each chunk read, decoded and verified at most once (read-ahead and the
    # requests that need a chunk share one fetch; the fast store may also hold
    # blobs a first seal stored and a later one superseded), none of them on
    # the trio thread.
    assert 1 <= done["read_chunks_fetched"] <= chunks, done
    assert done["read_chunks_fetched_in_loop"] == 0, done
    # The kernel asks in requests of up to 1 MiB (FUSE's largest; READ_AHEAD_KB
    # lets its window exceed them, which ramps up at the start), not its default
    # 128 KiB, eight per MiB; most span two chunks and are joined into one reply.
    assert done["read_requests"] <= 2 * size // MiB, done
    assert done["read_replies_joined"] >= 1, done
    # Read again with only the kernel's cache dropped: every chunk is still
    # decoded in the daemon's cache, nothing is fetched a second time.
    _drop_kernel_caches()
    with open(vfs.path("f"), "rb") as f:
        assert f.read() == data
    again = _read_counters(vfs)
    assert again["read_chunks_fetched"] == after["read_chunks_fetched"], (after, again)
    assert again["read_requests"] > after["read_requests"]


def test_concurrent_cold_reads_across_chunk_ends_get_their_own_bytes(vfs):
    """Replies joined from two chunks share one buffer: concurrent requests for
    different files must still each get their own bytes."""
    files = {name: os.urandom(6 * MiB + 4321) for name in ("a", "b", "c")}
    for name, data in files.items():
        with open(vfs.path(name), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    vfs.ok("flush")
    vfs.stop()
    vfs.start()
    _drop_kernel_caches()

    def check(name: str) -> None:
        data = files[name]
        fd = os.open(vfs.path(name), os.O_RDONLY | os.O_DIRECT)    # every read a request
        try:
            buf = mmap.mmap(-1, MiB)                                 # aligned for O_DIRECT
            for off in range(0, len(data), MiB):
                n = os.preadv(fd, [buf], off)
                assert buf[:n] == data[off:off + n], (name, off)
        finally:
            os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(check, files))
    assert _read_counters(vfs)["read_chunks_fetched_in_loop"] == 0
