"""Replacing some tables' rows in the live database, keeping everything that points at them.

Rolling back a bad migration means putting back the rows of a few tables while
the rest of the database goes on: views over those tables, foreign keys from
other tables, triggers, policies, grants and publication membership must
survive.  Dropping and recreating the tables (what ``pg_restore --clean`` does)
would take all of that with them, so a selective ``--clean`` restore of a table
whose columns are still the snapshot's empties it and loads the snapshot's rows
into it, in the restore's one transaction, with triggers and foreign-key
actions off (``session_replication_role = replica``, as ``pg_restore
--disable-triggers``).  Because nothing then checked the foreign keys, they are
checked afterwards, in both directions, and any violation rolls everything back.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from ..pg.rows import one_row
from ..snapshot import manifest as mf

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
  FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_FOREIGN_KEYS = """
SELECT c.conname, cn.nspname, cc.relname, pn.nspname, pc.relname,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
  FROM pg_constraint c
  JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
 WHERE c.contype = 'f' AND c.conparentid = 0 AND (c.conrelid = ANY(%s::regclass[]) OR c.confrelid = ANY(%s::regclass[]))
"""


def _regclass(table: dict) -> str:
    return sql.Identifier(table["schema"], table["name"]).as_string()


def unqualified(type_name: str) -> str:
    """A type name as format_type printed it, without its schema (which depends on search_path)."""
    return re.sub(r'^(?:"(?:[^"]|"")+"|[^".(\s]+)\.', "", type_name)


def split_by_shape(conn: psycopg.Connection, tables: list[dict]) -> tuple[list[dict], list[str]]:
    """The tables whose columns (names and types, in order) are the snapshot's, and how the others differ."""
    same, differ = [], []
    for t in tables:
        # Types as format_type printed them, whose schema prefix depends on each side's
        # search_path (Supabase's has extensions): compared without it.
        have = [(n, unqualified(ty)) for n, ty in conn.execute(_COLUMNS, (_regclass(t),)).fetchall()]
        want = [(c["name"], unqualified(c["type"])) for c in t["columns"]]
        if have == want:
            same.append(t)
        else:
            gone = [n for n, _ in want if n not in dict(have)]
            new = [n for n, _ in have if n not in dict(want)]
            changes = [f"missing {', '.join(gone)}"] if gone else []
            if new:
                changes.append(f"new {', '.join(new)}")
            what = "; ".join(changes)
            differ.append(f"{mf.table_key(t)} ({what or 'column types or order changed'})")
    return same, differ


def empty_sql(tables: list[dict]) -> str:
    """DELETE, not TRUNCATE: TRUNCATE refuses a table other tables reference, and CASCADE would empty them.

    The tables are locked against writes first (reads go on): a row the app commits while the
    restore runs would otherwise survive beside the snapshot's rows."""
    if not tables:
        return ""
    rels = [sql.Identifier(t["schema"], t["name"]) for t in tables]
    lock = sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE;\n").format(sql.SQL(", ").join(rels)).as_string()
    return lock + "".join(sql.SQL("DELETE FROM ONLY {};\n").format(rel).as_string() for rel in rels)


def deleting(tables: list[int], references: list[tuple[int, int]]) -> set[int]:
    """Which of ``tables`` (oids) --data-only --clean must empty by DELETE rather than TRUNCATE:
    those a table outside them references, and then those any such one references
    (``references``: (referencing, referenced) pairs).  Pure."""
    chosen = set(tables)
    deleted = {to for frm, to in references if to in chosen and frm not in chosen}
    while True:
        more = {to for frm, to in references if frm in deleted and to in chosen} - deleted
        if not more:
            return deleted
        deleted |= more


def split_emptying(conn: psycopg.Connection, tables: list[dict]) -> tuple[list[dict], list[dict]]:
    """``tables`` (which exist) as those --data-only --clean empties by TRUNCATE and those by DELETE
    (``deleting``)."""
    oids = [r[0] for r in conn.execute("SELECT unnest(%s::regclass[])::oid", ([_regclass(t) for t in tables],))]
    edges = conn.execute(
        "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' AND confrelid = ANY(%s)",
        (oids,),
    ).fetchall()
    deleted = deleting(oids, edges)
    by_oid = dict(zip(oids, tables, strict=True))
    return [by_oid[o] for o in oids if o not in deleted], [by_oid[o] for o in oids if o in deleted]


def foreign_keys(conn: psycopg.Connection, tables: list[dict]) -> list[tuple]:
    """Foreign keys to or from ``tables``: (name, schema, table, referenced schema, referenced
    table, columns, referenced columns)."""
    oids = [_regclass(t) for t in tables]
    return conn.execute(_FOREIGN_KEYS, (oids, oids)).fetchall()


def broken_references(conn: psycopg.Connection, tables: list[dict]) -> list[str]:
    """Foreign keys to or from ``tables`` that some row now violates (MATCH SIMPLE: a NULL matches)."""
    broken = []
    for name, cs, ct, ps, pt, cols, refs in foreign_keys(conn, tables):
        match = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(c)) for c, r in zip(cols, refs, strict=True)
        )
        present = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c in cols)
        query = sql.SQL("SELECT EXISTS (SELECT FROM {} c WHERE {} AND NOT EXISTS (SELECT FROM {} p WHERE {}))").format(
            sql.Identifier(cs, ct), present, sql.Identifier(ps, pt), match
        )
        if one_row(conn.execute(query))[0]:
            broken.append(f"{name} ({cs}.{ct} -> {ps}.{pt})")
    return broken


#: The sequences the column defaults of some tables use: (schema, name).
_DEFAULTS_USE = """
SELECT DISTINCT n.nspname, s.relname
  FROM pg_catalog.pg_attrdef a
  JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = a.oid
   AND d.refclassid = 'pg_catalog.pg_class'::regclass
  JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
 WHERE a.adrelid = ANY(%(rels)s::regclass[])
UNION
-- The identity sequence of a partitioned parent its partitions draw from (they have no default
-- and own no sequence): the partitions restored are not all the parent's rows.
SELECT n.nspname, s.relname
  FROM unnest(%(rels)s::regclass[]) r(rel)
 CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(r.rel) p(relid)
  JOIN pg_catalog.pg_depend d
    ON d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = p.relid AND d.deptype = 'i'
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
 WHERE p.relid <> r.rel
"""


def sequences_used(conn: psycopg.Connection, tables: list[dict]) -> set[tuple[str, str]]:
    """(schema, name) of the sequences the column defaults of ``tables`` use (``nextval('s')``),
    and the identity sequences of their partitioned ancestors."""
    if not tables:
        return set()
    names = [_regclass(t) for t in tables]
    return {(r[0], r[1]) for r in conn.execute(_DEFAULTS_USE, {"rels": names}).fetchall()}
