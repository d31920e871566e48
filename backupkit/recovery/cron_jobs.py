"""The snapshot's pg_cron jobs, scheduled again by a whole restore (``pg.cron``).

They are the project's configuration, like its settings: a restore of the whole
snapshot schedules them, last, in its own transaction (a failed restore leaves no
job); a restore of some tables or schemas leaves them alone.  A target without
pg_cron, or whose role may not schedule jobs, is named in a note with what to do;
the restore itself goes on.
"""

from __future__ import annotations

import psycopg

from ..pg import cron
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .database_scripts import Target

_WHERE = "their commands are in the snapshot's schema/cron_jobs.json"


def plan_jobs(
    conn: psycopg.Connection, location: SnapshotLocation, manifest: dict, target: Target, dbname: str
) -> cron.Scheduling | None:
    """What a whole restore into ``conn``'s database does with the snapshot's jobs; None when
    the snapshot has none (or was taken before backupkit recorded them)."""
    if not manifest.get("cron_jobs"):
        return None
    with encryption.local_path(location, mf.CRON_JOBS, manifest) as path:
        jobs = cron.loads(path.read_bytes())
    names = ", ".join(j.describe() for j in jobs)
    if "pg_cron" not in target.extensions:
        if "pg_cron" in target.available and any(e["name"] == "pg_cron" for e in manifest.get("extensions", [])):
            there: list[cron.Job] = []  # the restore creates the extension (the database archive's)
        else:
            return cron.Scheduling(
                [],
                [],
                [
                    f"did not schedule the snapshot's {len(jobs)} pg_cron job(s) {names}: this database "
                    "has no pg_cron; enable it (on Supabase: Integrations, Cron) and schedule them with "
                    f"cron.schedule ({_WHERE})"
                ],
            )
    else:
        may, there = cron.target_jobs(conn)
        if not may:
            return cron.Scheduling(
                [],
                [],
                [
                    f"did not schedule the snapshot's {len(jobs)} pg_cron job(s) {names}: role {target.user} "
                    f"may not run cron.schedule here; have a role that may schedule them ({_WHERE})"
                ],
            )
    return cron.plan(
        jobs,
        there,
        source_database=manifest["source"]["database"],
        target_database=dbname,
        role=target.user,
        superuser=target.superuser,
    )
