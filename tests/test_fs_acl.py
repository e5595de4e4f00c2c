"""Issue 13: POSIX ACLs negotiated with the kernel: setfacl/getfacl work, the
kernel enforces them for another (unprivileged) user created for the test,
default ACLs are inherited on create, mode and ACL follow each other as on
ext4 (the same steps are run on an ext4 directory and compared), snapshots keep
them read-only; and xattrs we never keep (SELinux
labels) are refused so that `ls -l` stops asking for them."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from fsmount import vfs  # noqa: F401  (fixture)


def raises(err, fn, *args):
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == err, info.value


def run(*argv) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def getfacl(path) -> list[str]:
    """getfacl's entries (no comments), e.g. ['user::rw-', 'user:bob:r--', ...]."""
    return [line for line in run("getfacl", "-cpE", path).splitlines() if line]


def as_user(user: str, script: str) -> int:
    """Exit status of `sh -c script` run as `user`."""
    return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", script],
                          capture_output=True, timeout=60, cwd="/").returncode


def test_access_acl_is_enforced_for_another_user(vfs, other_user):
    os.chmod(vfs.path(), 0o755)
    p = vfs.path("secret")
    with open(p, "w") as f:
        f.write("hello")
    os.chmod(p, 0o600)
    assert as_user(other_user, f"cat {p}") != 0
    run("setfacl", "-m", f"u:{other_user}:r", p)
    assert f"user:{other_user}:r--" in getfacl(p)
    assert "mask::r--" in getfacl(p)
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o640)       # group bits show the mask
    assert as_user(other_user, f"cat {p}") == 0
    assert as_user(other_user, f"echo x >> {p}") != 0           # r only
    run("setfacl", "-m", f"u:{other_user}:rw", p)
    assert as_user(other_user, f"echo x >> {p}") == 0
    os.chmod(p, 0o600)                                        # chmod lowers the mask ...
    assert "mask::---" in getfacl(p)
    assert as_user(other_user, f"cat {p}") != 0               # ... and the kernel sees it at once
    run("setfacl", "-b", p)                                   # back to a plain mode
    assert getfacl(p) == ["user::rw-", "group::---", "other::---"]
    assert os.listxattr(p) == []


def test_default_acl_is_inherited_without_umask(vfs, other_user):
    d = vfs.path("shared")
    os.mkdir(d, 0o700)
    run("setfacl", "-m", f"u:{other_user}:rwx", "-m", f"d:u:{other_user}:rwx", "-m", "d:o::-", d)
    # umask 0: pyfuse3 does not negotiate FUSE_DONT_MASK, so the kernel applies
    # the umask before we see the mode (stricter than ext4 under a default ACL).
    old = os.umask(0)
    try:
        with open(os.path.join(d, "f"), "w") as f:
            f.write("x")
        os.mkdir(os.path.join(d, "sub"))
    finally:
        os.umask(old)
    f_acl = getfacl(os.path.join(d, "f"))
    assert f"user:{other_user}:rwx" in f_acl and "mask::rw-" in f_acl   # masked by mode 0666
    sub_acl = getfacl(os.path.join(d, "sub"))
    assert f"default:user:{other_user}:rwx" in sub_acl                 # directories inherit it
    assert os.stat(os.path.join(d, "sub")).st_mode & 0o777 == 0o770     # d:o::- limits other
    os.chmod(vfs.path(), 0o755)
    assert as_user(other_user, f"echo more >> {d}/f && mkdir {d}/sub/x") == 0
    raises(errno.EACCES, os.setxattr, os.path.join(d, "f"), "system.posix_acl_default",
           os.getxattr(d, "system.posix_acl_default"))               # files have no default ACL
    assert "default:" not in " ".join(getfacl(os.path.join(d, "f")))


def test_acls_survive_remount_and_stay_read_only_in_snapshots(vfs, other_user):
    p = vfs.path("f")
    open(p, "w").close()
    run("setfacl", "-m", f"u:{other_user}:rw", p)
    before = getfacl(p)
    name = vfs.ok("snapshot acl").split()[0]
    vfs.stop()
    vfs.start()
    assert getfacl(p) == before
    snap = vfs.path(".versionfs", "snapshots", name, "f")
    assert getfacl(snap) == before
    r = subprocess.run(["setfacl", "-m", "o::rw", snap], capture_output=True, text=True)
    assert r.returncode != 0 and "Read-only" in r.stderr


def test_bad_acls_and_unkept_labels_are_refused(vfs):
    p = vfs.path("f")
    open(p, "w").close()
    raises(errno.EINVAL, os.setxattr, p, "system.posix_acl_access", b"\x02\0\0\0junk")
    raises(errno.EOPNOTSUPP, os.setxattr, p, "system.other", b"v")
    # SELinux labels are not kept: EOPNOTSUPP, so ls -l stops asking per file
    raises(errno.EOPNOTSUPP, os.getxattr, p, "security.selinux")
    raises(errno.EOPNOTSUPP, os.setxattr, p, "security.selinux", b"x")
    os.setxattr(p, "security.other", b"v")                    # the rest of security. is kept
    assert os.getxattr(p, "security.other") == b"v"


ACL_STEPS = [
    # (what, argv with {p} for the path under test, {u} for the other user)
    ("named user", ["setfacl", "-m", "u:{u}:rw", "{p}/f"]),
    ("chmod lowers the mask", ["chmod", "0604", "{p}/f"]),
    ("mask set directly", ["setfacl", "-m", "m::rwx", "{p}/f"]),
    ("chmod g+w", ["chmod", "g+w", "{p}/f"]),
    ("remove named entry", ["setfacl", "-x", "u:{u}", "{p}/f"]),
    ("default ACL", ["setfacl", "-m", "d:u:{u}:rx,d:g::r,d:o::-", "{p}/d"]),
    ("file inherits", ["sh", "-c", "umask 0 && touch {p}/d/new && mkdir {p}/d/sub"]),
    ("mknod inherits", ["sh", "-c", "umask 0 && mkfifo -m 0640 {p}/d/fifo"]),
    ("chmod a dir with a default ACL", ["chmod", "0711", "{p}/d"]),
    ("remove default", ["setfacl", "-k", "{p}/d"]),
    ("strip all", ["setfacl", "-b", "{p}/f"]),
]


def test_acl_steps_match_ext4(vfs, other_user, tmp_path):
    """The same setfacl/chmod/create steps on ext4 (the reference) and on versionfs
    give the same ACLs and modes after each step."""
    ref = tmp_path / "ext4"
    ref.mkdir()
    roots = (str(ref), vfs.path())
    for root in roots:
        open(os.path.join(root, "f"), "w").close()
        os.chmod(os.path.join(root, "f"), 0o640)
        os.mkdir(os.path.join(root, "d"), 0o750)
    for what, argv in ACL_STEPS:
        seen = []
        for root in roots:
            subprocess.run([a.format(p=root, u=other_user) for a in argv], check=True)
            state = []
            for dirpath, dirnames, filenames in sorted(os.walk(root)):
                for name in sorted(dirnames + filenames):
                    path = os.path.join(dirpath, name)
                    state.append((os.path.relpath(path, root), oct(os.lstat(path).st_mode),
                                  getfacl(path)))
            seen.append(sorted(state))
        assert seen[0] == seen[1], what
