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

from ..errors import RestoreError, TargetNotEmpty
from ..pg.dsn import connect
from ..pg.platform import Platform, kept_rows, read_platform
from ..pg.platform import empty as platform_empty
from ..pg.platform import problems as platform_problems
from ..pg.rows import one_row
from ..pg.schema import TocEntry, attached_partitions, index_tables, render, toc
from ..runtime.deadline import Deadline
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from . import mark as restore_mark
from . import role_settings
from .checks import column_mismatches, privileges
from .database_scripts import (
    DatabasePlan,
    Target,
    default_acl_allowed,
    event_trigger_functions,
    plan_database,
    read_target,
)
from .in_place import foreign_keys, sequences_used, split_by_shape, split_emptying
from .scripts import default_sequences, object_key, wanted_entries
from .selection import ancestors, partition_parents, partitioned_above, select_tables
from .sequences import resolve, to_set


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


def survey(location: SnapshotLocation, manifest: dict, dsn: str, request: Request) -> Survey:
    """Read the target and decide what restoring ``request`` of the snapshot into it does.

    Nothing changes in the target; problems are collected in ``Survey.problems``.
    """
    tables, schemas, clean = list(request.tables), list(request.schemas), request.clean
    # The whole partition hierarchy (the manifest knows a partition's immediate parent only).
    parents = {} if request.full else _partition_parents(location, manifest)
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
        if full:  # the roles' settings are the project's configuration: a whole restore's business
            current = role_settings.target_settings(conn, manifest)
            plan.notes += role_settings.differences(
                manifest, current, conn.info.dbname, roles=target.roles | target.will_create
            )
        plan.schemas = schemas
        in_place: list[dict] = []
        kept_parents: list[dict] = []
        # Tables an interrupted restore left may lack their indexes and keys: never kept in place.
        if clean and existing and not full and not request.data_only and not request.schema_only and not marks:
            in_place, problems_in_place = _keep_in_place(conn, plan, chosen)
            problems += problems_in_place
            kept_parents = _keep_parents_in_place(conn, plan, chosen, parents)
            problems += _dependents_in_the_way(conn, plan.existing, schemas, plan.in_place)
        if clean and existing and not request.data_only:
            problems += _partitions_lost(conn, chosen, existing, plan.in_place, parents)
            problems += _dropped_not_owned(conn, plan.existing)
        loaded_into = _loaded_with_triggers_off(chosen, plan, platform, request)
        plan.firing_triggers, foreign = _firing_triggers(conn, loaded_into)
        plan.forced_rls, problems_rls = _row_security(conn, loaded_into)
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
            problems += _names_taken(conn, created, manifest, dropped=plan.existing)
        entries: list[TocEntry] = []
        defaults: set[tuple[str, str]] = set()  # what the rebuilt tables' defaults draw from
        if not request.data_only:
            with encryption.local_path(location, mf.DUMP, manifest) as dump:
                listed = toc(dump)
                # The partitioned tables above the rebuilt partitions, every level, are made too
                # (with their keys and indexes, which their partitions' attach to).
                kept_keys = {mf.table_key(t) for t in kept_parents}
                made = _partitioned_tables(
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
            if schemas and in_place and not plan.existing:
                # Nothing rebuilt, but the schemas' other objects (views, sequences) exist:
                # --clean drops them first, as it would with a table to rebuild.
                plan.drop_first = True
        if not request.schema_only:
            problems += _privileges(conn, manifest, plan, request, entries, in_place, defaults, platform)
    if platform:
        _leave_platform_rows(plan, platform)
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
    return Survey(plan, entries, target, marks, may_mark, in_place, platform, database, problems, refused)


_DEPENDENTS = """
WITH names AS (
  SELECT c.oid, pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS name, n.nspname || '.' || c.relname AS key,
         n.nspname AS schema
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
)
SELECT t.name, x.what || ' ' || r.name FROM (
  SELECT c.confrelid AS target, c.conrelid AS rel, 'foreign key ' || pg_catalog.quote_ident(c.conname) || ' of' AS what,
         false AS kept
    FROM pg_catalog.pg_constraint c
   WHERE c.contype = 'f' AND c.conrelid <> c.confrelid
     AND c.confrelid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s))
  UNION
  SELECT d.refobjid, v.oid, 'view', false
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid
    JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
   WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
     AND d.refobjid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s)) AND v.oid <> d.refobjid
  UNION
  -- A policy whose expression reads the table (a storage.objects policy checking public.profiles):
  -- kept, unless its table is remade, even in a restored schema when its table stays in place.
  SELECT d.refobjid, p.polrelid, 'policy ' || pg_catalog.quote_ident(p.polname) || ' on',
         p.polrelid IN (SELECT oid FROM names WHERE key = ANY(%(in_place)s))
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_policy p ON p.oid = d.objid
   WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
     AND d.deptype = 'n' AND d.refobjid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s))
     AND p.polrelid <> d.refobjid
) x
JOIN names t ON t.oid = x.target JOIN names r ON r.oid = x.rel
WHERE NOT (r.key = ANY(%(dropped)s) OR (r.schema = ANY(%(schemas)s) AND NOT x.kept))
ORDER BY 1, 2
"""


def _dependents_in_the_way(
    conn: psycopg.Connection, dropped: list[str], schemas: list[str], in_place: list[str]
) -> list[str]:
    """What stops ``clean`` from dropping the tables it recreates: other tables' foreign keys,
    views and policies on them that this restore neither drops nor makes again (those in
    ``schemas`` it does, but the policies of tables kept ``in_place``).  Found here, not by the
    real run failing after a dry run that passed."""
    if not dropped:
        return []
    found: dict[str, list[str]] = {}
    params = {"dropped": dropped, "schemas": schemas, "in_place": in_place}
    for table, what in conn.execute(_DEPENDENTS, params):
        found.setdefault(table, []).append(what)
    return [
        f"`clean` would drop and make again {table} (its columns are not the snapshot's), but "
        f"{', '.join(whats)} depend on it: undo the column change first (the schema part of the "
        "down-migration) so its rows are replaced in place, or restore what depends on it too"
        for table, whats in found.items()
    ]


def _dropped_not_owned(conn: psycopg.Connection, dropped: list[str]) -> list[str]:
    """Tables ``clean`` would drop that only another role may drop (DROP TABLE needs their
    owner): the real run failed on 'must be owner' after a dry run that passed."""
    if not dropped:
        return []
    rows = conn.execute(
        "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname), pg_catalog.pg_get_userbyid(c.relowner) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname || '.' || c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE') ORDER BY 1",
        (dropped,),
    ).fetchall()
    return [
        f"`clean` would drop {rel} to make it again, and only its owner {owner} may drop it: "
        f"restore as {owner} or a superuser"
        for rel, owner in rows
    ]


def _keep_parents_in_place(
    conn: psycopg.Connection, plan: RestorePlan, chosen: list[dict], parents: dict[str, str]
) -> list[dict]:
    """Take off ``plan.existing`` the partitioned tables whose partitions in this restore are all
    kept in place, and return them as table entries for the scripts to leave alone.

    A partitioned table holds no rows of its own, and its partitions have its columns: when
    they are all kept, so is it.  Dropped, it took every partition with it, those kept in
    place too, and the restore failed on them (``--schema public --clean`` of any project
    with a partitioned table).  Every level above them: a sub-partition's grandparent too.
    Its indexes are named as the target has them.
    """
    kept = set(plan.in_place)
    partitions = _partitions_below(chosen, parents)
    whole = [p for p in plan.existing if p in partitions and all(k in kept for k in partitions[p])]
    if not whole:
        return []
    plan.existing = [k for k in plan.existing if k not in whole]
    plan.drop_first = bool(plan.existing)
    # Schema and name as the catalog has them: a key ("a.b.c") does not say where the dot is.
    rows = conn.execute(
        "SELECT n.nspname, c.relname, array_remove(array_agg(i.relname ORDER BY i.relname), NULL) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_index x ON x.indrelid = c.oid LEFT JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid "
        "WHERE c.relkind = 'p' AND n.nspname || '.' || c.relname = ANY(%s) GROUP BY 1, 2",
        (whole,),
    ).fetchall()
    return [{"schema": schema, "name": name, "indexes": list(indexes), "columns": []} for schema, name, indexes in rows]


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


def _privileges(
    conn: psycopg.Connection,
    manifest: dict,
    plan: RestorePlan,
    request: Request,
    entries: list[TocEntry],
    in_place: list[dict],
    defaults: set[tuple[str, str]],
    platform: Platform,
) -> list[str]:
    """Privileges the real run uses on what the target has and the restore does not make: INSERT
    (COPY), TRUNCATE or DELETE (emptying) on the tables loaded into as they are, SELECT for the
    foreign-key check after it, REFERENCES for the foreign keys it creates to existing tables,
    UPDATE on the sequences it sets (and USAGE to read one it only moves forward).  Records on
    ``plan`` the sequences a data_only restore leaves out, which the target lacks."""
    loading = set(_platform_loading(platform)[1]) if platform else set()
    tables = [t for t in plan.tables if mf.table_key(t) not in platform.tables or mf.table_key(t) in loading]
    # The project's own tables: their INSERT is checked by platform_problems, and never emptied.
    into = [t for t in (tables if request.data_only else in_place) if mf.table_key(t) not in platform.tables]
    needs: list[tuple[str, str | None, str, str]] = []

    def rel(schema: str, name: str) -> str:
        return sql.Identifier(schema, name).as_string(conn)

    for t in into:
        needs += [(rel(t["schema"], t["name"]), c, "INSERT", "to load its rows") for c in t["copy_columns"]]
        if request.data_only and not request.clean:
            needs.append((rel(t["schema"], t["name"]), None, "SELECT", "to see that it is empty"))
    if request.data_only and request.clean:
        truncated, deleted = split_emptying(conn, into)
        needs += [(rel(t["schema"], t["name"]), None, "TRUNCATE", "to empty it") for t in truncated]
        needs += [(rel(t["schema"], t["name"]), None, "DELETE", "to empty it") for t in deleted]
    elif not request.data_only:
        needs += [(rel(t["schema"], t["name"]), None, "DELETE", "to empty it") for t in in_place]
    checked = tables if request.data_only else in_place
    for name, cs, ct, ps, pt, cols, refs in foreign_keys(conn, checked) if checked else []:
        why = f"to check foreign key {name}"
        needs += [(rel(cs, ct), c, "SELECT", why) for c in cols] + [(rel(ps, pt), r, "SELECT", why) for r in refs]
    if not request.data_only:
        restored = {mf.table_key(t) for t in plan.tables}
        kept = set(plan.in_place) | set(platform.tables)
        for t in plan.tables:
            if mf.table_key(t) in kept:
                continue
            needs += [
                (rel(fk["ref_schema"], fk["ref_table"]), r, "REFERENCES", f"for foreign key {fk['name']}")
                for fk in t.get("foreign_keys", [])
                if f"{fk['ref_schema']}.{fk['ref_table']}" not in restored
                for r in fk["ref_columns"]
            ]
    existing = [t for t in tables if request.data_only or mf.table_key(t) in set(plan.in_place)]
    used = set() if plan.full else sequences_used(conn, existing) | defaults
    values = to_set(manifest, tables, full=plan.full, schemas=plan.schemas, used=used)
    made = [e for e in entries if e.type == "SEQUENCE"]
    values = [v for v in values if not any(e.belongs_to(v.schema, v.name) for e in made)]
    left_out = []
    for v, target in zip(values, resolve(conn, values), strict=True):
        if target is None:
            left_out.append(v)
            continue
        needs.append((target, None, "UPDATE", "to set its value"))
        if v.forward:
            needs.append((target, None, "USAGE, SELECT", "to read its value"))
    if left_out:
        plan.sequences_left_out = [v.key for v in left_out]
        plan.notes.append(
            "did not set sequence "
            + ", ".join(f"{v.key} (the snapshot's value {v.last_value})" for v in left_out)
            + (
                ": the target does not have it, so no column there draws from it"
                if len(left_out) == 1
                else ": the target does not have them, so no column there draws from them"
            )
            + (" (data_only creates nothing)" if request.data_only else "")
            + "; if you need it, create it and set it: "
            + " ".join(
                f"`SELECT setval('{rel(v.schema, v.name)}', {v.last_value}, {str(v.is_called).lower()})`"
                for v in left_out
            )
        )
    return privileges(conn, needs)


def _platform_loading(platform: Platform) -> tuple[list[str], list[str]]:
    """The platform tables whose rows the project keeps, and those this restore loads rows into
    (the others hold none in the snapshot)."""
    kept = kept_rows(platform)
    skip = set(kept) | set(platform_empty(platform))
    return kept, sorted(set(platform.tables) - skip)


def _leave_platform_rows(plan: RestorePlan, platform: Platform) -> None:
    """Take off ``plan`` the platform tables whose rows the project keeps, or that hold none."""
    kept, loading = _platform_loading(platform)
    if kept:
        plan.notes.append("kept the project's own " + ", ".join(kept) + " (the platform's migration records)")
    plan.tables = [t for t in plan.tables if mf.table_key(t) not in platform.tables or mf.table_key(t) in loading]
    if loading:
        plan.notes.append(
            "loaded rows into the project's own " + ", ".join(loading) + "; their owners and grants are unchanged"
        )


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


_TAKEN = """
SELECT r.n, CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'index' END,
       pg_catalog.format('%%I.%%I', tn.nspname, t.relname), tn.nspname || '.' || t.relname
  FROM unnest(%s::text[]) WITH ORDINALITY r(n, i)
  JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(r.n)
  LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') AND c.relkind = 'S'
  JOIN pg_catalog.pg_class t ON t.oid = coalesce(x.indrelid, d.refobjid)
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
 ORDER BY r.i
"""


def _names_taken(conn: psycopg.Connection, created: list[dict], manifest: dict, dropped: list[str]) -> list[str]:
    """Names the tables this restore creates need for their indexes and sequences, held in the
    target by another table's (not one it drops first) (a migration renamed messages to posts: posts keeps
    messages_pkey and messages_id_seq).  Found here, not by the real run failing on
    'already exists' after a dry run that passed."""
    if not created:
        return []
    keys = {mf.table_key(t): t for t in created}
    wanted: list[tuple[str, dict]] = []
    for t in created:
        wanted += [(sql.Identifier(t["schema"], i).as_string(conn), t) for i in t.get("indexes", [])]
    for s in manifest.get("sequences", []):
        owner = s.get("owned_by")
        if owner and f"{owner[0]}.{owner[1]}" in keys:
            wanted.append((sql.Identifier(s["schema"], s["name"]).as_string(conn), keys[f"{owner[0]}.{owner[1]}"]))
    if not wanted:
        return []
    table_of = dict(wanted)
    return [
        f"{name} already exists ({kind} of {owner}), and {mf.table_key(table_of[name])} needs that name for its "
        f"own: was {mf.table_key(table_of[name])} renamed to {owner}? Rename it back (or drop it) first, "
        "or restore into another database"
        for name, kind, owner, key in conn.execute(_TAKEN, ([n for n, _ in wanted],)).fetchall()
        if key not in dropped and key != mf.table_key(table_of[name])
    ]


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


def _existing_tables(conn: psycopg.Connection, keys: list[str]) -> list[str]:
    if not keys:
        return []
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname || '.' || c.relname = ANY(%s)",
        (keys,),
    ).fetchall()
    return sorted(r[0] for r in rows)


def check_target(
    conn: psycopg.Connection, chosen: list[dict], data_only: bool, clean: bool, parents: dict[str, str] | None = None
) -> list[str]:
    """The snapshot's tables the target already has; refuse what would mix old and new rows.

    ``parents`` is the partition hierarchy (``partition_parents``)."""
    keys = [mf.table_key(t) for t in chosen]
    # A clean restore drops and makes again the partitioned tables above its partitions, every
    # level; a data-only load fills the partitions alone and leaves those as they are.
    above = [] if data_only else partitioned_above(chosen, partition_parents({"tables": chosen}, parents))
    existing = _existing_tables(conn, keys + above)
    if data_only:
        missing = sorted(set(keys) - set(existing))
        if missing:
            raise RestoreError(
                f"data_only needs the tables to exist; missing: {', '.join(missing)}",
                hint="restore without `data_only` to create them",
            )
        # Tables this role may not read are named by the privilege check (``_privileges``).
        rels = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in chosen]
        may_read = conn.execute(
            "SELECT pg_catalog.has_table_privilege(r::regclass, 'SELECT') "
            "FROM unnest(%s::text[]) WITH ORDINALITY u(r, i) ORDER BY i",
            (rels,),
        ).fetchall()
        readable = {k for k, (ok,) in zip(keys, may_read, strict=True) if ok}
        nonempty = [
            k
            for k in keys
            if not clean
            and k in readable
            and one_row(
                conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(*k.split(".", 1))))
            )[0]
        ]
        if nonempty and not clean:
            raise TargetNotEmpty(
                f"the target's tables already hold rows: {', '.join(nonempty)}",
                hint="pass `clean` to empty them first, or restore elsewhere",
            )
    elif existing and not clean:
        raise TargetNotEmpty(
            f"the target already has {len(existing)} of the snapshot's tables: "
            + ", ".join(existing[:10])
            + (" ..." if len(existing) > 10 else ""),
            hint="restore into an empty database, or pass `clean` to drop those tables first",
        )
    return existing


def _partitions_lost(
    conn: psycopg.Connection, chosen: list[dict], existing: list[str], in_place: list[str], parents: dict[str, str]
) -> list[str]:
    """Partitions a `clean` restore would drop with their partitioned table and not bring back.

    Restoring one partition with `clean` drops and recreates its parent, and DROP TABLE takes
    every partition of it along: the others' rows, written after the snapshot too, would be lost."""
    keys = {mf.table_key(t) for t in chosen}
    below = _partitions_below(chosen, parents)
    problems = []
    for parent in sorted(set(below) & set(existing)):
        # Kept when every chosen partition of it is replaced in place: nothing drops it.
        if all(k in in_place for k in below[parent]):
            continue
        # Keys are "schema.name" (a schema may hold a dot): matched as written, as existing was.
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class p "
            "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace, "
            "LATERAL pg_catalog.pg_partition_tree(p.oid) t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE pn.nspname || '.' || p.relname = %s AND t.isleaf AND t.level > 0",
            (parent,),
        ).fetchall()
        others = sorted({r[0] for r in rows} - keys)
        if others:
            problems.append(
                f"`clean` would drop {parent} with its partitions {', '.join(others)}, which this restore "
                "does not bring back; name them in `tables` too, or reload the rows with `data_only`"
            )
    return problems


def _partitions_below(chosen: list[dict], parents: dict[str, str]) -> dict[str, list[str]]:
    """Each partitioned table above ``chosen`` -> the chosen partitions below it, any level.  Pure."""
    hierarchy = partition_parents({"tables": chosen}, parents)
    found: dict[str, list[str]] = {}
    for t in chosen:
        for a in ancestors(mf.table_key(t), hierarchy):
            found.setdefault(a, []).append(mf.table_key(t))
    return found


def _partition_parents(location: SnapshotLocation, manifest: dict) -> dict[str, str]:
    """The snapshot's partition hierarchy (``partition_parents``), read from its schema archive."""
    if not _has_file(manifest, mf.DUMP):
        return partition_parents(manifest)
    with encryption.local_path(location, mf.DUMP, manifest) as dump:
        attached = attached_partitions(dump, toc(dump))
    return partition_parents(manifest, {f"{c[0]}.{c[1]}": f"{p[0]}.{p[1]}" for c, p in attached.items()})


def _partitioned_tables(dump: Path, listed: list[TocEntry], manifest: dict, keys: list[str]) -> list[dict]:
    """Table entries, as the scripts take them, of the partitioned tables ``keys`` (no tables of
    the manifest): schema and name as the archive has them, and their indexes (their keys',
    and those of INDEX entries), which their partitions' indexes attach to."""
    if not keys:
        return []
    # A key ("a.b.c") does not say where the schema ends: the archive's TABLE entry does.
    splits = [(k[:i], k[i + 1 :]) for k in keys for i, c in enumerate(k) if c == "."]
    made = [(s, n) for s, n in splits if any(e.type == "TABLE" and e.belongs_to(s, n) for e in listed)]
    known = {(t["schema"], i) for t in manifest["tables"] for i in t.get("indexes", [])}
    others = [e for e in listed if e.type == "INDEX" and not any(e.belongs_to(s, i) for s, i in known)]
    on = index_tables(dump, others) if others else {}
    tables = []
    for s, n in made:
        indexes = [
            e.rest[len(f"{s} {n} ") :].rsplit(" ", 1)[0]
            for e in listed
            if e.type == "CONSTRAINT" and e.rest.startswith(f"{s} {n} ")
        ]
        indexes += [i for (si, i), table in on.items() if table == (s, n)]
        tables.append({"schema": s, "name": n, "indexes": indexes, "columns": []})
    return tables


def _loaded_with_triggers_off(
    chosen: list[dict], plan: RestorePlan, platform: Platform, request: Request
) -> list[dict]:
    """The tables whose rows go into a table that exists already, with session_replication_role
    = replica: all of them for data_only, else those kept in place and the platform's."""
    if request.data_only:
        return chosen
    if request.schema_only:
        return []
    loading = set(plan.in_place) | set(_platform_loading(platform)[1])
    return [t for t in chosen if mf.table_key(t) in loading]


def _firing_triggers(
    conn: psycopg.Connection, tables: list[dict]
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """Triggers of ``tables`` that session_replication_role = replica does not stop: those this
    role may switch off (schema, table, trigger, ALWAYS or REPLICA), and those only their table's
    owner may (table and trigger quoted as SQL, ALWAYS or REPLICA, the owner)."""
    if not tables:
        return [], []
    names = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in tables]
    rows = conn.execute(
        "SELECT n.nspname, c.relname, t.tgname, CASE t.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END, "
        # ALTER TABLE ... DISABLE TRIGGER needs the table's owner.
        "pg_catalog.pg_has_role(c.relowner, 'USAGE'), pg_catalog.format('%%I.%%I', n.nspname, c.relname), "
        "pg_catalog.quote_ident(t.tgname), pg_catalog.pg_get_userbyid(c.relowner) "
        "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgrelid = ANY(%s::regclass[]) AND t.tgenabled IN ('A', 'R') AND NOT t.tgisinternal "
        "ORDER BY 1, 2, 3",
        (names,),
    ).fetchall()
    mine = [(s, t, g, m) for s, t, g, m, may, *_ in rows if may]
    others = [(rel, name, m, owner) for _, _, _, m, may, rel, name, owner in rows if not may]
    return mine, others


_ROW_SECURITY = """
SELECT n.nspname, c.relname, pg_catalog.format('%%I.%%I', n.nspname, c.relname),
       pg_catalog.pg_get_userbyid(c.relowner), pg_catalog.pg_has_role(c.relowner, 'USAGE'), c.relforcerowsecurity
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%s::regclass[]) AND c.relrowsecurity
   AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user)
 ORDER BY 1, 2
"""


def _row_security(conn: psycopg.Connection, tables: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """Row-level security of tables loaded into as they are, where it applies to this role: the
    tables it owns with FORCE (switched off for the load: ALTER TABLE needs their owner), and
    problems for those of other roles.  COPY FROM under RLS is refused, and so is, with
    row_security off, anything it would affect: the real run failed after a dry run that passed."""
    if not tables:
        return [], []
    names = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in tables]
    forced, problems = [], []
    for schema, name, rel, owner, mine, force in conn.execute(_ROW_SECURITY, (names,)).fetchall():
        if mine and force:
            forced.append((schema, name))
        elif not mine:
            problems.append(
                f"row-level security of {rel} applies to {conn.info.user} (not its owner {owner}, no BYPASSRLS), "
                f"so it may not load every row: restore as {owner}, a superuser, or a role with BYPASSRLS"
            )
    return forced, problems


def may_disable_triggers(conn: psycopg.Connection) -> bool:
    """Whether this role may SET session_replication_role (superuser, or granted as Supabase does)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


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
