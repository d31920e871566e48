"""Taking a snapshot: one consistent moment, every table through COPY, written once.

The main connection opens a REPEATABLE READ transaction and exports its
snapshot; pg_dump and every worker connection import it, as ``pg_dump -j``
does, so all tables and the schema come from the same instant.  Everything is
written under ``DIR/.tmp-*`` and renamed into place only after it verifies.

Every session of one run carries the ``application_name``
``backupkit backup PID TOKEN`` (pg_dump's too), waits at most
``lock_wait_timeout`` for a lock, and ends by itself when its process does
(see ``workers``).  A watchdog enforces ``timeout`` on the whole run: it kills
the worker processes, cancels the queries under way and terminates the run's
sessions, and the backup fails with nothing written.  SIGTERM stops a backup
the way Ctrl-C does: the ``.tmp-*`` folder is removed, the lock released, the
sessions closed, and ``KeyboardInterrupt`` raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import __version__
from ..errors import BackupkitError, ConfigError, RowLevelSecurityError, SourceError, StorageError, ToolError
from ..pg import copyio, database_objects
from ..pg.catalog import existing_schemas, list_matviews, list_sequences, list_tables, role_info, select_tables
from ..pg.copyio import FileResult
from ..pg.dsn import POOLER_WARNING, connect, describe, is_transaction_pooler, redact
from ..pg.schema import dump_schema
from ..pg.tools import check_pg_dump
from ..runtime.deadline import seconds as _seconds
from ..runtime.signals import sigterm_as_interrupt
from ..snapshot import manifest as mf
from ..snapshot import signing
from ..snapshot.verify import check_jobs, verify
from ..storage.lock import DirLock
from ..storage.repository import TMP_PREFIX, check_label, new_id
from .readers import CHUNK_BYTES, KeepAlive, SessionSpec, Stopper, copy_all, lock_wait_error, plan

log = logging.getLogger("backupkit")

#: Default seconds to wait for one table's lock (``pg_dump --lock-wait-timeout``).  Long
#: enough to ride out the short exclusive locks of ordinary DDL and deploy migrations;
#: short enough that a backup started under a long one (VACUUM FULL, a table rewrite)
#: fails with a clear message instead of waiting for ever, queueing other sessions' locks.
LOCK_WAIT_TIMEOUT = 60.0
#: Default limit on a whole backup run, in seconds: the original system's 30 minutes.
TIMEOUT = 30 * 60.0


@dataclass
class BackupResult:
    """A finished snapshot: where it is, its manifest, and anything worth a warning."""

    path: Path
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.manifest["tables"])

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in mf.all_files(self.manifest))

    def summary(self) -> list[dict]:
        """One row per table: name, rows, compressed bytes, files."""
        return [{"table": mf.table_key(t), "rows": t["rows"],
                 "bytes": sum(f["bytes"] for f in t["files"]), "files": len(t["files"])}
                for t in self.manifest["tables"]]


def _encode(name: str) -> str:
    # Dots are encoded too, so "a.b"."c" and "a"."b.c" get different files.
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


def _file_stem(table: dict) -> str:
    return f"{_encode(table['schema'])}.{_encode(table['name'])}"


def _warn(warnings: list[str], message: str) -> None:
    """Log a warning now (a scheduled run's log shows it even if the backup then fails) and keep it."""
    log.warning(message)
    warnings.append(message)


def _storage_error(exc: OSError, where: Path) -> StorageError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = "free some space or back up to another --to folder" if exc.errno == errno.ENOSPC else \
        "check the folder's permissions and that it is writable"
    return StorageError(f"cannot write the snapshot under {where}: {reason}", hint=hint)


def backup(dsn: str, to: Path | str, *, schemas: list[str] | None = None, tables: list[str] = (),
           exclude: list[str] = (), jobs: int = 1, label: str | None = None,
           allow_partial: bool = False, progress: bool | None = None,
           chunk_bytes: int = CHUNK_BYTES, on_snapshot=None,
           lock_wait_timeout: float | None = LOCK_WAIT_TIMEOUT,
           timeout: float | None = TIMEOUT, sign_key: Path | str | None = None) -> BackupResult:
    """Back up ``dsn`` into a new snapshot folder under ``to`` and return it.

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
    signs ``manifest.json`` into ``manifest.json.sig`` before the snapshot is renamed
    into place, and records the key's id as the manifest's ``signed_by``.  The key is
    loaded first: a missing key, or one that group or others may read, is a
    ``ConfigError`` before anything is connected to or written.
    """
    started = time.monotonic()
    label = check_label(label)
    check_jobs(jobs)  # 1 to MAX_JOBS: each job is a connection (and a process, for backup)
    lock_wait_timeout = _seconds(lock_wait_timeout, "--lock-wait-timeout")
    timeout = _seconds(timeout, "--timeout")
    key = signing.load_private_key(sign_key) if sign_key is not None else None
    schemas = list(schemas or ["public"])
    for t in [*tables, *exclude]:
        if "." not in t:
            raise ConfigError(f"table {t!r} needs a schema: write it as schema.table")
    for t in tables:  # naming a table includes its schema; excluding one never adds it
        if t.split(".", 1)[0] not in schemas:
            schemas.append(t.split(".", 1)[0])
    describe(dsn)  # a DSN that cannot be parsed fails before anything is created
    to = Path(to)
    created = not to.exists()
    try:
        to.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(exc, to) from None
    try:
        return _backup_in(dsn, to, schemas, list(tables), list(exclude), jobs, label, allow_partial, progress,
                          chunk_bytes, on_snapshot, lock_wait_timeout, timeout, started, key)
    except BaseException:
        if created:  # a backup that could not even connect leaves no empty --to folder behind
            with contextlib.suppress(OSError):
                to.rmdir()
        raise


def _backup_in(dsn, to, schemas, tables, exclude, jobs, label, allow_partial, progress, chunk_bytes,
               on_snapshot, lock_wait_timeout, timeout, started, key=None) -> BackupResult:
    """The backup once its folder exists: lock it, take the snapshot, release it."""
    warnings: list[str] = []
    if is_transaction_pooler(dsn):
        _warn(warnings, POOLER_WARNING)
    session = SessionSpec(dsn, application=f"backupkit backup {os.getpid()} {secrets.token_hex(4)}",
                          lock_wait_timeout=lock_wait_timeout,
                          deadline=time.time() + timeout if timeout else None)
    with sigterm_as_interrupt(), DirLock(to, "backup") as lock, _Watchdog(session, timeout) as watchdog:
        if lock.took_over:
            _warn(warnings, lock.took_over)
        try:
            result = _backup_locked(session, to, schemas, tables, exclude, jobs, label,
                                    allow_partial, progress, chunk_bytes, on_snapshot, warnings, watchdog,
                                    key)
        except (BackupkitError, psycopg.Error, OSError):
            if watchdog.expired:
                raise watchdog.error() from None
            raise
    result.seconds = time.monotonic() - started
    return result


class _Watchdog:
    """Ends a run that outlives its ``timeout``: kills its workers, cancels its queries and
    terminates every session carrying the run's application_name (pg_dump's included)."""

    def __init__(self, session: SessionSpec, timeout: float | None):
        self.session = session
        self.timeout = timeout
        self.stopper = Stopper()
        self.expired = False
        self._timer = threading.Timer(timeout, self._fire) if timeout else None
        if self._timer is not None:
            self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self.expired = True
        log.warning("the backup reached its time limit of %g s; stopping it", self.timeout)
        self.stopper.stop()
        end_sessions(self.session)

    def check(self) -> None:
        """Raise the timeout error if the run's time is up (between steps)."""
        if self.expired:
            raise self.error()

    def error(self) -> SourceError:
        return SourceError(
            f"the backup did not finish within its time limit ({self.timeout:g} s) and was stopped; "
            "nothing was written",
            hint="pass a larger --timeout (0 for none) if the database is this big, or look for "
                 "what held it up (locks, a slow disk or network)")


def end_sessions(session: SessionSpec) -> None:
    """Terminate every session of this run still on the server (best effort)."""
    try:
        with connect(session.dsn, autocommit=True, application="backupkit watchdog",
                     connect_timeout=5) as conn:
            conn.execute("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                         "WHERE application_name = %s AND pid <> pg_catalog.pg_backend_pid()",
                         (session.application,))
    except Exception as exc:
        log.warning("could not end the backup's sessions: %s", redact(str(exc), session.dsn))


def _inspect(session: SessionSpec, schemas: list[str], include: list[str], exclude: list[str]):
    """Before the snapshot: server version, pg_dump, and which tables to lock (side connection)."""
    with session.connect(autocommit=True) as side:
        server = side.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
            "current_setting('server_encoding'), current_database()").fetchone()
        _, pg_dump_version = check_pg_dump(server[1])
        missing = sorted(set(schemas) - set(existing_schemas(side, schemas)))
        if missing:
            raise SourceError(f"no such schema: {', '.join(missing)}",
                              hint="check the --schema names (`backupkit check` lists what is there)")
        try:  # measuring a table's size takes its lock too
            names = [(t["schema"], t["name"]) for t in select_tables(list_tables(side, schemas), include, exclude)]
        except psycopg.errors.LockNotAvailable:
            locked = side.execute(_EXCLUSIVELY_LOCKED, (schemas,)).fetchall()
            raise lock_wait_error(", ".join(f"{s}.{n}" for s, n in locked) or "(one of the tables)",
                                  session.lock_wait_timeout, by_backup=False) from None
    return server, pg_dump_version, names


#: Relations of these schemas that another session holds (or awaits) in ACCESS EXCLUSIVE mode.
_EXCLUSIVELY_LOCKED = """
SELECT DISTINCT n.nspname, c.relname FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_class c ON c.oid = l.relation
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE l.mode = 'AccessExclusiveLock' AND l.pid <> pg_catalog.pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
   AND n.nspname = ANY(%s) ORDER BY 1, 2
"""


def _lock(conn: psycopg.Connection, names, lock_wait_timeout: float | None) -> None:
    for schema, name in names:
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(schema, name)))
        except psycopg.errors.LockNotAvailable:
            raise lock_wait_error(f"{schema}.{name}", lock_wait_timeout, by_backup=False) from None


def _dump_schema(session: SessionSpec, main: psycopg.Connection, tmp: Path, snapshot: str,
                 schemas, include, exclude) -> None:
    """pg_dump under the run's application_name, its lock waits bounded like ours."""
    try:
        dump_schema(make_conninfo(session.dsn, application_name=session.application), tmp,
                    snapshot=snapshot, schemas=schemas, tables=include, exclude=exclude,
                    lock_wait_timeout=session.lock_wait_timeout)
    except ToolError as exc:
        text = str(exc)
        # pg_dump --lock-wait-timeout runs its LOCK TABLE (of many tables) under a statement_timeout.
        if "LOCK TABLE" in text and ("statement timeout" in text or "lock timeout" in text):
            try:
                locked = main.execute(_EXCLUSIVELY_LOCKED, (schemas,)).fetchall()
            except psycopg.Error:
                locked = []
            raise lock_wait_error(", ".join(f"{s}.{n}" for s, n in locked) or "(one of the tables)",
                                  session.lock_wait_timeout, by_backup=True) from None
        raise


def _backup_locked(session: SessionSpec, to, schemas, include, exclude, jobs, label, allow_partial,
                   progress, chunk_bytes, on_snapshot, warnings, watchdog: _Watchdog,
                   key=None) -> BackupResult:
    dsn = session.dsn
    try:
        server, pg_dump_version, names = _inspect(session, schemas, include, exclude)
    except psycopg.Error as exc:
        raise SourceError(f"the database stopped the backup: {redact(str(exc).strip(), dsn)}",
                          hint="nothing was written; fix the cause and run the backup again") from None
    session = SessionSpec(dsn, session.application, session.lock_wait_timeout, session.deadline, server[1])
    main = session.connect()
    keepalive = KeepAlive()
    tmp: Path | None = None
    try:
        main.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        main.read_only = True
        keepalive.add(main)  # idle through pg_dump and the whole copy: kept busy
        # Lock before the snapshot is taken (LOCK takes none): a TRUNCATE or ALTER that
        # commits in between would otherwise empty a table inside our "consistent" view.
        _lock(main, names, session.lock_wait_timeout)
        snapshot = main.execute("SELECT pg_export_snapshot()").fetchone()[0]
        now = datetime.now(UTC)
        main.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
        role = role_info(main)
        chosen = select_tables(list_tables(main, schemas), include, exclude)
        _lock(main, [(t["schema"], t["name"]) for t in chosen if (t["schema"], t["name"]) not in set(names)],
              session.lock_wait_timeout)
        hidden = [t for t in chosen if not t["rls"]["bypassed"]]
        if hidden and not allow_partial:
            hidden_names = ", ".join(mf.table_key(t) for t in hidden)
            raise RowLevelSecurityError(
                f"row-level security would hide rows of {hidden_names} from role {role['user']}, "
                "so the backup would silently be partial",
                hint="connect as the tables' owner or a role with BYPASSRLS (Supabase: the postgres "
                     "role), or pass --allow-partial to back up only the visible rows",
            )
        sequences = _sequences_of(list_sequences(main, schemas), chosen, include, exclude)
        matviews = list_matviews(main, schemas) if not include else []
        if on_snapshot:
            on_snapshot(snapshot)
        watchdog.check()

        sid = new_id(now, label)
        tmp = to / f"{TMP_PREFIX}{sid}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        (tmp / "data").mkdir(mode=0o700)
        _dump_schema(session, main, tmp, snapshot, schemas, include, exclude)
        watchdog.check()
        stems = {mf.table_key(t): _file_stem(t) for t in chosen}
        items = plan(chosen, tmp, stems, chunk_bytes, server[1])
        results = copy_all(session, snapshot, items, tmp, jobs, progress, keepalive=keepalive,
                           stopper=watchdog.stopper)
        watchdog.check()
        database = database_objects.describe(main, schemas)
        schema_sql = "".join((tmp / rel).read_text() for rel in (mf.PRE_DATA, mf.POST_DATA, mf.DATABASE_SQL))
        acls = [x["acl"] for x in database["large_objects"] + database["default_privileges"]]
        names = (database_objects.referenced_roles(schema_sql) | database_objects.acl_roles(acls)
                 | {x["owner"] for x in database["large_objects"] + database["publications"]})
        roles = database_objects.role_attributes(main, names)

        src = describe(dsn)
        manifest = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION,
            "id": sid, "label": label,
            "created_at": now.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
            "backupkit_version": __version__,
            "source": {**src, "server_version": server[0], "server_version_num": server[1],
                       "encoding": server[2], "database": server[3],
                       "pg_dump_version": "%d.%d" % pg_dump_version},
            "transaction_snapshot": snapshot,
            "rls_bypass": bool(role["superuser"] or role["bypassrls"]),
            "partial": bool(hidden),
            "partial_tables": [mf.table_key(t) for t in hidden],
            "schemas": schemas, "include_tables": include, "exclude_tables": exclude,
            "tables": [_table_entry(t, results[mf.table_key(t)]) for t in chosen],
            "sequences": [{k: s[k] for k in ("schema", "name", "last_value", "is_called", "owned_by")}
                          for s in sequences],
            "materialized_views": matviews,
            **database,
            "roles": roles,
            "schema_files": [_file_entry(tmp, p) for p in sorted((tmp / "schema").iterdir())],
        }
        if key is not None:
            manifest["signed_by"] = signing.key_id(key.public_key())
        mf.write(tmp, manifest)
        if key is not None:  # signed, and the signature checked, before it can become a snapshot
            signing.write_signature(tmp, key)
        report = verify(tmp, public_key=key.public_key() if key is not None else None)
        if not report.ok:
            raise StorageError("the snapshot did not verify right after writing: " + "; ".join(report.problems),
                               hint="the storage under --to may be faulty; try another folder")
        final = to / sid
        # Everything durable before the rename makes it a snapshot (data files fsync themselves).
        for path in [*(tmp / "schema").iterdir(), tmp / "schema", tmp / "data", tmp]:  # .sig fsyncs itself
            _fsync(path)
        watchdog.check()  # past the time limit, nothing becomes a snapshot
        os.rename(tmp, final)
        _fsync(to)
        tmp = None
        if hidden:
            _warn(warnings, "partial backup: only rows visible to %s were copied from %s"
                  % (role["user"], ", ".join(manifest["partial_tables"])))
        return BackupResult(final, mf.read(final), warnings)
    except psycopg.Error as exc:
        raise SourceError(f"the database stopped the backup: {redact(str(exc).strip(), dsn)}",
                          hint="nothing was written; fix the cause and run the backup again") from None
    except OSError as exc:  # disk full, permissions, read-only file system
        raise _storage_error(exc, to) from None
    finally:
        keepalive.close()
        main.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _sequences_of(sequences: list[dict], chosen: list[dict], include: list[str], exclude: list[str]) -> list[dict]:
    """The sequences pg_dump puts in this snapshot's schema: with --table only those the
    chosen tables own; never those owned by an excluded table."""
    keys = {mf.table_key(t) for t in chosen}

    def owner(s: dict) -> str | None:
        return f"{s['owned_by'][0]}.{s['owned_by'][1]}" if s.get("owned_by") else None

    if include:
        return [s for s in sequences if owner(s) in keys]
    return [s for s in sequences if owner(s) is None or owner(s) in keys or owner(s) not in exclude]


def _table_entry(t: dict, files: list[FileResult]) -> dict:
    keep = ("schema", "name", "parent", "is_partition", "columns", "copy_columns", "primary_key",
            "foreign_keys", "indexes", "rls")
    entry = {k: t[k] for k in keep}
    entry["data_format"] = copyio.DATA_FORMAT
    entry["rows"] = sum(f.rows for f in files)
    entry["files"] = [f.to_dict() for f in files]
    return entry


def _file_entry(folder: Path, path: Path) -> dict:
    from ..snapshot.verify import sha256_file

    return {"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
