"""Issue 12: key management end to end with the real CLI and real mounts —
passphrase change (the old one fails for mount, clone and a stale machine),
recovery key export and use, weak passphrases refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_util import assert_user_error, force_cleanup, mount_type, ok, run_cli


class World:
    """A file:// slow store outside the state dirs, passphrase files, and mounts to clean up."""

    def __init__(self, root: Path):
        self.root = root
        self.slow = root / "slow"
        self.mnt = root / "mnt"
        self.mnt.mkdir()
        self.states: list[Path] = []

    def secret(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text + "\n")
        return path

    def state(self, name: str) -> Path:
        path = self.root / name
        self.states.append(path)
        return path

    def mount(self, state: Path, *extra) -> None:
        ok(run_cli("mount", state, self.mnt, *extra))
        assert mount_type(self.mnt) == "fuse.versionfs"

    def umount(self) -> None:
        ok(run_cli("umount", self.mnt))

    def cleanup(self) -> None:
        for state in self.states:
            force_cleanup(self.mnt, state)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.cleanup()


def _encrypted_fs_with_a_file(world: World, passphrase: Path) -> Path:
    a = world.state("a")
    ok(run_cli("init", a, "--slow", world.slow, "--encrypt", "--passphrase-file", passphrase))
    world.mount(a, "--passphrase-file", passphrase)
    (world.mnt / "letter.txt").write_text("dear diary\n")
    ok(run_cli("flush", world.mnt))
    world.umount()
    return a


def test_passphrase_change_end_to_end(world):
    old = world.secret("old", "correct horse battery staple")
    new = world.secret("new", "a different long passphrase")
    a = _encrypted_fs_with_a_file(world, old)
    b = world.state("b")                       # a second machine, cloned before the change
    ok(run_cli("clone", world.slow, b, "--passphrase-file", old, "-q"))

    out = ok(run_cli("key", "passwd", a, "--passphrase-file", old, "--new-passphrase-file", new))
    assert "passphrase changed" in out
    assert (a / "key").read_bytes() == (world.slow / "keys" / "master").read_bytes()

    assert_user_error(run_cli("mount", a, world.mnt, "--passphrase-file", old), "wrong passphrase")
    assert mount_type(world.mnt) is None
    world.mount(a, "--passphrase-file", new)
    assert (world.mnt / "letter.txt").read_text() == "dear diary\n"
    world.umount()

    c = world.state("c")
    assert_user_error(run_cli("clone", world.slow, c, "--passphrase-file", old), "wrong passphrase")
    assert not c.exists()
    ok(run_cli("clone", world.slow, c, "--passphrase-file", new, "-q"))

    # The machine cloned before the change still has the old wrapped key locally:
    # the slow store's copy wins, so the old passphrase fails there too.
    assert_user_error(run_cli("mount", b, world.mnt, "--passphrase-file", old), "wrong passphrase")
    world.mount(b, "--passphrase-file", new, "--steal-lease")
    assert (world.mnt / "letter.txt").read_text() == "dear diary\n"
    world.umount()
    assert (b / "key").read_bytes() == (world.slow / "keys" / "master").read_bytes()

    # The old passphrase cannot change it back either.
    assert_user_error(run_cli("key", "passwd", a, "--passphrase-file", old,
                              "--new-passphrase-file", world.secret("x", "yet another passphrase")),
                      "wrong passphrase")


def test_recovery_key_export_mount_clone_and_reset(world):
    phrase = world.secret("pass", "correct horse battery staple")
    a = _encrypted_fs_with_a_file(world, phrase)
    printed = ok(run_cli("key", "export", a, "--passphrase-file", phrase)).strip()
    assert len(printed.replace("-", "")) == 85 and printed.count("-") == 16
    rk = world.root / "recovery"
    ok(run_cli("key", "export", a, "--passphrase-file", phrase, "-o", rk))
    assert (rk.stat().st_mode & 0o777) == 0o600
    assert printed in rk.read_text()
    assert_user_error(run_cli("key", "export", a, "--passphrase-file", world.secret("w", "wrong but long enough")),
                      "wrong passphrase")

    world.mount(a, "--recovery-key-file", rk)
    assert (world.mnt / "letter.txt").read_text() == "dear diary\n"
    world.umount()

    b = world.state("b")
    ok(run_cli("clone", world.slow, b, "--recovery-key-file", rk, "-q"))
    world.mount(b, "--recovery-key-file", rk, "--steal-lease")
    assert (world.mnt / "letter.txt").read_text() == "dear diary\n"
    world.umount()

    # A typo is caught by the checksum; a key of another filesystem by its id.
    typo = world.root / "typo"
    typo.write_text(printed[:-1] + ("A" if printed[-1] != "A" else "B") + "\n")
    assert_user_error(run_cli("mount", a, world.mnt, "--recovery-key-file", typo), "mistyped")
    other = world.state("other")
    ok(run_cli("init", other, "--encrypt", "--passphrase-file", phrase))
    other_rk = world.root / "other-rk"
    ok(run_cli("key", "export", other, "--passphrase-file", phrase, "-o", other_rk))
    assert_user_error(run_cli("mount", a, world.mnt, "--recovery-key-file", other_rk),
                      "belongs to filesystem")
    assert mount_type(world.mnt) is None

    # A forgotten passphrase: the recovery key sets a new one.
    new = world.secret("new", "the new passphrase after forgetting")
    ok(run_cli("key", "passwd", a, "--recovery-key-file", rk, "--new-passphrase-file", new))
    assert_user_error(run_cli("mount", a, world.mnt, "--passphrase-file", phrase), "wrong passphrase")
    world.mount(a, "--passphrase-file", new, "--steal-lease")
    world.umount()


@pytest.mark.parametrize("weak, why", [
    ("short", "5 characters"),
    ("aaaaaaaaaaaaaaaa", "different characters"),
    ("Tr0ub4dTr0ub4dTr0ub4d", "repeated"),
    ("123456789012", "only digits"),
])
def test_weak_passphrase_refused_with_override(world, weak, why):
    phrase = world.secret("weak", weak)
    s = world.state("s")
    line = assert_user_error(run_cli("init", s, "--encrypt", "--passphrase-file", phrase),
                             "too weak", why, "--allow-weak-passphrase")
    assert weak not in line
    assert not s.exists()
    ok(run_cli("init", s, "--encrypt", "--passphrase-file", phrase, "--allow-weak-passphrase"))
    good = world.secret("good", "correct horse battery staple")
    assert_user_error(run_cli("key", "passwd", s, "--passphrase-file", phrase,
                              "--new-passphrase-file", phrase), "same file")
    copy = world.secret("copy", weak)
    assert_user_error(run_cli("key", "passwd", s, "--passphrase-file", phrase,
                              "--new-passphrase-file", copy), "too weak", why)
    ok(run_cli("key", "passwd", s, "--passphrase-file", phrase, "--new-passphrase-file", good))
    ok(run_cli("key", "passwd", s, "--passphrase-file", good, "--new-passphrase-file", copy,
               "--allow-weak-passphrase"))
    ok(run_cli("key", "export", s, "--passphrase-file", copy))


def test_key_commands_need_an_encrypted_filesystem(world):
    s = world.state("plain")
    ok(run_cli("init", s))
    assert_user_error(run_cli("key", "export", s), "not encrypted")
    assert_user_error(run_cli("key", "passwd", s), "not encrypted")
