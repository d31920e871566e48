"""The snapshot's pg_cron jobs, scheduled again by a whole restore (``pg.cron``).

They are the project's configuration, like its settings: a restore of the whole
snapshot schedules them, last, in its own transaction (a failed restore leaves no
job); a restore of some tables or schemas, or of the rows only, leaves them alone.  A
target without pg_cron, or whose role may not schedule jobs, is named in a note with
what to do; the restore itself goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from ..pg import cron
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .database_scripts import Target

if TYPE_CHECKING:  # plan imports this module
    from .plan import Request


def plan_jobs(
    conn: psycopg.Connection, location: SnapshotLocation, manifest: dict, target: Target, request: Request
) -> cron.Scheduling | None:
    """What a whole restore into ``conn``'s database does with the snapshot's jobs; None when
    the snapshot has none (or was taken before backupkit recorded them)."""
    summary = manifest.get("cron_jobs")
    if not summary:
        return None
    if request.data_only:
        return _none(f"the snapshot's {len(summary)} pg_cron job(s) are not scheduled by a data_only restore")
    if request.cron_jobs == "skip":
        return _none(
            f"did not schedule the snapshot's {len(summary)} pg_cron job(s) (`cron_jobs` skip); {cron.COMMANDS_AT}"
        )
    jobs = cron.loads(encryption.read_checked(location, mf.CRON_JOBS, manifest))
    names = ", ".join(j.describe() for j in jobs)
    if "pg_cron" in target.extensions:
        there = cron.read_target(conn)
        if not there.may_schedule:
            return _none(
                f"did not schedule the snapshot's {len(jobs)} pg_cron job(s) {names}: role {target.user} may not "
                f"run cron.schedule here (USAGE on schema cron, EXECUTE on its functions); {cron.COMMANDS_AT}"
            )
    elif "pg_cron" in target.available and any(e["name"] == "pg_cron" for e in manifest.get("extensions", [])):
        # The restore creates the extension (the database archive's), as this role: it owns it.
        there = cron.TargetCron(True, True, login_roles=cron.read_target_roles(conn))
    else:
        return _none(
            f"did not schedule the snapshot's {len(jobs)} pg_cron job(s) {names}: this database has no pg_cron; "
            f"enable it (on Supabase: Integrations, Cron) and schedule them with cron.schedule ({cron.COMMANDS_AT})"
        )
    return cron.plan(
        jobs,
        there,
        source_database=manifest["source"]["database"],
        role=target.user,
        superuser=target.superuser,
        paused=request.cron_jobs == "paused",  # a copy (staging) must not call what the original calls
    )


def _none(note: str) -> cron.Scheduling:
    return cron.Scheduling([], [note])
