"""``backupkit check``: can this database be backed up from here, completely?"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import psycopg.errors

from ..errors import BackupkitError, SourceError
from ..pg.catalog import (
    SUPABASE_MANAGED,
    existing_schemas,
    list_sequences,
    list_tables,
    needs_outside,
    needs_outside_warning,
    role_info,
    select_tables,
)
from ..pg.dsn import POOLER_WARNING, connect, describe, is_transaction_pooler
from ..pg.left_out import (
    kept_on_platform_note,
    left_on_platform,
    left_on_platform_warning,
    undumpable,
    unkept_extension_data,
)
from ..pg.rows import one_row
from ..pg.tools import check_pg_dump, find_tool, tool_version
from ..runtime.deadline import seconds
from . import options as opt
from .contents import same_names, sequences_of
from .options import LOCK_WAIT_TIMEOUT


@dataclass
class CheckReport:
    """Preflight results: one (name, status, detail) row per check; status is ok, warn or fail."""

    items: list[dict] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        self.items.append({"check": name, "status": status, "detail": detail})

    @property
    def ok(self) -> bool:
        return all(i["status"] != "fail" for i in self.items)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": self.items}


def check(
    dsn: str,
    *,
    schemas: list[str] | None = None,
    to: Path | str | None = None,
    lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT,
    tables: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> CheckReport:
    """Run every preflight check and report all of them, failing ones included.

    ``lock_wait_timeout`` (seconds, as for ``backup``; 0 or None waits for ever) bounds the
    wait for a table that another session (a migration) holds exclusively: past it the
    backup would fail, and so does this check, naming the table.  ``tables`` and
    ``exclude`` choose tables as ``backup`` does: what the backup leaves out (and the
    sequences of those tables) is not checked.

    Only a failure to connect raises (nothing else can be checked then).
    """
    selection = opt.selection(schemas, tables, exclude)
    schemas = selection.schemas
    limit = seconds(lock_wait_timeout, "lock_wait_timeout")
    report = CheckReport()
    where = describe(dsn)
    if is_transaction_pooler(dsn):
        report.add("pooler", "fail", POOLER_WARNING)
    # Autocommit: a lock wait that gives up must not abort the checks after it.
    with connect(dsn, autocommit=True, settings={"lock_timeout": str(int((limit or 0) * 1000))}) as conn:
        version, num, size = one_row(
            conn.execute(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                "pg_database_size(current_database())"
            )
        )
        report.add(
            "connection",
            "ok",
            f"{where['user']}@{where['host']}:{where['port']}/{where['database']}, PostgreSQL {version}",
        )
        _check_tools(report, num)
        role = role_info(conn)
        flags = [f for f, on in (("superuser", role["superuser"]), ("BYPASSRLS", role["bypassrls"])) if on]
        report.add("role", "ok", f"{role['user']} ({', '.join(flags) or 'no superuser, no BYPASSRLS'})")
        found = existing_schemas(conn, schemas)
        missing = sorted(set(schemas) - set(found))
        if missing:
            report.add("schemas", "fail", f"no such schema: {', '.join(missing)}")
        left_out: set[tuple[str, str]] = set()  # (schema, name) of what the backup does not read
        try:  # measuring a table's size takes its lock, as the backup's listing does
            listed = list_tables(conn, found)
        except psycopg.errors.LockNotAvailable:
            report.add("locks", "fail", _locked_detail(conn, found, limit))
        else:
            try:
                chosen = select_tables(listed, selection.include, selection.exclude)
            except SourceError as exc:
                report.add("tables", "fail", f"{exc} — {exc.hint or ''}".rstrip(" —"))
                chosen = []
            else:
                _check_tables(report, chosen, found)
            sequences = list_sequences(conn, found)
            kept = sequences_of(sequences, chosen, selection)
            read = {(t["schema"], t["name"]) for t in chosen + kept}
            left_out = {(t["schema"], t["name"]) for t in listed + sequences} - read
        _check_privileges(report, conn, found, left_out)
        managed = [
            s for s in SUPABASE_MANAGED if s in existing_schemas(conn, list(SUPABASE_MANAGED)) and s not in schemas
        ]
        if managed:
            report.add("supabase schemas", "ok", f"not included unless named in `schemas`: {', '.join(managed)}")
        needs = needs_outside(conn, found)
        if needs:
            report.add("dependencies", "warn", needs_outside_warning(needs))
        left = left_on_platform(conn, found) if not selection.include else []
        if left:
            unreadable = undumpable(conn, left)
            if unreadable:
                reason = f"{conn.info.user} may not read {', '.join(unreadable)}"
                report.add("platform tables", "warn", left_on_platform_warning(left, reason=reason))
            else:
                report.add("platform tables", "ok", kept_on_platform_note(left))
        unkept = unkept_extension_data(conn)
        if unkept:
            report.add("extension data", "warn", unkept)
        report.add("database size", "ok", f"{size / 1e6:.1f} MB on disk")
    if to is not None:
        _check_repository(report, to, size)
    return report


def _check_tools(report: CheckReport, server_version_num: int) -> None:
    """pg_dump (not older than the server) and pg_restore, which renders the schema it dumps:
    a backup runs both."""
    for name in ("pg_dump", "pg_restore"):
        try:
            if name == "pg_dump":
                path, version = check_pg_dump(server_version_num)
            else:
                path = find_tool(name)
                version = tool_version(path)
        except BackupkitError as exc:
            report.add(name, "fail", f"{exc} — {exc.hint or ''}".rstrip(" —"))
        except OSError as exc:  # there, but not a program this user can run
            report.add(
                name,
                "fail",
                f"cannot run {exc.filename or name}: {exc.strerror or exc} — "
                f"install PostgreSQL client tools or set ${'BACKUPKIT_' + name.upper()} to one",
            )
        else:
            report.add(name, "ok", f"{path} (version {version[0]}.{version[1]})")


def _check_tables(report: CheckReport, tables: list[dict], schemas: list[str]) -> None:
    """The tables the backup copies: how many, whether RLS hides rows, whether their names clash."""
    report.add("tables", "ok" if tables else "warn", f"{len(tables)} tables in {', '.join(schemas) or '(none)'}")
    clashes = same_names(tables)
    if clashes:  # the backup refuses these (``BackupJob._inspect``)
        report.add(
            "table names",
            "fail",
            "backupkit names tables schema.name and cannot tell apart "
            + "; ".join(" and ".join(names) for names in clashes)
            + ": rename one of each (ALTER TABLE ... RENAME, or ALTER SCHEMA ... RENAME)",
        )
    hidden = [f"{t['schema']}.{t['name']}" for t in tables if not t["rls"]["bypassed"]]
    if hidden:
        report.add(
            "row-level security",
            "fail",
            f"RLS would hide rows of {', '.join(hidden)}: connect as their owner or a "
            "BYPASSRLS role, or back up with `allow_partial`",
        )
    else:
        rls = sum(1 for t in tables if t["rls"]["enabled"])
        report.add("row-level security", "ok", f"{rls} tables with RLS, all readable in full")


#: Relations of these schemas that another session holds (or awaits) in ACCESS EXCLUSIVE mode.
_LOCKED = """
SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_class c ON c.oid = l.relation
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE l.mode = 'AccessExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
   AND n.nspname = ANY(%s) ORDER BY 1
"""


def _locked_detail(conn: psycopg.Connection, schemas: list[str], limit: float | None) -> str:
    """What to say when listing the tables gave up waiting for a lock: the backup would too."""
    try:
        names = ", ".join(r[0] for r in conn.execute(_LOCKED, (schemas,)).fetchall())
    except psycopg.Error:
        names = ""
    waited = f"within {limit:g} s" if limit else "in time"
    return (
        f"table {names or '(one of the tables)'} is locked by another session (a migration, ALTER TABLE, "
        f"TRUNCATE, VACUUM FULL, REINDEX) and was not free {waited}, so a backup now would fail: "
        "run it once that session is done (pg_stat_activity shows it), or raise `lock_wait_timeout`"
    )


#: Everything that a backup reads and this role may not: in the schemas, schemas without
#: USAGE, tables (partitioned ones too: pg_dump locks them) and sequences without SELECT
#: (pg_dump reads every sequence's state); in the whole database, large objects without
#: SELECT (their data is in every snapshot).  Views, materialized views and foreign tables
#: are not read (their definitions are pg_dump's, from the catalogs).
_MISSING_PRIVILEGES = """
SELECT 'USAGE on schema', quote_ident(n.nspname), NULL, NULL
  FROM pg_catalog.pg_namespace n
 WHERE n.nspname = ANY(%(schemas)s) AND NOT has_schema_privilege(n.oid, 'USAGE')
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'SELECT on sequence' ELSE 'SELECT on table' END,
       quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname::text, c.relname::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'S')
   AND has_schema_privilege(n.oid, 'USAGE')
   AND NOT has_table_privilege(c.oid, 'SELECT')
UNION ALL
SELECT 'SELECT on large object', l.oid::text, NULL, NULL
  FROM pg_catalog.pg_largeobject_metadata l
 WHERE NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
   AND NOT current_setting('lo_compat_privileges')::bool
   AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(coalesce(l.lomacl, pg_catalog.acldefault('L', l.lomowner))) a
                    WHERE a.privilege_type = 'SELECT' AND (a.grantee = 0 OR pg_catalog.pg_has_role(a.grantee, 'USAGE')))
 ORDER BY 1, 2
"""

#: Names shown per kind of missing privilege; a role short of hundreds is told how many.
_SHOWN = 10


def _check_privileges(
    report: CheckReport, conn: psycopg.Connection, schemas: list[str], left_out: set[tuple[str, str]]
) -> None:
    """Every privilege the backup needs, all missing ones named at once (not the first only);
    none on the tables and sequences it leaves out (``left_out``: (schema, name))."""
    missing: dict[str, list[str]] = {}
    for what, name, schema, relation in conn.execute(_MISSING_PRIVILEGES, {"schemas": schemas}).fetchall():
        if (schema, relation) not in left_out:
            missing.setdefault(what, []).append(name)
    if not missing:
        report.add("privileges", "ok", "USAGE on every schema, SELECT on every table, sequence and large object")
        return
    detail = "; ".join(
        f"no {what} {', '.join(names[:_SHOWN])}" + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
        for what, names in missing.items()
    )
    report.add("privileges", "fail", f"{detail}: GRANT them to this role, or connect as the owner")


def _check_repository(report: CheckReport, to: str | os.PathLike[str], size: int) -> None:
    """A local folder: its disk space; a repository elsewhere (``s3://``): that it can be listed."""
    from ..storage.local import LocalStorage
    from ..storage.location import open_storage
    from ..storage.repository import list_snapshots

    try:
        storage = open_storage(to)
        if isinstance(storage, LocalStorage):
            _check_target(report, storage.root, size)
            return
        snapshots, unfinished = list_snapshots(storage)
    except BackupkitError as exc:
        report.add("repository", "fail", f"{exc}" + (f" — {exc.hint}" if exc.hint else ""))
        return
    report.add(
        "repository",
        "ok",
        f"{storage.where()}: reachable, {len(snapshots)} snapshot(s)"
        + (f", {len(unfinished)} unfinished" if unfinished else ""),
    )


def _check_target(report: CheckReport, target: Path, size: int) -> None:
    """Disk space at ``--to``, which must be (or be creatable as) a writable folder."""
    try:
        probe = target if target.exists() else next((p for p in target.parents if p.exists()), Path("."))
        if not probe.is_dir():
            what = f"{probe} is not a folder" + ("" if probe == target else f" (so {target} cannot be made)")
            report.add("disk space", "fail", f"{what}; `to` must be a backup directory")
            return
        if not os.access(probe, os.W_OK | os.X_OK):
            report.add("disk space", "fail", f"{probe} is not writable by this user")
            return
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        report.add("disk space", "fail", f"cannot examine {target}: {exc.strerror or exc}")
        return
    # Compressed snapshots are usually far smaller than the database; its size is a safe bound.
    status = "ok" if free > size else "warn"
    where = str(probe) if probe == target else f"{probe} ({target} does not exist yet; backup creates it)"
    report.add("disk space", status, f"{free / 1e9:.1f} GB free at {where}, database is {size / 1e9:.2f} GB")
