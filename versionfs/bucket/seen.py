"""What a state dir remembers of its bucket, durably: the newest head and the lease.

``STATE_DIR/head-seen.json`` — the newest head record this state dir has seen
in the bucket or published there (index, time, writer).  Like borg's manifest
check it is what makes a rollback visible: whoever can write the bucket can
put an old head record back (a replayed object, a restored backup of the
bucket), and an old head is in every other respect a valid one.  A machine
accepts no head older than this (``HeadWatermark.older``), so an old head
can neither replace newer local metadata nor become the base of a publish.

``STATE_DIR/lease.json`` — the writer lease this state dir last held
(holder, generation) and whether it still holds it, released it at unmount,
or lost it to another machine.  A state dir that was the last holder may
mount read-write while the bucket is unreachable (a laptop booting offline);
one that lost the lease, or never held it, may not.

Both are written with ``write_durably`` (fsync of the file and its directory)
before anything relies on them: a power cut leaves the old or the new record.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from versionfs.common.state import write_durably

__all__ = ["HeadWatermark", "SeenHead", "LeaseRecord", "iso", "HEAD_SEEN_NAME", "LEASE_RECORD_NAME"]

log = logging.getLogger(__name__)

HEAD_SEEN_NAME = "head-seen.json"
LEASE_RECORD_NAME = "lease.json"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _load_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.error("%s is damaged (%s); ignoring it", path, exc)
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True)
class SeenHead:
    """A head record as far as rollback goes: its index, time and writer; and the
    writer's lease generation (the floor below which a lease is a replay)."""

    last_index: int
    time: float
    writer: str = ""
    generation: int = 0

    def describe(self) -> str:
        who = f", writer {self.writer[:12]}" if self.writer else ""
        return f"index {self.last_index}, published {iso(self.time)}{who}"


class HeadWatermark:
    """The newest head this state dir has seen or published (module doc)."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.path = Path(state_dir) / HEAD_SEEN_NAME

    def load(self) -> SeenHead | None:
        doc = _load_json(self.path)
        if doc is None:
            return None
        try:
            return SeenHead(int(doc["last_index"]), float(doc["time"]), str(doc.get("writer", "")),
                            int(doc.get("generation", 0)))
        except (KeyError, TypeError, ValueError):
            log.error("%s holds no head record; ignoring it", self.path)
            return None

    def older(self, head: SeenHead) -> str | None:
        """Why ``head`` is older than the newest seen (a sentence naming both), or None.

        Older means a lower index, or the same index published earlier (a
        different head at an index already seen).
        """
        seen = self.load()
        if seen is None or (head.last_index, head.time) >= (seen.last_index, seen.time):
            return None
        return (f"the bucket's head ({head.describe()}) is older than the newest head this "
                f"machine has seen or published ({seen.describe()}): someone put an old head "
                f"record back into the bucket (a replayed object or a restored backup)")

    def note(self, head: SeenHead) -> None:
        """Remember ``head`` if it is newer than the newest seen so far."""
        seen = self.load()
        if seen is not None and (head.last_index, head.time) <= (seen.last_index, seen.time):
            return
        write_durably(self.path, json.dumps(asdict(head), sort_keys=True).encode())


@dataclass(frozen=True)
class LeaseRecord:
    """The lease this state dir last held: ``state`` is held, released or lost."""

    holder: str
    generation: int
    state: str
    time: float

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> "LeaseRecord | None":
        path = Path(state_dir) / LEASE_RECORD_NAME
        doc = _load_json(path)
        if doc is None:
            return None
        try:
            return cls(str(doc["holder"]), int(doc["generation"]), str(doc["state"]),
                       float(doc["time"]))
        except (KeyError, TypeError, ValueError):
            log.error("%s holds no lease record; ignoring it", path)
            return None

    @property
    def last_holder(self) -> bool:
        """True when no other machine took the lease since, as far as this one knows."""
        return self.state in ("held", "released")

    def save(self, state_dir: str | os.PathLike[str]) -> None:
        write_durably(Path(state_dir) / LEASE_RECORD_NAME,
                      json.dumps(asdict(self), sort_keys=True).encode())

    @classmethod
    def record(cls, state_dir: str | os.PathLike[str], holder: str, generation: int,
               state: str) -> None:
        cls(holder, generation, state, time.time()).save(state_dir)
