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

``restore`` puts the steps together: ``plan.survey`` decides what to do,
``scripts.build_scripts`` renders the SQL, ``load`` and ``parallel`` run it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from ..errors import ConfigError, ConnectionFailed, RestoreError, SnapshotError
from ..pg import cron
from ..pg.copyio import copy_in
from ..pg.dsn import connect, describe, redact
from ..runtime.deadline import Deadline
from ..runtime.deadline import seconds as _seconds
from ..runtime.progress import wanted
from ..runtime.signals import sigterm_as_interrupt
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..snapshot.verify import check_jobs, ensure_intact, refuse_unfinished
from ..storage.location import SnapshotLocation, locate
from . import mark as restore_mark
from .auth_stand_in import StandIn, plan_stand_in
from .checks import missing_references, missing_trigger_functions, role_creation, schema_privileges
from .in_place import empty_sql
from .load import LoadRun, load_in_one_transaction
from .parallel import load_in_parallel
from .plan import Request, RestorePlan, RestoreResult, Survey, survey
from .scripts import Scripts, build_scripts, object_key

__all__ = ["LOCK_WAIT_TIMEOUT", "RestorePlan", "RestoreResult", "restore"]

log = logging.getLogger("backupkit")

#: Seconds a restore waits for a lock before giving up (as backup's --lock-wait-timeout).
LOCK_WAIT_TIMEOUT = 60.0


@encryption.checked_copies()  # each archive copied and checked once per restore (``encryption.local_path``)
def restore(
    snapshot: mf.SnapshotArg,
    dsn: str,
    *,
    tables: Sequence[str] = (),
    schemas: Sequence[str] = (),
    with_dependencies: bool = False,
    schema_only: bool = False,
    data_only: bool = False,
    clean: bool = False,
    jobs: int = 1,
    owner: bool = False,
    create_roles: bool = False,
    dry_run: bool = False,
    progress: bool | None = None,
    lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT,
    timeout: float | None = None,
    public_key: Path | str | None = None,
    identity: encryption.IdentityArg | None = None,
    cron_jobs: str = "as-they-were",
) -> RestoreResult:
    """Restore ``snapshot`` (a folder, or a ``SnapshotLocation``) into the database at ``dsn``
    and return what was done.

    ``lock_wait_timeout`` (seconds, None or 0: wait forever) bounds every lock wait,
    so a restore into a live database never queues the application's queries behind
    it for long; ``timeout`` (default: none) bounds the whole run, which is then
    rolled back or undone like any failure.  With ``public_key`` the snapshot must also
    carry a valid signature by that key (``backup(..., sign_key=...)``).  An encrypted
    snapshot (``backup(..., recipients=...)``) needs ``identity``: the path of an age
    identity file (or pyrage identities) of one of its recipients; without it, or with
    another key, a ``ConfigError`` says so before anything is read or changed.  The
    schema archives are decrypted into private scratch space for pg_restore, the data
    files as they stream into COPY.

    The snapshot is verified before anything changes (while the restore is planned, or
    first with ``public_key``); a damaged one restores nothing.  The target
    must not already have the snapshot's tables unless ``clean`` (drop them
    first; with ``data_only``: empty them).  ``owner=False`` (the default)
    leaves objects owned by the connecting role, which is what a Supabase or
    fresh database needs; GRANTs to roles the target lacks are skipped and reported.
    Policies naming missing roles (Supabase's ``anon``, ``authenticated``) stop the
    restore before anything changes, unless ``create_roles`` creates them (NOLOGIN).
    ``cron_jobs`` says what a whole restore does with the snapshot's pg_cron jobs:
    ``"as-they-were"`` (the default), ``"paused"`` (every job scheduled inactive: a copy
    must not call the webhooks the original calls) or ``"skip"``.
    """
    started = time.monotonic()
    if schema_only and data_only:
        raise ConfigError("schema_only and data_only exclude each other")
    if cron_jobs not in cron.MODES:
        raise ConfigError(f"cron_jobs is {cron_jobs!r}", hint="give one of " + ", ".join(repr(m) for m in cron.MODES))
    check_jobs(jobs)  # 1 to MAX_JOBS: each job is a connection (and a process, for backup)
    lock_wait_timeout, timeout = _seconds(lock_wait_timeout, "lock_wait_timeout"), _seconds(timeout, "timeout")
    location = locate(snapshot)
    refuse_unfinished(location)  # before the target is even looked at
    try:
        manifest = mf.read(location)
    except SnapshotError:  # a manifest that cannot be read: ensure_intact says all that is wrong
        manifest = ensure_intact(location, public_key=public_key)
    # The key is checked first: hashing a large snapshot only to refuse it takes long.
    encryption.check_identity(location, manifest, identity)
    verifying: contextlib.AbstractContextManager[object]
    if public_key is not None:
        # A signed snapshot is proven genuine before any of it is used, and from here on the
        # restore reads the manifest whose signature was checked, not the one read above.
        manifest = ensure_intact(location, public_key=public_key)
        encryption.check_identity(location, manifest, identity)
        verifying = contextlib.nullcontext()
    else:
        # Planning only reads (the target's catalogs, the schema archive): it goes on while
        # the snapshot is verified, and the verdict is in before anything changes.
        verifying = _VerifiedMeanwhile(location)
    try:  # planning only reads the target: a failure there changed nothing
        with verifying:
            location = encryption.unlock(location, manifest, identity)
            request = Request(
                tables=tuple(tables),
                schemas=tuple(schemas),
                with_dependencies=with_dependencies,
                schema_only=schema_only,
                data_only=data_only,
                clean=clean,
                create_roles=create_roles,
                cron_jobs=cron_jobs,
            )
            found = survey(location, manifest, dsn, request)
            plan = found.plan
            log.info("%s: %d tables to restore into %s", location, len(plan.tables), describe(dsn)["database"])
            result = RestoreResult(plan, dry_run=dry_run)
            if manifest.get("partial"):
                result.warnings.append(
                    "this snapshot is PARTIAL: row-level security hid rows of "
                    + ", ".join(manifest.get("partial_tables", []))
                    + " when it was taken"
                )
            source_major = manifest["source"]["server_version_num"] // 10000
            if found.target.server_version_num // 10000 < source_major:
                # pg_dump's schema is meant for the same or a newer major version.
                result.warnings.append(
                    f"the snapshot is from PostgreSQL {source_major} and the target runs "
                    f"{found.target.server_version_num // 10000}: a schema may use what the older "
                    "version lacks, and the restore then fails and is rolled back or undone; "
                    f"restore into PostgreSQL {source_major} or newer to be sure"
                )
            encoding = found.target.encoding
            if plan.data and manifest["source"].get("encoding") == "UTF8" and encoding not in ("", "UTF8"):
                # The data files hold UTF-8; the target converts each value to its own encoding.
                result.warnings.append(
                    f"the target database's encoding is {encoding}, the snapshot's UTF8: "
                    + (
                        "the text is stored as bytes, unchecked and unconverted"
                        if encoding == "SQL_ASCII"
                        else f"a character {encoding} cannot hold stops the restore (rolled back or undone)"
                    )
                    + "; restore into a UTF8 database to keep every value as it was"
                )
            jobs = _jobs(jobs, clean, found, result.warnings)
            if cron_jobs != "as-they-were" and not request.full:
                result.warnings.append(f"`cron_jobs` {cron_jobs} is for whole restores: this one schedules no jobs")
            parallel = jobs > 1 and not schema_only and sum(len(t["files"]) for t in plan.tables) >= 2
            scripts, stand_in = Scripts(), None  # --data-only runs no SQL of the snapshot's
            if not data_only:
                scripts = _render(
                    dsn, location, found, manifest=manifest, owner=owner, create_roles=create_roles, parallel=parallel
                )
                schema_sql = (scripts.pre_data or "") + (scripts.post_data or "")
                stand_in = plan_stand_in(manifest, plan.tables, schema_sql, found.target.schemas)
            if stand_in:
                # Supabase's API roles may use auth.uid() in policies: they need the schema, as there.
                stand_in.grantees = sorted(
                    {"anon", "authenticated", "service_role"} & (found.target.roles | set(plan.created_roles))
                )
                _add_stand_in(scripts, stand_in)
                plan.notes.append(stand_in.describe())
            problems = found.problems + _final_checks(dsn, found, stand_in, data_only)
            # post_data is the whole post-data in a parallel restore too (the groups split it).
            made = set(found.database.schemas_to_create) if found.database else set()
            problems += missing_trigger_functions(
                scripts.pre_data or "",
                scripts.post_data or "",
                found.target.schemas | made,
                creates_extensions=bool(found.database and found.database.extensions_to_create),
            )
            if found.refused and len(problems) == 1:
                raise found.refused
            if problems:
                raise RestoreError(
                    "the restore cannot succeed, nothing was changed: " + "; ".join(problems),
                    hint="fix each problem named, then run the restore (or a `dry_run`) again",
                )
            _complete_scripts(scripts, found, manifest, parallel=parallel, clean=clean)
            if plan.skipped_grants:
                result.warnings.append(
                    f"skipped {len(plan.skipped_grants)} GRANT/REVOKE for roles this database "
                    "does not have (e.g. " + plan.skipped_grants[0] + ")"
                )
            if plan.dropped_column_options:
                result.warnings.append(
                    f"left out column options the target server does not know in "
                    f"{len(plan.dropped_column_options)} statements (e.g. "
                    f"{plan.dropped_column_options[0]})"
                )
    except psycopg.Error as exc:
        raise RestoreError(
            f"cannot read what the target database has, nothing was changed: {redact(str(exc).strip(), dsn)}",
            hint="check the connection to the target and its role's privileges, then run the restore again",
        ) from None
    for w in result.warnings:
        log.warning(w)
    if dry_run:
        return result
    if clean:  # the tables a clean restore empties or drops, named before it does
        for k in plan.existing:
            log.warning("%s %s (`clean`)", "emptying" if data_only else "dropping", k)

    show = wanted(progress)
    # copy_in as this module has it now: fault drills put their own in its place.
    run = LoadRun(dsn, manifest, location, plan, scripts, truncate=data_only and clean, show=show, copy=copy_in)
    plan.lock_wait_timeout = lock_wait_timeout
    log.info("loading %s", f"with {jobs} jobs (parallel transactions)" if parallel else "in one transaction")
    with sigterm_as_interrupt(), Deadline(timeout) as plan.deadline:
        result.rows = load_in_parallel(run, jobs) if parallel else load_in_one_transaction(run)
    for w in run.unmade + run.unscheduled:  # the target refused them; everything else is restored
        log.warning(w)
        result.warnings.append(w)
    result.seconds = time.monotonic() - started
    log.info("restored %d rows in %.1f s", result.rows, result.seconds)
    return result


class _VerifiedMeanwhile:
    """``ensure_intact`` of a snapshot in a thread of its own, while the ``with`` block plans
    the restore; leaving the block waits for it and raises ``SnapshotDamaged`` if it failed.
    A damaged snapshot is also the error reported when the block itself fails: a broken
    schema archive makes pg_restore fail too, but the damage is the cause.  Ctrl-C stops
    the hashing after the files under way, instead of waiting for every file."""

    def __init__(self, location: SnapshotLocation):
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backupkit-verify")
        self._verdict = self._pool.submit(ensure_intact, location, stop=self._stop)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # Ctrl-C, SIGTERM: it goes on; the target failing (a lost connection, a privilege): no
        # damage to the snapshot can be its cause, so the verdict is not waited for.
        if kind is not None and (not issubclass(kind, Exception) or issubclass(kind, psycopg.Error | ConnectionFailed)):
            self._stop_now()
            return
        try:
            failure = self._verdict.exception()
        except BaseException:  # Ctrl-C while waiting for the verdict
            self._stop_now()
            raise
        self._pool.shutdown()
        if failure is not None:
            raise failure from None

    def _stop_now(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _jobs(jobs: int, clean: bool, found: Survey, warnings: list[str]) -> int:
    """The jobs the restore can use: one where a failed parallel load could not be undone."""
    if clean and jobs > 1:
        # Committed DROPs followed by a failed parallel load would lose the old tables.
        warnings.append("a `clean` restore runs in one transaction; `jobs` is ignored")
        jobs = 1
    elif found.platform and jobs > 1:
        # Rows committed into the project's own tables could not be undone by dropping them.
        warnings.append("a restore into the project's auth/storage tables runs in one transaction; `jobs` is ignored")
        jobs = 1
    if jobs > 1 and not found.plan.schema:
        # Loaded with foreign-key checks off into tables that exist: the keys are checked
        # before the one transaction commits, and a violation rolls it all back.
        warnings.append("a data-only restore runs in one transaction (its foreign keys are checked); `jobs` is ignored")
        jobs = 1
    if jobs > 1 and found.plan.firing_triggers:
        # They are switched off and on again within the one transaction that loads the rows.
        warnings.append(
            "tables with triggers that fire even with triggers off are loaded in one transaction; `jobs` is ignored"
        )
        jobs = 1
    if jobs > 1 and not found.may_mark:
        warnings.append(
            "a parallel restore marks the target until it finishes (schema "
            f"{restore_mark.SCHEMA}), which this role may not create; `jobs` is ignored"
        )
        jobs = 1
    return jobs


def _render(
    dsn: str,
    location: SnapshotLocation,
    found: Survey,
    *,
    manifest: dict,
    owner: bool,
    create_roles: bool,
    parallel: bool,
) -> Scripts:
    """The scripts of the planned restore; what they left out or add is recorded on the plan."""
    plan = found.plan
    # pg_restore reads the archives from private copies on this machine (decrypted when the
    # snapshot is encrypted), checked against ``manifest`` as they are made.
    with contextlib.ExitStack() as archives:
        dump = archives.enter_context(encryption.local_path(location, mf.DUMP, manifest))
        database = None
        if found.database is not None:
            db_dump = archives.enter_context(encryption.local_path(location, mf.DATABASE_DUMP, manifest))
            database = (db_dump, found.database)
        scripts, notes = build_scripts(
            dsn,
            dump,
            found.entries,
            plan.tables,
            roles=found.target.roles,
            owner=owner,
            create_roles=create_roles,
            parallel=parallel,
            drop_first=plan.drop_first,
            large_object_oids=[lo["oid"] for lo in plan.large_objects],
            database=database,
            more_roles=found.target.will_create,
        )
    plan.skipped_grants = notes.skipped_grants
    plan.dropped_column_options = notes.dropped_column_options
    plan.created_roles = notes.created_roles
    return scripts


def _add_stand_in(scripts: Scripts, stand_in: StandIn) -> None:
    """The auth stand-in is made first, filled after the data and before the foreign keys, undone last."""
    scripts.pre_data = stand_in.create_sql() + (scripts.pre_data or "")
    if scripts.post_data is not None:
        scripts.post_data = stand_in.fill_sql() + scripts.post_data
    if scripts.post_data_rest is not None:
        scripts.post_data_rest = stand_in.fill_sql() + scripts.post_data_rest
    scripts.undo = (scripts.undo or "") + "DROP SCHEMA IF EXISTS auth CASCADE;\n"


def _final_checks(dsn: str, found: Survey, stand_in: StandIn | None, data_only: bool) -> list[str]:
    """Problems only the rendered scripts show: missing referenced tables, schema and role privileges."""
    plan = found.plan
    problems: list[str] = []
    with connect(dsn) as conn:
        provided = {"auth.users"} if stand_in and stand_in.columns else set()
        # Every table the scripts create is there for a foreign key, with rows or without: a
        # partitioned table (its rows are its partitions') was taken for one not restored.
        tables = [object_key(e) for e in found.entries if e.type == "TABLE"]
        provided |= {f"{schema}.{name}" for _, schema, name in tables}
        if not data_only:  # foreign keys are created by post-data
            problems += missing_references(conn, plan.tables, provided)
        made = set(found.database.schemas_to_create if found.database else []) | ({"auth"} if stand_in else set())
        problems += schema_privileges(conn, found.entries, made)
        problems += role_creation(conn, plan.created_roles)
    return problems


def _complete_scripts(scripts: Scripts, found: Survey, manifest: dict, *, parallel: bool, clean: bool) -> None:
    """Add the steps a checked plan needs: emptying in place, the mark, large objects."""
    plan = found.plan
    if found.in_place:
        scripts.empty = empty_sql(found.in_place)
    if parallel:
        scripts.mark = restore_mark.set_sql(manifest["id"], [mf.table_key(t) for t in plan.tables]).as_string()
    if parallel or found.marks:
        scripts.unmark = restore_mark.clear_sql()
    if found.cron is not None:
        scripts.cron = found.cron.statements
    if found.platform_objects is not None:
        scripts.platform_objects = found.platform_objects.make
    if found.in_the_way is not None and found.in_the_way.put_back:
        scripts.put_back = found.in_the_way.put_back
        # Before pg_restore's DROPs of what they use: a whole clean restore always drops first.
        scripts.clean = "".join(found.in_the_way.drops) + (scripts.clean or "")
    if plan.large_objects and found.database is not None:  # large objects come with the database archive
        scripts.large_objects = found.database.large_objects
        if clean and found.target.large_objects:
            scripts.clean = (
                (scripts.clean or "") + "SELECT pg_catalog.lo_unlink(oid) FROM "
                "pg_catalog.pg_largeobject_metadata WHERE oid::bigint IN ("
                + ", ".join(map(str, sorted(found.target.large_objects)))
                + ");\n"
            )
            plan.drop_first = True
