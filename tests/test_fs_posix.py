"""POSIX behaviour of a real versionfs mount, operation by operation."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
import sys

import pytest

from fsmount import vfs  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def raises(err, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"


def test_files_and_directories(vfs):
    p = vfs.path
    with open(p("a.txt"), "wb") as f:
        f.write(b"hello\n")
    with open(p("a.txt"), "ab") as f:
        f.write(b"world\n")
    assert open(p("a.txt"), "rb").read() == b"hello\nworld\n"
    assert os.stat(p("a.txt")).st_size == 12
    os.mkdir(p("d"))
    os.mkdir(p("d", "sub"))
    assert os.stat(p("d")).st_nlink == 3
    assert stat.S_ISDIR(os.stat(p("d")).st_mode)
    open(p("d", "f"), "w").close()
    assert sorted(os.listdir(p("d"))) == ["f", "sub"]
    raises(errno.ENOTEMPTY, os.rmdir, p("d"))
    raises(errno.EEXIST, os.mkdir, p("d"))
    raises(errno.ENOENT, os.stat, p("nope"))
    raises(errno.ENOTDIR, os.rmdir, p("a.txt"))
    raises(errno.EISDIR, os.unlink, p("d"))
    os.unlink(p("d", "f"))
    os.rmdir(p("d", "sub"))
    assert os.stat(p("d")).st_nlink == 2
    os.rmdir(p("d"))
    assert os.listdir(p()) == ["a.txt"]
    # random access overwrite inside a file
    with open(p("a.txt"), "r+b") as f:
        f.seek(3)
        f.write(b"LO")
    assert open(p("a.txt"), "rb").read() == b"helLO\nworld\n"


def test_control_dir_hidden_but_reachable(vfs):
    assert ".versionfs" not in os.listdir(vfs.path())
    assert stat.S_ISDIR(os.stat(vfs.path(".versionfs")).st_mode)
    assert sorted(os.listdir(vfs.path(".versionfs"))) == ["ctl", "snapshots"]
    raises(errno.EEXIST, os.mkdir, vfs.path(".versionfs"))
    raises(errno.EBUSY, os.rename, vfs.path(".versionfs"), vfs.path("x"))
    os.mkdir(vfs.path("sub"))
    os.mkdir(vfs.path("sub", ".versionfs"))    # only the root's name is reserved
    assert os.listdir(vfs.path("sub")) == [".versionfs"]


def test_symlinks_and_hard_links(vfs):
    p = vfs.path
    open(p("f"), "w").write("data")
    os.symlink("f", p("s"))
    assert os.readlink(p("s")) == "f"
    assert stat.S_ISLNK(os.lstat(p("s")).st_mode)
    assert open(p("s")).read() == "data"
    os.symlink("/nowhere/" + "x" * 300, p("dangling"))
    assert os.readlink(p("dangling")) == "/nowhere/" + "x" * 300
    os.link(p("f"), p("g"))
    assert os.stat(p("f")).st_nlink == 2
    assert os.stat(p("f")).st_ino == os.stat(p("g")).st_ino
    os.unlink(p("f"))
    assert os.stat(p("g")).st_nlink == 1
    assert open(p("g")).read() == "data"
    os.mkdir(p("d"))
    raises(errno.EPERM, os.link, p("d"), p("d2"))
    raises(errno.EEXIST, os.link, p("g"), p("s"))


def test_mknod_and_fifo(vfs):
    os.mkfifo(vfs.path("fifo"), 0o640)
    st = os.lstat(vfs.path("fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    os.mknod(vfs.path("null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(vfs.path("null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # a FIFO on the mount works as a FIFO (the kernel handles the data)
    pid = os.fork()
    if pid == 0:
        with open(vfs.path("fifo"), "wb") as w:
            w.write(b"through the pipe")
        os._exit(0)
    with open(vfs.path("fifo"), "rb") as r:
        assert r.read() == b"through the pipe"
    os.waitpid(pid, 0)


def test_rename(vfs):
    p = vfs.path
    open(p("a"), "w").write("A")
    open(p("b"), "w").write("B")
    os.rename(p("a"), p("b"))                    # atomic replace
    assert os.listdir(p()) == ["b"] and open(p("b")).read() == "A"
    os.makedirs(p("x/y"))
    os.mkdir(p("z"))
    os.rename(p("x/y"), p("z/y"))                # directory across parents
    assert os.stat(p("x")).st_nlink == 2 and os.stat(p("z")).st_nlink == 3
    assert os.path.isdir(p("z/y/.."))
    assert os.stat(p("z/y/..")).st_ino == os.stat(p("z")).st_ino
    open(p("z/y/f"), "w").close()
    os.mkdir(p("empty"))
    raises(errno.ENOTEMPTY, os.rename, p("empty"), p("z"))
    raises(errno.ENOTDIR, os.rename, p("empty"), p("b"))
    raises(errno.EISDIR, os.rename, p("b"), p("empty"))
    os.rename(p("z"), p("empty"))                # dir over empty dir
    assert os.path.exists(p("empty/y/f")) and not os.path.exists(p("z"))
    raises(errno.EINVAL, os.rename, p("empty"), p("empty/y/inside"))
    open(p("c"), "w").write("C")
    raises(errno.EEXIST, renameat2, p("b"), p("c"), RENAME_NOREPLACE)
    renameat2(p("b"), p("c"), RENAME_EXCHANGE)
    assert open(p("b")).read() == "C" and open(p("c")).read() == "A"
    renameat2(p("b"), p("new"), RENAME_NOREPLACE)
    assert open(p("new")).read() == "C"
    raises(errno.ENOENT, renameat2, p("new"), p("missing"), RENAME_EXCHANGE)
    # exchanging a directory with a file across parents keeps link counts right
    renameat2(p("new"), p("empty/y"), RENAME_EXCHANGE)
    assert os.path.isfile(p("empty/y")) and os.path.isdir(p("new"))
    assert os.stat(p("empty")).st_nlink == 2
    assert os.stat(p("new/..")).st_ino == os.stat(p()).st_ino


def test_rename_whiteout_as_on_ext4(vfs, tmp_path):
    # fsstress found RENAME_WHITEOUT (overlayfs' rename, which leaves a 0/0
    # character device at the old name) refused with EINVAL; ext4 does it.
    def whiteouts(root) -> list:
        os.mkdir(os.path.join(root, "d"))
        os.chmod(os.path.join(root, "d"), 0o2775)
        os.chown(os.path.join(root, "d"), 0, 7)
        for name in ("a", "b", "d/c"):
            open(os.path.join(root, name), "w").write(name)
        renameat2(os.path.join(root, "a"), os.path.join(root, "b"), RENAME_WHITEOUT)
        renameat2(os.path.join(root, "d/c"), os.path.join(root, "moved"), RENAME_WHITEOUT)
        seen = []
        for name in ("a", "b", "d/c", "moved"):
            st = os.lstat(os.path.join(root, name))
            seen.append((name, oct(st.st_mode), st.st_rdev, st.st_nlink, st.st_uid, st.st_gid))
        seen.append(open(os.path.join(root, "b")).read())
        seen.append(sorted(os.listdir(root)))
        raises(errno.EINVAL, renameat2, os.path.join(root, "b"), os.path.join(root, "moved"),
               RENAME_WHITEOUT | RENAME_EXCHANGE)
        return seen
    native = tmp_path / "ext4"
    native.mkdir()
    assert whiteouts(vfs.path()) == whiteouts(str(native))
    vfs.stop()
    vfs.start()
    assert stat.S_ISCHR(os.lstat(vfs.path("a")).st_mode) and os.lstat(vfs.path("a")).st_rdev == 0
    os.unlink(vfs.path("a"))                     # overlayfs removes whiteouts like files


def test_truncate_and_ftruncate(vfs):
    p = vfs.path("t")
    with open(p, "wb") as f:
        f.write(b"x" * 100_000)
    os.truncate(p, 10)
    assert open(p, "rb").read() == b"x" * 10
    os.truncate(p, 20)
    assert open(p, "rb").read() == b"x" * 10 + b"\0" * 10
    with open(p, "r+b") as f:
        os.ftruncate(f.fileno(), 5)
        f.seek(8)
        f.write(b"yy")
        f.flush()
        os.fsync(f.fileno())
    assert open(p, "rb").read() == b"xxxxx\0\0\0yy"
    with open(p, "wb"):                          # O_TRUNC
        pass
    assert os.stat(p).st_size == 0 and open(p, "rb").read() == b""


def test_open_trunc_reaches_the_store(vfs):
    # The kernel does atomic O_TRUNC (no setattr): the daemon's open must
    # truncate, or the old tail returns once attributes are re-read.
    p = vfs.path("t")
    with open(p, "wb") as f:
        f.write(b"old contents, long\n")
    with open(p, "wb") as f:
        f.write(b"new\n")
    os.close(os.open(vfs.path("u"), os.O_WRONLY | os.O_CREAT, 0o644))
    os.truncate(vfs.path("u"), 7)
    os.close(os.open(vfs.path("u"), os.O_RDONLY | os.O_TRUNC))
    vfs.stop()
    vfs.start()
    assert open(p, "rb").read() == b"new\n"
    assert os.stat(vfs.path("u")).st_size == 0


def test_sparse_file(vfs):
    p = vfs.path("sparse")
    with open(p, "wb") as f:
        f.seek(1 << 30)
        f.write(b"end")
        f.flush()
        os.fsync(f.fileno())
    st = os.stat(p)
    assert st.st_size == (1 << 30) + 3
    assert st.st_blocks * 512 < 1 << 20                  # the hole is not stored
    with open(p, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
        f.seek((1 << 30) - 2)
        assert f.read() == b"\0\0end"
    with open(p, "r+b") as f:                            # zeros written are holes too
        f.seek(1 << 20)
        f.write(bytes(8 << 20))
        os.fsync(f.fileno())
    vfs.ok("flush")                                      # sealed: the zeros are not stored
    assert os.stat(p).st_blocks * 512 < 1 << 20


def test_timestamps_with_nanoseconds(vfs):
    p = vfs.path("f")
    open(p, "w").close()
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    before = os.stat(p).st_ctime_ns
    os.chmod(p, 0o600)
    assert os.stat(p).st_ctime_ns >= before
    os.utime(p)                                          # utimensat(UTIME_NOW)
    assert abs(os.stat(p).st_mtime_ns - os.stat(vfs.path()).st_mtime_ns) < 60 * 10**9
    os.mkdir(vfs.path("d"))
    m0 = os.stat(vfs.path("d")).st_mtime_ns
    open(vfs.path("d", "x"), "w").close()
    assert os.stat(vfs.path("d")).st_mtime_ns >= m0
    os.utime(vfs.path("d"), ns=(5, 7))
    assert os.stat(vfs.path("d")).st_mtime_ns == 7


def test_xattrs(vfs):
    p = vfs.path("f")
    open(p, "w").close()
    os.setxattr(p, "user.colour", b"blue")
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.colour") == b"blue"
    assert os.getxattr(p, "user.empty") == b""
    assert sorted(os.listxattr(p)) == ["user.colour", "user.empty"]
    os.setxattr(p, "user.colour", b"red")
    assert os.getxattr(p, "user.colour") == b"red"
    os.removexattr(p, "user.colour")
    raises(errno.ENODATA, os.getxattr, p, "user.colour")
    raises(errno.ENODATA, os.removexattr, p, "user.colour")
    # A namespace the fs does not keep: EOPNOTSUPP from all calls, as on ext4
    # (pyfuse3 runs getxattr for XATTR_REPLACE).
    raises(errno.EOPNOTSUPP, os.setxattr, p, "bogus.ns", b"v")
    raises(errno.EOPNOTSUPP, os.setxattr, p, "bogus.ns", b"v", os.XATTR_REPLACE)
    raises(errno.EOPNOTSUPP, os.getxattr, p, "bogus.ns")
    raises(errno.EOPNOTSUPP, os.removexattr, p, "bogus.ns")
    os.mkdir(vfs.path("d"))
    os.setxattr(vfs.path("d"), "user.x", b"1" * 60000)
    assert os.getxattr(vfs.path("d"), "user.x") == b"1" * 60000


def test_name_too_long(vfs):
    ok = "n" * 255
    open(vfs.path(ok), "w").close()
    assert os.path.exists(vfs.path(ok))
    long = "n" * 256
    raises(errno.ENAMETOOLONG, open, vfs.path(long), "w")
    raises(errno.ENAMETOOLONG, os.mkdir, vfs.path(long))
    raises(errno.ENAMETOOLONG, os.stat, vfs.path(long))
    raises(errno.ENAMETOOLONG, os.rename, vfs.path(ok), vfs.path(long))


def test_unlinked_open_file_lives_until_closed(vfs):
    p = vfs.path("f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"still here")
    os.unlink(p)
    assert not os.path.exists(p)
    os.lseek(fd, 0, os.SEEK_SET)
    assert os.read(fd, 100) == b"still here"
    os.write(fd, b" and more")
    os.fsync(fd)
    assert os.fstat(fd).st_nlink == 0
    os.close(fd)
    assert os.listdir(vfs.path()) == []


def test_statfs(vfs):
    st = os.statvfs(vfs.path())
    assert st.f_namemax == 255 and st.f_blocks > 0 and st.f_files > 0


def test_fsync_and_fdatasync_on_files_and_dirs(vfs):
    os.mkdir(vfs.path("d"))
    fd = os.open(vfs.path("d/datasynced"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"abc")
    os.fdatasync(fd)                             # data and size are durable now
    fd2 = os.open(vfs.path("d/synced"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd2, b"0123456789")
    os.fsync(fd2)
    os.symlink("synced", vfs.path("d/link"))
    dfd = os.open(vfs.path("d"), os.O_RDONLY)
    os.fsync(dfd)                                # ... and so is the new entry
    os.close(dfd)
    vfs.kill9()                                  # the daemon dies with both files open
    for dead in (fd, fd2):
        with contextlib.suppress(OSError):       # ENOTCONN; the descriptor is freed anyway
            os.close(dead)
    vfs.start()
    assert open(vfs.path("d/datasynced"), "rb").read() == b"abc"
    assert open(vfs.path("d/synced"), "rb").read() == b"0123456789"
    assert stat.S_IMODE(os.stat(vfs.path("d/synced")).st_mode) == 0o600
    assert os.readlink(vfs.path("d/link")) == "synced"


_AS_OTHER = r"""
import errno, os, sys, json
mnt = sys.argv[1]
out = {}
def attempt(name, fn, *a):
    try:
        fn(*a); out[name] = 0
    except OSError as e:
        out[name] = e.errno
attempt("read_private", lambda: open(os.path.join(mnt, "private")).read())
attempt("write_readonly", lambda: open(os.path.join(mnt, "public"), "a").write("x"))
attempt("read_public", lambda: open(os.path.join(mnt, "public")).read())
attempt("create_in_root", lambda: open(os.path.join(mnt, "mine"), "w").close())
attempt("create_in_shared", lambda: open(os.path.join(mnt, "shared", "mine"), "w").close())
attempt("chmod_not_owner", os.chmod, os.path.join(mnt, "public"), 0o777)
attempt("chown_own_file", os.chown, os.path.join(mnt, "shared", "mine"), 0, 0)
attempt("unlink_sticky", os.unlink, os.path.join(mnt, "shared", "roots"))
attempt("list_locked", os.listdir, os.path.join(mnt, "locked"))
attempt("setxattr_not_owner", os.setxattr, os.path.join(mnt, "public"), "user.a", b"1")
st = os.stat(os.path.join(mnt, "shared", "mine"))
out["mine_uid"], out["mine_gid"] = st.st_uid, st.st_gid
print(json.dumps(out))
"""


def test_permissions_as_another_uid(vfs):
    import json
    p = vfs.path
    open(p("private"), "w").write("secret")
    os.chmod(p("private"), 0o600)
    open(p("public"), "w").write("hello")
    os.chmod(p("public"), 0o644)
    os.mkdir(p("shared"))
    os.chmod(p("shared"), 0o1777)                        # sticky, like /tmp
    open(p("shared", "roots"), "w").close()
    os.mkdir(p("locked"), 0o700)
    os.chmod(p(), 0o755)
    res = subprocess.run(["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups",
                          sys.executable, "-c", _AS_OTHER, vfs.path()],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["read_private"] == errno.EACCES
    assert out["write_readonly"] == errno.EACCES
    assert out["read_public"] == 0
    assert out["create_in_root"] == errno.EACCES
    assert out["create_in_shared"] == 0
    assert out["chmod_not_owner"] == errno.EPERM
    assert out["chown_own_file"] == errno.EPERM
    assert out["unlink_sticky"] in (errno.EPERM, errno.EACCES)
    assert out["list_locked"] == errno.EACCES
    assert out["setxattr_not_owner"] in (errno.EPERM, errno.EACCES)
    assert (out["mine_uid"], out["mine_gid"]) == (4321, 4321)
    st = os.stat(p("shared", "mine"))
    assert (st.st_uid, st.st_gid) == (4321, 4321)
    os.chown(p("shared", "mine"), 7, 8)                  # root may
    assert (os.stat(p("shared", "mine")).st_uid, os.stat(p("shared", "mine")).st_gid) == (7, 8)


def test_setgid_directory_inheritance(vfs):
    os.mkdir(vfs.path("g"))
    os.chown(vfs.path("g"), 0, 777)
    os.chmod(vfs.path("g"), 0o2775)
    open(vfs.path("g", "f"), "w").close()
    os.mkdir(vfs.path("g", "sub"))
    assert os.stat(vfs.path("g", "f")).st_gid == 777
    assert os.stat(vfs.path("g", "sub")).st_gid == 777
    assert os.stat(vfs.path("g", "sub")).st_mode & stat.S_ISGID


def test_umask_applies(vfs):
    old = os.umask(0o077)
    try:
        open(vfs.path("f"), "w").close()
        os.mkdir(vfs.path("d"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(vfs.path("f")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(vfs.path("d")).st_mode) == 0o700
