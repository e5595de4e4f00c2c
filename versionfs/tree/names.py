"""How revisions are named where people see them: snapshot directory names and times.

A snapshot directory is ``r<rev>-<YYYYmmddTHHMMSSZ>[-NAME]``: the revision
makes it unique, the UTC time makes ``ls`` sort and read well, the optional
name is the user's. The ctl file, the snapshot views, retention and fsck all
name revisions this way.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

DIRNAME_RE = re.compile(r"^r(\d+)-(\d{8}T\d{6}Z)(?:-(.+))?$")


def iso_utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_dirname(info) -> str:
    """`r<rev>-<YYYYmmddTHHMMSSZ>[-NAME]` for a `RevisionInfo`."""
    stamp = datetime.fromtimestamp(info.time, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"r{info.rev}-{stamp}" + (f"-{info.name}" if info.name else "")
