"""pg_cron's scheduled jobs: read at a backup's consistent moment, scheduled again by a restore.

pg_cron keeps its jobs in ``cron.job``, a table of the extension's own that a
schema-filtered pg_dump leaves out (and a whole one dumps as rows that Supabase's
``postgres`` role may not insert: on Supabase only ``cron.schedule`` adds jobs).  So a
backup reads the jobs itself, in the snapshot's transaction, and a whole restore
schedules them again with ``cron.schedule`` in its own transaction, as the connecting
role: a failed restore leaves no job behind.

A job's command may hold keys (Supabase's guide to scheduling Edge Functions puts an
``Authorization: Bearer`` header in it), so commands go to a schema file of the
snapshot, encrypted with the others (``CRON_JOBS``); the manifest names the jobs only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from .rows import one_row

#: Is pg_cron's job table there, and may this role read every row of it?  (No row: not
#: there.)  pg_cron lets every role see only its own jobs (row-level security); a backup
#: reads with row_security off, where such a table is an error rather than a filter.
_READABLE = """
SELECT pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       NOT c.relrowsecurity OR r.rolsuper OR r.rolbypassrls
       OR (pg_catalog.pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
       pg_catalog.pg_roles r
 WHERE n.nspname = 'cron' AND c.relname = 'job' AND c.relkind = 'r' AND r.rolname = current_user
"""

# Whole rows as JSON: pg_cron before 1.3 had no jobname, before 1.4 no active.
_JOBS = "SELECT pg_catalog.to_jsonb(j) FROM cron.job j ORDER BY j.jobid"


@dataclass(frozen=True)
class Job:
    """One row of ``cron.job``, without its jobid (a restore's jobs get new ones)."""

    name: str | None
    schedule: str
    command: str
    database: str
    username: str
    active: bool = True

    @classmethod
    def from_row(cls, row: dict) -> Job:
        """A job from a ``cron.job`` row (or a ``to_dict``) of any pg_cron version."""
        return cls(
            name=row.get("jobname", row.get("name")),
            schedule=str(row["schedule"]),
            command=str(row["command"]),
            database=str(row["database"]),
            username=str(row["username"]),
            active=bool(row.get("active", True)),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What the manifest says of the job: everything but its command."""
        return {k: v for k, v in asdict(self).items() if k != "command"}

    def describe(self) -> str:
        """``name (schedule)``, ``, inactive`` added inside the parentheses when it is."""
        state = "" if self.active else ", inactive"
        return (self.name if self.name is not None else "an unnamed job") + f" ({self.schedule}{state})"


def read_jobs(conn: psycopg.Connection) -> list[Job] | None:
    """The database's pg_cron jobs in jobid order; None when it has no pg_cron.  A job
    table this role may not read raises ``Unreadable``: that is not "no jobs"."""
    row = conn.execute(_READABLE).fetchone()
    if row is None:
        return None
    if not (row[0] and row[1]):
        raise Unreadable
    return [Job.from_row(r[0]) for r in conn.execute(_JOBS).fetchall()]


class Unreadable(Exception):
    """The database has pg_cron jobs this role may not read, or not all of them."""


def dumps(jobs: Sequence[Job]) -> bytes:
    """The snapshot's jobs file (``CRON_JOBS``)."""
    return (json.dumps([j.to_dict() for j in jobs], indent=1, ensure_ascii=False) + "\n").encode()


def loads(data: bytes) -> list[Job]:
    """The jobs of a snapshot's jobs file."""
    return [Job.from_row(r) for r in json.loads(data)]


@dataclass
class Scheduling:
    """What a restore does with the snapshot's jobs: the SQL it runs, what it says."""

    statements: list[sql.Composed]
    scheduled: list[str]
    notes: list[str]


def plan(
    jobs: Sequence[Job],
    there: Sequence[Job],
    *,
    source_database: str,
    target_database: str,
    role: str,
    superuser: bool,
) -> Scheduling:
    """How to schedule ``jobs`` (the snapshot's) in a target that has ``there``.  Pure.

    A job the target has already (the same name, schedule, command, role and state) is
    left alone, so restoring twice makes no duplicate of an unnamed job.  A named one is
    scheduled by name: pg_cron replaces the role's job of that name.  Jobs that ran in
    another database of the source's server, or as another role than the connecting
    one (which only a superuser may schedule for), are named in a note instead."""
    statements: list[sql.Composed] = []
    scheduled: list[str] = []
    notes: list[str] = []
    have = {(j.name, j.schedule, j.command, j.username, j.active) for j in there if j.database == target_database}
    other_db = [j for j in jobs if j.database != source_database]
    other_role = [j for j in jobs if j.database == source_database and j.username != role and not superuser]
    for job in jobs:
        if job in other_db or job in other_role:
            continue
        if (job.name, job.schedule, job.command, job.username, job.active) in have:
            continue
        args = [sql.Literal(job.schedule), sql.Literal(job.command)]
        if job.name is not None:
            args.insert(0, sql.Literal(job.name))
        call = sql.SQL("cron.schedule({})").format(sql.SQL(", ").join(args))
        changes = []
        if job.username != role:  # a superuser restoring another role's job
            changes.append(sql.SQL("username := {}").format(sql.Literal(job.username)))
        named_there = any(j.name == job.name and j.username == job.username for j in there if job.name is not None)
        if not job.active or named_there:  # replacing a job by name keeps its old state
            changes.append(sql.SQL("active := {}").format(sql.Literal(job.active)))
        if changes:
            call = sql.SQL("cron.alter_job({}, {})").format(call, sql.SQL(", ").join(changes))
        statements.append(sql.SQL("SELECT {}").format(call))
        scheduled.append(job.describe())
    if other_db:
        notes.append(
            "did not schedule pg_cron job(s) "
            + ", ".join(f"{j.describe()} in database {j.database}" for j in other_db)
            + f": they ran in another database than {source_database}; schedule them there with "
            "cron.schedule_in_database (their commands are in the snapshot's schema/cron_jobs.json)"
        )
    if other_role:
        notes.append(
            "did not schedule pg_cron job(s) "
            + ", ".join(f"{j.describe()} of role {j.username}" for j in other_role)
            + f": only a superuser may schedule a job for another role than {role}; connect as that "
            "role and schedule them with cron.schedule (their commands are in the snapshot's "
            "schema/cron_jobs.json)"
        )
    return Scheduling(statements, scheduled, notes)


def target_jobs(conn: psycopg.Connection) -> tuple[bool, list[Job]]:
    """(whether this role may schedule jobs, the jobs the target has that it sees) for a
    target with pg_cron; a job table this role may not read counts as none.  Read with
    row_security on: a role without BYPASSRLS sees its own jobs, the ones it can replace."""
    may = one_row(conn.execute(_MAY_SCHEDULE))[0]
    row = conn.execute(_READABLE).fetchone()
    jobs = [Job.from_row(r[0]) for r in conn.execute(_JOBS).fetchall()] if row is not None and row[0] else []
    return bool(may), jobs


_MAY_SCHEDULE = """
SELECT coalesce(pg_catalog.has_function_privilege(
         pg_catalog.to_regprocedure('cron.schedule(text,text,text)'), 'EXECUTE'), false)
"""
