"""Cold sequential reads: the mount raises its kernel read-ahead window, so reads
arrive as 1 MiB requests that span chunk boundaries; they must return exactly
the bytes written (fetched ahead in parallel from the fast store, verified)."""

from __future__ import annotations

import os

from fsmount import vfs  # noqa: F401  (fixture)

from versionfs.fs.mount import READ_AHEAD_KB


def _bdi_read_ahead_kb(path) -> int:
    st = os.stat(path)
    with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb") as f:
        return int(f.read())


def test_mount_raises_read_ahead_and_big_cold_reads_return_the_right_bytes(vfs):
    assert _bdi_read_ahead_kb(vfs.mountpoint) == READ_AHEAD_KB
    data = os.urandom(9 * (1 << 20) + 12345)       # several chunks, ragged end
    with open(vfs.path("f"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    vfs.stop()
    vfs.start()                                     # nothing of ours in memory
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
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
