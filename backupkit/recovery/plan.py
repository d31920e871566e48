"""What a restore will do, decided from the snapshot and the target before anything changes.

``survey`` reads the target once: which of the snapshot's tables it already has
(and which of those keep their place, their rows replaced in place), the
Supabase platform's own tables, marks of an unfinished restore, the schema
archive's entries this restore wants and the database archive's plan.  It
returns the ``RestorePlan`` (what ``--dry-run`` shows) with what the later steps
need, and every problem it found, so a restore that cannot succeed is refused
with all of them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import TargetNotEmpty
from ..pg import cron
from ..pg.database_objects import database_settings
from ..pg.dsn import connect
from ..pg.platform import Platform, read_platform
from ..pg.platform import problems as platform_problems
from ..pg.rows import one_row
from ..pg.schema import TocEntry, render, toc
from ..runtime.deadline import Deadline
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from . import mark as restore_mark
from . import settings
from .checks import column_mismatches
from .cron_jobs import plan_jobs
from .database_scripts import (
    DatabasePlan,
    Target,
    default_acl_allowed,
    event_trigger_functions,
    plan_database,
    read_target,
)
from .in_place import sequences_used, split_by_shape
from .in_the_way import InTheWay, plan_in_the_way
from .left_out import PlatformObjects, plan_platform_objects
from .obstacles import (
    check_target,
    dependents_in_the_way,
    dependents_outside,
    dropped_not_owned,
    firing_triggers,
    may_disable_triggers,
    names_taken,
    parents_missing,
    routine_dependents,
    row_security,
)
from .partitions import keep_parents_in_place, partition_hierarchy, partitioned_tables, partitions_lost
from .platform_rows import leave_platform_rows, platform_loading
from .privileges import missing_privileges
from .scripts import default_sequences, object_key, wanted_entries
from .selection import partitioned_above, select_tables


@dataclass
class RestorePlan:
    """What a restore will do; ``restore(..., dry_run=True)`` returns it without touching anything."""

    snapshot: SnapshotLocation
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
    #: Triggers on tables loaded with triggers off that fire all the same (ENABLE ALWAYS or
    #: REPLICA): (schema, table, trigger, "ALWAYS" or "REPLICA"), switched off for the load.
    firing_triggers: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: Tables loaded into as they are whose FORCE ROW LEVEL SECURITY would refuse their owner,
    #: the connecting role, the load: (schema, table), switched to NO FORCE for it and back.
    forced_rls: list[tuple[str, str]] = field(default_factory=list)
    #: The snapshot's sequences (schema.name) the restore does not set: the target lacks them and
    #: the restore does not make them (data_only), so no column there draws from them.
    sequences_left_out: list[str] = field(default_factory=list)
    #: Limits of the run (set when it starts; not part of what it does).
    lock_wait_timeout: float | None = field(default=None, repr=False)
    deadline: Deadline | None = field(default=None, repr=False)
    #: What the restore makes or leaves out beyond the snapshot's own objects, in words.
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """Human-readable steps."""
        steps = [f"verify snapshot {self.snapshot.name}"]
        if self.drop_first and self.existing:
            verb = "drop" if self.schema else "empty"
            steps.append(f"{verb} existing tables first (--clean): {', '.join(self.existing)}")
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
        steps.append("refresh materialized views; set sequences")
        return steps

    def to_dict(self) -> dict:
        """The plan as JSON-ready values (``restore --json``)."""
        return {
            "snapshot": str(self.snapshot),
            "tables": [mf.table_key(t) for t in self.tables],
            "rows": sum(t["rows"] for t in self.tables),
            "existing": self.existing,
            "clean": self.drop_first,
            "schema": self.schema,
            "data": self.data,
            "steps": self.describe(),
            "notes": self.notes,
            "created_roles": self.created_roles,
            "in_place": self.in_place,
        }


@dataclass
class RestoreResult:
    """A finished restore."""

    plan: RestorePlan
    rows: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        """The result as JSON-ready values: the plan's, and what the run did."""
        return {
            **self.plan.to_dict(),
            "rows_loaded": self.rows,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class Request:
    """The options of ``restore`` that shape its plan."""

    tables: Sequence[str] = ()
    schemas: Sequence[str] = ()
    with_dependencies: bool = False
    schema_only: bool = False
    data_only: bool = False
    clean: bool = False
    create_roles: bool = False
    #: What a whole restore does with the snapshot's pg_cron jobs (``pg.cron.MODES``).
    cron_jobs: str = "as-they-were"

    @property
    def full(self) -> bool:
        """Nothing named: the whole snapshot."""
        return not self.tables and not self.schemas


@dataclass
class Survey:
    """What ``survey`` found in the target and decided, for the steps after it."""

    #: The plan; its ``tables`` are the tables to load.
    plan: RestorePlan
    #: The schema archive's entries to restore ([] with --data-only).
    entries: list[TocEntry]
    target: Target
    #: Unfinished restores marked in the target.
    marks: list[dict]
    #: Whether this role may create the mark a parallel restore needs.
    may_mark: bool
    #: The tables whose rows are replaced in place.
    in_place: list[dict]
    platform: Platform
    #: The database archive's entries to restore, when the snapshot has that archive.
    database: DatabasePlan | None
    #: Why the restore cannot succeed, in words; the target-not-empty one is also ``refused``.
    problems: list[str]
    refused: TargetNotEmpty | None
    #: The snapshot's pg_cron jobs to schedule (whole restores of snapshots that have some).
    cron: cron.Scheduling | None = None
    #: The source's own objects on the platform's tables to make again (whole restores).
    platform_objects: PlatformObjects | None = None
    #: Policies and triggers a whole clean restore sets aside and puts back as they are.
    in_the_way: InTheWay | None = None


def survey(location: SnapshotLocation, manifest: dict, dsn: str, request: Request) -> Survey:
    """Read the target and decide what restoring ``request`` of the snapshot into it does.

    Nothing changes in the target; problems are collected in ``Survey.problems``.
    """
    tables, schemas, clean = list(request.tables), list(request.schemas), request.clean
    scheduling: cron.Scheduling | None = None
    platform_objects: PlatformObjects | None = None
    in_the_way: InTheWay | None = None
    # The whole partition hierarchy (the manifest knows a partition's immediate parent only).
    parents = {} if request.full else partition_hierarchy(location, manifest)
    chosen = select_tables(manifest, tables, schemas, request.with_dependencies, parents)
    full = request.full
    problems: list[str] = []
    early_notes: list[str] = []
    with connect(dsn) as conn:
        platform = read_platform(conn, chosen)
        if request.with_dependencies and platform:
            # A live project already has the platform tables the chosen ones reference
            # (auth.users): they are the dependency, not something to load again.
            named = {mf.table_key(t) for t in select_tables(manifest, tables, schemas, parents=parents)}
            pulled = sorted(k for k in platform.tables if k not in named)
            if pulled:
                # A new project's are empty: the restored rows would point at nothing.
                had = {mf.table_key(t): t.get("rows", 0) for t in manifest["tables"]}
                missing = [
                    k for k in pulled if k not in platform.nonempty and had.get(k, 0) and not request.schema_only
                ]
                if missing:
                    problems.append(
                        f"the tables named need rows of {', '.join(missing)}, which this project does not "
                        "have (it has none): restore into the live project, or name them in `tables` too"
                    )
                chosen = [t for t in chosen if mf.table_key(t) not in pulled]
                platform = read_platform(conn, chosen)
                early_notes.append("left the project's own " + ", ".join(pulled) + " as they are (dependencies it has)")
        refused: TargetNotEmpty | None = None
        try:
            existing = check_target(
                conn, [t for t in chosen if mf.table_key(t) not in platform.tables], request.data_only, clean, parents
            )
        except TargetNotEmpty as exc:  # listed with every other problem, by the caller
            refused, existing = exc, []
            problems.append(str(exc))
        target = read_target(conn, manifest)
        if not full and not request.data_only:
            problems += parents_missing(conn, [t for t in chosen if mf.table_key(t) not in platform.tables])
        marks = restore_mark.read(conn)
        if marks and not clean:
            problems.append(restore_mark.describe(marks) + "; restore again with `clean` to replace them")
        elif marks:
            # This restore clears the mark: it must replace everything the mark names.
            left = sorted({k for m in marks for k in m["tables"]} - {mf.table_key(t) for t in chosen})
            if left:
                problems.append(
                    restore_mark.describe(marks)
                    + f"; this restore would not replace {', '.join(left[:5])}"
                    + (f" and {len(left) - 5} more" if len(left) > 5 else "")
                    + ", which would then look finished: restore them with `clean` too"
                )
            else:
                early_notes.append("replacing what an unfinished restore left: " + restore_mark.describe(marks))
        may_mark = bool(
            one_row(
                conn.execute(
                    "SELECT has_database_privilege(current_database(), 'CREATE') OR to_regnamespace(%s) IS NOT NULL",
                    (restore_mark.SCHEMA,),
                )
            )[0]
        )
        if request.create_roles:
            target.will_create = {r["name"] for r in manifest.get("roles", [])} - target.roles
        problems += platform_problems(platform)
        if platform and not request.schema_only and not may_disable_triggers(conn):
            problems.append(
                "loading the project's auth/storage tables needs their triggers off "
                "(session_replication_role), which this role may not set"
            )
        elif request.data_only and not may_disable_triggers(conn):
            # Found when planning, before a parallel restore marks the target and every load fails.
            problems.append(
                "data_only must stop the tables' triggers and foreign-key checks while loading "
                "(session_replication_role), which this role may not set: connect as a superuser, "
                "or restore without `data_only` into an empty database"
            )
        plan = RestorePlan(
            location, chosen, existing, clean and bool(existing), not request.data_only, not request.schema_only, full
        )
        plan.platform_tables = sorted(platform.tables)
        plan.notes += early_notes
        if full:  # the roles' and database's settings are the project's configuration: a whole restore's business
            current, have = settings.target_settings(conn, manifest), target.roles | target.will_create
            # The database's own name: a pooler may route another name to it.
            dbname = one_row(conn.execute("SELECT pg_catalog.current_database()"))[0]
            plan.notes += settings.differences(manifest, current, dbname, roles=have)
            plan.notes += settings.database_differences(manifest, database_settings(conn), dbname)
            scheduling = plan_jobs(conn, location, manifest, target, request)
            if not request.data_only:  # they are schema, as the jobs are
                platform_objects = plan_platform_objects(conn, location, manifest)
        plan.schemas = schemas
        in_place: list[dict] = []
        kept_parents: list[dict] = []
        # Tables an interrupted restore left may lack their indexes and keys: never kept in place.
        if clean and existing and not full and not request.data_only and not request.schema_only and not marks:
            in_place, problems_in_place = _keep_in_place(conn, plan, chosen)
            problems += problems_in_place
            kept_parents = keep_parents_in_place(conn, plan, chosen, parents)
            problems += dependents_in_the_way(conn, plan.existing, schemas, plan.in_place)
        if clean and existing and not request.data_only:
            problems += partitions_lost(conn, chosen, existing, plan.in_place, parents)
            problems += dropped_not_owned(conn, plan.existing)
        loaded_into = _loaded_with_triggers_off(chosen, plan, platform, request)
        plan.firing_triggers, foreign = firing_triggers(conn, loaded_into)
        plan.forced_rls, problems_rls = row_security(conn, loaded_into)
        problems += problems_rls
        if plan.forced_rls:
            plan.notes.append(
                "switching off FORCE ROW LEVEL SECURITY of "
                + ", ".join(f"{s}.{t}" for s, t in plan.forced_rls)
                + " while the rows load, and on again: reads of them wait until the restore commits"
            )
        if request.data_only:
            problems += column_mismatches(conn, [t for t in chosen if mf.table_key(t) not in platform.tables])
        problems += [
            f"{rel}'s trigger {name} is ENABLE {mode}, so it would fire for every restored row, and only "
            f"the table's owner {owner} may switch it off: have {owner} run `ALTER TABLE {rel} DISABLE "
            f"TRIGGER {name}` before the restore and `ALTER TABLE {rel} ENABLE {mode} TRIGGER {name}` after "
            f"it, or restore as {owner}"
            for rel, name, mode, owner in foreign
        ]
        rebuilt = [t for t in chosen if mf.table_key(t) not in plan.in_place]
        if not request.data_only:  # a whole-snapshot `clean` restore into the live database too
            created = [t for t in rebuilt if mf.table_key(t) not in existing and mf.table_key(t) not in platform.tables]
            problems += names_taken(conn, created, manifest, dropped=plan.existing)
        entries: list[TocEntry] = []
        defaults: set[tuple[str, str]] = set()  # what the rebuilt tables' defaults draw from
        if not request.data_only:
            with encryption.local_path(location, mf.DUMP, manifest) as dump:
                listed = toc(dump)
                # The partitioned tables above the rebuilt partitions, every level, are made too
                # (with their keys and indexes, which their partitions' attach to).
                kept_keys = {mf.table_key(t) for t in kept_parents}
                made = partitioned_tables(
                    dump, listed, manifest, [a for a in partitioned_above(rebuilt, parents) if a not in kept_keys]
                )
                defaults = set() if full else default_sequences(dump, listed, rebuilt + made)
                entries = wanted_entries(
                    listed,
                    manifest,
                    rebuilt + made,
                    full=full,
                    target=conn,
                    platform=platform,
                    schemas=schemas,
                    tables_named=bool(tables),
                    in_place=in_place + kept_parents,
                    rebuilding=bool(plan.existing),
                    in_place_sequences=sequences_used(conn, in_place) if schemas else set(),
                    new_sequences=_missing(conn, defaults),
                )
                if full and clean and plan.existing:
                    # The snapshot's own copies of the project's objects on the platform's
                    # tables are dropped first and made again, so they stand in no one's way.
                    backed_up = list(manifest.get("schemas", []))
                    if platform_objects is not None:
                        platform_objects.leave_missing()
                    in_the_way = plan_in_the_way(conn, dsn, entries, backed_up)
                    problems += dependents_outside(conn, manifest, entries, remade=in_the_way.keys)
                    problems += routine_dependents(conn, entries, backed_up, remade=in_the_way.keys)
            if schemas and in_place and not plan.existing:
                # Nothing rebuilt, but the schemas' other objects (views, sequences) exist:
                # --clean drops them first, as it would with a table to rebuild.
                plan.drop_first = True
        if not request.schema_only:
            problems += missing_privileges(conn, manifest, plan, request, entries, in_place, defaults, platform)
    if platform:
        leave_platform_rows(plan, platform)
    if request.data_only and manifest.get("large_objects"):
        plan.notes.append(
            f"left out the snapshot's {len(manifest['large_objects'])} large object(s): they come with "
            "the schema, so a data_only restore does not load them; restore without `data_only` for them"
        )
    database = None
    if not request.data_only:
        entries = _allowed_default_acls(entries, target, plan)
        if _has_file(manifest, mf.DATABASE_DUMP):
            database = _plan_database(location, manifest, target, plan, entries, clean, parents)
            problems += database.problems
            plan.notes += database.notes
            if database.large_objects and not request.schema_only:
                plan.large_objects = list(manifest.get("large_objects", []))
    if platform_objects is not None:
        plan.notes += platform_objects.notes
    if in_the_way is not None:
        plan.notes += in_the_way.notes
    if scheduling is not None:
        plan.notes += scheduling.notes
        if scheduling.scheduled:
            plan.notes.append("scheduling the snapshot's pg_cron jobs last: " + ", ".join(scheduling.scheduled))
    return Survey(
        plan,
        entries,
        target,
        marks,
        may_mark,
        in_place,
        platform,
        database,
        problems,
        refused,
        scheduling,
        platform_objects,
        in_the_way,
    )


def _keep_in_place(conn: psycopg.Connection, plan: RestorePlan, chosen: list[dict]) -> tuple[list[dict], list[str]]:
    """Split the existing tables into those whose rows are replaced in place and those dropped;
    record it on ``plan`` and return the first, with the problems it brings."""
    problems = []
    in_place, reshaped = split_by_shape(conn, [t for t in chosen if mf.table_key(t) in plan.existing])
    plan.in_place = [mf.table_key(t) for t in in_place]
    plan.existing = [k for k in plan.existing if k not in plan.in_place]
    plan.drop_first = bool(plan.existing)
    if in_place:
        plan.notes.append(
            "replacing the rows of " + ", ".join(plan.in_place) + " in place: their "
            "indexes, triggers, policies, grants, publication membership and what points "
            "at them (views, other tables' foreign keys) stay as they are"
        )
        if not may_disable_triggers(conn):
            problems.append(
                "replacing rows in place needs the tables' triggers and foreign-key actions "
                "off (session_replication_role), which this role may not set"
            )
    if reshaped:
        plan.notes.append(
            "dropping and recreating " + "; ".join(reshaped) + ": their columns are not "
            "the snapshot's any more, so views or other tables' foreign keys on them "
            "stop the restore"
        )
    return in_place, problems


def _plan_database(
    location: SnapshotLocation,
    manifest: dict,
    target: Target,
    plan: RestorePlan,
    entries: list[TocEntry],
    clean: bool,
    parents: dict[str, str],
) -> DatabasePlan:
    """The database archive's entries this restore runs (see ``plan_database``)."""
    chosen = plan.tables
    with encryption.local_path(location, mf.DATABASE_DUMP, manifest) as db_dump:
        db_entries = toc(db_dump)
        return plan_database(
            db_entries,
            manifest,
            target,
            tables={mf.table_key(t) for t in chosen}
            | {t["parent"] for t in chosen if t.get("parent")}
            | set(partitioned_above(chosen, parents)),
            full=plan.full,
            clean=clean,
            schemas_made={e.rest.split(" ")[1] for e in entries if e.type == "SCHEMA"},
            functions_made={".".join(object_key(e)[1:]) for e in entries if e.type in ("FUNCTION", "PROCEDURE")},
            event_functions=_event_functions(db_dump, db_entries),
        )


def _missing(conn: psycopg.Connection, sequences: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The ``sequences`` the target does not have: a selective restore creates them (a table's
    default draws from one no table owns), and leaves those it has as they are."""
    if not sequences:
        return set()
    ordered = sorted(sequences)
    names = [sql.Identifier(*s).as_string(conn) for s in ordered]
    rows = conn.execute(
        "SELECT to_regclass(n) IS NULL FROM unnest(%s::text[]) WITH ORDINALITY u(n, i) ORDER BY i", (names,)
    )
    return {s for s, (gone,) in zip(ordered, rows.fetchall(), strict=True) if gone}


def _loaded_with_triggers_off(
    chosen: list[dict], plan: RestorePlan, platform: Platform, request: Request
) -> list[dict]:
    """The tables whose rows go into a table that exists already, with session_replication_role
    = replica: all of them for data_only, else those kept in place and the platform's."""
    if request.data_only:
        return chosen
    if request.schema_only:
        return []
    loading = set(plan.in_place) | set(platform_loading(platform)[1])
    return [t for t in chosen if mf.table_key(t) in loading]


def _event_functions(dump: Path, entries: list[TocEntry]) -> dict[str, str]:
    """Event triggers' functions, read from the archive's SQL (none in most databases)."""
    triggers = [e for e in entries if e.type == "EVENT TRIGGER"]
    return event_trigger_functions(render(dump, "post-data", triggers)) if triggers else {}


def _has_file(manifest: dict, rel: str) -> bool:
    return any(f["path"] == rel for f in manifest.get("schema_files", []))


def _allowed_default_acls(entries: list[TocEntry], target: Target, plan: RestorePlan) -> list[TocEntry]:
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
