"""Snapshot views: frozen content, EROFS on every change, names, remounts."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fsmount import vfs  # noqa: F401  (fixture)

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
