"""log, diff and restore ctl commands on a real mount, after a scripted sequence
of changes, compared with what the sequence must produce."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from fsmount import vfs  # noqa: F401  (fixture)

pytestmark = pytest.mark.fuse

OTHER_UID, OTHER_GID = 4321, 8765


def diff_lines(vfs, *revs, flags=""):
    text = vfs.ok(f"diff {flags} {' '.join(revs)}".replace("  ", " "))
    lines = text.splitlines()
    return lines[:-1], lines[-1]


def scripted_history(vfs):
    """Three snapshots with known changes between them."""
    p = vfs.path
    os.makedirs(p("docs/sub"))
    with open(p("docs/a.txt"), "wb") as f:
        f.write(b"alpha\n" * 1000)
    with open(p("b.txt"), "wb") as f:
        f.write(b"bee\n")
    with open(p("gone.txt"), "wb") as f:
        f.write(b"x" * 10)
    os.link(p("docs/a.txt"), p("docs/sub/a-hard"))
    os.symlink("../b.txt", p("docs/link"))
    os.setxattr(p("docs/a.txt"), "user.colour", b"blue")
    os.chmod(p("docs/a.txt"), 0o640)
    os.chown(p("docs/a.txt"), OTHER_UID, OTHER_GID)
    os.utime(p("docs/a.txt"), ns=(1_000_000_000_123, 1_500_000_000_456_789_012))
    assert vfs.ok("snapshot one").endswith("-one")
    with open(p("docs/a.txt"), "ab") as f:          # modified in place (through either link)
        f.write(b"omega\n")
    os.rename(p("b.txt"), p("docs/b-moved.txt"))   # renamed
    os.unlink(p("gone.txt"))                       # removed
    with open(p("new.txt"), "wb") as f:            # added
        f.write(b"n" * 100)
    vfs.ok("snapshot two")
    os.chmod(p("new.txt"), 0o600)                  # live change: attributes only
    with open(p("docs/.a.txt.tmp"), "wb") as f:    # editor-style save of docs/sub/x
        f.write(b"saved")
    os.mkdir(p("d2"))
    os.rename(p("docs/.a.txt.tmp"), p("d2/x"))


def test_diff_between_snapshots_and_live(vfs):
    scripted_history(vfs)
    lines, summary = diff_lines(vfs, "one", "two")
    assert lines == [
        "M\tdocs/a.txt",
        "R\tb.txt -> docs/b-moved.txt",
        "M\tdocs/sub/a-hard",
        "D\tgone.txt",
        "A\tnew.txt",
    ]
    assert summary.startswith("5 changes: 1 added, 1 removed, 2 modified, 1 renamed")
    lines, _ = diff_lines(vfs, "two")           # REV_B defaults to the live tree
    assert lines == ["A\td2/", "A\td2/x", "M\tnew.txt"]
    # Either order, revision numbers and directory names work too.
    one, two = [line.split("\t") for line in vfs.ok("snapshots").splitlines()]
    lines_rev, _ = diff_lines(vfs, two[1], one[0])
    assert sorted(lines_rev) == sorted(["M\tdocs/a.txt", "R\tdocs/b-moved.txt -> b.txt", "M\tdocs/sub/a-hard",
                                        "A\tgone.txt", "D\tnew.txt"])
    stat_only = vfs.ok("diff --stat one two")
    assert stat_only.splitlines() == [summary]
    doc = json.loads(vfs.ok("diff --json one two"))
    assert doc["from"]["name"] == "one" and doc["to"]["name"] == "two"
    assert doc["summary"]["added"] == 1 and doc["summary"]["renamed"] == 1
    added = [c for c in doc["changes"] if c["kind"] == "A"]
    assert added == [{"kind": "A", "path": "new.txt", "type": "file", "bytes": 100}]
    removed = [c for c in doc["changes"] if c["kind"] == "D"]
    assert removed[0]["bytes"] == 10
    # Bad input: clear errors, EINVAL/ENOENT, nothing changes.
    err, text = vfs.ctl("diff nosuch")
    assert err == errno.ENOENT and "no snapshot 'nosuch'" in text
    err, text = vfs.ctl("diff --bogus one")
    assert err == errno.EINVAL and "unknown option --bogus" in text


def test_log_with_and_without_path(vfs):
    scripted_history(vfs)
    entries = [line.split("\t") for line in vfs.ok("log").splitlines()]
    assert [e[0] for e in entries][0] == "live"
    assert [e[3] for e in entries[1:]] == ["two", "one"]
    assert entries[1][4].startswith("1 added, 1 removed, 2 modified, 1 renamed")
    assert entries[2][4].startswith("7 added")         # docs, sub, a.txt, a-hard, link, b.txt, gone.txt
    only_a = [line.split("\t")[3] for line in vfs.ok("log docs/a.txt").splitlines()]
    assert only_a == ["two", "one"]
    only_new = [line.split("\t")[0] for line in vfs.ok("log new.txt").splitlines()]
    assert only_new[0] == "live" and len(only_new) == 2
    doc = json.loads(vfs.ok("log --json b.txt"))
    assert [r["name"] for r in doc["revisions"]] == ["two", "one"]
    assert doc["revisions"][0]["renamed"] == 1
    assert vfs.ok("log no/such/path") == "no changes"


def _snapshot_tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            body = (os.readlink(full) if stat.S_ISLNK(st.st_mode)
                    else open(full, "rb").read() if stat.S_ISREG(st.st_mode) else None)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(full, k) for k in os.listxattr(full)}
            out[os.path.relpath(full, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                                st.st_mtime_ns, st.st_nlink, body, xattrs)
    return out


def test_restore_directory_in_place_and_elsewhere(vfs):
    scripted_history(vfs)
    p = vfs.path
    snapdir = vfs.ok("snapshots").splitlines()[0].split("\t")[0]
    frozen = _snapshot_tree(p(".versionfs", "snapshots", snapdir, "docs"))
    # The kernel has the live docs/ cached (entries, attributes, data).
    assert open(p("docs/a.txt"), "rb").read().endswith(b"omega\n")
    before_ino = os.stat(p("docs")).st_ino
    answer = vfs.ok("restore one docs")
    assert answer.startswith("restored docs from ") and "pre-restore-" in answer
    assert os.stat(p("docs")).st_ino != before_ino        # the kernel saw the new entry
    assert _snapshot_tree(p("docs")) == frozen             # modes, owners, times, xattrs, links, data
    a, hard = os.stat(p("docs/a.txt")), os.stat(p("docs/sub/a-hard"))
    assert a.st_ino == hard.st_ino and a.st_nlink == 2     # the hard link is one object again
    assert (a.st_uid, a.st_gid, stat.S_IMODE(a.st_mode)) == (OTHER_UID, OTHER_GID, 0o640)
    assert a.st_mtime_ns == 1_500_000_000_456_789_012
    assert os.getxattr(p("docs/a.txt"), "user.colour") == b"blue"
    assert os.readlink(p("docs/link")) == "../b.txt"
    assert not os.path.exists(p("docs/b-moved.txt"))      # not in "one": gone from the live docs/
    # The replaced version is in the pre-restore snapshot, whole.
    pre = [line.split("\t") for line in vfs.ok("snapshots").splitlines()][-1]
    assert pre[3].startswith("pre-restore-")
    assert open(p(".versionfs", "snapshots", pre[0], "docs", "b-moved.txt"), "rb").read() == b"bee\n"
    # A restore of unchanged content shows no difference for it.
    lines, _ = diff_lines(vfs, "one")
    assert not [line for line in lines if line.split("\t")[1].startswith("docs/")]
    # Restore elsewhere: a new name (the kernel had a negative entry cached for it).
    assert not os.path.exists(p("old-b.txt"))
    vfs.ok("restore --to old-b.txt one b.txt")
    assert open(p("old-b.txt"), "rb").read() == b"bee\n"
    # Writing to a restored file leaves the snapshot alone (copy on write of metadata).
    with open(p("old-b.txt"), "ab") as f:
        f.write(b"more\n")
    assert open(p(".versionfs", "snapshots", snapdir, "b.txt"), "rb").read() == b"bee\n"
    # The whole tree into a subdirectory.
    vfs.ok("restore --to whole one /")
    assert sorted(os.listdir(p("whole"))) == ["b.txt", "docs", "gone.txt"]


def test_restore_refuses_bad_requests_and_changes_nothing(vfs):
    scripted_history(vfs)
    before = sorted(os.listdir(vfs.path()))
    for command, err, words in [
        ("restore one nope", errno.ENOENT, "does not exist in snapshot one"),
        ("restore nosuch docs", errno.ENOENT, "no snapshot"),
        ("restore live docs", errno.EINVAL, "not the live tree"),
        ("restore one /", errno.EINVAL, "root"),
        ("restore --to missing/dir/x one b.txt", errno.ENOENT, "does not exist in the live"),
        ("restore --to .versionfs one b.txt", errno.EINVAL, "not a place"),
        ("restore one", errno.EINVAL, "usage"),
    ]:
        got, text = vfs.ctl(command)
        assert got == err, (command, text)
        assert words in text, (command, text)
    assert sorted(os.listdir(vfs.path())) == before
    assert len(vfs.ok("snapshots").splitlines()) == 2     # no pre-restore snapshot either
