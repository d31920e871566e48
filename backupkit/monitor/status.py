"""``backupkit status``: one look at a repository, as a monitor wants it.

``assess`` is the decision, pure and given ``now``: the state is the worst that applies, in
this order, each with its exit code (``STATE_CODES``): ``damaged`` (the newest snapshot's
manifest or files are not as written: 6), ``drill_failed`` (the newest drill found
differences: 14), ``run_failed`` (the newest scheduled run's record says failed, or running
for a run that cannot still be going: 16), ``stale`` (no complete snapshot, or the newest is
older than ``max_age``: 15), ``ok`` (0). ``status`` gathers the facts: the snapshot list, a
size check of the newest snapshot (no rehash: a monitor polls often), the drill records and
the run records.

A run killed outright (SIGTERM from systemd or Airflow, a timeout, the OOM killer) leaves its
record saying ``running``: nothing in the dead kernel could mark it failed.  ``interruption``
decides, pure and given ``now`` and what ``look_here`` saw, whether such a run can still be
going: where it ran (the same host name, pid namespace and boot: ``runtime.place``) its kernel and the process that
launched it (papermill) must both still run, as the record names them (pid and
``<boot id>:<start time>``, as ``storage.lock`` names a lock's holder; a record without the
identity, written before it was recorded, by its pid and start time); from another host or
container, which cannot look (a shared runs_dir), a run still ``running`` after ``RUN_LIMIT`` is taken
for dead.  ``last_run`` reports such a record as failed, ``exit_reason`` ``interrupted: ...``;
the file itself is left as it is.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..drills import record
from ..errors import SnapshotError
from ..runtime.place import Place, Whereabouts, whereabouts
from ..snapshot.verify import verify
from ..storage.location import open_storage
from ..storage.repository import list_snapshots, usage

#: Exit code per state (README lists them with the others).
STATE_CODES = {"ok": 0, "damaged": 6, "drill_failed": 14, "stale": 15, "run_failed": 16}
#: The default ``max_age``: a daily job, with two hours of slack.
MAX_AGE = timedelta(hours=26)
#: How long a run may say ``running`` when its processes cannot be looked at (its record was
#: written on another host, or by a writer that recorded none): a daily job's whole day.
RUN_LIMIT = timedelta(hours=24)
#: A process started this long after its run began is not the run's (a reused pid).
_PID_REUSE_SLACK = timedelta(seconds=10)


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


#: What was seen of a process: None, no such process (or a zombie); else its identity
#: (``<boot id>:<start ticks>``) and its start time, each None when this system cannot tell.
Seen = tuple[str | None, datetime | None] | None


@dataclass(frozen=True)
class Here(Place):
    """What the reader saw where it runs: its place (host name, boot, pid namespace) and the
    processes it looked at (pid -> ``Seen``; a pid not in it was not looked at)."""

    processes: Mapping[int, Seen] = field(default_factory=dict)


def _started_at(run: Mapping) -> datetime | None:
    try:
        started = datetime.fromisoformat(str(run.get("started_at")))
    except ValueError:
        return None
    return started if started.utcoffset() is not None else None


def _hours(t: timedelta) -> str:
    return f"{t.total_seconds() / 3600:.3g} h"


def interruption(run: Mapping, now: datetime, here: Here, limit: timedelta = RUN_LIMIT) -> str | None:
    """Why the run behind ``run`` (a record as read) cannot still be going although it says
    ``running``: ``interrupted: ...`` in one line; None when it is not running or may be."""
    if run.get("status") != "running":
        return None
    started = _started_at(run)
    host = run.get("host")
    place = whereabouts(run, started, here)
    kernel = f"its kernel (pid {run.get('pid')} on host {host})"
    if place is Whereabouts.RESTARTED:
        return f"interrupted: host {host} restarted since the run began, so {kernel} is gone"
    if place is Whereabouts.HERE:
        identity = run.get("process")
        launcher = run.get("launcher")
        checks = [(kernel, run.get("pid"), identity)]
        if isinstance(launcher, Mapping):
            what = f"the process that ran its kernel (pid {launcher.get('pid')} on host {host}: papermill, Jupyter)"
            checks.append((what, launcher.get("pid"), launcher.get("process")))
        verified = True
        for what, pid, recorded in checks:
            if not isinstance(pid, int) or pid not in here.processes:
                verified = False
                continue
            seen = here.processes[pid]
            if seen is None:
                return (
                    f"interrupted: {what} is gone, and nothing marked the run failed"
                    " (killed: a stop, a timeout, out of memory)"
                )
            seen_identity, seen_started = seen
            if isinstance(recorded, str) and seen_identity is not None:
                if seen_identity != recorded:
                    return f"interrupted: {what} is gone (its pid now belongs to another process)"
            elif started is not None and seen_started is not None:
                if seen_started > started + _PID_REUSE_SLACK:
                    return f"interrupted: {what} is gone (its pid now belongs to a process started after the run)"
            else:
                verified = False
        if verified:
            return None
    if started is not None and now - started > limit:
        where = f"host {host}" if isinstance(host, str) and host else "its host"
        return (
            f"interrupted: still marked running {_hours(now - started)} after it began (more than the"
            f" {_hours(limit)} a run is given), and {where} cannot be checked from here"
        )
    return None


def _seen(pid: int, boot_id: str | None) -> Seen:
    """What this host shows of process ``pid`` (the I/O behind ``Here.processes``)."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux: no such process
    except OSError:
        return (None, None)
    else:
        try:
            fields = stat[stat.rindex(")") + 2 :].split()
            state, ticks = fields[0], int(fields[19])
        except (ValueError, IndexError):
            return (None, None)
        if state in ("Z", "X"):
            return None  # ended: a zombie no one has reaped
        started = None
        try:
            btime = next(
                int(line.split()[1])
                for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime ")
            )
            started = datetime.fromtimestamp(btime + ticks / os.sysconf("SC_CLK_TCK"), UTC)
        except (OSError, ValueError, IndexError, StopIteration):
            pass
        return (f"{boot_id}:{ticks}" if boot_id else None, started)
    if sys.platform == "win32":  # os.kill would end it: not looked at
        raise LookupError(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs, as another user
    return (None, None)


def look_here(run: Mapping) -> Here:
    """This process's place, and, when ``run`` was written here (``runtime.place``), what is
    seen of the processes it names (the I/O for ``interruption``)."""
    place = Place.here()
    processes: dict[int, Seen] = {}
    if run.get("status") == "running" and whereabouts(run, _started_at(run), place) is Whereabouts.HERE:
        launcher = run.get("launcher")
        for pid in (run.get("pid"), launcher.get("pid") if isinstance(launcher, Mapping) else None):
            if isinstance(pid, int) and not isinstance(pid, bool):
                try:
                    processes[pid] = _seen(pid, place.boot_id)
                except LookupError:
                    pass
    return Here(**vars(place), processes=processes)


def settle(run: dict, now: datetime, here: Here, limit: timedelta = RUN_LIMIT) -> dict:
    """``run`` as a monitor should read it: a copy saying ``failed`` (``exit_reason``
    ``interrupted: ...``, ``interrupted`` true) when its run cannot still be going, else ``run``."""
    why = interruption(run, now, here, limit)
    if why is None:
        return run
    return {**run, "status": "failed", "exit_reason": why, "interrupted": True}


def last_run(
    runs_dir: str | os.PathLike[str] | None, *, now: datetime | None = None, limit: timedelta = RUN_LIMIT
) -> dict | None:
    """The newest run record (``run.json`` of the scheduled notebooks) in ``runs_dir``, if any;
    one saying running for a run that cannot still be going says failed (``settle``)."""
    if runs_dir is None:
        return None
    newest, newest_path = None, None
    for path in Path(runs_dir).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (newest is None or str(data.get("started_at")) > str(newest.get("started_at"))):
            newest, newest_path = data, path
    if newest is None or newest_path is None:
        return None
    settled = settle(newest, now or datetime.now(UTC), look_here(newest), limit)
    if settled is not newest:
        # The run may have ended, and its kernel with it, between the read and the look: read again.
        try:
            again = json.loads(newest_path.read_text())
        except (OSError, ValueError):
            again = None
        if isinstance(again, dict) and again.get("status") != "running":
            return again
    return settled


def status(
    repository: str | os.PathLike[str],
    *,
    max_age: timedelta = MAX_AGE,
    runs_dir: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
    run_limit: timedelta = RUN_LIMIT,
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
    facts.run = last_run(runs_dir, now=now, limit=run_limit)
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
