"""contrib/ and ctl/ files: the fstab helper's option handling, completion, units, example config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from cli_util import REPO
from versionfs.cli import main as cli, preflight

HELPER = REPO / "contrib" / "mount.versionfs"


def helper_command(*args: str) -> str:
    """What mount.versionfs would run, from its dry-run line."""
    env = dict(os.environ, MOUNT_VERSIONFS_DRY_RUN="1", VERSIONFS="/opt/vfs/bin/versionfs",
               MOUNT_VERSIONFS_NO_ENV="1")
    r = subprocess.run(["sh", str(HELPER), *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip()


def test_fstab_helper_translates_mount_arguments():
    # mount(8) passes: SPEC DIR [-sfnv] [-o OPTIONS] [-t TYPE]
    assert helper_command("/var/lib/versionfs/home", "/home/me", "-o", "defaults,_netdev") == \
        "/opt/vfs/bin/versionfs mount /var/lib/versionfs/home /home/me -o defaults,_netdev"
    assert helper_command("/s", "/m", "-n", "-s", "-t", "versionfs", "-o", "rw", "-oallow_other") == \
        "/opt/vfs/bin/versionfs mount /s /m -o rw,allow_other"
    assert helper_command("/s", "/m", "-r") == "/opt/vfs/bin/versionfs mount /s /m -o ro"
    assert helper_command("/s", "/m") == "/opt/vfs/bin/versionfs mount /s /m"


def test_fstab_helper_rejects_garbage():
    r = subprocess.run(["sh", str(HELPER), "/s"], capture_output=True, text=True)
    assert r.returncode != 0 and "usage" in r.stderr
    r = subprocess.run(["sh", str(HELPER), "/s", "/m", "--bogus"], capture_output=True, text=True,
                       env=dict(os.environ, VERSIONFS="/bin/true"))
    assert r.returncode != 0 and "unknown option --bogus" in r.stderr


def test_mount_options_split_fstab_from_fuse():
    opts = preflight.parse_mount_options([
        "defaults,_netdev,noauto,nofail,x-systemd.automount,x-systemd.idle-timeout=60,"
        "comment=home,rw,user", "allow_other,ro", "passphrase_file=/etc/vfs.pass,nonempty"])
    assert opts.fuse == ["allow_other"]
    assert opts.read_only and opts.nonempty
    assert opts.passphrase_file == "/etc/vfs.pass"
    assert preflight.parse_mount_options(["max_read=131072,fsname=x\\,y"]).fuse == ["max_read=131072"]
    assert preflight._split_commas("a\\,b,c") == ["a,b", "c"]


def test_completions_know_every_command():
    bash = (REPO / "contrib" / "completion" / "versionfs.bash").read_text()
    zsh = (REPO / "contrib" / "completion" / "_versionfs").read_text()
    listed = re.search(r'local commands="([^"]+)"', bash).group(1).split()
    names = set(cli.commands())
    assert names <= set(listed)
    for name in names:
        assert f"'{name}:" in zsh
    subprocess.run(["bash", "-n", str(REPO / "contrib" / "completion" / "versionfs.bash")], check=True)


def test_bash_completion_completes_commands():
    script = f'source {REPO}/contrib/completion/versionfs.bash; COMP_WORDS=(versionfs sn); ' \
             'COMP_CWORD=1; _versionfs; echo "${COMPREPLY[@]}"'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.stdout.split() == ["snapshot", "snapshots"]


def test_shell_scripts_are_posix_sh():
    for path in [REPO / "ctl" / "vfsctl", HELPER, REPO / "contrib" / "install.sh"]:
        subprocess.run(["sh", "-n", str(path)], check=True)
        if shutil.which("dash"):
            subprocess.run(["dash", "-n", str(path)], check=True)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_units_parse():
    for unit in ["versionfs@.service", "user/versionfs@.service"]:
        r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            str(REPO / "contrib" / "systemd" / unit)],
                           capture_output=True, text=True)
        problems = [line for line in r.stderr.splitlines()
                    if "is not executable" not in line and "No such file" not in line
                    and line.strip()]
        assert not problems, r.stderr


def test_command_index_matches_the_groups():
    """cli.main.INDEX (which group to import for a command) names every command
    and alias of every group, and nothing else."""
    indexed = {}
    for name, cmd in cli.commands().items():
        for word in (name, *cmd.aliases):
            indexed[word] = cmd.run.__module__.rsplit(".", 1)[1]
    assert indexed == cli.INDEX


def test_a_command_imports_only_its_own_group():
    """`versionfs status` starts without the stores, the metadata engine or the
    bucket code (start-up time); `--version` without any command group."""
    def imported(*args):
        code = ("import sys\nfrom versionfs.cli import main\ntry:\n    main.main(sys.argv[1:])\n"
                "except SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)))")
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           cwd=REPO)
        return set(r.stdout.split()[-1000:]) if r.stdout else set()
    status = imported("status", "/nonexistent-mountpoint")
    assert "versionfs.cli.snapshots" in status
    heavy = {m for m in status if m.startswith(("versionfs.meta", "versionfs.bucket",
                                                "versionfs.fs", "versionfs.blob.codec"))}
    assert heavy == set()
    version = imported("--version")
    assert {m for m in version if m.startswith("versionfs.")} == {"versionfs.cli",
                                                                   "versionfs.cli.main"}
    assert {"argparse", "logging", "dataclasses", "typing"} & version == set()
