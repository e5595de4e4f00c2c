"""The ctl file: every command, bad commands, concurrent writers."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import threading

import pytest

from fsmount import vfs  # noqa: F401  (fixture)
from versionfs.fs.ctl import registry

pytestmark = pytest.mark.fuse

DIRNAME = re.compile(r"^r(\d+)-\d{8}T\d{6}Z(-.+)?$")


def test_help_lists_every_command(vfs):
    text = vfs.ok("help")
    for name in ("snapshot", "snapshots", "flush", "status", "help"):
        assert re.search(rf"^{name}\b", text, re.M), text


def test_command_index_matches_the_groups():
    """registry.INDEX (which group to import for a ctl command) names every
    command of every group, and nothing else."""
    defined = {name: cmd.run.__module__.rsplit(".", 1)[1]
               for name, cmd in registry.commands().items()}
    assert defined == registry.INDEX


def test_snapshot_and_snapshots(vfs):
    open(vfs.path("f"), "w").write("v1")
    first = vfs.ok("snapshot")
    assert DIRNAME.match(first) and "-" not in first.split("Z", 1)[1]
    second = vfs.ok("snapshot\n")                  # trailing newline allowed
    named = vfs.ok("snapshot before-upgrade")
    assert named.endswith("-before-upgrade")
    lines = vfs.ok("snapshots").splitlines()
    assert [l.split("\t")[0] for l in lines] == [first, second, named]
    rows = [l.split("\t") for l in lines]
    assert [int(r[1]) for r in rows] == sorted(int(r[1]) for r in rows)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", r[2]) for r in rows)
    assert [r[3] for r in rows] == ["-", "-", "before-upgrade"]
    assert sorted(os.listdir(vfs.path(".versionfs", "snapshots"))) == sorted([first, second, named])


def test_status_text_and_json(vfs):
    open(vfs.path("f"), "w").write("x")
    vfs.ok("snapshot")
    text = vfs.ok("status")
    fields = dict(line.split(": ", 1) for line in text.splitlines())
    for key in ("revision", "snapshots", "dirty files", "pending uploads", "pending bytes",
                "fast store use", "last upload", "last error"):
        assert key in fields, text
    assert fields["snapshots"] == "1"
    st = json.loads(vfs.ok("status --json"))
    assert st["snapshots"] == 1 and st["revision"] == int(fields["revision"])
    assert "pending_uploads" in st and "dirty_files" in st


def test_flush_makes_everything_durable_on_slow_store(vfs):
    data = os.urandom(3 << 20)
    with open(vfs.path("f"), "wb") as f:
        f.write(data)
    assert vfs.ok("flush") == "flushed"
    st = json.loads(vfs.ok("status --json"))
    assert st["pending_uploads"] == 0 and st["dirty_files"] == 0
    assert vfs.ok("flush 30") == "flushed"
    # The slow store alone has it all: the daemon dies without a chance to
    # seal or upload anything more, the fast store is lost, and the file
    # still reads back byte for byte.
    vfs.kill9()
    shutil.rmtree(vfs.state_dir / "fast")
    (vfs.state_dir / "fast").mkdir()
    vfs.start()
    assert open(vfs.path("f"), "rb").read() == data


@pytest.mark.parametrize("command, message", [
    ("bogus", "unknown command"),
    ("  \n", "empty command"),
    ("snapshot a b", "usage"),
    ("snapshot bad/name", "bad snapshot name"),
    ("snapshot .hidden", "bad snapshot name"),
    ("snapshot 123", "bad snapshot name"),
    ("snapshot r1-20250101T000000Z", "bad snapshot name"),
    ("snapshots extra", "takes no arguments"),
    ("flush soon", "must be a number"),
    ("flush -1", "must be positive"),
    ("status --xml", "usage"),
    ("help me", "takes no arguments"),
    ("snapshot 'unterminated", "cannot parse"),
    ("status\nstatus", "one command per write"),
    (b"\xff\xfe", "not valid UTF-8"),
])
def test_bad_commands_fail_with_einval_and_change_nothing(vfs, command, message):
    before = vfs.ok("snapshots")
    err, text = vfs.ctl(command)
    assert err == errno.EINVAL
    assert text.startswith("error: ") and text.endswith("\n") and message in text, text
    assert vfs.ok("snapshots") == before


def test_help_takes_no_arguments(vfs):
    assert vfs.ctl("help me")[0] == errno.EINVAL


def test_duplicate_snapshot_name_is_refused(vfs):
    vfs.ok("snapshot daily")
    err, text = vfs.ctl("snapshot daily")
    assert err == errno.EINVAL and "already exists" in text
    assert len(vfs.ok("snapshots").splitlines()) == 1


def test_answers_belong_to_the_open_file(vfs):
    fd = os.open(vfs.path(".versionfs", "ctl"), os.O_RDWR)
    try:
        os.write(fd, b"snapshot one")
        first = os.read(fd, 4096)
        assert os.read(fd, 4096) == b""            # end of the answer
        os.write(fd, b"help")                     # a new command replaces the answer
        assert os.read(fd, 1 << 16).startswith(b"snapshot")
        with pytest.raises(OSError) as info:
            os.write(fd, b"nonsense")
        assert info.value.errno == errno.EINVAL
        assert os.read(fd, 4096) == b"error: unknown command 'nonsense'; try 'help'\n"
        assert first.endswith(b"-one\n")
    finally:
        os.close(fd)


def test_concurrent_writers_get_their_own_answers(vfs):
    results: dict[int, list] = {}

    def worker(i):
        out = []
        for j in range(5):
            name = f"w{i}-{j}"
            out.append((name, vfs.ctl(f"snapshot {name}")))
            out.append(("status", vfs.ctl("status --json")))
        results[i] = out

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    names = []
    for i, out in results.items():
        for what, (err, text) in out:
            assert err == 0, text
            if what == "status":
                json.loads(text)
            else:
                assert text.rstrip("\n").endswith("-" + what)
                names.append(text.rstrip("\n"))
    assert len(results) == 6 and len(set(names)) == 30
    revs = [int(DIRNAME.match(n).group(1)) for n in names]
    assert len(set(revs)) == 30
    assert sorted(os.listdir(vfs.path(".versionfs", "snapshots"))) == sorted(names)


def test_ctl_is_not_a_regular_data_file(vfs):
    st = os.stat(vfs.path(".versionfs", "ctl"))
    assert st.st_size == 0
    with pytest.raises(OSError) as info:
        os.unlink(vfs.path(".versionfs", "ctl"))
    assert info.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES)
    with pytest.raises(OSError) as info:
        open(vfs.path(".versionfs", "new"), "w")
    assert info.value.errno in (errno.EROFS, errno.EACCES)
