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
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..errors import RestoreError
from ..pg.left_out import describe, shown
from ..pg.schema import TocEntry, render, toc
from ..pg.tools import find_tool, run_tool
from ..storage.scratch import scratch
from .obstacles import REFS, ObjectKey, archived_positions

#: Policies and triggers (not a partition's clone: it goes and comes with its parent's) on
#: tables outside the given schemas, with what they depend on there: (kind, schema, table,
#: name, catalog and oid, may this role act as the table's owner, what: kind, schema, name;
#: and "name ON table" quoted as pg_dump's COMMENT entries have it).
_DEPENDING = (
    """
WITH o AS (
  SELECT 'policy' AS kind, p.polname AS name, p.polrelid AS rel, 'pg_catalog.pg_policy'::regclass AS cls, p.oid
    FROM pg_catalog.pg_policy p
  UNION ALL
  SELECT 'trigger', t.tgname, t.tgrelid, 'pg_catalog.pg_trigger'::regclass, t.oid
    FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal AND t.tgparentid = 0
), refs AS ("""
    + REFS
    + """)
SELECT DISTINCT o.kind, n.nspname, c.relname, o.name, o.cls::oid::int, o.oid::int,
       pg_catalog.pg_has_role(c.relowner, 'USAGE'), r.kind, r.nspname, r.name,
       pg_catalog.quote_ident(o.name) || ' ON ' || pg_catalog.quote_ident(c.relname)
  FROM o
  JOIN pg_catalog.pg_class c ON c.oid = o.rel JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_depend d ON d.classid = o.cls AND d.objid = o.oid AND d.deptype = 'n'
  JOIN refs r ON r.cls = d.refclassid AND r.oid = d.refobjid AND NOT (r.relation AND r.oid = o.rel)
 WHERE n.nspname <> ALL(%(schemas)s)
 ORDER BY 1, 2, 3, 4
"""
)


@dataclass(frozen=True)
class PutBack:
    """One policy or trigger set aside: named, the target's own SQL for it (with its comment,
    and its partitions' clones' states where they differ), and how it was when planned."""

    item: Mapping[str, str]
    sql: str
    catalog: int
    oid: int
    #: Its catalog row's version, comment and clones' states when the SQL was read (``_SEEN``).
    seen: str


@dataclass
class InTheWay:
    """What a whole ``clean`` restore sets aside and puts back, and the keys of it."""

    put_back: list[PutBack] = field(default_factory=list)

    @property
    def keys(self) -> set[ObjectKey]:
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
    found: dict[tuple[int, int], dict[str, str]] = {}
    tags: dict[tuple[int, int], str] = {}
    for kind, schema, table, name, catalog, oid, owner, ref_kind, ref_schema, ref_name, tag in conn.execute(
        _DEPENDING, {"schemas": schemas}
    ):
        if f"{ref_schema} {ref_name}" not in archived[ref_kind]:
            continue  # made after the backup: the restore neither drops it nor makes it again
        # Dropping a trigger or policy takes the table's owner; Supabase's supautils lets
        # postgres manage policies on the tables its policy_grants names.
        if owner or (kind == "policy" and f"{schema}.{table}" in granted):
            found[(catalog, oid)] = {"kind": kind, "name": name, "schema": schema, "table": table}
            tags[(catalog, oid)] = f"{schema} {kind.upper()} {tag} "
    if not found:
        return InTheWay()
    seen = _seen(conn, list(found))
    return InTheWay(_definitions(conn, dsn, found, seen, tags))


#: How each object (catalog, oid) is: its row's version, its comment, and for a trigger its
#: partitions' clones' states.  Read when planning and again, the tables locked, before the
#: restore drops them: a change in between would otherwise be undone without a word.
_SEEN = """
SELECT 'pg_catalog.pg_policy'::regclass::oid::int, p.oid::int,
       p.xmin::text || '/' || coalesce(pg_catalog.obj_description(p.oid, 'pg_policy'), '')
  FROM pg_catalog.pg_policy p WHERE p.oid = ANY(%(oids)s)
UNION ALL
SELECT 'pg_catalog.pg_trigger'::regclass::oid::int, t.oid::int,
       t.xmin::text || '/' || coalesce(pg_catalog.obj_description(t.oid, 'pg_trigger'), '') || '/'
       || coalesce((SELECT string_agg(c.tgrelid::text || ':' || c.tgenabled::text, ',' ORDER BY c.tgrelid)
                      FROM pg_catalog.pg_trigger c WHERE c.tgparentid = t.oid), '')
  FROM pg_catalog.pg_trigger t WHERE t.oid = ANY(%(oids)s)
"""

#: A trigger's clones whose state is not the parent's (ALTER TABLE partition DISABLE TRIGGER).
_CLONE_STATES = """
SELECT n.nspname, c.relname, t.tgenabled::text FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_trigger parent ON parent.oid = t.tgparentid
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE t.tgparentid = %s AND t.tgenabled <> parent.tgenabled ORDER BY 1, 2
"""
_STATES = {"O": "ENABLE", "D": "DISABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}


def _seen(conn: psycopg.Connection, keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    wanted = set(keys)
    rows = conn.execute(_SEEN, {"oids": sorted({oid for _, oid in wanted})}).fetchall()
    return {(catalog, oid): seen for catalog, oid, seen in rows if (catalog, oid) in wanted}


def _definitions(
    conn: psycopg.Connection,
    dsn: str,
    found: dict[tuple[int, int], dict[str, str]],
    seen: dict[tuple[int, int], str],
    tags: dict[tuple[int, int], str],
) -> list[PutBack]:
    """pg_dump's SQL (the target's, now) for each object of ``found`` (by catalog and oid),
    its comment's with it; and the states of a trigger's clones that differ from its own."""
    tables = sorted({(i["schema"], i["table"]) for i in found.values()})
    with scratch("backupkit-in-the-way-") as folder:
        dump = folder.path("post-data.dump")
        args = ["--schema-only", "--section=post-data", "--format=custom", "--no-sync", f"--file={dump}"]
        args += ["--table=" + ".".join('"' + p.replace('"', '""') + '"' for p in t) for t in tables]
        run_tool(find_tool("pg_dump"), args, dsn)
        listed = toc(dump)
        by_oid = {e.oids: e for e in listed if e.oids is not None}
        put_back = []
        for key, item in found.items():
            entry = by_oid.get(key)
            if entry is None or key not in seen:  # gone since it was read: nothing to set aside
                continue
            # pg_dump's COMMENT entry: "schema KIND name ON table owner", names quoted as SQL needs.
            chosen = [entry, *(e for e in listed if e.type == "COMMENT" and e.rest.startswith(tags[key]))]
            text = render(dump, "post-data", chosen, no_owner=True, no_acl=True)
            if item["kind"] == "trigger":
                for schema, partition, state in conn.execute(_CLONE_STATES, (key[1],)):
                    text += (
                        sql.SQL("ALTER TABLE {} {} TRIGGER {};\n")
                        .format(
                            sql.Identifier(schema, partition), sql.SQL(_STATES[state]), sql.Identifier(item["name"])
                        )
                        .as_string(conn)
                    )
            put_back.append(PutBack(item, text, key[0], key[1], seen[key]))
    return put_back


def still_as_planned(conn: psycopg.Connection, objects: list[PutBack]) -> None:
    """Lock the set-aside objects' tables (as their DROP would) and check that each is as it was
    when the restore was planned; a ``RestoreError`` names those changed since (nothing dropped)."""
    if not objects:
        return
    for schema, table in sorted({(o.item["schema"], o.item["table"]) for o in objects}):
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, table)))
    now = _seen(conn, [(o.catalog, o.oid) for o in objects])
    changed = [o.item for o in objects if now.get((o.catalog, o.oid)) != o.seen]
    if changed:
        raise RestoreError(
            f"{shown(changed)} changed since the restore was planned, and the restore would undo that",
            hint="run the restore (or its dry run) again",
        )


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
