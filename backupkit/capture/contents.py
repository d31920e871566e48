"""What a snapshot records: the manifest of a backup, built in one place.

``Moment`` is what the backup found inside its exported snapshot (server,
role, tables, sequences); ``build_manifest`` turns it, the files written and
the database-level objects into the manifest (``snapshot.model`` describes
every field, and ``docs/snapshot-format.md`` is generated from it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import __version__
from ..pg.copyio import FileResult
from ..snapshot import formats
from ..snapshot import manifest as mf

#: The fields of a table entry taken as the catalog described the table.
_TABLE_FIELDS = (
    "schema",
    "name",
    "parent",
    "is_partition",
    "columns",
    "copy_columns",
    "primary_key",
    "foreign_keys",
    "indexes",
    "rls",
)


@dataclass
class Server:
    """The source server, as the backup's first query found it."""

    version: str
    version_num: int
    encoding: str
    database: str


@dataclass
class Moment:
    """What the backup saw at its consistent moment: the exported snapshot and what it holds."""

    snapshot: str
    taken_at: datetime
    server: Server
    role: dict[str, Any]
    tables: list[dict[str, Any]]
    #: Tables row-level security hides rows of (backed up anyway with ``allow_partial``).
    hidden: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[dict[str, Any]] = field(default_factory=list)
    matviews: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rls_bypass(self) -> bool:
        return bool(self.role["superuser"] or self.role["bypassrls"])


@dataclass
class Selection:
    """Which part of the database a backup covers, as its caller asked."""

    schemas: list[str]
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


def _encode(name: str) -> str:
    # Dots are encoded too, so "a.b"."c" and "a"."b.c" get different files.
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


def file_stem(table: dict[str, Any]) -> str:
    """The start of a table's data file names: schema and name, percent-encoded."""
    return f"{_encode(table['schema'])}.{_encode(table['name'])}"


def same_names(tables: list[dict[str, Any]]) -> list[list[str]]:
    """Tables that backupkit would not tell apart, as their SQL names: everything keys a
    table by ``schema.name`` (``manifest.table_key``), which is one string for ``"a.b".c``
    and ``a."b.c"``."""
    by_key: dict[str, list[str]] = {}
    for t in tables:
        quoted = ".".join('"' + part.replace('"', '""') + '"' for part in (t["schema"], t["name"]))
        by_key.setdefault(mf.table_key(t), []).append(quoted)
    return [sorted(names) for names in by_key.values() if len(names) > 1]


def sequences_of(
    sequences: list[dict[str, Any]], chosen: list[dict[str, Any]], selection: Selection
) -> list[dict[str, Any]]:
    """The sequences pg_dump puts in this snapshot's schema: with ``include`` only those the
    chosen tables own; never those owned by an excluded table."""
    keys = {mf.table_key(t) for t in chosen}

    def owner(s: dict[str, Any]) -> str | None:
        return f"{s['owned_by'][0]}.{s['owned_by'][1]}" if s.get("owned_by") else None

    if selection.include:
        return [s for s in sequences if owner(s) in keys]
    return [s for s in sequences if owner(s) is None or owner(s) in keys or owner(s) not in selection.exclude]


def table_entry(table: dict[str, Any], files: list[FileResult]) -> dict[str, Any]:
    """A table's manifest entry: its catalog description and its data files."""
    entry = {k: table[k] for k in _TABLE_FIELDS}
    entry["data_format"] = formats.WRITTEN.name
    entry["rows"] = sum(f.rows for f in files)
    entry["files"] = [f.to_dict() for f in files]
    return entry


@dataclass
class Written:
    """What a backup wrote and described besides the moment: files, database objects, roles."""

    snapshot_id: str
    label: str | None
    source: dict[str, Any]
    pg_dump_version: tuple[int, int]
    tables: dict[str, list[FileResult]]
    schema_files: list[dict[str, Any]]
    database: dict[str, Any]
    roles: list[dict[str, Any]]
    signed_by: str | None = None
    #: The manifest's ``encryption`` (``snapshot.encryption.manifest_entry``); None: not encrypted.
    encryption: dict[str, Any] | None = None
    #: The manifest's ``object_lock`` (``{"mode": ..., "retain_until": ISO}``); None: not locked.
    object_lock: dict[str, Any] | None = None
    #: The manifest's ``storage`` (``model.Buckets``: Storage bucket files); None: none backed up.
    storage: dict[str, Any] | None = None
    #: The manifest's ``role_settings`` (``database_objects.role_settings``: the roles' own settings).
    role_settings: dict[str, Any] | None = None
    #: The manifest's ``database_settings`` (``database_objects.database_settings``).
    database_settings: dict[str, str] | None = None
    #: The manifest's ``cron_jobs`` (``pg.cron.Job.summary`` of each); None: the source has no pg_cron.
    cron_jobs: list[dict[str, Any]] | None = None
    #: The manifest's ``left_on_platform`` (``pg.left_out.left_on_platform``), written when not empty.
    left_on_platform: list[dict[str, Any]] = field(default_factory=list)


def build_manifest(moment: Moment, selection: Selection, written: Written) -> dict[str, Any]:
    """The manifest of a finished backup (``finished_at`` is now)."""
    server = moment.server
    manifest: dict[str, Any] = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "id": written.snapshot_id,
        "label": written.label,
        "created_at": moment.taken_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "backupkit_version": __version__,
        "source": {
            **written.source,
            "server_version": server.version,
            "server_version_num": server.version_num,
            "encoding": server.encoding,
            "database": server.database,
            "pg_dump_version": "{}.{}".format(*written.pg_dump_version),
        },
        "transaction_snapshot": moment.snapshot,
        "rls_bypass": moment.rls_bypass,
        "partial": bool(moment.hidden),
        "partial_tables": [mf.table_key(t) for t in moment.hidden],
        "schemas": selection.schemas,
        "include_tables": selection.include,
        "exclude_tables": selection.exclude,
        "tables": [table_entry(t, written.tables[mf.table_key(t)]) for t in moment.tables],
        "sequences": [
            {k: s[k] for k in ("schema", "name", "last_value", "is_called", "owned_by")} for s in moment.sequences
        ],
        "materialized_views": moment.matviews,
        **written.database,
        "roles": written.roles,
        **({"role_settings": written.role_settings} if written.role_settings is not None else {}),
        **({"database_settings": written.database_settings} if written.database_settings is not None else {}),
        **({"cron_jobs": written.cron_jobs} if written.cron_jobs is not None else {}),
        **({"left_on_platform": written.left_on_platform} if written.left_on_platform else {}),
        "schema_files": written.schema_files,
    }
    if written.storage is not None:
        manifest["storage"] = written.storage
    if written.encryption is not None:
        manifest["encryption"] = written.encryption
    if written.object_lock is not None:
        manifest["object_lock"] = written.object_lock
    if written.signed_by is not None:
        manifest["signed_by"] = written.signed_by
    return manifest
