"""Retention policy (pure, fixed times in UTC) and forgetting snapshots in a real MVCC store."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from versionfs.tree.names import snapshot_dirname
from versionfs.meta.mvcc.store import MVCCStore
from versionfs.common.units import UnitError, parse_duration
from versionfs.maint.retention import (Policy, PolicyError, apply_retention, forget_snapshots,
                                       resolve_snapshot, select)

UTC = timezone.utc


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def snaps(*times: str, names: dict[int, str] | None = None):
    names = names or {}
    return [SimpleNamespace(rev=i + 1, name=names.get(i + 1), time=ts(t)) for i, t in enumerate(times)]


def kept(revs, policy, now="2024-06-30 23:59"):
    return sorted(d.info.rev for d in select(revs, policy, ts(now), UTC) if d.keep)


def hourly_series(start_day: int, days: int, per_day=("01:00", "09:00", "17:00"), month="2024-06"):
    return [f"{month}-{d:02d} {h}" for d in range(start_day, start_day + days) for h in per_day]


def test_keep_last_keeps_the_newest_n():
    revs = snaps(*[f"2024-06-{d:02d} 12:00" for d in range(1, 11)])
    assert kept(revs, Policy(last=3)) == [8, 9, 10]
    assert kept(revs, Policy(last=-1)) == list(range(1, 11))


def test_keep_daily_keeps_newest_of_each_of_the_last_days_that_have_snapshots():
    times = hourly_series(1, 5)                   # June 1..5, three a day: revs 1..15
    times += ["2024-06-09 08:00"]                 # gap of three days, then rev 16
    revs = snaps(*times)
    # Days with snapshots, newest first: 9th (16), 5th (15), 4th (12).
    assert kept(revs, Policy(daily=3)) == [12, 15, 16]


def test_keep_hourly_and_last_combine_like_restic():
    revs = snaps("2024-06-01 10:05", "2024-06-01 10:40", "2024-06-01 11:10",
                 "2024-06-01 11:20", "2024-06-01 11:50", "2024-06-01 13:00")
    # hourly 2: 13h -> 6, 11h -> 5 ; last 2: 6, 5 ; nothing else.
    assert kept(revs, Policy(hourly=2, last=2)) == [5, 6]
    # hourly 3 reaches the 10h bucket (its newest is 2).
    assert kept(revs, Policy(hourly=3)) == [2, 5, 6]


def test_keep_weekly_uses_iso_weeks_across_a_year_boundary():
    # 2020-12-28..2021-01-03 is ISO week 53 of 2020; 2021-01-04 starts week 1.
    revs = snaps("2020-12-21 12:00", "2020-12-29 12:00", "2021-01-02 12:00",
                 "2021-01-03 12:00", "2021-01-04 12:00", "2021-01-11 12:00")
    assert kept(revs, Policy(weekly=2), now="2021-01-12 00:00") == [5, 6]
    assert kept(revs, Policy(weekly=3), now="2021-01-12 00:00") == [4, 5, 6]
    assert kept(revs, Policy(weekly=-1), now="2021-01-12 00:00") == [1, 4, 5, 6]


def test_keep_monthly_and_yearly():
    revs = snaps("2022-03-01 00:00", "2022-11-30 00:00", "2023-01-15 00:00", "2023-01-20 00:00",
                 "2023-12-31 23:00", "2024-02-01 00:00", "2024-02-29 12:00")
    assert kept(revs, Policy(monthly=3)) == [4, 5, 7]
    assert kept(revs, Policy(yearly=2)) == [5, 7]
    assert kept(revs, Policy(yearly=10)) == [2, 5, 7]


def test_a_realistic_schedule_daily_weekly_monthly():
    # Three snapshots a day for the whole of June 2024 (revs 1..90).
    revs = snaps(*hourly_series(1, 30))
    got = kept(revs, Policy(daily=7, weekly=4, monthly=6))
    last_of_day = {d: 3 * d for d in range(1, 31)}
    daily = {last_of_day[d] for d in range(24, 31)}
    # ISO weeks (Mon..Sun): 24-30 (daily), 17-23 -> 23rd, 10-16 -> 16th, 3-9 -> 9th.
    weekly = {last_of_day[30], last_of_day[23], last_of_day[16], last_of_day[9]}
    monthly = {last_of_day[30]}
    assert got == sorted(daily | weekly | monthly)
    decisions = {d.info.rev: d for d in select(revs, Policy(daily=7, weekly=4, monthly=6), ts("2024-07-01 00:00"), UTC)}
    assert decisions[90].reasons == ["daily", "weekly", "monthly"]
    assert decisions[1].keep is False and decisions[1].reasons == []


def test_keep_within_and_keep_named():
    revs = snaps("2024-06-01 00:00", "2024-06-20 00:00", "2024-06-29 00:00", "2024-06-30 12:00",
                 names={1: "before-upgrade"})
    assert kept(revs, Policy(within=parse_duration("2d"))) == [3, 4]
    assert kept(revs, Policy(within=parse_duration("2d"), named=True)) == [1, 3, 4]


def test_calendar_periods_follow_the_given_time_zone():
    from datetime import timedelta
    revs = snaps("2024-06-01 21:00", "2024-06-01 23:30")   # one UTC day...
    plus2 = timezone(timedelta(hours=2))                   # ...two days at UTC+2
    minus1 = timezone(timedelta(hours=-1))                 # 21:00 and 22:30 on June 1st
    assert sorted(d.info.rev for d in select(revs, Policy(daily=5), 0, plus2) if d.keep) == [1, 2]
    revs2 = snaps("2024-06-01 23:30", "2024-06-02 00:30")  # two UTC days, one day at UTC-1
    assert sorted(d.info.rev for d in select(revs2, Policy(daily=5), 0, UTC) if d.keep) == [1, 2]
    assert sorted(d.info.rev for d in select(revs2, Policy(daily=5), 0, minus1) if d.keep) == [2]


def test_empty_or_bad_policies_are_refused():
    with pytest.raises(PolicyError, match="empty policy"):
        select(snaps("2024-06-01 00:00"), Policy(), 0)
    with pytest.raises(PolicyError, match="keep-daily"):
        Policy(daily=-2)
    with pytest.raises(PolicyError, match="keep-last"):
        Policy(last=1.5)
    assert select([], Policy(last=1), 0) == []


@pytest.mark.parametrize("text,seconds", [("90", 90), ("30m", 1800), ("12h", 43200),
                                          ("1d12h", 129600), ("2w", 1209600), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "1x", "1d-2h", "two days"])
def test_parse_duration_rejects_garbage(bad):
    with pytest.raises(UnitError, match="not a duration"):
        parse_duration(bad)


def test_policy_args_round_trip():
    from versionfs.maint.retention import policy_from_args
    p = Policy(last=2, daily=7, weekly=-1, within=parse_duration("1d12h"), named=True)
    words = p.args()
    assert words == ["--keep-last", "2", "--keep-daily", "7", "--keep-weekly", "-1",
                     "--keep-within", "1d12h", "--keep-named"]
    values = {}
    it = iter(words)
    for w in it:
        key = w[2:].replace("-", "_")
        values[key] = True if key == "keep_named" else (next(it) if key == "keep_within" else int(next(it)))
    assert policy_from_args(values) == p


@pytest.fixture
def meta(tmp_path):
    m = MVCCStore.open(str(tmp_path / "meta"))
    yield m
    m.close()


def test_apply_retention_on_a_store_dry_run_changes_nothing(meta):
    for i in range(5):
        meta.put(b"k", b"%d" % i)
        meta.snapshot(f"s{i}" if i == 0 else None)
    before = meta.revisions()
    result = apply_retention(meta, Policy(last=2), dry_run=True)
    assert [d.info.rev for d in result.remove] == [3, 2, 1]
    assert meta.revisions() == before
    result = apply_retention(meta, Policy(last=2, named=True))
    assert [r.rev for r in meta.revisions()] == [1, 4, 5]
    assert [d.info.rev for d in result.remove] == [3, 2]


def test_resolve_and_forget_by_dirname_name_or_revision(meta):
    infos = [meta.snapshot(n) for n in ("alpha", None, "gamma", None)]
    assert resolve_snapshot(meta, snapshot_dirname(infos[1])) == infos[1]
    assert resolve_snapshot(meta, "gamma") == infos[2]
    assert resolve_snapshot(meta, "4") == infos[3]
    assert resolve_snapshot(meta, "r1") == infos[0]
    for bad in ("nope", "r9", "r2-20000101T000000Z"):
        with pytest.raises(PolicyError, match="no snapshot"):
            resolve_snapshot(meta, bad)
    with pytest.raises(PolicyError):
        forget_snapshots(meta, ["alpha", "typo"])       # all or nothing
    assert len(meta.revisions()) == 4
    gone = forget_snapshots(meta, ["gamma", snapshot_dirname(infos[0]), "1"])
    assert [i.rev for i in gone] == [1, 3]
    assert [r.rev for r in meta.revisions()] == [2, 4]


def test_policy_from_config_keys(tmp_path):
    from versionfs.common import config
    path = tmp_path / "config.toml"
    path.write_text('[snapshots]\nkeep_daily = 7\nkeep_weekly = -1\nkeep_within = "1d12h"\n'
                    'keep_named = true\n')
    cfg = config.load(path)
    assert Policy.from_config(cfg) == Policy(daily=7, weekly=-1, within=129600.0, named=True)
    assert Policy.from_config(config.Config()).empty
    path.write_text('[snapshots]\nkeep_within = "soon"\n')
    with pytest.raises(config.ConfigError, match="keep_within.*not a duration"):
        config.load(path)
    path.write_text('[snapshots]\nkeep_daily = -3\n')
    with pytest.raises(config.ConfigError, match="keep_daily"):
        config.load(path)
