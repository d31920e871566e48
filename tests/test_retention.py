"""Retention decisions, table-driven, against a fixed ``now`` (no clock, no disk).

Snapshot ids in these tests are their UTC creation time, ``"YYYY-MM-DD HH:MM"``,
so every expectation reads as a list of times.  Comments give the local time
where a case is about a time zone.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from backupkit.errors import RetentionError
from backupkit.retention.policy import (
    DEFAULT_POLICY,
    Policy,
    SnapshotInfo,
    apply_policy,
    format_duration,
    parse_duration,
)

UTC = UTC
NOW = datetime(2025, 11, 26, 12, 0, tzinfo=UTC)  # a Wednesday, ISO week 2025-W48
BERLIN = "Europe/Berlin"
NEWEST = "newest intact snapshot"
NONE = ["matched no keep rule"]


def at(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def snaps(*stamps: str, damaged=(), pinned=()) -> list[SnapshotInfo]:
    return [SnapshotInfo(s, at(s), pinned=s in pinned, intact=s not in damaged) for s in stamps]


def ids(items: list[SnapshotInfo]) -> list[str]:
    return [s.id for s in items]


def run(snapshots, policy, now=NOW):
    # Shuffle so no case passes merely because the input was already sorted.
    shuffled = list(snapshots)
    random.Random(42).shuffle(shuffled)
    return apply_policy(shuffled, policy, now)


# Hourly snapshots on Wednesday 2025-11-26 (UTC).
HOURS = [
    "2025-11-26 08:10",
    "2025-11-26 08:40",
    "2025-11-26 09:05",
    "2025-11-26 09:50",
    "2025-11-26 10:30",
    "2025-11-26 11:15",
]

# One week: Sun 2025-11-23 ends ISO week 47, Mon 2025-11-24 starts week 48; no snapshot on the 22nd.
DAYS = [
    "2025-11-20 09:00",
    "2025-11-21 09:00",
    "2025-11-21 18:00",
    "2025-11-23 09:00",
    "2025-11-23 22:00",
    "2025-11-24 01:00",
    "2025-11-25 09:00",
    "2025-11-26 06:00",
]

# ISO week crossing the year: Mon 2024-12-30 .. Sun 2025-01-05 is 2025-W01.
YEAR_END = [
    "2024-12-28 12:00",
    "2024-12-29 12:00",
    "2024-12-30 12:00",
    "2025-01-01 12:00",
    "2025-01-05 12:00",
    "2025-01-06 12:00",
]

# Months and years; 2024-07-31 23:00 UTC is already 2024-08-01 01:00 in Berlin.
LONG = [
    "2023-03-10 00:00",
    "2023-11-02 00:00",
    "2023-11-20 00:00",
    "2024-01-15 00:00",
    "2024-07-01 00:00",
    "2024-07-31 23:00",
    "2025-02-01 00:00",
    "2025-02-14 00:00",
]

# Berlin springs forward 2025-03-30 01:00 UTC (02:00 CET -> 03:00 CEST).
SPRING = [
    "2025-03-29 22:30",  # 23:30 CET, Sat 29th
    "2025-03-29 23:30",  # 00:30 CET, Sun 30th
    "2025-03-30 00:30",  # 01:30 CET
    "2025-03-30 01:30",  # 03:30 CEST
    "2025-03-30 21:30",  # 23:30 CEST, Sun 30th
    "2025-03-30 22:30",
]  # 00:30 CEST, Mon 31st

# Berlin falls back 2025-10-26 01:00 UTC (03:00 CEST -> 02:00 CET): 02:xx happens twice.
AUTUMN_HOURS = [
    "2025-10-26 00:10",  # 02:10 CEST
    "2025-10-26 00:50",  # 02:50 CEST
    "2025-10-26 01:10",  # 02:10 CET
    "2025-10-26 01:40",  # 02:40 CET
    "2025-10-26 02:20",
]  # 03:20 CET

AUTUMN_DAYS = [
    "2025-10-25 21:30",  # 23:30 CEST, 25th
    "2025-10-25 22:30",  # 00:30 CEST, 26th
    "2025-10-26 12:00",  # 13:00 CET, 26th
    "2025-10-26 22:30",  # 23:30 CET, 26th
    "2025-10-26 23:30",
]  # 00:30 CET, 27th

BERLIN_WEEK = [
    "2025-11-23 12:00",  # Sun 13:00 CET, W47 everywhere
    "2025-11-23 23:30",  # Sun in UTC (W47), Mon 00:30 in Berlin (W48)
    "2025-11-25 10:00",
]

BERLIN_YEAR = [
    "2024-06-01 12:00",
    "2024-12-31 23:30",  # 2025-01-01 00:30 CET
    "2025-02-01 12:00",
]

NEW_YORK_YEAR = [
    "2024-06-01 12:00",
    "2025-01-01 03:00",  # 2024-12-31 22:00 EST
    "2025-02-01 12:00",
]

# (snapshots, policy, keep newest first, remove newest first, exact reasons for some ids)
CASES = [
    pytest.param(
        HOURS,
        Policy(keep_hourly=3),
        ["2025-11-26 11:15", "2025-11-26 10:30", "2025-11-26 09:50"],
        ["2025-11-26 09:05", "2025-11-26 08:40", "2025-11-26 08:10"],
        {
            "2025-11-26 11:15": ["hourly 2025-11-26 11:00", NEWEST],
            "2025-11-26 09:50": ["hourly 2025-11-26 09:00"],
            "2025-11-26 09:05": NONE,
        },
        id="hourly-3-utc",
    ),
    pytest.param(
        HOURS,
        Policy(keep_hourly=3, tz="Asia/Kolkata"),  # +05:30: 10:30Z and 11:15Z share 16h
        ["2025-11-26 11:15", "2025-11-26 09:50", "2025-11-26 09:05"],
        ["2025-11-26 10:30", "2025-11-26 08:40", "2025-11-26 08:10"],
        {"2025-11-26 11:15": ["hourly 2025-11-26 16:00", NEWEST], "2025-11-26 09:05": ["hourly 2025-11-26 14:00"]},
        id="hourly-3-half-hour-zone",
    ),
    pytest.param(
        HOURS,
        Policy(keep_last=2),
        ["2025-11-26 11:15", "2025-11-26 10:30"],
        ["2025-11-26 09:50", "2025-11-26 09:05", "2025-11-26 08:40", "2025-11-26 08:10"],
        {"2025-11-26 11:15": ["last 1/2", NEWEST], "2025-11-26 10:30": ["last 2/2"]},
        id="last-2",
    ),
    pytest.param(
        HOURS,
        Policy(keep_within=parse_duration("2h")),
        ["2025-11-26 11:15", "2025-11-26 10:30", "2025-11-26 09:50"],
        ["2025-11-26 09:05", "2025-11-26 08:40", "2025-11-26 08:10"],
        {"2025-11-26 09:50": ["within 2h"]},
        id="within-2h",
    ),
    pytest.param(
        DAYS,
        Policy(keep_daily=3),
        ["2025-11-26 06:00", "2025-11-25 09:00", "2025-11-24 01:00"],
        ["2025-11-23 22:00", "2025-11-23 09:00", "2025-11-21 18:00", "2025-11-21 09:00", "2025-11-20 09:00"],
        {"2025-11-24 01:00": ["daily 2025-11-24"], "2025-11-26 06:00": ["daily 2025-11-26", NEWEST]},
        id="daily-3",
    ),
    pytest.param(
        DAYS,
        Policy(keep_daily=5),  # the empty 22nd is not a period
        ["2025-11-26 06:00", "2025-11-25 09:00", "2025-11-24 01:00", "2025-11-23 22:00", "2025-11-21 18:00"],
        ["2025-11-23 09:00", "2025-11-21 09:00", "2025-11-20 09:00"],
        {"2025-11-21 18:00": ["daily 2025-11-21"], "2025-11-23 22:00": ["daily 2025-11-23"]},
        id="daily-5-skips-empty-day",
    ),
    pytest.param(
        DAYS,
        Policy(keep_daily=-1),
        [
            "2025-11-26 06:00",
            "2025-11-25 09:00",
            "2025-11-24 01:00",
            "2025-11-23 22:00",
            "2025-11-21 18:00",
            "2025-11-20 09:00",
        ],
        ["2025-11-23 09:00", "2025-11-21 09:00"],
        {"2025-11-20 09:00": ["daily 2025-11-20"]},
        id="daily-unlimited",
    ),
    pytest.param(
        DAYS,
        Policy(keep_weekly=2),  # Sunday 23rd closes W47, Monday 24th opens W48
        ["2025-11-26 06:00", "2025-11-23 22:00"],
        [
            "2025-11-25 09:00",
            "2025-11-24 01:00",
            "2025-11-23 09:00",
            "2025-11-21 18:00",
            "2025-11-21 09:00",
            "2025-11-20 09:00",
        ],
        {"2025-11-26 06:00": ["weekly 2025-W48", NEWEST], "2025-11-23 22:00": ["weekly 2025-W47"]},
        id="weekly-2-sunday-monday",
    ),
    pytest.param(
        DAYS,
        Policy(keep_daily=3, keep_weekly=2),
        ["2025-11-26 06:00", "2025-11-25 09:00", "2025-11-24 01:00", "2025-11-23 22:00"],
        ["2025-11-23 09:00", "2025-11-21 18:00", "2025-11-21 09:00", "2025-11-20 09:00"],
        {"2025-11-26 06:00": ["daily 2025-11-26", "weekly 2025-W48", NEWEST], "2025-11-23 22:00": ["weekly 2025-W47"]},
        id="daily-3-weekly-2",
    ),
    pytest.param(
        DAYS,
        Policy(max_age_days=4),  # younger than 2025-11-22 12:00
        ["2025-11-26 06:00", "2025-11-25 09:00", "2025-11-24 01:00", "2025-11-23 22:00", "2025-11-23 09:00"],
        ["2025-11-21 18:00", "2025-11-21 09:00", "2025-11-20 09:00"],
        {"2025-11-23 09:00": ["younger than 4 days"]},
        id="max-age-4-days",
    ),
    pytest.param(
        DAYS,
        Policy(max_age_days=0.5),
        ["2025-11-26 06:00"],
        [
            "2025-11-25 09:00",
            "2025-11-24 01:00",
            "2025-11-23 22:00",
            "2025-11-23 09:00",
            "2025-11-21 18:00",
            "2025-11-21 09:00",
            "2025-11-20 09:00",
        ],
        {"2025-11-26 06:00": ["younger than 0.5 days", NEWEST]},
        id="max-age-half-day",
    ),
    pytest.param(
        DAYS,
        Policy(keep_within=timedelta(days=1)),  # relative to 26th 06:00, not to now
        ["2025-11-26 06:00", "2025-11-25 09:00"],
        [
            "2025-11-24 01:00",
            "2025-11-23 22:00",
            "2025-11-23 09:00",
            "2025-11-21 18:00",
            "2025-11-21 09:00",
            "2025-11-20 09:00",
        ],
        {"2025-11-25 09:00": ["within 1d"]},
        id="within-1d-relative-to-newest",
    ),
    pytest.param(
        DAYS,
        Policy(
            keep_last=1,
            keep_hourly=1,
            keep_daily=1,
            keep_weekly=1,
            keep_monthly=1,
            keep_yearly=1,
            keep_within=timedelta(days=1),
            max_age_days=1,
        ),
        ["2025-11-26 06:00", "2025-11-25 09:00"],
        [
            "2025-11-24 01:00",
            "2025-11-23 22:00",
            "2025-11-23 09:00",
            "2025-11-21 18:00",
            "2025-11-21 09:00",
            "2025-11-20 09:00",
        ],
        {
            "2025-11-26 06:00": [
                "last 1/1",
                "hourly 2025-11-26 06:00",
                "daily 2025-11-26",
                "weekly 2025-W48",
                "monthly 2025-11",
                "yearly 2025",
                "within 1d",
                "younger than 1 day",
                NEWEST,
            ],
            "2025-11-25 09:00": ["within 1d"],
        },
        id="every-rule-at-once",
    ),
    pytest.param(
        YEAR_END,
        Policy(keep_weekly=3),
        ["2025-01-06 12:00", "2025-01-05 12:00", "2024-12-29 12:00"],
        ["2025-01-01 12:00", "2024-12-30 12:00", "2024-12-28 12:00"],
        {
            "2025-01-06 12:00": ["weekly 2025-W02", NEWEST],
            "2025-01-05 12:00": ["weekly 2025-W01"],
            "2024-12-29 12:00": ["weekly 2024-W52"],
        },
        id="weekly-3-iso-week-crosses-year",
    ),
    pytest.param(
        YEAR_END,
        Policy(keep_monthly=2),
        ["2025-01-06 12:00", "2024-12-30 12:00"],
        ["2025-01-05 12:00", "2025-01-01 12:00", "2024-12-29 12:00", "2024-12-28 12:00"],
        {"2024-12-30 12:00": ["monthly 2024-12"]},
        id="monthly-2-year-end",
    ),
    pytest.param(
        YEAR_END,
        Policy(keep_weekly=3, keep_yearly=2),  # 2024-12-30 is 2025-W01 but year 2024
        ["2025-01-06 12:00", "2025-01-05 12:00", "2024-12-30 12:00", "2024-12-29 12:00"],
        ["2025-01-01 12:00", "2024-12-28 12:00"],
        {
            "2025-01-06 12:00": ["weekly 2025-W02", "yearly 2025", NEWEST],
            "2024-12-30 12:00": ["yearly 2024"],
            "2024-12-29 12:00": ["weekly 2024-W52"],
        },
        id="weekly-3-yearly-2-year-end",
    ),
    pytest.param(
        LONG,
        Policy(keep_monthly=-1),
        ["2025-02-14 00:00", "2024-07-31 23:00", "2024-01-15 00:00", "2023-11-20 00:00", "2023-03-10 00:00"],
        ["2025-02-01 00:00", "2024-07-01 00:00", "2023-11-02 00:00"],
        {"2023-03-10 00:00": ["monthly 2023-03"]},
        id="monthly-unlimited",
    ),
    pytest.param(
        LONG,
        Policy(keep_monthly=3),
        ["2025-02-14 00:00", "2024-07-31 23:00", "2024-01-15 00:00"],
        ["2025-02-01 00:00", "2024-07-01 00:00", "2023-11-20 00:00", "2023-11-02 00:00", "2023-03-10 00:00"],
        {"2024-07-31 23:00": ["monthly 2024-07"]},
        id="monthly-3-utc",
    ),
    pytest.param(
        LONG,
        Policy(keep_monthly=3, tz=BERLIN),
        ["2025-02-14 00:00", "2024-07-31 23:00", "2024-07-01 00:00"],
        ["2025-02-01 00:00", "2024-01-15 00:00", "2023-11-20 00:00", "2023-11-02 00:00", "2023-03-10 00:00"],
        {"2024-07-31 23:00": ["monthly 2024-08"], "2024-07-01 00:00": ["monthly 2024-07"]},
        id="monthly-3-berlin",
    ),
    pytest.param(
        LONG,
        Policy(keep_yearly=-1),
        ["2025-02-14 00:00", "2024-07-31 23:00", "2023-11-20 00:00"],
        ["2025-02-01 00:00", "2024-07-01 00:00", "2024-01-15 00:00", "2023-11-02 00:00", "2023-03-10 00:00"],
        {"2023-11-20 00:00": ["yearly 2023"]},
        id="yearly-unlimited",
    ),
    pytest.param(
        LONG,
        Policy(keep_yearly=2),
        ["2025-02-14 00:00", "2024-07-31 23:00"],
        [
            "2025-02-01 00:00",
            "2024-07-01 00:00",
            "2024-01-15 00:00",
            "2023-11-20 00:00",
            "2023-11-02 00:00",
            "2023-03-10 00:00",
        ],
        {"2025-02-14 00:00": ["yearly 2025", NEWEST], "2024-07-31 23:00": ["yearly 2024"]},
        id="yearly-2",
    ),
    pytest.param(
        LONG,
        Policy(keep_last=-1),
        list(reversed(LONG)),
        [],
        {"2023-03-10 00:00": ["last 8/unlimited"], "2025-02-14 00:00": ["last 1/unlimited", NEWEST]},
        id="last-unlimited",
    ),
    pytest.param(
        SPRING,
        Policy(keep_daily=2),
        ["2025-03-30 22:30", "2025-03-29 23:30"],
        ["2025-03-30 21:30", "2025-03-30 01:30", "2025-03-30 00:30", "2025-03-29 22:30"],
        {"2025-03-30 22:30": ["daily 2025-03-30", NEWEST], "2025-03-29 23:30": ["daily 2025-03-29"]},
        id="dst-spring-daily-2-utc",
    ),
    pytest.param(
        SPRING,
        Policy(keep_daily=2, tz=BERLIN),
        ["2025-03-30 22:30", "2025-03-30 21:30"],
        ["2025-03-30 01:30", "2025-03-30 00:30", "2025-03-29 23:30", "2025-03-29 22:30"],
        {"2025-03-30 22:30": ["daily 2025-03-31", NEWEST], "2025-03-30 21:30": ["daily 2025-03-30"]},
        id="dst-spring-daily-2-berlin",
    ),
    pytest.param(
        SPRING,
        Policy(keep_daily=3, tz=BERLIN),
        ["2025-03-30 22:30", "2025-03-30 21:30", "2025-03-29 22:30"],
        ["2025-03-30 01:30", "2025-03-30 00:30", "2025-03-29 23:30"],
        {"2025-03-29 22:30": ["daily 2025-03-29"]},
        id="dst-spring-daily-3-berlin",
    ),
    pytest.param(
        SPRING,
        Policy(keep_hourly=3, tz=BERLIN),
        ["2025-03-30 22:30", "2025-03-30 21:30", "2025-03-30 01:30"],
        ["2025-03-30 00:30", "2025-03-29 23:30", "2025-03-29 22:30"],
        {"2025-03-30 01:30": ["hourly 2025-03-30 03:00"], "2025-03-30 21:30": ["hourly 2025-03-30 23:00"]},
        id="dst-spring-hourly-3-berlin",
    ),
    pytest.param(
        AUTUMN_HOURS,
        Policy(keep_hourly=3),
        ["2025-10-26 02:20", "2025-10-26 01:40", "2025-10-26 00:50"],
        ["2025-10-26 01:10", "2025-10-26 00:10"],
        {"2025-10-26 00:50": ["hourly 2025-10-26 00:00"]},
        id="dst-autumn-hourly-3-utc",
    ),
    pytest.param(
        AUTUMN_HOURS,
        Policy(keep_hourly=3, tz=BERLIN),  # both 02:xx hours are one wall-clock hour
        ["2025-10-26 02:20", "2025-10-26 01:40"],
        ["2025-10-26 01:10", "2025-10-26 00:50", "2025-10-26 00:10"],
        {"2025-10-26 02:20": ["hourly 2025-10-26 03:00", NEWEST], "2025-10-26 01:40": ["hourly 2025-10-26 02:00"]},
        id="dst-autumn-hourly-3-berlin",
    ),
    pytest.param(
        AUTUMN_DAYS,
        Policy(keep_daily=2),
        ["2025-10-26 23:30", "2025-10-25 22:30"],
        ["2025-10-26 22:30", "2025-10-26 12:00", "2025-10-25 21:30"],
        {"2025-10-25 22:30": ["daily 2025-10-25"]},
        id="dst-autumn-daily-2-utc",
    ),
    pytest.param(
        AUTUMN_DAYS,
        Policy(keep_daily=2, tz=BERLIN),
        ["2025-10-26 23:30", "2025-10-26 22:30"],
        ["2025-10-26 12:00", "2025-10-25 22:30", "2025-10-25 21:30"],
        {"2025-10-26 23:30": ["daily 2025-10-27", NEWEST], "2025-10-26 22:30": ["daily 2025-10-26"]},
        id="dst-autumn-daily-2-berlin",
    ),
    pytest.param(
        AUTUMN_DAYS,
        Policy(keep_daily=3, tz=BERLIN),
        ["2025-10-26 23:30", "2025-10-26 22:30", "2025-10-25 21:30"],
        ["2025-10-26 12:00", "2025-10-25 22:30"],
        {"2025-10-25 21:30": ["daily 2025-10-25"]},
        id="dst-autumn-daily-3-berlin",
    ),
    pytest.param(
        BERLIN_WEEK,
        Policy(keep_weekly=2),
        ["2025-11-25 10:00", "2025-11-23 23:30"],
        ["2025-11-23 12:00"],
        {"2025-11-23 23:30": ["weekly 2025-W47"]},
        id="week-boundary-utc",
    ),
    pytest.param(
        BERLIN_WEEK,
        Policy(keep_weekly=2, tz=BERLIN),
        ["2025-11-25 10:00", "2025-11-23 12:00"],
        ["2025-11-23 23:30"],
        {"2025-11-23 12:00": ["weekly 2025-W47"]},
        id="week-boundary-berlin",
    ),
    pytest.param(
        BERLIN_YEAR,
        Policy(keep_yearly=2),
        ["2025-02-01 12:00", "2024-12-31 23:30"],
        ["2024-06-01 12:00"],
        {"2024-12-31 23:30": ["yearly 2024"]},
        id="year-boundary-utc",
    ),
    pytest.param(
        BERLIN_YEAR,
        Policy(keep_yearly=2, tz=BERLIN),
        ["2025-02-01 12:00", "2024-06-01 12:00"],
        ["2024-12-31 23:30"],
        {"2024-06-01 12:00": ["yearly 2024"]},
        id="year-boundary-berlin",
    ),
    pytest.param(
        NEW_YORK_YEAR,
        Policy(keep_yearly=2, tz="America/New_York"),
        ["2025-02-01 12:00", "2025-01-01 03:00"],
        ["2024-06-01 12:00"],
        {"2025-01-01 03:00": ["yearly 2024"]},
        id="year-boundary-new-york",
    ),
    pytest.param(
        ["2025-11-19 12:00", "2025-11-19 12:01", "2025-11-26 11:00"],
        Policy(max_age_days=7),
        ["2025-11-26 11:00", "2025-11-19 12:01"],
        ["2025-11-19 12:00"],  # exactly 7 days old is not younger than 7 days
        {"2025-11-19 12:01": ["younger than 7 days"]},
        id="max-age-boundary",
    ),
    pytest.param(
        ["2025-11-24 10:00", "2025-11-24 10:01", "2025-11-26 10:00"],
        Policy(keep_within=parse_duration("2d")),
        ["2025-11-26 10:00", "2025-11-24 10:01"],
        ["2025-11-24 10:00"],  # exactly 2 days before the newest is not within
        {"2025-11-24 10:01": ["within 2d"]},
        id="within-boundary",
    ),
]


@pytest.mark.parametrize("stamps, policy, keep, remove, reasons", CASES)
def test_apply_policy_table(stamps, policy, keep, remove, reasons):
    kept, removed, got = run(snaps(*stamps), policy)
    assert ids(kept) == keep
    assert ids(removed) == remove
    assert sorted(got) == sorted(stamps)
    for sid in remove:
        assert got[sid] == NONE
    for sid, expected in reasons.items():
        assert got[sid] == expected, sid


@pytest.mark.parametrize(
    "policy",
    [
        Policy(keep_last=1),
        Policy(keep_hourly=1),
        Policy(keep_daily=1),
        Policy(keep_weekly=1),
        Policy(keep_monthly=1),
        Policy(keep_yearly=1),
        Policy(keep_within=timedelta(hours=1)),
        Policy(max_age_days=1),
        Policy(),
        Policy(keep_last=1, keep_yearly=1, tz=BERLIN),
    ],
    ids=repr,
)
def test_pins_survive_every_rule(policy):
    old = ["2020-05-01 00:00", "2021-05-01 00:00"]
    items = snaps(*old, "2025-11-25 06:00", "2025-11-26 06:00", pinned=old, damaged=["2021-05-01 00:00"])
    kept, removed, reasons = run(items, policy)
    for sid in old:
        assert sid in ids(kept)
        assert reasons[sid] == ["pinned"]
    assert "2025-11-26 06:00" in ids(kept)


def test_pin_on_a_snapshot_also_kept_by_rules_lists_both():
    items = snaps("2025-11-25 06:00", "2025-11-26 06:00", pinned=["2025-11-26 06:00"])
    _, _, reasons = run(items, Policy(keep_last=1))
    assert reasons["2025-11-26 06:00"] == ["last 1/1", "pinned", NEWEST]


def test_min_keep_tops_up_with_newest_intact_first():
    items = snaps(
        "2025-11-22 06:00",
        "2025-11-23 06:00",
        "2025-11-24 06:00",
        "2025-11-25 06:00",
        "2025-11-26 06:00",
        damaged=["2025-11-25 06:00", "2025-11-22 06:00"],
    )
    kept, removed, reasons = run(items, Policy(keep_last=1, min_keep=3))
    assert ids(kept) == ["2025-11-26 06:00", "2025-11-24 06:00", "2025-11-23 06:00"]
    assert ids(removed) == ["2025-11-25 06:00", "2025-11-22 06:00"]
    assert reasons["2025-11-24 06:00"] == ["min_keep floor (3)"]
    assert reasons["2025-11-23 06:00"] == ["min_keep floor (3)"]


def test_min_keep_falls_back_to_damaged_snapshots():
    items = snaps(
        "2025-11-24 06:00", "2025-11-25 06:00", "2025-11-26 06:00", damaged=["2025-11-24 06:00", "2025-11-25 06:00"]
    )
    kept, removed, reasons = run(items, Policy(keep_last=1, min_keep=3))
    assert ids(kept) == ["2025-11-26 06:00", "2025-11-25 06:00", "2025-11-24 06:00"]
    assert removed == []
    assert reasons["2025-11-25 06:00"] == ["min_keep floor (3)"]


def test_min_keep_larger_than_the_directory_keeps_everything():
    kept, removed, _ = run(snaps("2020-01-01 00:00", "2020-01-02 00:00"), Policy(keep_last=1, min_keep=5))
    assert len(kept) == 2 and removed == []


def test_min_keep_counts_snapshots_the_rules_kept():
    _, _, reasons = run(snaps(*DAYS), Policy(keep_last=3, min_keep=2))
    assert not any("min_keep" in r for rs in reasons.values() for r in rs)


def test_default_policy_keeps_30_days():
    assert Policy(max_age_days=30) == DEFAULT_POLICY
    items = snaps("2025-10-20 00:00", "2025-10-28 00:00", "2025-11-26 06:00")  # 30 days before NOW: 10-27 12:00
    for policy in (Policy(), Policy(keep_last=0, keep_daily=0)):
        kept, removed, reasons = run(items, policy)
        assert ids(kept) == ["2025-11-26 06:00", "2025-10-28 00:00"]
        assert ids(removed) == ["2025-10-20 00:00"]
        assert reasons["2025-10-28 00:00"] == ["younger than 30 days"]


def test_default_policy_keeps_the_policys_floor_and_zone():
    items = snaps("2025-01-01 00:00", "2025-02-01 00:00", "2025-03-01 00:00")
    kept, removed, reasons = run(items, Policy(min_keep=2, tz=BERLIN))
    assert ids(kept) == ["2025-03-01 00:00", "2025-02-01 00:00"]
    assert reasons["2025-03-01 00:00"] == [NEWEST]
    assert reasons["2025-02-01 00:00"] == ["min_keep floor (2)"]


def test_all_too_old_still_keeps_the_newest_intact():
    kept, removed, reasons = run(snaps("2025-01-01 00:00", "2025-02-01 00:00"), Policy())
    assert ids(kept) == ["2025-02-01 00:00"]
    assert reasons["2025-02-01 00:00"] == [NEWEST]


def test_newest_damaged_keeps_newest_intact_too():
    items = snaps(
        "2025-11-23 06:00",
        "2025-11-24 06:00",
        "2025-11-25 06:00",
        "2025-11-26 06:00",
        damaged=["2025-11-26 06:00", "2025-11-25 06:00"],
    )
    kept, removed, reasons = run(items, Policy(keep_last=1))
    assert ids(kept) == ["2025-11-26 06:00", "2025-11-24 06:00"]
    assert ids(removed) == ["2025-11-25 06:00", "2025-11-23 06:00"]
    assert reasons["2025-11-26 06:00"] == ["last 1/1"]
    assert reasons["2025-11-24 06:00"] == [NEWEST]


def test_damaged_snapshots_follow_the_rules_like_any_other():
    items = snaps(*DAYS, damaged=["2025-11-24 01:00", "2025-11-21 18:00"])
    kept, _, reasons = run(items, Policy(keep_daily=3))
    assert "2025-11-24 01:00" in ids(kept)
    assert reasons["2025-11-21 18:00"] == NONE


def test_all_damaged_keeps_only_what_rules_keep():
    items = snaps("2025-11-25 06:00", "2025-11-26 06:00", damaged=["2025-11-25 06:00", "2025-11-26 06:00"])
    kept, removed, reasons = run(items, Policy(keep_last=1))
    assert ids(kept) == ["2025-11-26 06:00"]
    assert reasons["2025-11-26 06:00"] == ["last 1/1"]


def test_future_snapshots_are_kept_and_set_aside():
    items = snaps("2025-11-20 09:00", "2025-11-25 09:00", "2025-11-26 06:00", "2025-11-27 09:00")
    kept, removed, reasons = run(items, Policy(keep_last=1))
    assert ids(kept) == ["2025-11-27 09:00", "2025-11-26 06:00"]
    assert reasons["2025-11-27 09:00"] == ["in the future (clock skew?)"]
    assert reasons["2025-11-26 06:00"] == ["last 1/1", NEWEST]
    # keep_within measures from the newest snapshot that is not in the future
    kept, _, reasons = run(items, Policy(keep_within=timedelta(days=1)))
    assert ids(kept) == ["2025-11-27 09:00", "2025-11-26 06:00", "2025-11-25 09:00"]


def test_future_snapshots_do_not_satisfy_the_floors():
    items = snaps("2025-01-01 00:00", "2025-02-01 00:00", "2026-01-01 00:00")
    kept, _, reasons = run(items, Policy(min_keep=2))
    assert ids(kept) == ["2026-01-01 00:00", "2025-02-01 00:00", "2025-01-01 00:00"]
    assert reasons["2025-02-01 00:00"] == [NEWEST]
    assert reasons["2025-01-01 00:00"] == ["min_keep floor (2)"]


def test_snapshot_at_exactly_now_is_not_in_the_future():
    _, _, reasons = run(snaps("2025-11-26 12:00"), Policy(keep_last=1))
    assert reasons["2025-11-26 12:00"] == ["last 1/1", NEWEST]


@pytest.mark.parametrize(
    "policy",
    [Policy(max_age_days=float("inf")), Policy(max_age_days=1e12), Policy(keep_within=parse_duration("9999y"))],
    ids=repr,
)
def test_spans_beyond_the_calendar_keep_everything(policy):
    kept, removed, _ = run(snaps("0001-01-02 00:00", "2025-11-26 06:00"), policy)
    assert len(kept) == 2 and removed == []


def test_empty_input():
    assert apply_policy([], Policy(keep_last=3), NOW) == ([], [], {})


def test_ties_are_broken_by_id_whatever_the_input_order():
    t = at("2025-11-26 06:00")
    items = [SnapshotInfo(i, t) for i in ("x-b", "x-a", "x-c")]
    for order in itertools.permutations(items):
        kept, removed, _ = apply_policy(list(order), Policy(keep_daily=1), NOW)
        assert ids(kept) == ["x-c"]
        assert ids(removed) == ["x-b", "x-a"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_daily": -2}, "keep_daily = -2"),
        ({"keep_last": -5}, "-1 for unlimited"),
        ({"keep_weekly": True}, "whole number"),
        ({"keep_monthly": 1.5}, "whole number"),
        ({"keep_yearly": "3"}, "whole number"),
        ({"min_keep": 0}, "min_keep must be at least 1"),
        ({"min_keep": -1}, "min_keep must be at least 1"),
        ({"keep_within": timedelta(0)}, "keep_within must be positive"),
        ({"keep_within": "7d"}, "keep_within must be a duration"),
        ({"max_age_days": 0}, "max_age_days must be positive"),
        ({"max_age_days": -3}, "max_age_days must be positive"),
        ({"max_age_days": float("nan")}, "max_age_days must be positive"),
        ({"tz": "Mars/Olympus_Mons"}, "unknown time zone"),
        ({"tz": "../etc/passwd"}, "unknown time zone"),
    ],
)
def test_invalid_policies(kwargs, message):
    with pytest.raises(RetentionError, match=message):
        Policy(**kwargs)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"keep_dayly": 7}, "unknown retention setting 'keep_dayly'"),
        ({"keep_within": "7 days"}, "cannot read duration"),
        ({"keep_daily": -3}, "keep_daily = -3"),
        ([("keep_last", 1)], "must be a mapping"),
    ],
)
def test_invalid_policy_dicts(d, message):
    with pytest.raises(RetentionError, match=message):
        Policy.from_dict(d)


def test_naive_times_are_refused():
    with pytest.raises(RetentionError, match="no time zone"):
        SnapshotInfo("a", datetime(2025, 1, 1))
    with pytest.raises(RetentionError, match="no time zone"):
        apply_policy(snaps("2025-11-26 06:00"), Policy(), datetime(2025, 11, 26))


def test_duplicate_ids_are_refused():
    items = [SnapshotInfo("a", at("2025-11-26 06:00")), SnapshotInfo("a", at("2025-11-25 06:00"))]
    with pytest.raises(RetentionError, match="appears twice"):
        apply_policy(items, Policy(keep_last=1), NOW)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("1y", timedelta(days=365)),
        ("2m", timedelta(days=60)),
        ("1y2m3d4h", timedelta(days=365 + 60 + 3, hours=4)),
        ("4h1d", timedelta(days=1, hours=4)),
        (" 7d ", timedelta(days=7)),
        ("0d", timedelta(0)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["99999999999y", "", "   ", "d", "30", "30x", "1d1d", "-1d", "1.5d", "30 d", "7days", "1w", None]
)
def test_parse_duration_rejects_junk(text):
    with pytest.raises(RetentionError):
        parse_duration(text)


@pytest.mark.parametrize(
    "td, text",
    [
        (timedelta(days=7), "7d"),
        (timedelta(hours=5), "5h"),
        (timedelta(days=1, hours=2), "1d2h"),
        (timedelta(days=425), "425d"),
    ],
)
def test_format_duration_round_trips(td, text):
    assert format_duration(td) == text
    assert parse_duration(text) == td


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(keep_last=3, keep_daily=-1, tz=BERLIN, min_keep=2),
        Policy(keep_hourly=24, keep_weekly=4, keep_monthly=12, keep_yearly=-1, keep_within=timedelta(days=7)),
        Policy(keep_within=timedelta(minutes=90), max_age_days=1.5),
    ],
    ids=repr,
)
def test_policy_dict_round_trip(policy):
    assert Policy.from_dict(policy.to_dict()) == policy


def test_policy_from_config_spellings():
    got = Policy.from_dict({"keep-daily": 7, "keep_last": "unlimited", "keep-within": "1y2m", "tz": BERLIN})
    assert got == Policy(keep_daily=7, keep_last=-1, keep_within=timedelta(days=425), tz=BERLIN)
    assert Policy(keep_within=timedelta(days=7)).to_dict()["keep_within"] == "7d"


@pytest.mark.parametrize(
    "policy, empty",
    [
        (Policy(), True),
        (Policy(keep_last=0, keep_yearly=0, min_keep=3, tz=BERLIN), True),
        (Policy(keep_last=1), False),
        (Policy(keep_yearly=-1), False),
        (Policy(keep_within=timedelta(hours=1)), False),
        (Policy(max_age_days=30), False),
    ],
)
def test_is_empty(policy, empty):
    assert policy.is_empty() is empty


def test_max_age_counts_absolute_days_when_now_is_zoned_across_a_dst_change():
    """``now`` in Berlin's summer time, a snapshot 6 days 23 h 30 min earlier in absolute time,
    before the clocks went forward: younger than 7 days, kept.  Subtracting on the wall clock
    put the cutoff an hour later, and removed it."""
    from zoneinfo import ZoneInfo

    now = datetime(2026, 3, 31, 12, 0, tzinfo=ZoneInfo(BERLIN))  # CEST (+02:00)
    young = SnapshotInfo("young", now.astimezone(UTC) - timedelta(days=7) + timedelta(minutes=30))
    old = SnapshotInfo("old", now.astimezone(UTC) - timedelta(days=7, minutes=30))
    keep, remove, reasons = apply_policy([old, young], Policy(max_age_days=7, min_keep=1), now)
    assert [s.id for s in keep] == ["young"] and [s.id for s in remove] == ["old"]
    assert any("7 days" in r for r in reasons["young"]), reasons["young"]  # kept by the rule, not the floor
