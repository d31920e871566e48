"""pg_cron's scheduled jobs: read at a backup's consistent moment, scheduled again by a restore.

pg_cron keeps its jobs in ``cron.job``, a table of the extension's own that a
schema-filtered pg_dump leaves out (and a whole one dumps as rows that Supabase's
``postgres`` role may not insert: on Supabase only ``cron.schedule`` adds jobs).  So a
backup reads the jobs itself, in the snapshot's transaction, and a whole restore
schedules them again, last, in its own transaction: a failed restore leaves no job.

Each job is scheduled on its own (a savepoint each, the command a bound parameter): one
pg_cron refuses (a schedule syntax newer than its version, a role that may not log in)
is named in a warning and costs neither the restore nor the other jobs, and no command
reaches the server's log with an error.  A job's command may hold keys (Supabase's guide
to scheduling Edge Functions puts an ``Authorization: Bearer`` header in it), so commands
go to a schema file of the snapshot, encrypted with the others (``CRON_JOBS``); the
manifest, notes and warnings name the jobs only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import psycopg

from .rows import one_row

#: Is pg_cron's job table there (no row: not there); may this role read it (SELECT, and
#: USAGE on its schema); does it see every row?  pg_cron shows a role without BYPASSRLS
#: only its own jobs (row-level security), and with row_security off, as a backup reads,
#: such a table is an error rather than a filter.  The live row count comes from the
#: statistics, which every role may read.
_READABLE = """
SELECT pg_catalog.has_table_privilege(c.oid, 'SELECT') AND pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
       NOT c.relrowsecurity OR r.rolsuper OR r.rolbypassrls
       OR (pg_catalog.pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity),
       pg_catalog.pg_stat_get_live_tuples(c.oid)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
       pg_catalog.pg_roles r
 WHERE n.nspname = 'cron' AND c.relname = 'job' AND c.relkind = 'r' AND r.rolname = current_user
"""

#: What a whole restore may do with the snapshot's jobs: schedule them as they were, schedule
#: them all paused (a staging copy must not send what the original sends), or leave them out.
MODES = ("as-they-were", "paused", "skip")

# Whole rows as JSON: pg_cron before 1.3 had no jobname, before 1.4 no active.
_JOBS = "SELECT pg_catalog.to_jsonb(j) FROM cron.job j ORDER BY j.jobid"

#: A command that reads Supabase Vault (``vault.decrypted_secrets``, Supabase's way to keep
#: a job's keys out of its command).
_VAULT = re.compile(r'(?<![\w$])"?vault"?\s*\.', re.IGNORECASE)


@dataclass(frozen=True)
class Job:
    """One row of ``cron.job``.  A snapshot's jobs have no ``jobid`` (a restore's get new
    ones); a target's have theirs, for pausing one that is there already."""

    name: str | None
    schedule: str
    command: str
    database: str
    username: str
    active: bool = True
    #: Where pg_cron connects to run it (None: not recorded); a restore runs it on the target.
    nodename: str | None = None
    nodeport: int | None = None
    jobid: int | None = field(default=None, compare=False)

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
            nodename=row.get("nodename"),
            nodeport=row.get("nodeport"),
            jobid=row.get("jobid"),
        )

    def to_dict(self) -> dict:
        """The job as the snapshot's jobs file holds it (no jobid)."""
        return {k: v for k, v in asdict(self).items() if k != "jobid"}

    def summary(self) -> dict:
        """What the manifest says of the job: no command, no node."""
        return {k: getattr(self, k) for k in ("name", "schedule", "database", "username", "active")}

    def describe(self) -> str:
        """``name (schedule)``, ``, inactive`` added inside the parentheses when it is."""
        state = "" if self.active else ", inactive"
        return (self.name if self.name is not None else "an unnamed job") + f" ({self.schedule}{state})"


class Unreadable(Exception):
    """The database has pg_cron jobs this role may not read, or not all of them."""


def read_jobs(conn: psycopg.Connection) -> list[Job] | None:
    """The database's pg_cron jobs in jobid order; None when it has no pg_cron.

    A job table this role may not read, or of which row-level security hides rows (the
    statistics count more live rows than it sees: a job made within the last second may
    not be counted yet), raises ``Unreadable``: that is not "no jobs"."""
    row = conn.execute(_READABLE).fetchone()
    if row is None:
        return None
    usable, sees_all, live = row
    if not usable:
        raise Unreadable
    if sees_all:
        return [Job.from_row(r[0]) for r in conn.execute(_JOBS).fetchall()]
    # Its own jobs, through pg_cron's policy (row_security on for this one query).
    was = one_row(conn.execute("SELECT pg_catalog.current_setting('row_security')"))[0]
    conn.execute("SELECT pg_catalog.set_config('row_security', 'on', true)")
    try:
        own = [Job.from_row(r[0]) for r in conn.execute(_JOBS).fetchall()]
    finally:
        conn.execute("SELECT pg_catalog.set_config('row_security', %s, true)", (was,))
    if live > len(own):
        raise Unreadable
    return own


def dumps(jobs: Sequence[Job]) -> bytes:
    """The snapshot's jobs file (``CRON_JOBS``)."""
    return (json.dumps([j.to_dict() for j in jobs], indent=1, ensure_ascii=False) + "\n").encode()


def loads(data: bytes) -> list[Job]:
    """The jobs of a snapshot's jobs file."""
    return [Job.from_row(r) for r in json.loads(data)]


@dataclass(frozen=True)
class Statement:
    """One job's scheduling: a query, its parameters (the command among them), the job."""

    query: str
    params: tuple
    job: Job


@dataclass
class TargetCron:
    """What the target's pg_cron lets the connecting role do, and the jobs it sees there."""

    may_schedule: bool
    may_alter: bool
    jobs: list[Job] = field(default_factory=list)
    #: Roles of the target that may log in (pg_cron runs jobs only as such a role).
    login_roles: set[str] = field(default_factory=set)
    #: The target database's name (its jobs are those whose ``database`` it is).
    database: str = ""


@dataclass
class Scheduling:
    """What a restore does with the snapshot's jobs: the statements it runs, what it says."""

    statements: list[Statement]
    notes: list[str]

    @property
    def scheduled(self) -> list[str]:
        """Each job the statements make (or pause, when it was there already), described."""
        return [s.job.describe() + (", which was there already" if s.query == _STATE else "") for s in self.statements]


_OWN = {
    (True, False): "SELECT cron.schedule(%s, %s, %s)",
    (False, False): "SELECT cron.schedule(%s, %s)",
    (True, True): "SELECT cron.alter_job(cron.schedule(%s, %s, %s), active := %s)",
    (False, True): "SELECT cron.alter_job(cron.schedule(%s, %s), active := %s)",
}
#: Another role's job (a superuser restoring): made for that role directly, so pg_cron's
#: replace-by-name matches that role's job of the name, not the superuser's.
_OTHER_NAMED = "SELECT cron.schedule_in_database(%s, %s, %s, pg_catalog.current_database(), %s, %s)"
_OTHER_UNNAMED = "SELECT cron.alter_job(cron.schedule(%s, %s), username := %s, active := %s)"
_OTHER_REPLACED = (
    "SELECT cron.alter_job(cron.schedule_in_database(%s, %s, %s, pg_catalog.current_database(), %s, %s), active := %s)"
)
#: Pausing (or resuming) a job the target has already.
_STATE = "SELECT cron.alter_job(%s, active := %s)"
#: Where a note that names jobs sends a person for their commands.
COMMANDS_AT = "their commands are in the snapshot's schema/cron_jobs.json"


def plan(
    jobs: Sequence[Job],
    target: TargetCron,
    *,
    source_database: str,
    role: str,
    superuser: bool,
    paused: bool = False,
) -> Scheduling:
    """How to schedule ``jobs`` (the snapshot's) in ``target``.  Pure.

    A job the target has already is left alone: a named one with the same schedule,
    command and state; unnamed ones counted alike, so restoring twice makes no second copy,
    and one there in the other state is paused or resumed (``--cron-jobs paused`` into a
    copy that has the jobs running).  A named job replaces the role's job of that name (pg_cron's
    own rule).  Jobs that ran in another database of the source's server, as another
    role than the connecting one (which only a superuser may schedule for, and only for a
    role that may log in here), or that this role could schedule only active although
    they were paused, are named in notes instead.  ``paused`` schedules every job inactive
    (a staging copy), and pauses the copies the target already runs."""
    there_named = {(j.name, j.username): j for j in target.jobs if j.name is not None}
    unnamed_there: dict[tuple[str, str, str], list[Job]] = {}
    for j in target.jobs:
        if j.name is None and j.database == target.database:
            unnamed_there.setdefault((j.schedule, j.command, j.username), []).append(j)
    statements: list[Statement] = []
    left: dict[str, list[Job]] = {}

    def leave(why: str, job: Job) -> None:
        left.setdefault(why, []).append(job)

    for snapshot_job in jobs:
        job = replace(snapshot_job, active=False) if paused else snapshot_job
        mine = job.username == role
        if job.database != source_database:
            leave(
                f"they ran in another database than {source_database} (cron.schedule_in_database there)", snapshot_job
            )
            continue
        if not mine and not superuser:
            leave(f"they run as another role, which only a superuser may schedule for (not {role})", snapshot_job)
            continue
        if not mine and job.username not in target.login_roles:
            leave("they run as a role this server lacks or that may not log in (pg_cron needs LOGIN)", snapshot_job)
            continue
        if job.name is None:
            same = unnamed_there.get((job.schedule, job.command, job.username), [])
            if same:  # there already: one in the same state if any, else one to pause or resume
                match = next((j for j in same if j.active == job.active), same[0])
                same.remove(match)
                if match.active != job.active:
                    if not target.may_alter or match.jobid is None:
                        leave(
                            f"they are there in another state, and {role} may not run cron.alter_job here", snapshot_job
                        )
                    else:
                        statements.append(Statement(_STATE, (match.jobid, job.active), job))
                continue
            replaced = None
        else:
            replaced = there_named.get((job.name, job.username))
            if replaced is not None and (replaced.schedule, replaced.command, replaced.active) == (
                job.schedule,
                job.command,
                job.active,
            ):
                continue
        statement = _scheduling(job, replaced, mine=mine, may_alter=target.may_alter)
        if statement is None:
            leave(f"they are to be paused, and {role} may not run cron.alter_job to pause them here", snapshot_job)
        else:
            statements.append(statement)
    notes = [
        "did not schedule pg_cron job(s) " + ", ".join(_named(j) for j in held) + f": {why}; {COMMANDS_AT}"
        for why, held in left.items()
    ]
    if paused and left:
        notes.append(
            "a copy of those jobs this database already has runs on, as it is: pause it "
            "(cron.alter_job(jobid, active := false)) as its role or a superuser"
        )
    kept = _only_there(jobs, [j for j in target.jobs if j.database == target.database])
    if kept:
        notes.append(
            "kept this database's pg_cron job(s) "
            + ", ".join(f"{j.describe()} of role {j.username}" for j in kept)
            + ", which the snapshot does not have"
            + ("; the active ones run on" if any(j.active for j in kept) else "")
            + " (cron.unschedule removes one, cron.alter_job pauses one)"
        )
    chosen = [s.job for s in statements]
    vault = [j for j in chosen if _VAULT.search(j.command)]
    if vault:
        notes.append(
            "pg_cron job(s) "
            + ", ".join(j.describe() for j in vault)
            + " read Supabase Vault secrets, which are not in the snapshot (they are encrypted "
            "with the old project's key): create them here (vault.create_secret) before the jobs next run"
        )
    elsewhere = [j for j in chosen if j.nodename not in (None, "localhost")]
    if elsewhere:
        notes.append(
            "pg_cron job(s) "
            + ", ".join(f"{j.describe()} on {j.nodename}:{j.nodeport}" for j in elsewhere)
            + " ran on another node than the source's own server; here they run on this server"
        )
    return Scheduling(statements, notes)


def _scheduling(job: Job, replaced: Job | None, *, mine: bool, may_alter: bool) -> Statement | None:
    """The statement that makes ``job`` (replacing ``replaced``, the role's job of its name
    there, if any); None when it must be paused and this role may not run cron.alter_job."""
    # Replacing a job by name keeps its old state, so the state is set whenever it may differ.
    set_active = not job.active or (replaced is not None and not replaced.active)
    if mine:
        if set_active and not may_alter:
            return None
        args: tuple = (job.schedule, job.command) if job.name is None else (job.name, job.schedule, job.command)
        return Statement(_OWN[(job.name is not None, set_active)], (*args, job.active) if set_active else args, job)
    if job.name is None:
        return Statement(_OTHER_UNNAMED, (job.schedule, job.command, job.username, job.active), job)
    params = (job.name, job.schedule, job.command, job.username, job.active)
    if replaced is not None:  # pg_cron's replace-by-name keeps the old state
        return Statement(_OTHER_REPLACED, (*params, job.active), job)
    return Statement(_OTHER_NAMED, params, job)


def _only_there(jobs: Sequence[Job], there: Sequence[Job]) -> list[Job]:
    """The jobs of ``there`` that no job of ``jobs`` replaces or matches (unnamed ones counted)."""
    named = {(j.name, j.username) for j in jobs if j.name is not None}
    unnamed = Counter((j.schedule, j.command, j.username) for j in jobs if j.name is None)
    kept = []
    for j in there:
        if j.name is not None:
            if (j.name, j.username) not in named:
                kept.append(j)
        elif unnamed[(j.schedule, j.command, j.username)]:
            unnamed[(j.schedule, j.command, j.username)] -= 1
        else:
            kept.append(j)
    return kept


def _named(job: Job) -> str:
    return f"{job.describe()} of role {job.username} in database {job.database}"


_USAGE = "SELECT pg_catalog.has_schema_privilege('cron', 'USAGE')"
#: Only with USAGE on schema cron: without it, even naming cron.job is an error.
_MAY = """
SELECT pg_catalog.has_table_privilege('cron.job', 'SELECT'),
       coalesce(pg_catalog.has_function_privilege(
           pg_catalog.to_regprocedure('cron.schedule(text,text,text)'), 'EXECUTE'), false),
       coalesce(pg_catalog.has_function_privilege(
           pg_catalog.to_regprocedure('cron.alter_job(bigint,text,text,text,text,boolean)'), 'EXECUTE'), false)
"""
_LOGIN_ROLES = "SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin"


def read_target_roles(conn: psycopg.Connection) -> set[str]:
    """The roles of the target that may log in (pg_cron runs a job only as such a role)."""
    return {r[0] for r in conn.execute(_LOGIN_ROLES).fetchall()}


def read_target(conn: psycopg.Connection) -> TargetCron:
    """What the target's pg_cron (which it has) lets this role do, and the jobs it sees there
    (with row_security on, as planning reads: a role without BYPASSRLS sees its own, the
    ones it can replace).  Without USAGE on schema ``cron`` it may do nothing."""
    logins = read_target_roles(conn)
    database = one_row(conn.execute("SELECT pg_catalog.current_database()"))[0]
    if not one_row(conn.execute(_USAGE))[0]:
        return TargetCron(False, False, login_roles=logins, database=database)
    readable, may_schedule, may_alter = one_row(conn.execute(_MAY))
    jobs = [Job.from_row(r[0]) for r in conn.execute(_JOBS).fetchall()] if readable else []
    return TargetCron(bool(may_schedule), bool(may_alter), jobs, logins, database)


def schedule(conn: psycopg.Connection, statements: Sequence[Statement]) -> list[str]:
    """Run ``statements`` in ``conn``'s transaction, each in a savepoint of its own; the
    warnings for those pg_cron refused (the job named, with pg_cron's reason)."""
    refused = []
    for s in statements:
        try:
            with conn.transaction():
                conn.execute(s.query, s.params)
        except psycopg.OperationalError:
            raise  # the time limit, a lock wait, a lost connection: the restore's failure, not the job's
        except psycopg.Error as exc:
            reason = (exc.diag.message_primary or type(exc).__name__).replace(s.job.command, "(its command)")
            refused.append(f"pg_cron did not schedule job {_named(s.job)}: {reason}; {COMMANDS_AT}")
    return refused
