"""Restoring a snapshot exactly, in pg_restore's order, atomically where PostgreSQL allows.

Order: (clean) → pre-data DDL → table data by ``COPY FROM STDIN`` → post-data
(indexes, constraints, foreign keys, triggers, policies) → sequences → refresh
of materialized views.  Triggers and foreign keys are created after the data,
so none fires and table order never matters.

With one job everything runs in one transaction: any error leaves the target
exactly as it was.  With ``jobs > 1`` the data loads in parallel transactions,
and each table's indexes build as soon as its data is in; on error the
objects this restore created are dropped again, and anything that could not
be undone is named in the error.  Rows of tables created (or emptied) in the
loading transaction arrive frozen (``COPY FREEZE``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from tqdm.auto import tqdm

from ..errors import BackupkitError, ConfigError, RestoreError, TargetNotEmpty
from ..pg.copyio import copy_in
from ..pg.dsn import connect, redact
from ..pg.platform import empty as platform_empty
from ..pg.platform import kept_rows, read_platform
from ..pg.platform import problems as platform_problems
from ..pg.schema import DUMP, render, toc
from ..runtime.deadline import Deadline
from ..runtime.deadline import seconds as _seconds
from ..runtime.signals import sigterm_as_interrupt
from ..runtime.taskpool import TaskPool
from ..snapshot import manifest as mf
from ..snapshot.manifest import DATABASE_DUMP
from ..snapshot.verify import check_jobs, ensure_intact
from . import mark as restore_mark
from .auth_stand_in import StandIn, plan_stand_in
from .checks import missing_references, role_creation, schema_privileges
from .database_scripts import (
    default_acl_allowed,
    event_trigger_functions,
    plan_database,
    read_target,
    restore_large_objects,
)
from .in_place import broken_references, empty_sql, split_by_shape
from .scripts import build_scripts, object_key, wanted_entries
from .selection import select_tables

log = logging.getLogger("backupkit")

#: Seconds a restore waits for a lock before giving up (as backup's --lock-wait-timeout).
LOCK_WAIT_TIMEOUT = 60.0


@dataclass
class RestorePlan:
    """What a restore will do; ``restore(..., dry_run=True)`` returns it without touching anything."""

    snapshot: Path
    tables: list[dict]
    existing: list[str]
    drop_first: bool
    schema: bool
    data: bool
    full: bool = True
    skipped_grants: list[str] = field(default_factory=list)
    dropped_column_options: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)
    #: The snapshot's large objects this restore creates (full restores only).
    large_objects: list[dict] = field(default_factory=list)
    #: Whole schemas a selective restore takes (their views and sequences too).
    schemas: list[str] = field(default_factory=list)
    #: Existing tables whose rows a selective --clean restore replaces, keeping the tables.
    in_place: list[str] = field(default_factory=list)
    #: The Supabase project's own tables that get rows but are never created or dropped.
    platform_tables: list[str] = field(default_factory=list)
    #: Limits of the run (set when it starts; not part of what it does).
    lock_wait_timeout: float | None = field(default=None, repr=False)
    deadline: Deadline | None = field(default=None, repr=False)
    #: What the restore makes or leaves out beyond the snapshot's own objects, in words.
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """Human-readable steps."""
        steps = [f"verify snapshot {self.snapshot.name}"]
        if self.drop_first and self.existing:
            steps.append(f"drop existing tables first (--clean): {', '.join(self.existing)}")
        if self.schema:
            steps.append("create schema objects (pre-data)")
        if self.in_place:
            steps.append(f"empty {', '.join(self.in_place)} in place (triggers off), keeping the tables")
        if self.data:
            rows = sum(t["rows"] for t in self.tables)
            steps.append(f"load {len(self.tables)} tables, {rows} rows, with COPY")
        if self.large_objects:
            steps.append(f"create {len(self.large_objects)} large objects and load their data")
        if self.schema:
            steps.append("create indexes, constraints, foreign keys, triggers, policies (post-data)")
        steps.append("set sequences; refresh materialized views")
        return steps

    def to_dict(self) -> dict:
        return {"snapshot": str(self.snapshot), "tables": [mf.table_key(t) for t in self.tables],
                "rows": sum(t["rows"] for t in self.tables), "existing": self.existing,
                "clean": self.drop_first, "schema": self.schema, "data": self.data,
                "steps": self.describe(), "notes": self.notes, "created_roles": self.created_roles,
                "in_place": self.in_place}


@dataclass
class RestoreResult:
    """A finished restore."""

    plan: RestorePlan
    rows: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), "rows_loaded": self.rows, "seconds": round(self.seconds, 3),
                "warnings": self.warnings, "dry_run": self.dry_run}


def _existing_tables(conn: psycopg.Connection, keys: list[str]) -> list[str]:
    if not keys:
        return []
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname || '.' || c.relname = ANY(%s)",
        (keys,)).fetchall()
    return sorted(r[0] for r in rows)


def _check_target(conn: psycopg.Connection, chosen: list[dict], data_only: bool, clean: bool) -> list[str]:
    """The snapshot's tables the target already has; refuse what would mix old and new rows."""
    keys = [mf.table_key(t) for t in chosen]
    parents = sorted({t["parent"] for t in chosen if t.get("parent") and t.get("is_partition")})
    existing = _existing_tables(conn, keys + parents)
    if data_only:
        missing = sorted(set(keys) - set(existing))
        if missing:
            raise RestoreError(f"--data-only needs the tables to exist; missing: {', '.join(missing)}",
                               hint="restore without --data-only to create them")
        nonempty = [k for k in keys if conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(*k.split(".", 1)))).fetchone()[0]]
        if nonempty and not clean:
            raise TargetNotEmpty(f"the target's tables already hold rows: {', '.join(nonempty)}",
                                 hint="pass --clean to empty them first, or restore elsewhere")
    elif existing and not clean:
        raise TargetNotEmpty(
            f"the target already has {len(existing)} of the snapshot's tables: "
            + ", ".join(existing[:10]) + (" ..." if len(existing) > 10 else ""),
            hint="restore into an empty database, or pass --clean to drop those tables first",
        )
    return existing


def restore(snapshot: Path | str, dsn: str, *, tables: list[str] = (), schemas: list[str] = (),
            with_dependencies: bool = False, schema_only: bool = False, data_only: bool = False,
            clean: bool = False, jobs: int = 1, owner: bool = False, create_roles: bool = False,
            dry_run: bool = False, progress: bool | None = None,
            lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT, timeout: float | None = None,
            public_key: Path | str | None = None) -> RestoreResult:
    """Restore ``snapshot`` into the database at ``dsn`` and return what was done.

    ``lock_wait_timeout`` (seconds, None or 0: wait forever) bounds every lock wait,
    so a restore into a live database never queues the application's queries behind
    it for long; ``timeout`` (default: none) bounds the whole run, which is then
    rolled back or undone like any failure.  With ``public_key`` the snapshot must also
    carry a valid signature by that key (``backup(..., sign_key=...)``).

    The snapshot is verified first; a damaged one restores nothing.  The target
    must not already have the snapshot's tables unless ``clean`` (drop them
    first; with ``data_only``: empty them).  ``owner=False`` (the default)
    leaves objects owned by the connecting role, which is what a Supabase or
    fresh database needs; GRANTs to roles the target lacks are skipped and reported.
    Policies naming missing roles (Supabase's ``anon``, ``authenticated``) stop the
    restore before anything changes, unless ``create_roles`` creates them (NOLOGIN).
    """
    started = time.monotonic()
    if schema_only and data_only:
        raise ConfigError("--schema-only and --data-only exclude each other")
    check_jobs(jobs)  # 1 to MAX_JOBS: each job is a connection (and a process, for backup)
    lock_wait_timeout, timeout = _seconds(lock_wait_timeout, "--lock-wait-timeout"), _seconds(timeout, "--timeout")
    folder = Path(snapshot)
    manifest = ensure_intact(folder, public_key=public_key)
    chosen = select_tables(manifest, list(tables), list(schemas), with_dependencies)
    full = not tables and not schemas
    problems: list[str] = []
    early_notes: list[str] = []
    with connect(dsn) as conn:
        platform = read_platform(conn, chosen)
        if with_dependencies and platform:
            # A live project already has the platform tables the chosen ones reference
            # (auth.users): they are the dependency, not something to load again.
            named = {mf.table_key(t) for t in select_tables(manifest, list(tables), list(schemas))}
            pulled = sorted(k for k in platform.tables if k not in named)
            if pulled:
                chosen = [t for t in chosen if mf.table_key(t) not in pulled]
                platform = read_platform(conn, chosen)
                early_notes.append("left the project's own " + ", ".join(pulled) + " as they are (dependencies it has)")
        refused: TargetNotEmpty | None = None
        try:
            existing = _check_target(conn, [t for t in chosen if mf.table_key(t) not in platform.tables],
                                     data_only, clean)
        except TargetNotEmpty as exc:  # listed with every other problem, below
            refused, existing = exc, []
            problems.append(str(exc))
        target = read_target(conn, manifest)
        marks = restore_mark.read(conn)
        if marks and not clean:
            problems.append(restore_mark.describe(marks) + "; restore again with --clean to replace them")
        elif marks:
            early_notes.append("replacing what an unfinished restore left: " + restore_mark.describe(marks))
        may_mark = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE') "
                                "OR to_regnamespace(%s) IS NOT NULL", (restore_mark.SCHEMA,)).fetchone()[0]
        if create_roles:
            target.will_create = {r["name"] for r in manifest.get("roles", [])} - target.roles
        problems += platform_problems(platform)
        if platform and not schema_only and not _may_disable_triggers(conn):
            problems.append("loading the project's auth/storage tables needs their triggers off "
                            "(session_replication_role), which this role may not set")
        plan = RestorePlan(folder, chosen, existing, clean and bool(existing), not data_only, not schema_only,
                           full)
        plan.platform_tables = sorted(platform.tables)
        plan.notes += early_notes
        plan.schemas = list(schemas)
        in_place: list[dict] = []
        # Tables an interrupted restore left may lack their indexes and keys: never kept in place.
        if clean and existing and not full and not data_only and not schema_only and not marks:
            in_place, reshaped = split_by_shape(conn, [t for t in chosen if mf.table_key(t) in existing])
            plan.in_place = [mf.table_key(t) for t in in_place]
            existing = [k for k in existing if k not in plan.in_place]
            plan.existing, plan.drop_first = existing, bool(existing)
            if in_place:
                plan.notes.append("replacing the rows of " + ", ".join(plan.in_place) + " in place: their "
                                  "indexes, triggers, policies, grants, publication membership and what points "
                                  "at them (views, other tables' foreign keys) stay as they are")
                if not _may_disable_triggers(conn):
                    problems.append("replacing rows in place needs the tables' triggers and foreign-key actions "
                                    "off (session_replication_role), which this role may not set")
            if reshaped:
                plan.notes.append("dropping and recreating " + "; ".join(reshaped) + ": their columns are not "
                                  "the snapshot's any more, so views or other tables' foreign keys on them "
                                  "stop the restore")
        rebuilt = [t for t in chosen if mf.table_key(t) not in plan.in_place]
        entries = [] if data_only else wanted_entries(toc(folder / DUMP), manifest, rebuilt, full, conn, platform,
                                                      schemas=list(schemas), tables_named=bool(tables))
    if platform:
        kept = kept_rows(platform)
        if kept:
            plan.notes.append("kept the project's own " + ", ".join(kept) + " (the platform's migration records)")
        skip = set(kept) | set(platform_empty(platform))
        chosen = [t for t in chosen if mf.table_key(t) not in skip]
        plan.tables = chosen
        loading = sorted(set(platform.tables) - skip)
        if loading:
            plan.notes.append("loaded rows into the project's own " + ", ".join(loading)
                              + "; their owners and grants are unchanged")
    database = None
    if not data_only:
        entries = _allowed_default_acls(entries, target, plan)
        if _has_file(manifest, DATABASE_DUMP):
            db_entries = toc(folder / DATABASE_DUMP)
            dbplan = plan_database(db_entries, manifest, target,
                                   tables={mf.table_key(t) for t in chosen} | {t["parent"] for t in chosen
                                                                                if t.get("parent")},
                                   full=full, clean=clean,
                                   schemas_made={e.rest.split(" ")[1] for e in entries if e.type == "SCHEMA"},
                                   functions_made={".".join(object_key(e)[1:]) for e in entries
                                                   if e.type in ("FUNCTION", "PROCEDURE")},
                                   event_functions=_event_functions(folder / DATABASE_DUMP, db_entries))
            problems += dbplan.problems
            plan.notes += dbplan.notes
            if dbplan.large_objects and not schema_only:
                plan.large_objects = list(manifest.get("large_objects", []))
            database = (folder / DATABASE_DUMP, dbplan)
    roles = target.roles
    result = RestoreResult(plan, dry_run=dry_run)
    if manifest.get("partial"):
        result.warnings.append("this snapshot is PARTIAL: row-level security hid rows of "
                               + ", ".join(manifest.get("partial_tables", [])) + " when it was taken")
    if clean and jobs > 1:
        # Committed DROPs followed by a failed parallel load would lose the old tables.
        result.warnings.append("--clean restores in one transaction; --jobs is ignored")
        jobs = 1
    elif platform and jobs > 1:
        # Rows committed into the project's own tables could not be undone by dropping them.
        result.warnings.append("a restore into the project's auth/storage tables runs in one transaction; "
                               "--jobs is ignored")
        jobs = 1
    if jobs > 1 and not may_mark:
        result.warnings.append("a parallel restore marks the target until it finishes (schema "
                               f"{restore_mark.SCHEMA}), which this role may not create; --jobs is ignored")
        jobs = 1
    parallel = jobs > 1 and not schema_only and sum(len(t["files"]) for t in chosen) >= 2
    scripts = {} if data_only else build_scripts(dsn, folder / DUMP, entries, chosen, plan, roles, owner,
                                                  create_roles, parallel, database, target.will_create)
    stand_in = None if data_only else plan_stand_in(
        manifest, chosen, scripts["pre-data"] + scripts["post-data"], target.schemas)
    if stand_in:
        # Supabase's API roles may use auth.uid() in policies: they need the schema, as there.
        stand_in.grantees = sorted({"anon", "authenticated", "service_role"} & (roles | set(plan.created_roles)))
        _add_stand_in(scripts, stand_in)
        plan.notes.append(stand_in.describe())
    with connect(dsn) as conn:
        provided = {"auth.users"} if stand_in and stand_in.columns else set()
        if not data_only:  # foreign keys are created by post-data
            problems += missing_references(conn, chosen, provided)
        made = set(database[1].schemas_to_create if database else []) | ({"auth"} if stand_in else set())
        problems += schema_privileges(conn, entries, made)
        problems += role_creation(conn, plan.created_roles)
    if refused and len(problems) == 1:
        raise refused
    if problems:
        raise RestoreError("the restore cannot succeed, nothing was changed: " + "; ".join(problems),
                           hint="fix each problem named, then run the restore (or --dry-run) again")
    if in_place:
        scripts["empty"] = empty_sql(in_place)
    if parallel:
        scripts["mark"] = restore_mark.set_sql(manifest["id"], [mf.table_key(t) for t in chosen]).as_string()
    if parallel or marks:
        scripts["unmark"] = restore_mark.clear_sql()
    if plan.large_objects:
        scripts["large-objects"] = (database[1].large_objects, not owner)
        if clean and target.large_objects:
            scripts["clean"] = (scripts.get("clean", "") + "SELECT pg_catalog.lo_unlink(oid) FROM "
                                "pg_catalog.pg_largeobject_metadata WHERE oid::bigint IN ("
                                + ", ".join(map(str, sorted(target.large_objects))) + ");\n")
            plan.drop_first = True
    if plan.skipped_grants:
        result.warnings.append(f"skipped {len(plan.skipped_grants)} GRANT/REVOKE for roles this database "
                               "does not have (e.g. " + plan.skipped_grants[0] + ")")
    if plan.dropped_column_options:
        result.warnings.append(f"left out column options the target server does not know in "
                               f"{len(plan.dropped_column_options)} statements (e.g. "
                               f"{plan.dropped_column_options[0]})")
    for w in result.warnings:
        log.warning(w)
    if dry_run:
        return result
    for k in existing:
        log.warning("--clean: %s %s", "emptying" if data_only else "dropping", k)

    show = sys.stderr.isatty() if progress is None else progress
    run = _restore_parallel if parallel else _restore_one_tx
    plan.lock_wait_timeout = lock_wait_timeout
    with sigterm_as_interrupt(), Deadline(timeout) as plan.deadline:
        result.rows = run(dsn, manifest, folder, chosen, scripts, plan, data_only and clean, jobs, show)
    result.seconds = time.monotonic() - started
    return result


def _add_stand_in(scripts: dict, stand_in: StandIn) -> None:
    """The auth stand-in is made first, filled after the data and before the foreign keys, undone last."""
    scripts["pre-data"] = stand_in.create_sql() + scripts["pre-data"]
    for key in ("post-data", "post-data-rest"):
        if key in scripts:
            scripts[key] = stand_in.fill_sql() + scripts[key]
    scripts["undo"] = scripts.get("undo", "") + "DROP SCHEMA IF EXISTS auth CASCADE;\n"


def _may_disable_triggers(conn: psycopg.Connection) -> bool:
    """Whether this role may SET session_replication_role (superuser, or granted as Supabase does)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def _event_functions(dump: Path, entries: list) -> dict[str, str]:
    """Event triggers' functions, read from the archive's SQL (none in most databases)."""
    triggers = [e for e in entries if e.type == "EVENT TRIGGER"]
    return event_trigger_functions(render(dump, "post-data", triggers)) if triggers else {}


def _has_file(manifest: dict, rel: str) -> bool:
    return any(f["path"] == rel for f in manifest.get("schema_files", []))


def _allowed_default_acls(entries: list, target, plan: RestorePlan) -> list:
    """Leave out ALTER DEFAULT PRIVILEGES FOR ROLE a role the connecting role cannot act for."""
    kept = []
    for e in entries:
        if e.type == "DEFAULT ACL":
            ok, note = default_acl_allowed(e, target)
            if not ok:
                if note not in plan.notes:
                    plan.notes.append(note)
                continue
        kept.append(e)
    return kept


def _large_objects(conn: psycopg.Connection, folder: Path, scripts: dict) -> None:
    """Create the snapshot's large objects and stream their data in (pg_restore's data section)."""
    if "large-objects" in scripts:
        entries, no_owner = scripts["large-objects"]
        restore_large_objects(conn, folder / DATABASE_DUMP, entries, no_owner=no_owner)


def _sequences_and_matviews(conn: psycopg.Connection, manifest: dict, chosen: list[dict], plan: RestorePlan) -> None:
    """setval of the restored sequences (all, those of whole schemas, those chosen tables own);
    refresh of the restored populated materialized views."""
    keys = {mf.table_key(t) for t in chosen}
    full = plan.full
    for s in manifest.get("sequences", []):
        owned = s.get("owned_by")
        if full or s["schema"] in plan.schemas or (owned and f"{owned[0]}.{owned[1]}" in keys):
            conn.execute("SELECT pg_catalog.setval(%s::regclass, %s, %s)",
                         (sql.Identifier(s["schema"], s["name"]).as_string(conn), s["last_value"], s["is_called"]))
    for v in manifest.get("materialized_views", []):
        if v["populated"] and (full or v["schema"] in plan.schemas):
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(v["schema"], v["name"])))


def _session(conn: psycopg.Connection, plan: RestorePlan) -> None:
    """Settings of every restore session, which the run's deadline may cancel.

    The server checks every second that this client is still there (PostgreSQL 14+),
    so a killed restore's sessions end with it instead of finishing their statement
    first; lock waits end after ``lock_wait_timeout``.
    """
    if conn.info.server_version >= 140000:
        conn.execute("SELECT pg_catalog.set_config('client_connection_check_interval', '1000', false)")
    if plan.lock_wait_timeout:
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                     (f"{int(plan.lock_wait_timeout * 1000)}ms",))
    if plan.deadline is not None:
        plan.deadline.watch(conn)


def _why(exc: BaseException, plan: RestorePlan, dsn: str) -> str:
    """The error's text, or the time limit when the deadline is what cancelled it."""
    if plan.deadline is not None and plan.deadline.expired:
        return f"the restore did not finish within its time limit ({plan.deadline.seconds:g} s)"
    return redact(str(exc).strip(), dsn)


def _rollback(conn: psycopg.Connection) -> None:
    """Roll back; on a lost connection there is nothing to roll back (the server did it)."""
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


def _truncate(conn: psycopg.Connection, chosen: list[dict]) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(
        sql.SQL(", ").join(sql.Identifier(t["schema"], t["name"]) for t in chosen)))


def _prepare(conn: psycopg.Connection, scripts: dict, chosen: list[dict], truncate: bool) -> None:
    """Drop or empty what --clean asks for, then create the pre-data objects."""
    if "clean" in scripts:
        conn.execute(scripts["clean"])
    if truncate:
        _truncate(conn, chosen)
    if "pre-data" in scripts:
        conn.execute(scripts["pre-data"])


def _load_session(conn: psycopg.Connection, plan: RestorePlan) -> None:
    """Session settings for loading data.

    With --data-only the tables' triggers and foreign keys already exist, so
    they are switched off the way pg_restore --disable-triggers does.
    """
    conn.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
    if not plan.schema or plan.platform_tables or plan.in_place:
        try:
            conn.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            raise RestoreError(
                "--data-only must stop the tables' triggers and foreign-key checks while loading, "
                "which needs a superuser (or a role allowed to set session_replication_role)",
                hint="restore without --data-only into an empty database, or connect as a superuser",
            ) from None


def _load(conn: psycopg.Connection, table: dict, folder: Path, files: list[dict] | None = None,
          freeze: bool = False) -> int:
    """COPY one table's files in and check PostgreSQL took exactly the manifest's rows."""
    files = table["files"] if files is None else files
    loaded = copy_in(conn, table, folder, files, freeze=freeze)
    expected = sum(f.get("rows", 0) for f in files)
    if loaded != expected:
        raise RestoreError(f"{mf.table_key(table)}: PostgreSQL loaded {loaded} rows, the manifest says {expected}")
    return loaded


def _restore_one_tx(dsn, manifest, folder, chosen, scripts, plan, truncate, jobs, show) -> int:
    rows = 0
    with connect(dsn) as conn:  # one transaction: psycopg commits on clean exit, rolls back on error
        try:
            _session(conn, plan)
            _prepare(conn, scripts, chosen, truncate)
            if plan.data:
                _load_session(conn, plan)
                if "empty" in scripts:  # with triggers off: no ON DELETE CASCADE into other tables
                    conn.execute(scripts["empty"])
                # Tables created (or emptied) in this transaction can take their rows frozen:
                # no hint-bit rewrite of every page and no anti-wraparound VACUUM of them later.
                freeze = plan.schema or truncate
                for t in tqdm(chosen, desc="restore", unit="table", disable=not show, file=sys.stderr):
                    own = mf.table_key(t) not in plan.platform_tables + plan.in_place
                    rows += _load(conn, t, folder, freeze=freeze and own)
                if plan.platform_tables or plan.in_place:  # triggers created next must fire again
                    conn.execute("SET session_replication_role = DEFAULT")
            _large_objects(conn, folder, scripts)
            if "post-data" in scripts:
                conn.execute(scripts["post-data"])
            _sequences_and_matviews(conn, manifest, chosen, plan)
            if "unmark" in scripts:
                conn.execute(scripts["unmark"])
            broken = broken_references(conn, [t for t in chosen if mf.table_key(t) in plan.in_place])
            if broken:
                raise RestoreError("the restored rows break foreign keys: " + ", ".join(broken),
                                   hint="restore the tables on both sides of each key together "
                                        "(name them all with --table)")
        except psycopg.Error as exc:
            _rollback(conn)
            raise RestoreError(f"restore failed and was rolled back, the target is unchanged: "
                               f"{_why(exc, plan, dsn)}",
                               hint="fix the cause (see the message) and run the restore again") from None
        except BackupkitError as exc:
            _rollback(conn)
            exc.args = (f"{exc} — rolled back, the target is unchanged",)
            raise
        except Exception as exc:  # a vanished or unreadable data file, a zstd error
            _rollback(conn)
            raise RestoreError(f"restore failed and was rolled back, the target is unchanged: {exc}",
                               hint="verify the snapshot (`backupkit verify --deep`) and try again") from None
    return rows


def _restore_parallel(dsn, manifest, folder, chosen, scripts, plan, truncate, jobs, show) -> int:
    """pre-data committed, data in parallel transactions, post-data last; undo on failure."""
    with connect(dsn) as conn:
        try:
            _session(conn, plan)
            _prepare(conn, scripts, chosen, truncate)
            conn.execute(scripts["mark"])  # committed with pre-data: visible until the last step
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise RestoreError(f"restore failed before loading data and was rolled back: "
                               f"{_why(exc, plan, dsn)}") from None
    bar = tqdm(total=len(chosen), desc="restore", unit="table", disable=not show, file=sys.stderr)
    lock = threading.Lock()
    left = {mf.table_key(t): len(t["files"]) for t in chosen}
    loaded: list[int] = []
    live: set = set()  # connections running a task, cancelled at the first failure

    stopping = threading.Event()

    def cancel_running() -> None:
        # A cancel that reaches a connection between two statements is lost and the task
        # would run its next one to the end: keep cancelling until every task has ended.
        stopping.set()

        def keep_cancelling() -> None:
            while True:
                with lock:
                    running = list(live)
                if not running and pool_done.is_set():
                    return
                for c in running:
                    with contextlib.suppress(Exception):
                        c.cancel_safe()
                if pool_done.wait(0.2):
                    return

        threading.Thread(target=keep_cancelling, name="backupkit-cancel", daemon=True).start()

    pool_done = threading.Event()
    pool = TaskPool(jobs, on_failure=cancel_running)
    index_groups = scripts.get("index-groups", {})

    @contextlib.contextmanager
    def task_connection():
        if stopping.is_set():
            raise RestoreError("stopped: another part of the restore failed")
        with connect(dsn) as c:
            _session(c, plan)
            with lock:
                live.add(c)
            try:
                yield c
            finally:
                with lock:
                    live.discard(c)

    def build_indexes(script: str) -> None:
        with task_connection() as c:
            with lock:
                loading = units_left > 0
            if loading and c.info.server_version >= 110000:  # the setting is new in 11
                # A parallel build would take CPU from the COPYs still running, one of
                # which is the long pole; once all data is in, builds may go parallel.
                # LOCAL: the script runs in this transaction, and a pooler's shared
                # session keeps nothing of it.
                c.execute("SET LOCAL max_parallel_maintenance_workers = 0")
            c.execute(script)

    def table_done(key: str) -> None:
        bar.update(1)
        if key in index_groups:
            # Jump the queue: this table's indexes build while other tables still load.
            pool.submit(lambda: build_indexes(index_groups[key]), first=True)

    def load(t: dict, files: list[dict], freeze: bool) -> None:
        nonlocal units_left
        with task_connection() as c:
            _load_session(c, plan)
            if freeze:  # the table is this restore's own: make sure nobody wrote to it since
                _empty_own_table(c, t)
            n = _load(c, t, folder, files, freeze=freeze)
        key = mf.table_key(t)
        with lock:
            loaded.append(n)
            units_left -= 1
            left[key] -= len(files)
            done = not left[key]
        if done:
            table_done(key)

    units = _load_units(chosen, jobs, plan.schema)
    units_left = len(units)
    for t, files, freeze in units:
        pool.submit(lambda t=t, files=files, freeze=freeze: load(t, files, freeze))
    for t in chosen:
        if not t["files"]:
            table_done(mf.table_key(t))
    try:
        try:
            pool.run()
        finally:
            pool_done.set()
        with connect(dsn) as conn:
            _session(conn, plan)
            _large_objects(conn, folder, scripts)
            # In a parallel restore the index groups already ran: only the rest is left.
            rest = scripts["post-data-rest"] if "post-data-rest" in scripts else scripts.get("post-data")
            if rest:
                conn.execute(rest)
            _sequences_and_matviews(conn, manifest, chosen, plan)
            conn.execute(scripts["unmark"])
    except BaseException as exc:
        # Whatever went wrong (a database error, a vanished file, Ctrl-C), committed
        # pre-data must not be left behind silently.
        bar.close()
        left_behind = _undo(dsn, scripts, chosen, plan)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: say what is left, exit 130
            log.error("restore interrupted; %s", left_behind)
            raise
        what = _why(exc, plan, dsn)
        raise RestoreError(f"restore failed: {what}; {left_behind}", left_behind=left_behind,
                           hint="fix the cause and run the restore again") from None
    bar.close()
    return sum(loaded)


def _empty_own_table(conn: psycopg.Connection, table: dict) -> None:
    """Lock a table this restore created and still empty, then TRUNCATE it so COPY FREEZE may load it.

    Its CREATE is already committed, so another session could have written rows into
    it meanwhile; those are never thrown away: the restore stops instead.
    """
    rel = sql.Identifier(table["schema"], table["name"])
    conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(rel))
    if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM ONLY {})").format(rel)).fetchone()[0]:
        raise RestoreError(f"{mf.table_key(table)} received rows from another session during the restore",
                           hint="stop whatever writes to the target database, then restore again")
    conn.execute(sql.SQL("TRUNCATE ONLY {}").format(rel))


def _load_units(chosen: list[dict], jobs: int, fresh: bool) -> list[tuple[dict, list[dict], bool]]:
    """(table, files, freeze) units of work for a parallel load, in the order to start them.

    A table loads whole, in one transaction and frozen when the restore created it
    (``fresh``): frozen rows make its index builds cheaper (no hint bits to set on
    every page) and spare the user a freezing VACUUM later.  Only a table of several
    files holding more than 2/(jobs+1) of the data (2/3 with two jobs), which would
    otherwise be the long pole, is loaded file by file in parallel transactions.
    Largest first, and interleaved so parallel COPYs go to different tables where
    they can: two COPYs into one table contend for its extension lock.
    """
    # What a load costs is the CSV text (older snapshots record only the compressed bytes).
    size = {mf.table_key(t): sum(f.get("text_bytes", f["bytes"]) for f in t["files"]) for t in chosen}
    long_pole = 2 * sum(size.values()) / (jobs + 1)
    largest_first = sorted((t for t in chosen if t["files"]), key=lambda t: -size[mf.table_key(t)])
    split = [t for t in largest_first if len(t["files"]) > 1 and size[mf.table_key(t)] > long_pole]
    queues = [[(t, [f], False) for f in t["files"]] for t in split]
    queues.append([(t, t["files"], fresh) for t in largest_first if t not in split])
    units = []
    for i in range(max(map(len, queues))):
        units += [q[i] for q in queues if i < len(q)]
    return units


def _undo(dsn: str, scripts: dict, chosen: list[dict], plan: RestorePlan) -> str:
    """Drop what a failed parallel restore created; say what could not be undone."""
    lost = (f" The tables dropped by --clean ({', '.join(plan.existing)}) cannot be brought back; "
            "restore them again from this snapshot.") if plan.drop_first and plan.schema else ""
    if not plan.schema:
        return ("data loaded into some tables before the failure was committed, and the target stays "
                f"marked as an unfinished restore (schema {restore_mark.SCHEMA}): run the same restore "
                "again with --clean, which empties them first.")
    try:
        with connect(dsn) as conn:
            conn.execute(scripts["undo"])
            conn.execute(scripts["unmark"])
        return "the objects this restore created were dropped again." + lost
    except (psycopg.Error, BackupkitError) as exc:
        return ("the objects created so far could NOT all be dropped (" + str(exc).strip().splitlines()[0]
                + f"); the target stays marked as an unfinished restore (schema {restore_mark.SCHEMA}): "
                "run the same restore again with --clean to replace what it left." + lost)

