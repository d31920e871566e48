"""Policies and triggers in the way of a whole ``clean`` restore, set aside and put back as they are.

pg_restore ``--clean`` drops every function, type and table of the snapshot to make it again.
A policy or trigger on a table the restore does not touch that uses one of them (a storage
policy calling ``public.is_admin()``; Supabase's sign-up trigger on ``auth.users`` calling
``public.handle_new_user()``) makes that DROP fail.  Where this role may drop it (the table's
owner; on Supabase, ``postgres`` for the policies supautils' ``policy_grants`` names), it is
dropped first and made again last, in the restore's one transaction, as the target has it
now: pg_dump of the target writes its definition at planning time, so a rollback of the
snapshot's schemas changes nothing about it.  If it cannot be made again (the snapshot's
function has another signature), the restore fails and is rolled back.  The others stay in
the way, and ``obstacles`` names them before anything changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..errors import RestoreError
from ..pg.left_out import describe, shown
from ..pg.schema import TocEntry, render, toc
from ..pg.tools import find_tool, run_tool
from ..storage.scratch import scratch
from .obstacles import archived_positions

Key = tuple[str, str, str, str]

#: ``pg_restore --list``: ``<dump id>; <catalog oid> <object oid> <type> ...``.
_TOC_OIDS = re.compile(r"^\d+; \d+ (\d+) ")

#: Policies and triggers (not a partition's clone: it goes and comes with its parent's) on
#: tables outside the given schemas, with what they depend on there: (kind, schema, table,
#: name, oid, may this role act as the table's owner, what: kind, schema, "name(args)").
_DEPENDING = """
WITH o AS (
  SELECT 'policy' AS kind, p.polname AS name, p.polrelid AS rel, 'pg_catalog.pg_policy'::regclass AS cls, p.oid
    FROM pg_catalog.pg_policy p
  UNION ALL
  SELECT 'trigger', t.tgname, t.tgrelid, 'pg_catalog.pg_trigger'::regclass, t.oid
    FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgparentid = 0
), refs AS (
  SELECT 'pg_catalog.pg_proc'::regclass AS cls, p.oid, 'FUNCTION' AS kind, n.nspname,
         p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')' AS name
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = ANY(%(schemas)s)
  UNION ALL
  SELECT 'pg_catalog.pg_type'::regclass, t.oid, 'TYPE', n.nspname, t.typname
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname = ANY(%(schemas)s)
  UNION ALL
  SELECT 'pg_catalog.pg_class'::regclass, c.oid, 'TYPE', n.nspname, c.relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = ANY(%(schemas)s)
)
SELECT DISTINCT o.kind, n.nspname, c.relname, o.name, o.oid, pg_catalog.pg_has_role(c.relowner, 'USAGE'),
       r.kind, r.nspname, r.name
  FROM o
  JOIN pg_catalog.pg_class c ON c.oid = o.rel JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_depend d ON d.classid = o.cls AND d.objid = o.oid AND d.deptype = 'n'
  JOIN refs r ON r.cls = d.refclassid AND r.oid = d.refobjid AND NOT (r.cls = 'pg_catalog.pg_class'::regclass
       AND r.oid = o.rel)
 WHERE n.nspname <> ALL(%(schemas)s)
 ORDER BY 1, 2, 3, 4
"""


@dataclass(frozen=True)
class PutBack:
    """One policy or trigger set aside: named, and the target's own SQL for it."""

    item: Mapping[str, str]
    sql: str


@dataclass
class InTheWay:
    """What a whole ``clean`` restore sets aside and puts back, and the keys of it."""

    put_back: list[PutBack] = field(default_factory=list)

    @property
    def keys(self) -> set[Key]:
        """(kind, schema, table, name) of each, for ``obstacles``' checks to pass over."""
        return {(p.item["kind"], p.item["schema"], p.item["table"], p.item["name"]) for p in self.put_back}

    @property
    def drops(self) -> list[str]:
        """Their DROPs, run before the restore's own."""
        return [
            sql.SQL("DROP {} {} ON {};\n")
            .format(
                sql.SQL(p.item["kind"].upper()),
                sql.Identifier(p.item["name"]),
                sql.Identifier(p.item["schema"], p.item["table"]),
            )
            .as_string(None)
            for p in self.put_back
        ]

    @property
    def notes(self) -> list[str]:
        """What the plan says of them."""
        if not self.put_back:
            return []
        return [
            f"setting aside {shown([p.item for p in self.put_back])} while the restore replaces what they "
            "use, then making them again as they are here (their tables are locked until it commits)"
        ]


def plan_in_the_way(conn: psycopg.Connection, dsn: str, entries: list[TocEntry], schemas: list[str]) -> InTheWay:
    """The policies and triggers outside ``schemas`` that use one of the archive's ``entries``
    and that this role may drop: each with the target's own definition (pg_dump of their tables)."""
    archived = archived_positions(entries)
    granted = _policy_grants(conn)
    found: dict[int, dict[str, str]] = {}
    for kind, schema, table, name, oid, owner, ref_kind, ref_schema, ref_name in conn.execute(
        _DEPENDING, {"schemas": schemas}
    ):
        if f"{ref_schema} {ref_name}" not in archived[ref_kind]:
            continue  # made after the backup: the restore neither drops it nor makes it again
        # Dropping a trigger or policy takes the table's owner; Supabase's supautils lets
        # postgres manage policies on the tables its policy_grants names.
        if owner or (kind == "policy" and f"{schema}.{table}" in granted):
            found[oid] = {"kind": kind, "name": name, "schema": schema, "table": table}
    if not found:
        return InTheWay()
    return InTheWay(_definitions(dsn, found))


def _definitions(dsn: str, found: dict[int, dict[str, str]]) -> list[PutBack]:
    """pg_dump's SQL (the target's, now) for each object of ``found`` (by oid)."""
    tables = sorted({(i["schema"], i["table"]) for i in found.values()})
    with scratch("backupkit-in-the-way-") as folder:
        dump = folder.path("post-data.dump")
        args = ["--schema-only", "--section=post-data", "--format=custom", "--no-sync", f"--file={dump}"]
        args += ["--table=" + ".".join('"' + p.replace('"', '""') + '"' for p in t) for t in tables]
        run_tool(find_tool("pg_dump"), args, dsn)
        entries = {int(m.group(1)): e for e in toc(dump) if (m := _TOC_OIDS.match(e.line))}
        put_back = []
        for oid, item in found.items():
            entry = entries.get(oid)
            if entry is None:  # gone since it was read: nothing to set aside
                continue
            put_back.append(PutBack(item, render(dump, "post-data", [entry], no_owner=True, no_acl=True)))
    return put_back


def put_back(conn: psycopg.Connection, objects: list[PutBack]) -> None:
    """Make each set-aside object again in ``conn``'s transaction; one that cannot be made
    again fails the restore (it was dropped in this transaction, which is then rolled back)."""
    for obj in objects:
        try:
            with conn.transaction():
                conn.execute(obj.sql)
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or type(exc).__name__
            raise RestoreError(
                f"could not make {describe(obj.item)} again as it was: {reason}",
                hint="it uses what the snapshot replaces, which is not what it was: drop it first, "
                "or restore into an empty database",
            ) from None


def _policy_grants(conn: psycopg.Connection) -> set[str]:
    """The tables (``schema.table``) supautils' ``policy_grants`` lets this role manage policies on."""
    row = conn.execute("SELECT current_user, current_setting('supautils.policy_grants', true)").fetchone()
    if row is None or not row[1]:
        return set()
    try:
        grants = json.loads(row[1])
    except ValueError:
        return set()
    tables = grants.get(row[0]) if isinstance(grants, dict) else None
    return {t for t in tables if isinstance(t, str)} if isinstance(tables, list) else set()
