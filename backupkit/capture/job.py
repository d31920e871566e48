"""Taking a snapshot: one consistent moment, every table through COPY, written once.

The main connection opens a REPEATABLE READ transaction and exports its
snapshot; pg_dump and every worker connection import it, as ``pg_dump -j``
does, so all tables and the schema come from the same instant.  Everything is
written under a staging name (``.tmp-*``) of the repository's storage and published
(renamed into place) only after it verifies.

Every session of one run carries the ``application_name``
``backupkit backup PID TOKEN`` (pg_dump's with `` pg_dump`` added), waits at most
``lock_wait_timeout`` for a lock, and ends by itself when its process does
(see ``workers``).  A watchdog enforces ``timeout`` on the whole run: it kills
the worker processes, cancels the queries under way and terminates the run's
sessions, and the backup fails with nothing written.  SIGTERM stops a backup
the way Ctrl-C does: the ``.tmp-*`` folder is removed, the lock released, the
sessions closed, and ``KeyboardInterrupt`` raised.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..errors import BackupkitError, RowLevelSecurityError, SourceError, StorageError, ToolError
from ..pg import cron, database_objects
from ..pg.catalog import (
    existing_schemas,
    list_matviews,
    list_sequences,
    list_tables,
    needs_outside,
    needs_outside_warning,
    read_sequences,
    role_info,
    select_tables,
)
from ..pg.copyio import FileResult
from ..pg.dsn import POOLER_WARNING, describe, is_transaction_pooler, redact
from ..pg.left_out import (
    dump_platform_objects,
    kept_on_platform_note,
    left_on_platform,
    left_on_platform_warning,
    unkept_extension_data,
)
from ..pg.rows import one_row
from ..pg.schema import dump_schema
from ..pg.tools import check_pg_dump
from ..runtime.deadline import seconds as _seconds
from ..runtime.progress import wanted
from ..runtime.signals import sigterm_as_interrupt, uninterrupted
from ..snapshot import encryption, signing
from ..snapshot import manifest as mf
from ..snapshot.datafile import BLOCK
from ..snapshot.verify import check_jobs, verify
from ..storage import pool
from ..storage.base import Storage
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, open_storage
from ..storage.lock import DirLock
from ..storage.repository import TMP_PREFIX, check_label, list_snapshots, new_id, publish, staging_name
from ..storage.scratch import scratch
from . import options as opt
from .chunks import CHUNK_BYTES
from .contents import Moment, Server, Written, build_manifest, file_stem, same_names, sequences_of
from .options import LOCK_WAIT_TIMEOUT, TIMEOUT, BackupOptions
from .readers import copy_all, plan, start_workers
from .result import BackupResult
from .sessions import KeepAlive, SessionSpec, lock_wait_error
from .watchdog import Watchdog, end_sessions
from .workers import Workers

if TYPE_CHECKING:  # the buckets modules (and botocore) load only when buckets are backed up
    from ..buckets import reconcile
    from ..buckets.endpoint import Endpoint

log = logging.getLogger("backupkit")


def backup(
    dsn: str,
    to: str | os.PathLike[str] | Storage,
    *,
    schemas: Sequence[str] | None = None,
    tables: Sequence[str] = (),
    exclude: Sequence[str] = (),
    jobs: int = 1,
    label: str | None = None,
    allow_partial: bool = False,
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    on_snapshot: Callable[[str], object] | None = None,
    lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT,
    timeout: float | None = TIMEOUT,
    sign_key: Path | str | None = None,
    recipients: Sequence[str] | None = None,
    object_lock_days: float | None = None,
    object_lock_mode: str | None = None,
    dedup: bool = True,
    storage_buckets: Sequence[str] = (),
    storage_all_buckets: bool = False,
    storage_endpoint: Endpoint | None = None,
) -> BackupResult:
    """Back up ``dsn`` into a new snapshot of the repository ``to`` (a folder, ``file://`` URL
    or ``Storage``) and return it.

    ``schemas`` defaults to ``["public"]``; ``tables``/``exclude`` take
    ``schema.table`` names.  ``on_snapshot(snapshot_id)`` is called once the
    consistent moment is fixed, before any data is read.

    ``lock_wait_timeout`` (seconds, default 60; 0 or None waits for ever) bounds
    each wait for a table's lock, like ``pg_dump --lock-wait-timeout``: a backup
    started while a migration holds a table's ACCESS EXCLUSIVE lock, or whose
    reads queue behind a migration that asked for one after the backup locked
    the table, fails with a ``SourceError`` naming the table.  The backup holds
    ACCESS SHARE locks on every table it copies until it ends, so a migration
    started meanwhile waits for it (give migrations a ``lock_timeout``).

    ``timeout`` (seconds, default 1800 = 30 minutes; 0 or None for no limit)
    bounds the whole run: when it passes, the worker processes are killed, the
    run's queries and sessions ended, and a ``SourceError`` raised; nothing is
    written.  A large database needs a larger value.

    SIGTERM (in the main thread) stops the backup like Ctrl-C: everything is
    cleaned up and ``KeyboardInterrupt`` raised.

    ``sign_key`` (path of an Ed25519 private key in PEM, see ``backupkit.snapshot.signing``)
    signs ``manifest.json`` into ``manifest.json.sig`` before the snapshot is published,
    and records the key's id as the manifest's ``signed_by``.  The key is loaded first:
    a missing key, or one that group or others may read, is a ``ConfigError`` before
    anything is connected to or written.

    ``recipients`` (age X25519 public keys, ``age1…``; see ``backupkit.snapshot.encryption``)
    encrypts every file of the snapshot but ``manifest.json`` to them, as it is written: the
    data files after compression, and the schema files (function bodies, defaults and large
    objects hold data).  This host then cannot read the snapshot back; restoring it needs
    one recipient's identity (``restore(..., identity=...)``), verifying it does not.  The
    manifest records ``encryption``; a key that is not an age public key is a ``ConfigError``
    before anything is connected to.

    ``object_lock_days`` (a number of days > 0; S3 repositories only) locks every object of
    the snapshot with S3 Object Lock until ``created_at`` plus that many days, in
    ``object_lock_mode`` ``"GOVERNANCE"`` (the default: users with
    ``s3:BypassGovernanceRetention`` may still delete) or ``"COMPLIANCE"`` (nobody may, not
    even the account's root, until the date).  The manifest records ``object_lock`` and
    ``prune`` keeps the snapshot until then.  The objects are written unlocked while
    staged and created locked by the copies that publish them (``storage.s3``).  A local
    repository, or a bucket without Object Lock enabled, is a ``ConfigError`` before
    anything is connected to or written.

    ``dedup`` (default True) stores each data file once in the repository's pool of shared
    files (``storage.pool``): a file the repository has already, from an earlier snapshot
    of the same rows, is not stored again.  ``dedup=False`` keeps every data file in the
    snapshot's own folder, a folder that stands alone.  Encrypted and locked snapshots
    keep their own files either way (``BackupOptions.shares``).
    """
    started = time.monotonic()
    options = BackupOptions(
        opt.selection(schemas, tables, exclude),
        jobs=check_jobs(jobs) or 1,
        label=check_label(label),
        allow_partial=allow_partial,
        progress=progress,
        chunk_bytes=opt.check_chunk_bytes(chunk_bytes),
        on_snapshot=on_snapshot,
        lock_wait_timeout=_seconds(lock_wait_timeout, "lock_wait_timeout"),
        timeout=_seconds(timeout, "timeout"),
        key=signing.load_private_key(sign_key) if sign_key is not None else None,
        recipients=tuple(encryption.parse_recipients(recipients or ())),
        object_lock=opt.object_lock(object_lock_days, object_lock_mode),
        dedup=bool(dedup),
        buckets=opt.bucket_choice(storage_buckets, storage_all_buckets, storage_endpoint, recipients),
    )
    describe(dsn)  # a DSN that cannot be parsed fails before anything is created
    if options.object_lock is not None:
        opt.check_object_lock(open_storage(to))  # before a local folder is made, or anything written
    repository, created = opt.open_repository(to)
    try:
        result = BackupJob(dsn, repository, options).run()
    except BaseException:
        if created is not None:  # a backup that could not even connect leaves no empty folder behind
            created.remove_root_if_empty()
        raise
    result.seconds = time.monotonic() - started
    return result


class BackupJob:
    """One backup run: its sessions, the lock on the repository, its time limit, and the
    snapshot it is writing (``staging``, removed unless it is published)."""

    def __init__(self, dsn: str, repository: Storage, options: BackupOptions):
        self.dsn = dsn
        self.repository = repository
        self.options = options
        self.warnings: list[str] = []
        self.session = SessionSpec(
            dsn,
            application=f"backupkit backup {os.getpid()} {secrets.token_hex(4)}",
            lock_wait_timeout=options.lock_wait_timeout,
            deadline=time.time() + options.timeout if options.timeout else None,
        )
        self.watchdog = Watchdog(self.session, options.timeout)
        self.staging: SnapshotLocation | None = None
        self.reused_bytes = 0
        #: Storage names and sizes of the data files this backup saw stored (``verify``'s ``confirmed``).
        self.confirmed: dict[str, int] = {}
        self.storage_read = (0, 0)  # (files, bytes) read from the Storage endpoint
        self.workers: Workers | None = None
        self.lock: DirLock | None = None  # the repository's, while ``run`` holds it
        self.jobs_hidden = False  # pg_cron's jobs left out (``allow_partial``)
        #: The project's own objects on the platform's tables this backup leaves out (``pg.left_out``).
        self.left_on_platform: list[dict[str, Any]] = []

    def warn(self, message: str) -> None:
        """Log a warning now (a scheduled run's log shows it even if the backup then fails) and keep it."""
        log.warning(message)
        self.warnings.append(message)

    def run(self) -> BackupResult:
        """Lock the repository, take the snapshot, release the lock."""
        if is_transaction_pooler(self.dsn):
            self.warn(POOLER_WARNING)
        # Its signs of life start once the workers are forked (``_take``): no thread may run at a fork.
        with sigterm_as_interrupt():
            lock = self.lock = DirLock(self.repository, "backup", heartbeat=False)
            lock.acquire()
            try:
                if lock.took_over:
                    self.warn(lock.took_over)
                result = self._take()
            except (BackupkitError, psycopg.Error, OSError):
                lock.release()
                if self.watchdog.expired:
                    raise self.watchdog.error() from None
                raise
            except BaseException:
                lock.release()
                raise
            # Published: an interrupt now would report a finished backup as interrupted.
            with uninterrupted("releasing the repository's lock (the snapshot is published)"):
                lock.release()
            return result

    def _take(self) -> BackupResult:
        try:
            server, pg_dump_version, tables = self._inspect()
        except psycopg.Error as exc:
            # No watchdog runs yet (see below): the server ends a side session that outlives
            # the run's time limit (its timeout, in whole milliseconds, may fire a little
            # early), and that is the error to report.
            if self.session.deadline is not None and time.time() >= self.session.deadline - 1:
                self.watchdog.expired = True
                raise self.watchdog.error() from None
            raise self._stopped_by_database(exc) from None
        # Forked here, if at all: the side session is closed, and no other session, pg_dump
        # or watchdog thread has started yet, which the workers would hold (``capture.workers``).
        # The watchdog's limit counts from the run's start all the same (``session.deadline``).
        self.workers = start_workers(self.options.jobs, tables)
        assert self.lock is not None
        self.lock.beat()  # a backup longer than the lock's stale_after is not taken for a crashed one
        with self.workers or contextlib.nullcontext(), self.watchdog:
            return self._copy_and_seal(server, pg_dump_version, [(t["schema"], t["name"]) for t in tables])

    def _copy_and_seal(
        self, server: Server, pg_dump_version: tuple[int, int], names: list[tuple[str, str]]
    ) -> BackupResult:
        """Lock ``names``, fix the moment, copy data and schema, verify and publish."""
        self.session = replace(self.session, server_version_num=server.version_num)
        log.info("PostgreSQL %s, database %s: %d tables to lock", server.version, server.database, len(names))
        try:
            main = self.session.connect()
        except psycopg.Error as exc:  # lost while its settings were being sent
            raise self._stopped_by_database(exc) from None
        keepalive = KeepAlive()
        try:
            moment = self._fix_moment(main, keepalive, names, server)
            if self.options.on_snapshot:
                self.options.on_snapshot(moment.snapshot)
            self.watchdog.check()
            log.info(
                "snapshot %s exported: %d tables, %d sequences",
                moment.snapshot,
                len(moment.tables),
                len(moment.sequences),
            )
            if not self.options.selection.include:
                # Again at the consistent moment, which the platform tables' pg_dump sees: the
                # manifest names (and finds by oid) exactly what that archive holds.
                self.left_on_platform = left_on_platform(main, self.options.selection.schemas)
            sid = new_id(moment.taken_at, self.options.label)
            self.staging = staging = SnapshotLocation(self.repository, staging_name(sid))
            # The schema's pg_dump runs while the data is copied (both inside the exported
            # snapshot): it is a fixed cost of every backup, a large share of a small one's.
            # Leaving the pool waits for it, so nothing writes into staging once it is removed.
            # A failed schema dump stops the copy at once, and its error is the one reported.
            with ThreadPoolExecutor(1, thread_name_prefix="backupkit-schema") as schema_pool:
                schema_job = schema_pool.submit(self._dump_schema, main, moment)
                schema_job.add_done_callback(self._stop_if_failed)
                try:
                    tables = self._copy_data(moment, server.version_num, keepalive)
                    schema_files, schema_sql = schema_job.result()
                except BaseException:
                    if not schema_job.done():
                        # pg_dump runs on by itself (a SIGTERM sent to this process alone does
                        # not reach it), and leaving the pool waits for it: end its sessions.
                        end_sessions(self.session)
                    elif (failed := schema_job.exception()) is not None:
                        raise failed from None
                    raise
            self.watchdog.check()
            if self.options.shares:
                tables = self._share(tables)
                self.watchdog.check()
            # Where each data file's bytes now are, as its writer (or the pool) confirmed them.
            files = [f for fs in tables.values() for f in fs]
            self.confirmed = {pool.blob_name(f.sha256) if f.shared else staging.key(f.path): f.bytes for f in files}
            # The last reads of the consistent moment; then its transaction ends, before the
            # bucket files are copied and everything is verified: held open, its table locks
            # would queue a migration's ALTER TABLE (and every query behind it) for as long.
            at_moment = self._bucket_rows(main) if self.options.buckets else None
            database = database_objects.describe(main, self.options.selection.schemas)
            roles = self._roles(main, database, schema_sql)
            # Nothing a restore runs carries them: it can only say what differs (``recovery.settings``).
            named = {r["name"] for r in roles} | set(database_objects.API_ROLES)
            role_settings = database_objects.role_settings(main, named, always=database_objects.API_ROLES)
            database_settings = database_objects.database_settings(main)
            jobs = self._cron_jobs(main, moment)
            keepalive.close()
            main.close()
            buckets = self._buckets(at_moment, staging) if at_moment is not None else None
            if jobs is not None:
                schema_files.append(self._store(io.BytesIO(cron.dumps(jobs)), mf.CRON_JOBS))
            written = Written(
                snapshot_id=sid,
                label=self.options.label,
                source=describe(self.dsn),
                pg_dump_version=pg_dump_version,
                tables=tables,
                schema_files=schema_files,
                database=database,
                roles=roles,
                role_settings=role_settings,
                database_settings=database_settings,
                cron_jobs=[j.summary() for j in jobs] if jobs is not None else None,
                left_on_platform=self.left_on_platform,
                signed_by=signing.key_id(self.options.key.public_key()) if self.options.key else None,
                encryption=encryption.manifest_entry(self.options.recipients) if self.options.recipients else None,
                object_lock=opt.lock_entry(moment.taken_at, *self.options.object_lock)
                if self.options.object_lock
                else None,
                storage=buckets,
            )
            manifest = build_manifest(moment, self.options.selection, written)
            if self.jobs_hidden:  # like a table's rows row-level security hid (``allow_partial``)
                manifest["partial"] = True
                manifest["partial_tables"].append("cron.job")
            result = self._seal(sid, manifest)
            if moment.hidden:
                self.warn(
                    f"partial backup: only rows visible to {moment.role['user']} were copied from "
                    f"{', '.join(result.manifest['partial_tables'])}"
                )
            return result
        except psycopg.Error as exc:
            raise self._stopped_by_database(exc) from None
        except OSError as exc:  # disk full, permissions, read-only file system
            raise opt.storage_error(exc, self.repository.where()) from None
        finally:
            keepalive.close()
            main.close()
            if self.staging is not None:
                with contextlib.suppress(OSError):
                    self.repository.remove(self.staging.id)

    def _stop_if_failed(self, job: Future) -> None:
        if job.exception() is not None:
            self.watchdog.stopper.stop()

    def _copy_data(self, moment: Moment, server_version_num: int, keepalive: KeepAlive) -> dict[str, list[FileResult]]:
        """Every table's rows into the staging snapshot's data files (``readers.copy_all``)."""
        assert self.staging is not None
        stems = {mf.table_key(t): file_stem(t) for t in moment.tables}
        items = plan(moment.tables, stems, self.options.chunk_bytes, server_version_num)
        log.info(
            "copying %d tables in %d files with %d job(s) into %s",
            len(moment.tables),
            len(items),
            self.options.jobs,
            self.staging,
        )
        step = time.monotonic()
        tables = copy_all(
            self.session,
            moment.snapshot,
            items,
            self.staging,
            self.options.jobs,
            self.options.progress,
            keepalive=keepalive,
            stopper=self.watchdog.stopper,
            recipients=self.options.recipients,
            pooled=self.options.shares,
            workers=self.workers,
        )
        log.info("data: %d rows in %.1f s", sum(f.rows for fs in tables.values() for f in fs), time.monotonic() - step)
        return tables

    def _stopped_by_database(self, exc: psycopg.Error) -> SourceError:
        return SourceError(
            f"the database stopped the backup: {redact(str(exc).strip(), self.dsn)}",
            hint="nothing was written; fix the cause and run the backup again",
        )

    def _inspect(self) -> tuple[Server, tuple[int, int], list[dict]]:
        """Before the snapshot: server version, pg_dump, and which tables to lock (side connection)."""
        selection = self.options.selection
        with self.session.connect(autocommit=True, margin=0) as side:
            server = Server(
                *one_row(
                    side.execute(
                        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                        "current_setting('server_encoding'), current_database()"
                    )
                )
            )
            _, pg_dump_version = check_pg_dump(server.version_num)
            missing = sorted(set(selection.schemas) - set(existing_schemas(side, selection.schemas)))
            if missing:
                raise SourceError(
                    f"no such schema: {', '.join(missing)}",
                    hint="check the `schemas` names (`backupkit check` lists what is there)",
                )
            needs = needs_outside(side, selection.schemas)
            if needs:
                self.warn(needs_outside_warning(needs))
            left = self.left_on_platform = left_on_platform(side, selection.schemas) if not selection.include else []
            if left:
                log.info("%s", kept_on_platform_note(left))
            unkept = unkept_extension_data(side)
            if unkept:
                self.warn(unkept)
            try:  # measuring a table's size takes its lock too
                tables = select_tables(list_tables(side, selection.schemas), selection.include, selection.exclude)
            except psycopg.errors.LockNotAvailable:
                raise lock_wait_error(
                    _exclusively_locked(side, schemas=selection.schemas),
                    self.session.lock_wait_timeout,
                    by_backup=False,
                ) from None
        clashes = same_names(tables)
        if clashes:  # the second table's files and manifest entry would take the first's place
            raise SourceError(
                "backupkit names tables schema.name and cannot tell apart "
                + "; ".join(" and ".join(names) for names in clashes),
                hint="rename one of each (ALTER TABLE ... RENAME, or ALTER SCHEMA ... RENAME), then back up",
            )
        return server, pg_dump_version, tables

    def _fix_moment(
        self, main: psycopg.Connection, keepalive: KeepAlive, names: list[tuple[str, str]], server: Server
    ) -> Moment:
        """Lock the tables, export the snapshot, and describe what it holds."""
        selection = self.options.selection
        main.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        main.read_only = True
        keepalive.add(main)  # idle through pg_dump and the whole copy: kept busy
        # Lock before the snapshot is taken (LOCK takes none): a TRUNCATE or ALTER that
        # commits in between would otherwise empty a table inside our "consistent" view.
        self._lock(main, names)
        with main.pipeline():  # one round trip for both
            exported = main.execute("SELECT pg_export_snapshot()")
            main.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
        snapshot = one_row(exported)[0]
        taken_at = datetime.now(UTC)
        role = role_info(main)
        chosen = select_tables(list_tables(main, selection.schemas), selection.include, selection.exclude)
        locked = set(names)
        self._lock(main, [(t["schema"], t["name"]) for t in chosen if (t["schema"], t["name"]) not in locked])
        hidden = [t for t in chosen if not t["rls"]["bypassed"]]
        if hidden and not self.options.allow_partial:
            raise RowLevelSecurityError(
                f"row-level security would hide rows of {', '.join(mf.table_key(t) for t in hidden)} "
                f"from role {role['user']}, so the backup would silently be partial",
                hint="connect as the tables' owner or a role with BYPASSRLS (Supabase: the postgres "
                "role), or pass `allow_partial` to back up only the visible rows",
            )
        # Chosen before any is read: an excluded table's sequence may be one this role cannot read.
        sequences = read_sequences(main, sequences_of(list_sequences(main, selection.schemas), chosen, selection))
        matviews = list_matviews(main, selection.schemas) if not selection.include else []
        return Moment(
            snapshot=snapshot,
            taken_at=taken_at,
            server=server,
            role=role,
            tables=chosen,
            hidden=hidden,
            sequences=sequences,
            matviews=matviews,
        )

    def _lock(self, conn: psycopg.Connection, names: list[tuple[str, str]]) -> None:
        """ACCESS SHARE on every table of ``names`` in one statement: one round trip, where a
        LOCK per table waited for the network once per table (tens of milliseconds each to a
        hosted database).  The lock-wait limit still applies to each table's lock, and a
        table whose lock did not come in time is named."""
        if not names:
            return
        tables = sql.SQL(", ").join(sql.Identifier(schema, name) for schema, name in names)
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(tables))
        except psycopg.errors.LockNotAvailable:
            raise lock_wait_error(
                _exclusively_locked(conn, names),
                self.session.lock_wait_timeout,
                by_backup=False,
            ) from None

    def _dump_schema(self, main: psycopg.Connection, moment: Moment) -> tuple[list[dict[str, Any]], str]:
        """pg_dump (under the run's application_name, its lock waits bounded like ours) into
        scratch space, then into the snapshot, hashed on the way; the file entries and the SQL."""
        selection = self.options.selection
        # Next to a local repository, not in /tmp: the archive holds the large objects' data.
        # Not when encrypting: then no plain byte is written where the snapshots are.
        near = None
        if isinstance(self.repository, LocalStorage) and not self.options.recipients:
            near = self.repository.root
        step = time.monotonic()
        with scratch(f"{TMP_PREFIX}schema-", near=near) as tmp:
            try:
                rels = dump_schema(
                    make_conninfo(self.session.dsn, application_name=self.session.tool_application),
                    tmp,
                    snapshot=moment.snapshot,
                    schemas=selection.schemas,
                    tables=selection.include,
                    exclude=selection.exclude,
                    lock_wait_timeout=self.session.lock_wait_timeout,
                )
            except ToolError as exc:
                raise self._pg_dump_error(main, exc) from None
            if self.left_on_platform and (kept := self._dump_platform_objects(tmp, moment)):
                rels.append(kept)
            entries = [self._upload(tmp, rel) for rel in sorted(rels)]
            sql_text = "".join(_read_text(tmp, rel) for rel in (mf.PRE_DATA, mf.POST_DATA, mf.DATABASE_SQL))
        log.info("schema: pg_dump wrote %d files in %.1f s", len(entries), time.monotonic() - step)
        return entries, sql_text

    def _dump_platform_objects(self, tmp: LocalStorage, moment: Moment) -> str | None:
        """The project's own objects on the platform's tables, kept (``mf.PLATFORM_DUMP``); a
        role that may not dump those tables keeps the rest of the backup, warned that they are
        left out (the manifest still names them, and a restore says which are missing)."""
        try:
            dump_platform_objects(
                make_conninfo(self.session.dsn, application_name=self.session.tool_application),
                tmp.path(mf.PLATFORM_DUMP),
                snapshot=moment.snapshot,
                left=self.left_on_platform,
                lock_wait_timeout=self.session.lock_wait_timeout,
            )
        except ToolError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.warn(left_on_platform_warning(self.left_on_platform, reason=reason))
            return None
        return mf.PLATFORM_DUMP

    def _cron_jobs(self, main: psycopg.Connection, moment: Moment) -> list[cron.Job] | None:
        """pg_cron's jobs at the consistent moment (None: no pg_cron); a role that may not
        read them fails the backup, as rows hidden from it do, unless ``allow_partial``."""
        try:
            return cron.read_jobs(main)
        except cron.Unreadable:
            user = moment.role["user"]
            if not self.options.allow_partial:
                raise SourceError(
                    f"role {user} may not read every pg_cron job (cron.job), so the snapshot would lack them",
                    hint="back up as a role with SELECT on cron.job and BYPASSRLS (Supabase: postgres), "
                    "or pass `allow_partial` to back up without the jobs",
                ) from None
            self.warn(f"partial backup: role {user} may not read pg_cron's scheduled jobs (cron.job): none recorded")
            self.jobs_hidden = True
            return None

    def _pg_dump_error(self, main: psycopg.Connection, exc: ToolError) -> BackupkitError:
        text = str(exc)
        # pg_dump --lock-wait-timeout runs its LOCK TABLE (of many tables) under a statement_timeout.
        if "LOCK TABLE" in text and ("statement timeout" in text or "lock timeout" in text):
            # The backup ends here: the snapshot's transaction may end too.
            locked = _exclusively_locked(main, schemas=self.options.selection.schemas)
            return lock_wait_error(locked, self.session.lock_wait_timeout, by_backup=True)
        return exc

    def _upload(self, source: Storage, rel: str) -> dict[str, Any]:
        """Copy file ``rel`` of ``source`` into the snapshot being written (``_store``)."""
        with source.open(rel) as src:
            return self._store(src, rel)

    def _store(self, src: BinaryIO, rel: str) -> dict[str, Any]:
        """Write ``src``'s bytes as file ``rel`` of the snapshot being written (encrypted to the
        recipients, if any); its manifest entry, of the bytes stored."""
        assert self.staging is not None
        recipients = self.options.recipients
        with self.repository.create(self.staging.key(rel)) as dst:
            if recipients:
                size, digest = encryption.encrypt_file(src, dst, recipients)
            else:
                sha = hashlib.sha256()
                size = 0
                while block := src.read(BLOCK):
                    sha.update(block)
                    size += len(block)
                    dst.write(block)
                digest = sha.hexdigest()
        return {"path": rel, "bytes": size, "sha256": digest}

    def _share(self, tables: dict[str, list[FileResult]]) -> dict[str, list[FileResult]]:
        """Move the data files into the repository's pool (``storage.pool``), dropping those it
        has already: the same files, marked shared.  Before the manifest is written, under the lock."""
        assert self.staging is not None
        staging, repository = self.staging, self.repository
        files = [f for fs in tables.values() for f in fs]

        def one(f: FileResult) -> str:
            if f.placed:  # its writer put it there (pool.place)
                return f.placed
            return pool.share(repository, staging.key(f.path), f.sha256, f.bytes)

        # Renames are instant on a disk; on S3 each is a server-side copy, so several at a time.
        with ThreadPoolExecutor(1 if isinstance(repository, LocalStorage) else 8) as workers:
            outcome = dict(zip((f.path for f in files), workers.map(one, files), strict=True))
        present = [f for f in files if outcome[f.path] == pool.PRESENT]
        self.reused_bytes = sum(f.bytes for f in present)
        log.info(
            "shared files: %d of %d already in the repository (%s not stored again)",
            len(present),
            len(files),
            f"{sum(f.bytes for f in present) / 1e6:.1f} MB",
        )
        if pool.KEPT not in outcome.values():
            repository.remove(staging.key(mf.DATA_DIR))  # an empty folder, on a disk
        return {key: [replace(f, shared=outcome[f.path] != pool.KEPT) for f in fs] for key, fs in tables.items()}

    def _bucket_rows(self, main: psycopg.Connection) -> reconcile.AtMoment:
        """The chosen buckets' settings and ``storage.objects`` rows at the consistent moment (``main`` is in it)."""
        from ..buckets.reconcile import read_at_moment

        assert self.options.buckets is not None
        return read_at_moment(main, self.options.buckets.resolve())

    def _buckets(self, at_moment: reconcile.AtMoment, staging: SnapshotLocation) -> dict[str, Any]:
        """Copy the chosen Storage buckets' files and reconcile them with ``storage.objects`` as
        of the consistent moment (``at_moment``): the manifest's ``storage``."""
        from ..buckets import reconcile
        from ..buckets.capture import Copier

        choice = self.options.buckets
        assert choice is not None
        names, settings, rows, rows_there = at_moment.names, at_moment.settings, at_moment.rows, at_moment.has_tables
        copier = Copier(choice.endpoint, self.repository, staging, self.options.shares, self._previous_files())
        show = wanted(self.options.progress)
        entries = []
        for name in names:
            entries.append(copier.bucket(name, settings.get(name), show))
            self.watchdog.check()
        unique = mf.bucket_files({"storage": {"buckets": entries}})
        if all(f.get("shared") is True for f in unique):
            self.repository.remove(staging.key(mf.FILES_DIR))  # nothing but an empty folder, on a disk
        stored = sum(f["bytes"] for f in unique)
        self.reused_bytes += stored - copier.added_bytes
        self.storage_read = (copier.read_files, copier.read_bytes)
        mismatches = reconcile.reconcile(rows, {b["name"]: b["files"] for b in entries}, names) if rows_there else []
        for m in mismatches:
            self.warn(f"storage: {reconcile.describe(m)}")
        log.info(
            "storage: %d files in %d buckets, %.1f MB read, %.1f MB unchanged since the last snapshot",
            sum(len(b["files"]) for b in entries),
            len(entries),
            copier.read_bytes / 1e6,
            copier.carried_bytes / 1e6,
        )
        return {
            "endpoint": choice.endpoint.where,
            "buckets": entries,
            "objects_rows": rows_there,
            "mismatches": mismatches,
        }

    def _previous_files(self) -> dict[tuple[str, str], dict]:
        """The newest snapshot's bucket files, to carry unchanged ones over (none if unreadable)."""
        from ..buckets.capture import previous_files

        if not self.options.shares:
            return {}
        snaps, _ = list_snapshots(self.repository)
        newest = next((s for s in snaps if s.error is None), None)
        if newest is None:
            return {}
        try:
            return previous_files(mf.read(newest.location))
        except BackupkitError:
            return {}

    def _roles(self, main: psycopg.Connection, database: dict[str, Any], schema_sql: str) -> list[dict[str, Any]]:
        """The roles the snapshot's SQL, ACLs and owners name, with their attributes."""
        owned = database["large_objects"] + database["default_privileges"]
        names = (
            database_objects.referenced_roles(schema_sql)
            | database_objects.acl_roles([x["acl"] for x in owned])
            | {x["owner"] for x in database["large_objects"] + database["publications"]}
        )
        return database_objects.role_attributes(main, names)

    def _seal(self, sid: str, manifest: dict[str, Any]) -> BackupResult:
        """Write the manifest (and signature), verify everything, and publish the snapshot."""
        assert self.staging is not None
        key = self.options.key
        mf.write(self.staging, manifest)
        if key is not None:  # signed, and the signature checked, before it can become a snapshot
            signing.write_signature(self.staging, key)
        # The hashes in the manifest were computed while writing; on S3 every body went with its
        # Content-MD5 (checked there), so reading it all back would prove nothing more.
        report = verify(
            self.staging,
            public_key=key.public_key() if key is not None else None,
            written=True,
            confirmed=self.confirmed,
        )
        if not report.ok:
            raise StorageError(
                "the snapshot did not verify right after writing: " + "; ".join(report.problems),
                hint="the storage under `to` may be faulty; try another folder",
            )
        self.watchdog.check()  # past the time limit, nothing becomes a snapshot
        assert self.lock is not None
        self.lock.check_held()  # a prune that took the lock over may have removed shared files
        log.info("verified %d files; publishing as %s", report.files, sid)
        # durable: everything before the rename; locked, when asked, by the copies that publish it
        publish(self._publisher(manifest), self.staging.id, sid)
        self.staging = None
        final = SnapshotLocation(self.repository, sid)
        return BackupResult(
            final,
            mf.read(final),
            self.warnings,
            reused_bytes=self.reused_bytes,
            storage_files_read=self.storage_read[0],
            storage_bytes_read=self.storage_read[1],
        )

    def _publisher(self, manifest: dict[str, Any]) -> Storage:
        """The storage that publishes the snapshot: the repository, or its view that creates
        every object with the manifest's Object Lock retention (``S3Storage.with_retention``)."""
        lock = manifest.get("object_lock")
        if lock is None:
            return self.repository
        from ..storage.s3 import S3Storage

        assert isinstance(self.repository, S3Storage)  # checked by backup()
        log.info("the snapshot's objects are locked (%s) until %s", lock["mode"], lock["retain_until"])
        return self.repository.with_retention(lock["mode"], datetime.fromisoformat(lock["retain_until"]))


def _read_text(storage: Storage, rel: str) -> str:
    with storage.open(rel) as f:
        return f.read().decode()


def _exclusively_locked(
    conn: psycopg.Connection, names: Sequence[tuple[str, str]] = (), *, schemas: Sequence[str] = ()
) -> str:
    """What to name in the error after a lock wait gave up on ``conn``: the tables of
    ``names`` (or of ``schemas``) that another session holds or awaits in ACCESS EXCLUSIVE
    mode, or "(one of the tables)" when that cannot be told (the lock is gone by now)."""
    wanted = sorted({schema for schema, _ in names} | set(schemas))
    try:
        conn.rollback()  # a transaction that gave up waiting is lost anyway: free the connection
        held = conn.execute(_EXCLUSIVELY_LOCKED, (wanted,)).fetchall()
    except psycopg.Error:
        held = []
    return ", ".join(f"{s}.{n}" for s, n in held if not names or (s, n) in names) or "(one of the tables)"


#: Relations of these schemas that another session holds (or awaits) in ACCESS EXCLUSIVE mode.
_EXCLUSIVELY_LOCKED = """
SELECT DISTINCT n.nspname, c.relname FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_class c ON c.oid = l.relation
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE l.mode = 'AccessExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
   AND n.nspname = ANY(%s) ORDER BY 1, 2
"""
