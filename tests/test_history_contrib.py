"""Service integration for issue 6: the systemd units pass `systemd-analyze
verify` as installed (instance name and an executable versionfs), and the
completions offer the history commands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = [REPO / "contrib" / "systemd" / "versionfs@.service",
         REPO / "contrib" / "systemd" / "user" / "versionfs@.service"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize("unit", UNITS, ids=["system", "user"])
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    # As installed: ExecStart names an executable versionfs (install.sh puts it
    # in /usr/local/bin), and the template is verified as a concrete instance.
    exe = shutil.which("versionfs") or str(REPO / ".venv" / "bin" / "versionfs")
    text = unit.read_text().replace("/usr/local/bin/versionfs", exe)
    instance = tmp_path / "versionfs@home-me.service"
    instance.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_completions_offer_history_commands():
    script = (f"source {REPO}/contrib/completion/versionfs.bash; "
              "COMP_WORDS=(versionfs diff /mnt --s); COMP_CWORD=3; _versionfs; echo ${COMPREPLY[@]}; "
              "COMP_WORDS=(versionfs re); COMP_CWORD=1; _versionfs; echo ${COMPREPLY[@]}")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.stdout.split("\n")[:2] == ["--stat", "restore"]
    zsh = (REPO / "contrib" / "completion" / "_versionfs").read_text()
    for name in ("log", "diff", "restore"):
        assert f"'{name}:" in zsh
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n", str(REPO / "contrib" / "completion" / "_versionfs")], check=True)
