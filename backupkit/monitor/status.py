"""``backupkit status``: one look at a repository, as a monitor wants it.

``assess`` is the decision, pure and given ``now``: the state is the worst that applies,
in this order, each with its exit code (``STATE_CODES``): ``damaged`` (the newest
snapshot's manifest or files are not as written: 6), ``drill_failed`` (the newest drill
found differences: 14), ``run_failed`` (the newest scheduled run's record says failed:
16), ``stale`` (no complete snapshot, or the newest is older than ``max_age``: 15), ``ok``
(0).  ``status`` gathers the facts: the snapshot list, a size check of the newest
snapshot (no rehash: a monitor polls often), the drill records and the run records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..drills import record
from ..errors import SnapshotError
from ..snapshot.verify import verify
from ..storage.location import open_storage
from ..storage.repository import list_snapshots, usage

#: Exit code per state (README lists them with the others).
STATE_CODES = {"ok": 0, "damaged": 6, "drill_failed": 14, "stale": 15, "run_failed": 16}
#: The default ``max_age``: a daily job, with two hours of slack.
MAX_AGE = timedelta(hours=26)


@dataclass
class Facts:
    """What ``assess`` decides from."""

    newest_id: str | None
    newest_at: datetime | None
    newest_problems: list[str] = field(default_factory=list)
    drill: record.DrillRecord | None = None
    run: dict | None = None


def assess(facts: Facts, now: datetime, max_age: timedelta) -> tuple[str, list[str]]:
    """The state (a key of ``STATE_CODES``) and a reason per problem found, worst first."""
    reasons: list[tuple[str, str]] = []
    if facts.newest_problems:
        reasons.append(("damaged", f"newest snapshot {facts.newest_id} is damaged: {facts.newest_problems[0]}"))
    if facts.drill is not None and not facts.drill.ok:
        reasons.append(("drill_failed", f"the last drill ({facts.drill.snapshot}) found: {facts.drill.differences[0]}"))
    if facts.run is not None and facts.run.get("status") == "failed":
        why = facts.run.get("exit_reason") or "no reason recorded"
        reasons.append(
            ("run_failed", f"the last run ({facts.run.get('job')}, {facts.run.get('run_id')}) failed: {why}")
        )
    if facts.newest_at is None:
        reasons.append(("stale", "no complete snapshot"))
    elif now - facts.newest_at > max_age:
        hours = (now - facts.newest_at).total_seconds() / 3600
        reasons.append(
            ("stale", f"newest snapshot is {hours:.1f} h old (more than {max_age.total_seconds() / 3600:g} h)")
        )
    # Appended worst first: the state is the first reason's.
    return (reasons[0][0] if reasons else "ok"), [text for _, text in reasons]


@dataclass
class Status:
    """A repository's state for a monitor (``to_dict`` is ``status --json``)."""

    repository: str
    state: str
    reasons: list[str]
    newest: str | None
    newest_age_hours: float | None
    snapshots: int
    stored_bytes: int
    last_drill: dict | None
    last_run: dict | None

    @property
    def exit_code(self) -> int:
        return STATE_CODES[self.state]

    def to_dict(self) -> dict:
        return {**self.__dict__, "exit_code": self.exit_code}


def last_run(runs_dir: str | os.PathLike[str] | None) -> dict | None:
    """The newest run record (``run.json`` of the scheduled notebooks) in ``runs_dir``, if any."""
    if runs_dir is None:
        return None
    newest = None
    for path in Path(runs_dir).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (newest is None or str(data.get("started_at")) > str(newest.get("started_at"))):
            newest = data
    return newest


def status(
    repository: str | os.PathLike[str],
    *,
    max_age: timedelta = MAX_AGE,
    runs_dir: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Status:
    """The state of ``repository`` (see the module docstring); never raises for a bad state."""
    now = now or datetime.now(UTC)
    storage = open_storage(repository)
    snaps, _ = list_snapshots(storage)
    # Unreadable snapshots are listed last; by id (its UTC start) one may still be the newest.
    newest = max(snaps, key=lambda s: s.id) if snaps else None
    times = [s.created_at for s in snaps if s.created_at is not None]
    facts = Facts(newest.id if newest else None, max(times, default=None))
    if newest is not None and newest.error is not None:
        facts.newest_problems = [newest.error]
    elif newest is not None:
        try:
            facts.newest_problems = verify(newest.location, quick=True).problems
        except SnapshotError as exc:  # unreadable: not known to be intact, which is what matters here
            facts.newest_problems = [str(exc)]
    facts.drill = record.latest(storage)
    facts.run = last_run(runs_dir)
    state, reasons = assess(facts, now, max_age)
    return Status(
        repository=storage.where(),
        state=state,
        reasons=reasons,
        newest=facts.newest_id,
        newest_age_hours=round((now - facts.newest_at).total_seconds() / 3600, 2) if facts.newest_at else None,
        snapshots=len(snaps),
        stored_bytes=usage(snaps).stored,
        last_drill=facts.drill.to_dict() if facts.drill else None,
        last_run={k: facts.run.get(k) for k in ("job", "run_id", "status", "started_at", "exit_reason")}
        if facts.run
        else None,
    )
