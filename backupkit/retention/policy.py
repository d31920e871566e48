"""Which snapshots to keep: a pure retention decision in the manner of restic's ``forget``.

``apply_policy`` looks only at ids, timestamps and two flags, and takes ``now``
as an argument, so prune can show exactly what it would do (and tests can pin
the clock) before anything is deleted.

Rules, each an independent reason to keep (a snapshot is kept if any rule or
safety floor keeps it):

* ``keep_last N``: the N newest snapshots.
* ``keep_hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of
  the N newest local calendar periods (in ``Policy.tz``) that have snapshots;
  periods without snapshots do not count, as in restic.  -1 means unlimited.
* ``keep_within D``: snapshots younger than D relative to the newest snapshot
  (as restic, so a halted backup job never empties the directory).
* ``max_age_days X``: snapshots younger than X days relative to ``now``.

Safety floors, applied after the rules: pinned snapshots are kept; the newest
intact snapshot is kept; at least ``min_keep`` snapshots are kept.  Snapshots
dated after ``now`` are kept and otherwise set aside (see ``apply_policy``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import RetentionError

#: Calendar rules in the order their reasons are listed.
PERIOD_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")
COUNT_FIELDS = ("keep_last",) + tuple(f"keep_{p}" for p in PERIOD_RULES)

# restic's duration units.  keep_within is a timedelta, so a year and a month
# need a fixed length; restic uses calendar arithmetic instead, which differs
# by a day or two at most.
_UNIT_HOURS = {"y": 365 * 24, "m": 30 * 24, "d": 24, "h": 1}
_DURATION_PART = re.compile(r"(\d+)([ymdh])")

REMOVED_REASON = "matched no keep rule"
FUTURE_REASON = "in the future (clock skew?)"
PINNED_REASON = "pinned"
NEWEST_INTACT_REASON = "newest intact snapshot"


def parse_duration(text: str) -> timedelta:
    """Parse a restic-style duration such as ``"1y2m3d4h"`` or ``"30d"``.

    A year counts as 365 days and a month as 30 days.
    """
    if not isinstance(text, str):
        raise RetentionError(f"duration must be a string like '30d' or '1y2m', not {text!r}")
    s = text.strip()
    if not s:
        raise RetentionError("empty duration; write e.g. '30d', '12h' or '1y6m'")
    hours = 0
    seen: set[str] = set()
    pos = 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        number, unit = m.groups()
        if unit in seen:
            raise RetentionError(f"duration {text!r} gives unit {unit!r} twice")
        seen.add(unit)
        hours += int(number) * _UNIT_HOURS[unit]
        pos = m.end()
    if pos != len(s):
        raise RetentionError(
            f"cannot read duration {text!r}: expected numbers with units y, m, d, h, e.g. '30d' or '1y2m3d4h'"
        )
    try:
        return timedelta(hours=hours)
    except OverflowError:
        raise RetentionError(f"duration {text!r} is too long") from None


def format_duration(td: timedelta) -> str:
    """Render a timedelta the way ``parse_duration`` reads it (days and hours), e.g. ``"7d"``."""
    seconds = td.total_seconds()
    if seconds > 0 and seconds % 3600 == 0:
        days, hours = divmod(int(seconds // 3600), 24)
        return (f"{days}d" if days else "") + (f"{hours}h" if hours else "")
    # Not expressible in restic units; still readable in a reason.
    return str(td)


def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name, or ``RetentionError`` naming the bad zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise RetentionError(f"unknown time zone {name!r}; use an IANA name like 'UTC' or 'Europe/Berlin'") from exc


def _check_count(name: str, value: Any) -> None:
    if value is None:
        return
    # bool is an int subclass; True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RetentionError(f"{name} must be a whole number (or -1 for unlimited), not {value!r}")
    if value < -1:
        raise RetentionError(f"{name} = {value} makes no sense: use a count >= 0, or -1 for unlimited")


@dataclass(frozen=True)
class Policy:
    """A retention policy; counts of 0 or None switch a rule off, -1 means unlimited."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: timedelta | None = None
    max_age_days: float | None = None
    min_keep: int = 1
    tz: str = "UTC"

    def __post_init__(self) -> None:
        for name in COUNT_FIELDS:
            _check_count(name, getattr(self, name))
        if self.keep_within is not None:
            if not isinstance(self.keep_within, timedelta):
                raise RetentionError(f"keep_within must be a duration, not {self.keep_within!r}")
            if self.keep_within <= timedelta(0):
                raise RetentionError(f"keep_within must be positive, got {format_duration(self.keep_within)}")
        if self.max_age_days is not None:
            if isinstance(self.max_age_days, bool) or not isinstance(self.max_age_days, (int, float)):
                raise RetentionError(f"max_age_days must be a number of days, not {self.max_age_days!r}")
            if not self.max_age_days > 0:  # also rejects NaN
                raise RetentionError(f"max_age_days must be positive, got {self.max_age_days}")
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, int) or self.min_keep < 1:
            raise RetentionError(
                f"min_keep must be at least 1, got {self.min_keep!r}: a policy may never remove every snapshot"
            )
        zone(self.tz)  # fail at construction, not halfway through a prune

    def is_empty(self) -> bool:
        """True when no keep rule is set (``min_keep`` and ``tz`` are not rules)."""
        return (
            not any(getattr(self, name) for name in COUNT_FIELDS)
            and self.keep_within is None
            and self.max_age_days is None
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; unset rules are left out and ``keep_within`` becomes a duration string."""
        out: dict[str, Any] = {}
        for name in COUNT_FIELDS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.keep_within is not None:
            seconds = self.keep_within.total_seconds()
            # Sub-hour durations have no restic spelling; seconds round-trip exactly.
            out["keep_within"] = format_duration(self.keep_within) if seconds % 3600 == 0 else seconds
        if self.max_age_days is not None:
            out["max_age_days"] = self.max_age_days
        out["min_keep"] = self.min_keep
        out["tz"] = self.tz
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        """Build a policy from config/JSON; accepts ``keep-daily`` spellings and ``"unlimited"``."""
        if not isinstance(d, dict):
            raise RetentionError(f"a retention policy must be a mapping, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise RetentionError(f"unknown retention setting {key!r}; known: {', '.join(sorted(known))}")
            if name in COUNT_FIELDS and value == "unlimited":
                value = -1
            elif name == "keep_within" and value is not None and not isinstance(value, timedelta):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = timedelta(seconds=value)
                else:
                    value = parse_duration(value)
            kwargs[name] = value
        return cls(**kwargs)


#: Applied when a policy sets no rule: keep 30 days.
DEFAULT_POLICY = Policy(max_age_days=30)


@dataclass(frozen=True)
class SnapshotInfo:
    """What retention needs to know about one snapshot."""

    id: str
    created_at: datetime
    pinned: bool = False
    intact: bool = True

    def __post_init__(self) -> None:
        if self.created_at.utcoffset() is None:
            raise RetentionError(f"snapshot {self.id}: created_at {self.created_at} has no time zone")


# Each period rule maps a local time to (bucket key, label).  Keys use wall-clock
# fields, as restic does: in the autumn DST change the repeated local hour
# (02:00 CEST and 02:00 CET) is one hourly period.
def _hour(t: datetime) -> tuple[tuple, str]:
    return (t.year, t.month, t.day, t.hour), f"{t:%Y-%m-%d %H}:00"


def _day(t: datetime) -> tuple[tuple, str]:
    return (t.year, t.month, t.day), f"{t:%Y-%m-%d}"


def _week(t: datetime) -> tuple[tuple, str]:
    # ISO week: 2024-12-30 belongs to 2025-W01.
    year, week, _ = t.isocalendar()
    return (year, week), f"{year}-W{week:02d}"


def _month(t: datetime) -> tuple[tuple, str]:
    return (t.year, t.month), f"{t:%Y-%m}"


def _year(t: datetime) -> tuple[tuple, str]:
    return (t.year,), f"{t.year}"


_BUCKETERS: dict[str, Callable[[datetime], tuple[tuple, str]]] = {
    "hourly": _hour,
    "daily": _day,
    "weekly": _week,
    "monthly": _month,
    "yearly": _year,
}


def _days_label(days: float) -> str:
    return f"younger than {days:g} day" + ("" if days == 1 else "s")


def _before(t: datetime, span: Callable[[], timedelta]) -> datetime | None:
    """``t - span()`` in absolute time, or None when that lies before year 1 (so everything is
    younger).  In UTC: Python subtracts from a zoned time on the wall clock, an hour off across
    a daylight-saving change."""
    try:
        return t.astimezone(UTC) - span()
    except OverflowError:
        return None


def _apply_rules(dated: list[SnapshotInfo], policy: Policy, now: datetime, reasons: dict[str, list[str]]) -> None:
    """Add rule reasons for ``dated`` (newest first, none after ``now``)."""
    if policy.keep_last:
        total = "unlimited" if policy.keep_last == -1 else str(policy.keep_last)
        limit = len(dated) if policy.keep_last == -1 else policy.keep_last
        for i, snap in enumerate(dated[:limit], start=1):
            reasons[snap.id].append(f"last {i}/{total}")

    tz = zone(policy.tz)
    for rule in PERIOD_RULES:
        count = getattr(policy, f"keep_{rule}")
        if not count:
            continue
        left = count
        last_key = None
        for snap in dated:
            if left == 0:
                break
            key, label = _BUCKETERS[rule](snap.created_at.astimezone(tz))
            if key == last_key:
                continue  # an older snapshot of a period already kept
            last_key = key
            reasons[snap.id].append(f"{rule} {label}")
            if left > 0:
                left -= 1

    keep_within, max_age_days = policy.keep_within, policy.max_age_days
    if keep_within is not None and dated:
        cutoff = _before(dated[0].created_at, lambda: keep_within)
        label = f"within {format_duration(keep_within)}"
        for snap in dated:
            if cutoff is None or snap.created_at > cutoff:
                reasons[snap.id].append(label)

    if max_age_days is not None:
        cutoff = _before(now, lambda: timedelta(days=max_age_days))
        label = _days_label(max_age_days)
        for snap in dated:
            if cutoff is None or snap.created_at > cutoff:
                reasons[snap.id].append(label)


def apply_policy(
    snapshots: Iterable[SnapshotInfo], policy: Policy, now: datetime
) -> tuple[list[SnapshotInfo], list[SnapshotInfo], dict[str, list[str]]]:
    """Split snapshots into (keep, remove, reasons); both lists newest first.

    ``reasons[id]`` lists every rule and floor that kept the snapshot, or
    ``["matched no keep rule"]`` for a removed one.  A policy without rules
    means ``DEFAULT_POLICY`` (30 days).  Snapshots dated after ``now`` are kept
    but take no part in rules or floors, so a skewed clock cannot push real
    snapshots out.
    """
    if now.utcoffset() is None:
        raise RetentionError(f"now ({now}) has no time zone")
    if policy.is_empty():
        policy = dataclasses.replace(DEFAULT_POLICY, min_keep=policy.min_keep, tz=policy.tz)

    # Newest first; equal timestamps ordered by id so the result never depends on input order.
    ordered = sorted(snapshots, key=lambda s: (s.created_at, s.id), reverse=True)
    reasons: dict[str, list[str]] = {}
    for snap in ordered:
        if snap.id in reasons:
            raise RetentionError(f"snapshot id {snap.id!r} appears twice")
        reasons[snap.id] = []

    dated = []
    for snap in ordered:
        if snap.created_at > now:
            reasons[snap.id].append(FUTURE_REASON)
        else:
            dated.append(snap)

    _apply_rules(dated, policy, now, reasons)

    for snap in dated:
        if snap.pinned:
            reasons[snap.id].append(PINNED_REASON)
    newest_intact = next((s for s in dated if s.intact), None)
    if newest_intact is not None:
        reasons[newest_intact.id].append(NEWEST_INTACT_REASON)

    kept = sum(1 for s in dated if reasons[s.id])
    # Prefer restorable snapshots when topping up to min_keep.
    for snap in sorted(dated, key=lambda s: not s.intact):
        if kept >= policy.min_keep:
            break
        if not reasons[snap.id]:
            reasons[snap.id].append(f"min_keep floor ({policy.min_keep})")
            kept += 1

    keep = [s for s in ordered if reasons[s.id]]
    remove = [s for s in ordered if not reasons[s.id]]
    for snap in remove:
        reasons[snap.id] = [REMOVED_REASON]
    return keep, remove, reasons
