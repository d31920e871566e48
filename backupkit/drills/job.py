"""``backupkit.drill``: restore a snapshot into a throwaway database and prove it came back.

The restore is the ordinary one (one transaction, so the tables' rows lie in file order),
then ``compare`` checks every table's row count and the hash of its COPY text against what
the backup recorded, every sequence's value, that the tables, indexes and foreign keys
the snapshot names exist, that each table's row-level security is on (and forced) as it
was, and that the policies of the snapshot's schema archive are those of the restored
tables.  The comparison runs with ``row_security`` off: a ``dsn`` role that policies would
filter gets an error saying so, never a verdict on the rows it happened to see.  The
result is recorded beside the snapshot (``record``) and a difference raises
``DrillFailed`` (exit 14).  Memory is the restore's: the comparison streams each table once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import BackupkitError, ConfigError, DrillFailed, SnapshotDamaged
from ..pg.dsn import connect
from ..recovery.job import restore
from ..runtime.signals import sigterm_as_interrupt
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..snapshot.verify import ensure_intact
from ..storage.location import SnapshotLocation, locate
from . import compare, record
from .target import throwaway

log = logging.getLogger("backupkit")


@dataclass
class DrillResult:
    """A finished drill: its record, and where the record is kept."""

    record: record.DrillRecord
    recorded_as: str

    @property
    def ok(self) -> bool:
        return self.record.ok

    def to_dict(self) -> dict:
        return {**self.record.to_dict(), "recorded_as": self.recorded_as}


def drill(
    snapshot: mf.SnapshotArg,
    *,
    dsn: str | None = None,
    identity: encryption.IdentityArg | Path | None = None,
    progress: bool | None = None,
) -> DrillResult:
    """Restore ``snapshot`` into a throwaway database (a temporary embedded server, or a new
    database through ``dsn``, whose role needs CREATEDB), compare, record, clean up.

    Returns the result when everything matched; raises ``DrillFailed`` (after recording it)
    naming every difference otherwise, and ``SnapshotDamaged`` (also recorded as a failed
    drill, nothing restored) when the snapshot's files are not those its manifest lists.
    """
    location = locate(snapshot)
    started = datetime.now(UTC)
    clock = time.monotonic()
    target_kind = "embedded" if dsn is None else "dsn"
    try:
        ensure_intact(location)  # a damaged snapshot fails like verify: exit 6, nothing restored
    except SnapshotDamaged as exc:
        # ...and is a failed drill on record: `status` only checks sizes, so without it a file
        # changed in place would leave the last drill's "passed" standing and status at ok.
        problems = exc.problems or [str(exc).splitlines()[0]]
        damaged = record.DrillRecord(
            snapshot=location.id,
            started_at=started.isoformat(),
            seconds=round(time.monotonic() - clock, 3),
            ok=False,
            differences=[f"the snapshot is damaged: {p}" for p in problems],
            target=target_kind,
        )
        try:
            record.write(location.storage, damaged)
        except (OSError, BackupkitError) as why:  # the damage is what the caller must see
            log.warning("drill: cannot record the failed drill of %s: %s", location.id, why)
        raise
    manifest = mf.read(location)
    # A missing or wrong identity is the caller's to fix (exit 2), not a snapshot that
    # failed its drill (exit 14, and a failed drill on record), so it is checked first.
    encryption.check_identity(location, manifest, identity)
    differences: list[str] = []
    rows = 0
    # SIGTERM (systemd's stop, Airflow's timeout) ends the drill like Ctrl-C, through the
    # throwaway's clean-up: otherwise a server or database holding the snapshot's rows is left.
    with sigterm_as_interrupt(), throwaway(dsn) as target:
        log.info("drill: restoring %s into a throwaway database", location.id)
        try:
            rows = restore(location, target, create_roles=True, identity=identity, progress=progress).rows
        except BackupkitError as exc:  # a snapshot that does not restore is the failure a drill exists for
            differences.append(f"the restore failed: {str(exc).splitlines()[0]}")
        if not differences:
            recorded = _recorded_policies(location, manifest, identity)
            with connect(target) as conn:
                conn.execute("SET synchronize_seqscans = off")  # every scan from the table's first page
                # A `dsn` role that row-level security applies to would count and hash only the
                # rows the policies show it, and fail (or pass) on those: with it off, PostgreSQL
                # refuses such a query instead, and the drill says why.
                conn.execute("SET row_security = off")
                try:
                    for t in manifest["tables"]:
                        differences += compare.table_differences(conn, t)
                    differences += compare.sequence_differences(conn, manifest.get("sequences", []))
                    differences += compare.object_differences(conn, manifest["tables"])
                    if recorded is not None:
                        differences += compare.policy_differences(
                            manifest["tables"], recorded, compare.restored_policies(conn)
                        )
                except psycopg.errors.InsufficientPrivilege:
                    conn.rollback()
                    hidden = compare.row_security_applies(conn, manifest["tables"])
                    if not hidden:
                        raise
                    raise _rows_hidden(conn, hidden) from None
    rec = record.DrillRecord(
        snapshot=location.id,
        started_at=started.isoformat(),
        seconds=round(time.monotonic() - clock, 3),
        ok=not differences,
        differences=differences,
        tables=len(manifest["tables"]),
        rows=rows,
        target=target_kind,
    )
    name = record.write(location.storage, rec)
    outcome = DrillResult(rec, location.storage.where(name))
    if differences:
        raise DrillFailed(
            f"drill of {location.id} found {len(differences)} difference(s): " + "; ".join(differences[:3]),
            differences,
            hint="restore from another snapshot, and check how this one was written or changed",
        )
    return outcome


def _recorded_policies(
    location: SnapshotLocation, manifest: dict, identity: encryption.IdentityArg | Path | None
) -> set[compare.Policy] | None:
    """The policies in the snapshot's schema archive (None: it has none to read)."""
    if not any(f.get("path") == mf.DUMP for f in manifest.get("schema_files", [])):
        return None
    plain = encryption.unlock(location, manifest, identity)
    with encryption.local_path(plain, mf.DUMP, manifest) as dump:
        return compare.archive_policies(dump)


def _rows_hidden(conn: psycopg.Connection, tables: list[str]) -> ConfigError:
    """The error for a `dsn` role that row-level security keeps from reading every restored row."""
    role = conn.info.user
    named = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
    return ConfigError(
        f"dsn role {role} is subject to row-level security on {named} in the restored database "
        "(FORCE ROW LEVEL SECURITY, or another role's table), so the drill cannot compare every row",
        hint=f"drill as a superuser or a role with BYPASSRLS "
        f"(ALTER ROLE {sql.Identifier(role).as_string(conn)} BYPASSRLS, as a superuser), "
        "or leave `dsn` out to drill on a temporary embedded server",
    )
