"""Running a planned restore's scripts and loading its data, in one transaction.

The steps both ways of running a restore share (session settings, the clean
and pre-data step, loading one table's files, large objects, sequences and
materialized views) are methods of ``LoadRun``, which holds what a run needs.
``load_in_one_transaction`` is the restore with one job: any error leaves the
target exactly as it was.  ``backupkit.recovery.parallel`` is the one with more.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg import sql

from ..errors import BackupkitError, RestoreError
from ..pg import cron
from ..pg.copyio import copy_in
from ..pg.dsn import connect, redact, set_settings
from ..runtime.progress import byte_bar
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from . import default_privileges
from .database_scripts import restore_large_objects
from .in_place import broken_references, empty_sql, sequences_used, split_emptying
from .in_the_way import put_back, still_as_planned
from .left_out import make_again
from .plan import RestorePlan
from .scripts import Scripts
from .sequences import to_set


def load_bytes(files: list[dict]) -> int:
    """What loading ``files`` costs, for the progress bar: their COPY text (older snapshots
    record only the compressed bytes)."""
    return sum(f.get("text_bytes") or f["bytes"] for f in files)


class CopyIn(Protocol):
    """``backupkit.pg.copyio.copy_in``: load a table's data files, return the rows PostgreSQL took."""

    def __call__(
        self,
        conn: psycopg.Connection,
        table: dict,
        snapshot: mf.SnapshotArg,
        files: list[dict] | None = None,
        *,
        freeze: bool = False,
    ) -> int: ...


@dataclass
class LoadRun:
    """One run of a planned restore: where it goes, what it loads, and the SQL it runs."""

    dsn: str
    manifest: dict
    snapshot: SnapshotLocation
    plan: RestorePlan
    scripts: Scripts
    #: --data-only --clean: the existing tables are emptied (TRUNCATE) before loading.
    truncate: bool
    #: Whether to show a progress bar.
    show: bool
    #: How a table's files are copied in; the caller's (``job.copy_in``) is the one fault drills replace.
    copy: CopyIn = copy_in
    #: Warnings for the snapshot's pg_cron jobs pg_cron refused (``cron_jobs``).
    unscheduled: list[str] = field(default_factory=list)
    #: Warnings for the objects on the platform's tables the target refused (``platform_objects``).
    unmade: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> list[dict]:
        """The tables to load."""
        return self.plan.tables

    def session(self, conn: psycopg.Connection) -> None:
        """Settings of every restore session, which the run's deadline may cancel.

        The server checks every second that this client is still there (PostgreSQL 14+),
        so a killed restore's sessions end with it instead of finishing their statement
        first; lock waits end after ``lock_wait_timeout``.
        """
        plan = self.plan
        settings: dict[str, str] = {}
        if conn.info.server_version >= 140000:
            settings["client_connection_check_interval"] = "1000"
            # A parallel restore keeps connections idle between tasks, one maybe through a
            # long COPY of another: a server's idle_session_timeout must not end it meanwhile.
            settings["idle_session_timeout"] = "0"
        if plan.lock_wait_timeout:
            settings["lock_timeout"] = f"{int(plan.lock_wait_timeout * 1000)}ms"
        set_settings(conn, settings)
        if plan.deadline is not None:
            plan.deadline.watch(conn)

    def why(self, exc: BaseException) -> str:
        """The error's text, or the time limit when the deadline is what cancelled it."""
        deadline = self.plan.deadline
        if deadline is not None and deadline.expired:
            return f"the restore did not finish within its time limit ({deadline.seconds:g} s)"
        return redact(str(exc).strip(), self.dsn)

    def prepare(self, conn: psycopg.Connection) -> None:
        """Drop or empty what --clean asks for, then create the pre-data objects."""
        still_as_planned(conn, self.scripts.put_back)  # before they are dropped
        if self.scripts.clean is not None:
            conn.execute(self.scripts.clean)
        if self.scripts.pre_data is not None:
            # The objects get the snapshot's grants, not also the target's default privileges.
            with default_privileges.suspended(conn):
                conn.execute(self.scripts.pre_data)

    def load_session(self, conn: psycopg.Connection) -> None:
        """Settings for loading data, for the rest of ``conn``'s transaction.

        With --data-only the tables' triggers and foreign keys already exist, so
        they are switched off the way pg_restore --disable-triggers does.  LOCAL:
        a parallel restore's connection goes on to other tasks (index builds) after
        its transaction, and none of this may follow it there.
        """
        conn.execute("SELECT pg_catalog.set_config('row_security', 'off', true)")
        plan = self.plan
        if not plan.schema or plan.platform_tables or plan.in_place:
            try:
                conn.execute("SET LOCAL session_replication_role = replica")
            except psycopg.errors.InsufficientPrivilege:
                raise RestoreError(
                    "data_only must stop the tables' triggers and foreign-key checks while loading, "
                    "which needs a superuser (or a role allowed to set session_replication_role)",
                    hint="restore without `data_only` into an empty database, or connect as a superuser",
                ) from None

    def firing_triggers(self, conn: psycopg.Connection, *, enable: bool) -> None:
        """Switch off (or back on, as they were) the triggers of the tables loaded with triggers
        off that fire all the same (ENABLE ALWAYS, REPLICA): an audit trigger wrote rows for the
        restore's DELETE and COPY, one that sets a column changed the snapshot's values."""
        for schema, table, trigger, mode in self.plan.firing_triggers:
            rel, name = sql.Identifier(schema, table), sql.Identifier(trigger)
            if enable:
                conn.execute(sql.SQL("ALTER TABLE {} ENABLE {} TRIGGER {}").format(rel, sql.SQL(mode), name))
            else:
                conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(rel, name))

    def row_security(self, conn: psycopg.Connection, *, force: bool) -> None:
        """Switch off (or back on) FORCE ROW LEVEL SECURITY of the tables loaded into that this
        role owns: with it, their owner's COPY is refused, and with row_security off so is the
        DELETE before it and the foreign-key check after it."""
        for schema, table in self.plan.forced_rls:
            conn.execute(
                sql.SQL("ALTER TABLE ONLY {} {} ROW LEVEL SECURITY").format(
                    sql.Identifier(schema, table), sql.SQL("FORCE" if force else "NO FORCE")
                )
            )

    def empty_tables(self, conn: psycopg.Connection) -> set[str]:
        """--data-only --clean: empty the chosen tables, after ``load_session`` (triggers and
        foreign-key actions off); the keys of those emptied by TRUNCATE, which COPY FREEZE may load.

        ONLY: a table's inheritance children that the snapshot does not reload keep their rows.
        TRUNCATE refuses a table that a table it does not empty references (and CASCADE would
        empty that one too), so such tables, and those they in turn reference, are emptied by
        DELETE; the foreign keys are checked after loading (``broken_references``)."""
        truncated, deleted = split_emptying(conn, self.chosen)
        if truncated:
            rels = sql.SQL(", ").join(sql.Identifier(t["schema"], t["name"]) for t in truncated)
            conn.execute(sql.SQL("TRUNCATE ONLY {}").format(rels))
        if deleted:
            conn.execute(empty_sql(deleted))
        return {mf.table_key(t) for t in truncated}

    def load_table(
        self, conn: psycopg.Connection, table: dict, files: list[dict] | None = None, freeze: bool = False
    ) -> int:
        """COPY one table's files in and check PostgreSQL took exactly the manifest's rows."""
        files = table["files"] if files is None else files
        loaded = self.copy(conn, table, self.snapshot, files, freeze=freeze)
        expected = sum(f.get("rows", 0) for f in files)
        if loaded != expected:
            raise RestoreError(f"{mf.table_key(table)}: PostgreSQL loaded {loaded} rows, the manifest says {expected}")
        return loaded

    def large_objects(self, conn: psycopg.Connection) -> None:
        """Create the snapshot's large objects and stream their data in (pg_restore's data section)."""
        if self.scripts.large_objects:
            where = self.snapshot
            with encryption.local_path(where, mf.DATABASE_DUMP, self.manifest) as dump:
                restore_large_objects(conn, dump, self.scripts.large_objects, no_owner=not self.scripts.owner)

    def platform_objects(self, conn: psycopg.Connection) -> None:
        """Put back what ``clean`` set aside (or fail), then make the source's own objects on the
        platform's tables again; refusals of those go to ``unmade``."""
        put_back(conn, self.scripts.put_back)
        self.unmade = make_again(conn, self.scripts.platform_objects)

    def cron_jobs(self, conn: psycopg.Connection) -> None:
        """Schedule the snapshot's pg_cron jobs; those pg_cron refuses go to ``unscheduled``."""
        self.unscheduled = cron.schedule(conn, self.scripts.cron)

    def sequences_and_matviews(self, conn: psycopg.Connection) -> None:
        """``materialized_views``, then ``sequences``."""
        self.materialized_views(conn)
        self.sequences(conn)

    def materialized_views(self, conn: psycopg.Connection) -> None:
        """Refresh the restored populated materialized views, in one pipeline."""
        plan = self.plan
        views = [
            v
            for v in self.manifest.get("materialized_views", [])
            if v["populated"] and (plan.full or v["schema"] in plan.schemas)
        ]
        if not views:
            return
        # As a REFRESH runs anywhere: under the tables' row-level security where it applies
        # (FORCE, to a non-superuser owner).  With it off, as for loading, PostgreSQL refuses
        # a query it would affect.
        conn.execute("SELECT pg_catalog.set_config('row_security', 'on', true)")
        with conn.pipeline():
            for v in views:
                conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(v["schema"], v["name"])))
        # Off again: the foreign-key checks after this must see every row.
        conn.execute("SELECT pg_catalog.set_config('row_security', 'off', true)")

    def sequences(self, conn: psycopg.Connection) -> None:
        """setval of the restored sequences (all, those of whole schemas, those chosen tables own),
        in one pipeline: one round trip, not one per sequence.

        setval is not undone by a rollback: on a sequence that existed before the restore (a
        data-only or in-place one) it is the one change a failure after it leaves behind, so
        it comes last, after every check that can fail."""
        plan = self.plan
        # A sequence no table owns, used by a chosen table's column default (nextval('s')):
        # other tables may use it too, so it only ever moves forward to the snapshot's value.
        used = set() if plan.full else sequences_used(conn, self.chosen)
        values = to_set(self.manifest, self.chosen, full=plan.full, schemas=plan.schemas, used=used)
        with conn.pipeline():
            for s in values:
                if s.key in plan.sequences_left_out:  # the target lacks it (data_only), named by a note
                    continue
                name = sql.Identifier(s.schema, s.name).as_string(conn)
                if s.column is not None:
                    # The sequence the column draws from in the target: a table that existed
                    # (data_only, in place) may have one of another name (made by other DDL).
                    table = sql.Identifier(*s.column[:2]).as_string(conn)
                    conn.execute(
                        "SELECT pg_catalog.setval(q.s, %s, %s) FROM (SELECT coalesce(pg_catalog.to_regclass("
                        "pg_catalog.pg_get_serial_sequence(%s, %s)), pg_catalog.to_regclass(%s)) AS s) q "
                        "WHERE q.s IS NOT NULL",
                        (s.last_value, s.is_called, table, s.column[2], name),
                    )
                elif not s.forward:
                    conn.execute("SELECT pg_catalog.setval(%s::regclass, %s, %s)", (name, s.last_value, s.is_called))
                else:
                    conn.execute(
                        "SELECT pg_catalog.setval(%s::regclass, %s, true) "
                        "WHERE coalesce(pg_catalog.pg_sequence_last_value(%s::regclass) < %s, true)",
                        (name, s.last_value, name, s.last_value),
                    )


def rollback(conn: psycopg.Connection) -> None:
    """Roll back; on a lost connection there is nothing to roll back (the server did it)."""
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


def load_in_one_transaction(run: LoadRun) -> int:
    """Run every step in one transaction, committed at the end; return the rows loaded."""
    plan, scripts, chosen = run.plan, run.scripts, run.chosen
    rows = 0
    with connect(run.dsn) as conn:  # one transaction, committed by _commit; psycopg rolls back on error
        try:
            run.session(conn)
            run.prepare(conn)
            if plan.data:
                run.load_session(conn)
                run.firing_triggers(conn, enable=False)
                run.row_security(conn, force=False)
                if scripts.empty is not None:  # with triggers off: no ON DELETE CASCADE into other tables
                    conn.execute(scripts.empty)
                truncated = run.empty_tables(conn) if run.truncate else set()
                # Tables created (or truncated) in this transaction can take their rows frozen:
                # no hint-bit rewrite of every page and no anti-wraparound VACUUM of them later.
                with byte_bar(sum(load_bytes(t["files"]) for t in chosen), "restore", run.show) as bar:
                    for t in chosen:
                        key = mf.table_key(t)
                        own = key not in plan.platform_tables + plan.in_place
                        rows += run.load_table(conn, t, freeze=(plan.schema and own) or key in truncated)
                        bar.update(load_bytes(t["files"]))
                run.firing_triggers(conn, enable=True)
                if plan.platform_tables or plan.in_place:  # triggers created next must fire again
                    conn.execute("SET session_replication_role = DEFAULT")
            run.large_objects(conn)
            if scripts.post_data is not None:
                conn.execute(scripts.post_data)
            # With the rest of the schema, before any view is refreshed through the policies.
            run.platform_objects(conn)
            # Loaded with foreign-key checks off: in place, or into existing tables (--data-only).
            checked = (
                chosen if plan.data and not plan.schema else [t for t in chosen if mf.table_key(t) in plan.in_place]
            )
            broken = broken_references(conn, checked)
            if broken:
                raise RestoreError(
                    "the restored rows break foreign keys: " + ", ".join(broken),
                    hint="restore the tables on both sides of each key together (name them all in `tables`)",
                )
            if plan.data:
                # After the key check (which must see every row), before the views are refreshed
                # through the policies as on the source.
                run.row_security(conn, force=True)
            run.materialized_views(conn)
            run.cron_jobs(conn)
            if scripts.unmark is not None:
                conn.execute(scripts.unmark)
            # Deferred constraints are checked now, not at COMMIT: what can fail fails before
            # the sequences, whose setval a rollback would not undo.
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            run.sequences(conn)
        except psycopg.Error as exc:
            rollback(conn)
            raise RestoreError(
                f"restore failed and was rolled back, the target is unchanged: {run.why(exc)}",
                hint="fix the cause (see the message) and run the restore again",
            ) from None
        except BackupkitError as exc:
            rollback(conn)
            exc.args = (f"{exc} — rolled back, the target is unchanged",)
            raise
        except Exception as exc:  # a vanished or unreadable data file, a zstd error
            rollback(conn)
            raise RestoreError(
                f"restore failed and was rolled back, the target is unchanged: {exc}",
                hint="verify the snapshot (`backupkit verify --deep`) and try again",
            ) from None
        _commit(conn, run)
    return rows


def _commit(conn: psycopg.Connection, run: LoadRun) -> None:
    """Commit the restore's one transaction, saying what a failure there means for the target.

    COMMIT can still fail: a deferred constraint checked only then (the server rolls the
    transaction back), or the connection lost while it ran, after which only the target
    can tell whether the restore landed.
    """
    try:
        conn.commit()
    except psycopg.Error as exc:
        if not conn.broken:
            raise RestoreError(
                f"restore failed at COMMIT and was rolled back, the target is unchanged: {run.why(exc)}",
                hint="fix the cause (see the message) and run the restore again",
            ) from None
        raise RestoreError(
            f"the connection was lost while the restore committed: {run.why(exc)}; "
            "the target may or may not have the restore",
            hint="the restore is one transaction, so the target has all of it or none: look at its tables, "
            "and run the restore again only if they are not there",
        ) from None
