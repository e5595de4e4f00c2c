"""Which snapshots to keep: a retention policy like restic's ``forget``.

A policy is a set of rules.  ``keep_last N`` keeps the N newest snapshots;
``keep_hourly/daily/weekly/monthly/yearly N`` keep, for the N most recent
hours/days/ISO weeks/months/years that have at least one snapshot, the newest
snapshot of each; ``keep_within D`` keeps everything taken in the last D
before ``now``; ``keep_named`` keeps every snapshot that has a name.  A
snapshot is kept if any rule keeps it.  N = -1 means "no limit".  Calendar
periods are taken in local time (a "day" is the user's day), or in the time
zone given to ``select``.

The same algorithm as restic's, so people who know ``restic forget`` get what
they expect: rules walk the snapshots newest first and each rule counts a
snapshot only when it opens a period that rule has not seen yet.

``select`` is pure (revisions and a clock in, decisions out) so it is tested
with fixed times; ``apply_retention`` and ``forget_snapshots`` change the
metadata store, and are what the ``forget`` ctl command, ``versionfs forget``
and the automatic snapshot scheduler call.  A forgotten snapshot's data stays
in the stores until ``versionfs gc`` (see versionfs.maint.gc).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from datetime import datetime, tzinfo
from typing import Any, Callable, Iterable, Mapping

from versionfs.common.units import UnitError, format_duration, parse_duration

__all__ = ["Policy", "Decision", "RetentionResult", "PolicyError", "select",
           "apply_retention", "forget_snapshots", "resolve_snapshot", "PERIODS"]


class PolicyError(ValueError):
    """A policy or snapshot reference that cannot be used; the message says why."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except UnitError as e:
        raise PolicyError(str(e)) from None


# Rule name -> the calendar period a snapshot falls in.
PERIODS: dict[str, Callable[[datetime], tuple]] = {
    "hourly": lambda d: (d.year, d.month, d.day, d.hour),
    "daily": lambda d: (d.year, d.month, d.day),
    "weekly": lambda d: tuple(d.isocalendar())[:2],
    "monthly": lambda d: (d.year, d.month),
    "yearly": lambda d: (d.year,),
}

@dataclass(frozen=True)
class Policy:
    """Counts per rule (0 = rule off, -1 = unlimited), ``within`` in seconds."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0
    named: bool = False

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "named":
                if not isinstance(v, bool):
                    raise PolicyError("keep-named is true or false")
            elif f.name == "within":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise PolicyError(f"keep-within must be a duration of 0 or more, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < -1:
                raise PolicyError(f"keep-{f.name} must be a whole number >= 0 "
                                  f"(or -1 for no limit), got {v!r}")

    @property
    def empty(self) -> bool:
        return not (self.last or self.within or self.named
                    or any(getattr(self, p) for p in PERIODS))

    @classmethod
    def from_config(cls, cfg: Any) -> "Policy":
        """From a Config's ``[snapshots] keep_*`` keys."""
        within = cfg["snapshots.keep_within"]
        return cls(last=cfg["snapshots.keep_last"],
                   **{p: cfg[f"snapshots.keep_{p}"] for p in PERIODS},
                   within=_duration(within) if within else 0.0,
                   named=cfg["snapshots.keep_named"])

    def args(self) -> list[str]:
        """The ``--keep-*`` words that express this policy (the ctl command's syntax)."""
        out = []
        if self.last:
            out += ["--keep-last", str(self.last)]
        for p in PERIODS:
            if getattr(self, p):
                out += [f"--keep-{p}", str(getattr(self, p))]
        if self.within:
            out += ["--keep-within", format_duration(self.within)]
        if self.named:
            out.append("--keep-named")
        return out

    def describe(self) -> str:
        return " ".join(self.args()) or "(empty policy)"


@dataclass
class Decision:
    """What the policy says about one snapshot (a ``RevisionInfo``)."""

    info: Any
    keep: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class RetentionResult:
    keep: list[Decision]
    remove: list[Decision]


def select(revisions: Iterable[Any], policy: Policy, now: float,
           tz: tzinfo | None = None) -> list[Decision]:
    """Decide every snapshot (``rev``, ``name``, ``time`` objects), newest first.

    Pure: the result depends only on the arguments.  ``tz`` None = local time.
    """
    if policy.empty:
        raise PolicyError("empty policy: give at least one --keep-* rule "
                          "(refusing to forget every snapshot)")
    snaps = sorted(revisions, key=lambda r: (r.time, r.rev), reverse=True)
    left = {"last": policy.last, **{p: getattr(policy, p) for p in PERIODS}}
    seen: dict[str, Any] = {}
    out = []
    for info in snaps:
        when = datetime.fromtimestamp(info.time, tz)
        reasons = []
        for rule, count in left.items():
            if count == 0:
                continue
            period = info.rev if rule == "last" else PERIODS[rule](when)
            if rule in seen and seen[rule] == period:
                continue
            seen[rule] = period
            reasons.append(rule)
            if count > 0:
                left[rule] = count - 1
        if policy.within and info.time >= now - policy.within:
            reasons.append("within " + format_duration(policy.within))
        if policy.named and info.name:
            reasons.append("named")
        out.append(Decision(info, bool(reasons), reasons))
    return out


def apply_retention(meta: Any, policy: Policy, now: float | None = None, *,
                    dry_run: bool = False, tz: tzinfo | None = None) -> RetentionResult:
    """Forget every snapshot of ``meta`` (an MVCCStore) the policy does not keep.

    Returns what was kept and removed (or would be, with ``dry_run``).
    """
    now = time.time() if now is None else now
    decisions = select(meta.revisions(), policy, now, tz)
    result = RetentionResult([d for d in decisions if d.keep], [d for d in decisions if not d.keep])
    if not dry_run:
        for d in result.remove:
            meta.delete_revision(d.info.rev)
    return result


def resolve_snapshot(meta: Any, ref: str) -> Any:
    """The RevisionInfo a user means by ``ref``: a snapshot directory name
    (``r12-20240101T000000Z-name``), a bare NAME, or a revision (``12`` / ``r12``)."""
    from versionfs.tree.names import DIRNAME_RE, snapshot_dirname
    revisions = meta.revisions()
    m = DIRNAME_RE.match(ref)
    if m:
        for info in revisions:
            if info.rev == int(m.group(1)) and snapshot_dirname(info) == ref:
                return info
        raise PolicyError(f"no snapshot directory {ref!r} (see `versionfs snapshots`)")
    for info in revisions:
        if info.name is not None and info.name == ref:
            return info
    digits = ref[1:] if ref[:1] == "r" else ref
    if digits.isdigit():
        for info in revisions:
            if info.rev == int(digits):
                return info
    raise PolicyError(f"no snapshot {ref!r}: give a directory name, a snapshot name or a "
                      f"revision number (see `versionfs snapshots`)")


def forget_snapshots(meta: Any, refs: Iterable[str], *, dry_run: bool = False) -> list[Any]:
    """Forget the named snapshots, all or nothing: every reference is resolved
    before any snapshot is forgotten, so one typo changes nothing."""
    infos: dict[int, Any] = {}
    for ref in refs:
        info = resolve_snapshot(meta, ref)
        infos[info.rev] = info
    if not infos:
        raise PolicyError("no snapshot given")
    chosen = [infos[r] for r in sorted(infos)]
    if not dry_run:
        for info in chosen:
            meta.delete_revision(info.rev)
    return chosen


def policy_from_args(values: Mapping[str, Any]) -> Policy:
    """A Policy from parsed ``keep_*`` options (None = not given)."""
    kw: dict[str, Any] = {}
    for name in ("last", *PERIODS):
        v = values.get(f"keep_{name}")
        if v is not None:
            kw[name] = v
    within = values.get("keep_within")
    if within:
        kw["within"] = _duration(within)
    if values.get("keep_named"):
        kw["named"] = True
    return Policy(**kw)
