"""Snapshot views: frozen content, EROFS on every change, names, remounts."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from fsmount import Mount, new_mountpoint, new_state, vfs  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse


def snap(vfs, dirname, *parts):
    return vfs.path(".versionfs", "snapshots", dirname, *parts)


def tree(root):
    """{relative path: (mode, size, content or link target)} of a directory tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                body = open(full, "rb").read()
            else:
                body = None
            out[rel] = (st.st_mode, st.st_size, body)
    return out


def test_snapshot_is_frozen_while_live_tree_changes(vfs):
    p = vfs.path
    os.makedirs(p("docs/deep"))
    open(p("docs/a.txt"), "w").write("version 1")
    open(p("docs/deep/b.bin"), "wb").write(os.urandom(3 << 20))
    os.symlink("a.txt", p("docs/link"))
    os.link(p("docs/a.txt"), p("docs/hard"))
    os.setxattr(p("docs/a.txt"), "user.tag", b"one")
    before = tree(p())
    name = vfs.ok("snapshot frozen")
    assert tree(snap(vfs, name)) == before
    # change everything in the live tree
    open(p("docs/a.txt"), "w").write("version 2, longer")
    with open(p("docs/deep/b.bin"), "r+b") as f:
        f.seek(1 << 20)
        f.write(b"changed")
    os.unlink(p("docs/link"))
    os.rename(p("docs/deep"), p("moved"))
    os.setxattr(p("docs/a.txt"), "user.tag", b"two")
    open(p("new"), "w").write("new")
    vfs.ok("snapshot")
    assert tree(snap(vfs, name)) == before
    assert tree(snap(vfs, "frozen")) == before                 # bare NAME works too
    assert os.getxattr(snap(vfs, name, "docs/a.txt"), "user.tag") == b"one"
    st1, st2 = os.stat(snap(vfs, name, "docs/a.txt")), os.stat(snap(vfs, name, "docs/hard"))
    assert st1.st_ino == st2.st_ino and st1.st_nlink == 2
    assert st1.st_ino != os.stat(p("docs/a.txt")).st_ino
    # and it survives a remount
    vfs.stop()
    vfs.start()
    assert tree(snap(vfs, name)) == before


def test_snapshot_includes_data_written_but_not_closed(vfs):
    fd = os.open(vfs.path("open"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"written, not closed")
        name = vfs.ok("snapshot")
        os.write(fd, b" -- later")
    finally:
        os.close(fd)
    assert open(snap(vfs, name, "open"), "rb").read() == b"written, not closed"


def test_every_change_in_a_snapshot_is_erofs(vfs):
    os.mkdir(vfs.path("d"))
    open(vfs.path("d/f"), "w").write("x")
    name = vfs.ok("snapshot")
    f, d = snap(vfs, name, "d/f"), snap(vfs, name, "d")
    attempts = [
        (open, f, "w"), (open, f, "a"), (open, os.path.join(d, "new"), "w"),
        (os.unlink, f), (os.rmdir, d), (os.mkdir, os.path.join(d, "x")),
        (os.rename, f, os.path.join(d, "g")), (os.chmod, f, 0o777), (os.chown, f, 1, 1),
        (os.truncate, f, 0), (os.utime, f, None), (os.symlink, "t", os.path.join(d, "l")),
        (os.link, f, os.path.join(d, "h")), (os.setxattr, f, "user.a", b"1"),
        (os.mkfifo, os.path.join(d, "fifo")), (os.mkdir, snap(vfs, "new-snapshot")),
    ]
    for fn, *args in attempts:
        with pytest.raises(OSError) as info:
            fn(*args)
        assert info.value.errno == errno.EROFS, (fn.__name__, args, info.value)
    assert open(f).read() == "x"


def test_unknown_snapshot_names(vfs):
    vfs.ok("snapshot real")
    for name in ("missing", "r99-20250101T000000Z", "r1-20000101T000000Z"):
        assert not os.path.exists(snap(vfs, name))


def test_snapshot_of_deleted_and_recreated_files(vfs):
    open(vfs.path("f"), "w").write("old")
    name = vfs.ok("snapshot")
    os.unlink(vfs.path("f"))
    open(vfs.path("f"), "w").write("new content")
    assert open(snap(vfs, name, "f")).read() == "old"
    assert open(vfs.path("f")).read() == "new content"
    assert sorted(os.listdir(snap(vfs, name))) == ["f"]
    assert os.listdir(snap(vfs, name, "..")) == os.listdir(vfs.path(".versionfs", "snapshots"))



@pytest.mark.timeout(120)
def test_snapshot_waits_for_kernel_writeback_in_flight(tmp_path, monkeypatch):
    """Bug 4: the daemon syncfs()ed its own mount, which can hang for good and,
    on kernels whose syncfs no longer waits for FUSE pages under writeback
    (Linux 6.18 stable, AS_NO_DATA_INTEGRITY), returned while the WRITEs of
    data written before `snapshot` were still in flight: the snapshot missed
    them. With slow WRITEs (a loaded machine) that is certain, not a race."""
    monkeypatch.setenv("VFS_TEST_WRITE_DELAY", "0.3")
    m = Mount(new_state(tmp_path), new_mountpoint()).start()
    try:
        fd = os.open(m.path("open"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"written, not closed" * 1000)
            name = m.ok("snapshot")
            os.write(fd, b" -- later")
            assert m.ok("flush") == "flushed"
        finally:
            os.close(fd)
        with open(snap(m, name, "open"), "rb") as f:    # closed before m.stop() unmounts
            got = f.read()
        assert got == b"written, not closed" * 1000
    finally:
        m.stop()
        os.rmdir(m.mountpoint)


@pytest.mark.timeout(120)
def test_snapshot_and_flush_loop_with_files_left_open(vfs):
    """Bug 4, the racy form: fresh data in files left open (earlier pages still
    in the kernel's background writeback), then a command, over and over;
    every snapshot holds exactly what was written before it."""
    fds = [os.open(vfs.path(f"open{i}"), os.O_RDWR | os.O_CREAT, 0o644) for i in range(3)]
    want = [b""] * len(fds)
    try:
        deadline = time.monotonic() + 2
        rounds = 0
        while time.monotonic() < deadline or rounds < 12:
            for i, fd in enumerate(fds):
                piece = b"%d.%d:" % (rounds, i) + os.urandom(1 + rounds * 997 % 20000)
                os.pwrite(fd, piece, len(want[i]))
                want[i] += piece
            rounds += 1
            if rounds % 4 == 0:
                assert vfs.ok("flush") == "flushed"
                continue
            name = vfs.ok("snapshot")
            for i in range(len(fds)):
                with open(snap(vfs, name, f"open{i}"), "rb") as f:
                    got = f.read()
                assert got == want[i], (rounds, i, len(got), len(want[i]))
    finally:
        for fd in fds:
            os.close(fd)
