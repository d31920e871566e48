"""Taking a snapshot: one consistent moment, every table through COPY, written once.

The main connection opens a REPEATABLE READ transaction and exports its
snapshot; pg_dump and every worker connection import it, as ``pg_dump -j``
does, so all tables and the schema come from the same instant.  Everything is
written under ``DIR/.tmp-*`` and renamed into place only after it verifies.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from . import __version__, copyio, database_objects
from . import manifest as mf
from .catalog import existing_schemas, list_matviews, list_sequences, list_tables, role_info, select_tables
from .copyio import FileResult
from .dsn import POOLER_WARNING, connect, describe, is_transaction_pooler, redact
from .errors import ConfigError, RowLevelSecurityError, SourceError, StorageError
from .lock import DirLock
from .pgtools import check_pg_dump
from .schema import dump_schema
from .store import TMP_PREFIX, check_label, new_id
from .verify import verify
from .workers import CHUNK_BYTES, copy_all, plan

log = logging.getLogger("backupkit")


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
           chunk_bytes: int = CHUNK_BYTES, on_snapshot=None) -> BackupResult:
    """Back up ``dsn`` into a new snapshot folder under ``to`` and return it.

    ``schemas`` defaults to ``["public"]``; ``tables``/``exclude`` take
    ``schema.table`` names.  ``on_snapshot(snapshot_id)`` is called once the
    consistent moment is fixed, before any data is read.
    """
    started = time.monotonic()
    label = check_label(label)
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    schemas = list(schemas or ["public"])
    for t in [*tables, *exclude]:
        if "." not in t:
            raise ConfigError(f"table {t!r} needs a schema: write it as schema.table")
    for t in tables:  # naming a table includes its schema; excluding one never adds it
        if t.split(".", 1)[0] not in schemas:
            schemas.append(t.split(".", 1)[0])
    describe(dsn)  # a DSN that cannot be parsed fails before anything is created
    to = Path(to)
    try:
        to.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(exc, to) from None
    warnings: list[str] = []
    if is_transaction_pooler(dsn):
        _warn(warnings, POOLER_WARNING)
    with DirLock(to, "backup") as lock:
        if lock.took_over:
            _warn(warnings, lock.took_over)
        result = _backup_locked(dsn, to, schemas, list(tables), list(exclude), jobs, label,
                                allow_partial, progress, chunk_bytes, on_snapshot, warnings)
    result.seconds = time.monotonic() - started
    return result


def _inspect(dsn: str, schemas: list[str], include: list[str], exclude: list[str]):
    """Before the snapshot: server version, pg_dump, and which tables to lock (side connection)."""
    with connect(dsn, autocommit=True) as side:
        server = side.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
            "current_setting('server_encoding'), current_database()").fetchone()
        _, pg_dump_version = check_pg_dump(server[1])
        missing = sorted(set(schemas) - set(existing_schemas(side, schemas)))
        if missing:
            raise SourceError(f"no such schema: {', '.join(missing)}",
                              hint="check the --schema names (`backupkit check` lists what is there)")
        names = [(t["schema"], t["name"]) for t in select_tables(list_tables(side, schemas), include, exclude)]
    return server, pg_dump_version, names


def _lock(conn: psycopg.Connection, names) -> None:
    for schema, name in names:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(schema, name)))


def _backup_locked(dsn, to, schemas, include, exclude, jobs, label, allow_partial, progress,
                   chunk_bytes, on_snapshot, warnings) -> BackupResult:
    server, pg_dump_version, names = _inspect(dsn, schemas, include, exclude)
    main = connect(dsn)
    tmp: Path | None = None
    try:
        main.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        main.read_only = True
        # Lock before the snapshot is taken (LOCK takes none): a TRUNCATE or ALTER that
        # commits in between would otherwise empty a table inside our "consistent" view.
        _lock(main, names)
        snapshot = main.execute("SELECT pg_export_snapshot()").fetchone()[0]
        now = datetime.now(timezone.utc)
        main.execute("SELECT pg_catalog.set_config('row_security', 'off', false)")
        role = role_info(main)
        chosen = select_tables(list_tables(main, schemas), include, exclude)
        _lock(main, [(t["schema"], t["name"]) for t in chosen if (t["schema"], t["name"]) not in set(names)])
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

        sid = new_id(now, label)
        tmp = to / f"{TMP_PREFIX}{sid}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        (tmp / "data").mkdir(mode=0o700)
        dump_schema(dsn, tmp, snapshot=snapshot, schemas=schemas, tables=include, exclude=exclude)
        stems = {mf.table_key(t): _file_stem(t) for t in chosen}
        items = plan(chosen, tmp, stems, chunk_bytes, server[1])
        results = copy_all(dsn, snapshot, items, tmp, jobs, progress)
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
            "created_at": now.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
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
        mf.write(tmp, manifest)
        report = verify(tmp)
        if not report.ok:
            raise StorageError("the snapshot did not verify right after writing: " + "; ".join(report.problems),
                               hint="the storage under --to may be faulty; try another folder")
        final = to / sid
        # Everything durable before the rename makes it a snapshot (data files fsync themselves).
        for path in [*(tmp / "schema").iterdir(), tmp / "schema", tmp / "data", tmp]:
            _fsync(path)
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
    from .verify import sha256_file

    return {"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
