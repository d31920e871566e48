"""What a backup of some schemas leaves out of a Supabase project, kept or said when it is taken.

Two kinds, both silent in a restored project otherwise: the project's own policies and
triggers on the platform's tables (``storage.objects`` upload policies, the sign-up trigger
on ``auth.users``) when ``auth`` or ``storage`` is not backed up; and the rows of extension
tables no pg_dump of the schemas holds (Supabase Vault's secrets, Queues' queues).

The first are kept (``dump_platform_objects``: pg_dump's post-data of those tables, in the
same exported snapshot) for a whole restore to make again where the target lacks them
(``recovery.left_out``); the second are named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..runtime.lifeline import dies_with_us
from ..snapshot.manifest import PLATFORM_DUMP
from .rows import one_row
from .tools import find_tool, run_tool

#: The platform's schemas whose tables a project puts its own policies and triggers on
#: (storage.objects' upload policies, the on_auth_user_created trigger of Supabase's guides).
_PLATFORM_TABLES = ("auth", "storage", "realtime")

# Only in a Supabase project (its Auth or Storage has run its migrations there): elsewhere a
# schema called auth is the project's own, and a backup that leaves it out is its choice.
# Policies: the platform makes none on these schemas' tables, so every one is the project's.
# Triggers: the platform's call its own functions; the project's call anything else
# (public.handle_new_user, a Database Webhook's supabase_functions.http_request).  A trigger
# on a partitioned table is named once, not once per partition.
_LEFT_ON_PLATFORM = """
WITH supabase AS (
  SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE (n.nspname, c.relname) IN (('auth', 'schema_migrations'), ('storage', 'migrations'))
)
SELECT 'policy', p.polname, n.nspname, c.relname, p.oid
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%(platform)s) AND n.nspname <> ALL(%(schemas)s) AND EXISTS (SELECT FROM supabase)
UNION ALL
SELECT 'trigger', t.tgname, n.nspname, c.relname, t.oid
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
 WHERE NOT t.tgisinternal AND t.tgparentid = 0
   AND n.nspname = ANY(%(platform)s) AND n.nspname <> ALL(%(schemas)s)
   AND fn.nspname <> ALL(%(services)s) AND EXISTS (SELECT FROM supabase)
 ORDER BY 3, 4, 1, 2
"""


def left_on_platform(conn: psycopg.Connection, schemas: list[str]) -> list[dict[str, Any]]:
    """The project's own policies and triggers on the platform's tables (auth, storage,
    realtime) that a backup of ``schemas`` leaves out, each as the manifest's
    ``left_on_platform`` has it: ``{"kind", "name", "schema", "table", "oid"}`` (the oid finds
    its entry in ``dump_platform_objects``' archive, whatever its name holds)."""
    params = {"platform": list(_PLATFORM_TABLES), "schemas": schemas, "services": [*_PLATFORM_TABLES, "_realtime"]}
    rows = conn.execute(_LEFT_ON_PLATFORM, params).fetchall()
    return [
        {"kind": kind, "name": name, "schema": schema, "table": table, "oid": oid}
        for kind, name, schema, table, oid in rows
    ]


#: A name that reads the same unquoted (keywords aside): left as it is in messages.
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def _name(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else sql.Identifier(name).as_string()


def describe(item: Mapping[str, Any]) -> str:
    """``policy "Anyone can upload" on storage.objects``: names quoted where SQL needs it (a
    policy's or trigger's name always, as it is usually a sentence)."""
    name = sql.Identifier(item["name"]).as_string()
    return f"{item['kind']} {name} on {_name(item['schema'])}.{_name(item['table'])}"


def shown(items: Sequence[Mapping[str, Any]], most: int = 4) -> str:
    """The first ``most`` items described, ``and N more`` for the rest."""
    return ", ".join(map(describe, items[:most])) + (f" and {len(items) - most} more" if len(items) > most else "")


def dump_platform_objects(
    dsn: str, path: Path, *, snapshot: str, left: list[dict[str, Any]], lock_wait_timeout: float | None = None
) -> None:
    """pg_dump's post-data (``--format=custom``) of the tables ``left`` (``left_on_platform``'s
    answer) names, inside the exported ``snapshot``, into ``path``: their policies and triggers
    as pg_dump writes them, for a restore to pick by name (the rest of it is the platform's)."""
    args = ["--schema-only", "--section=post-data", "--format=custom", f"--snapshot={snapshot}", "--no-sync"]
    args.append(f"--file={path}")
    if lock_wait_timeout:
        args.append(f"--lock-wait-timeout={max(1, int(lock_wait_timeout * 1000))}")
    tables = sorted({(item["schema"], item["table"]) for item in left})
    args += ["--table=" + ".".join('"' + p.replace('"', '""') + '"' for p in t) for t in tables]
    run_tool(find_tool("pg_dump"), args, dsn, preexec_fn=dies_with_us())


_UNREADABLE = """
SELECT DISTINCT pg_catalog.format('%%I.%%I', n.nspname, c.relname)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(tables)s::text[]))
   AND NOT (pg_catalog.has_schema_privilege(n.oid, 'USAGE') AND pg_catalog.has_table_privilege(c.oid, 'SELECT'))
 ORDER BY 1
"""


def undumpable(conn: psycopg.Connection, left: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tables of ``left`` this role may not pg_dump (it locks each, which takes SELECT on
    PostgreSQL 15, and USAGE on its schema), so a backup cannot keep their objects
    (``dump_platform_objects``)."""
    tables = sorted({(i["schema"], i["table"]) for i in left})
    params = {"schemas": [t[0] for t in tables], "tables": [t[1] for t in tables]}
    return [r[0] for r in conn.execute(_UNREADABLE, params).fetchall()]


def left_on_platform_warning(left: Sequence[Mapping[str, Any]], reason: str | None = None) -> str:
    """One line about ``left_on_platform``'s answer (not empty).  Realtime's tables are the
    Realtime service's, partitioned by day: a new project's are not the snapshot's, so the
    schema is not one to add, and its policies are to be made again."""
    schemas = sorted({item["schema"] for item in left} - {"realtime"})
    fixes = []
    if reason and ("permission denied" in reason or "may not read" in reason):
        fixes.append("back up as a role that may read those tables (Supabase: postgres)")
    if schemas:
        fixes.append(f"add {', '.join(schemas)} to `schemas` (a new project needs its users and files too)")
    if any(item["schema"] == "realtime" for item in left):
        fixes.append("make the realtime ones again in the new project (backupkit does not restore Realtime's tables)")
    return (
        f"this backup leaves out the project's own objects on the platform's tables: {shown(left)}"
        + (f" (pg_dump could not keep them: {reason})" if reason else "")
        + f"; a restore into a new project comes back without them: {'; '.join(fixes)}"
    )


def kept_on_platform_note(left: Sequence[Mapping[str, Any]]) -> str:
    """One line saying the backup keeps ``left`` (not empty) beside the schemas it backs up."""
    return (
        f"keeping the project's own objects on the platform's tables, for a whole restore to make "
        f"again where they are missing: {shown(left)} ({PLATFORM_DUMP})"
    )


#: Extension tables with a project's own rows that no backup holds (pg_dump leaves an
#: extension's tables out unless they are dumped with the extension): what they hold, and why.
_EXTENSION_DATA = {
    ("vault", "secrets"): ("Supabase Vault secret(s)", "encrypted with this project's own key"),
    ("pgmq", "meta"): ("Supabase Queues queue(s)", "the pgmq extension's own tables"),
}
# Only the extensions' own tables (a project's table of the same name is backed up like any).
# Rows counted where this role may read them; else from the statistics, which every role may
# read (but which a crash or a restore from a base backup resets).
_EXTENSION_TABLES = """
SELECT n.nspname, c.relname, pg_catalog.has_table_privilege(c.oid, 'SELECT')
       AND pg_catalog.has_schema_privilege(n.oid, 'USAGE'), pg_catalog.pg_stat_get_live_tuples(c.oid)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname, c.relname) IN (('vault', 'secrets'), ('pgmq', 'meta'))
   AND EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                AND d.objid = c.oid AND d.deptype = 'e')
"""


def unkept_extension_data(conn: psycopg.Connection) -> str | None:
    """A warning naming the Vault secrets and Queues the database has, which no snapshot holds
    (None when it has none): a restored project lacks them, and what reads them fails."""
    found = []
    for schema, table, readable, live in conn.execute(_EXTENSION_TABLES).fetchall():
        if readable:  # row-level security may hide rows from the count: the larger of the two
            count = one_row(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))))[0]
            live = max(live, count)
        if live:
            found.append((_EXTENSION_DATA[(schema, table)], live))
    if not found:
        return None
    return (
        "not in any snapshot: "
        + "; ".join(f"{rows} {what} ({why})" for (what, why), rows in found)
        + ": keep them where you keep your keys, and make them again in a restored project"
    )
