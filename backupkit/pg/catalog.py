"""What the source database holds: tables, columns, keys, RLS state, sequences.

Every query runs inside the backup's snapshot transaction, so what is listed is
exactly what is copied.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..errors import SourceError
from .rows import one_row

#: Schemas Supabase manages; backed up only when named explicitly.
SUPABASE_MANAGED = (
    "auth",
    "storage",
    "realtime",
    "_realtime",
    "extensions",
    "graphql",
    "graphql_public",
    "vault",
    "pgsodium",
    "pgsodium_masks",
    "supabase_functions",
    "supabase_migrations",
    "net",
    "pgbouncer",
    "cron",
    "_analytics",
    "pgtle",
)

_TABLES = """
SELECT c.oid, n.nspname AS schema, c.relname AS name,
       c.relrowsecurity AS rls_enabled, c.relforcerowsecurity AS rls_forced,
       pg_has_role(current_user, c.relowner, 'USAGE') AS is_owner,
       c.relispartition AS is_partition,
       (SELECT pn.nspname || '.' || pc.relname FROM pg_inherits i
          JOIN pg_class pc ON pc.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
         WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1) AS parent,
       c.reltuples::bigint AS estimated_rows,
       pg_relation_size(c.oid) AS relation_bytes
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND n.nspname = ANY(%(schemas)s)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid AS oid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attgenerated <> '' AS generated, nullif(a.attidentity, '') AS identity,
       a.attnotnull AS not_null,
       -- the type DuckDB should read: domains resolved to their base type
       format_type(COALESCE(NULLIF(t.typbasetype, 0), a.atttypid),
                   CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END) AS base_type,
       (SELECT bt.typtype FROM pg_type bt WHERE bt.oid = COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)) AS typtype
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

_PKEYS = """
SELECT i.indrelid AS oid, array_agg(a.attname ORDER BY k.ord) AS cols
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indisprimary AND i.indrelid = ANY(%(oids)s)
 GROUP BY i.indrelid
"""

_FKEYS = """
SELECT con.conrelid AS oid, con.conname AS name, rn.nspname AS ref_schema, rc.relname AS ref_table,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(n, ord)
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n) AS columns,
       (SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY k(n, ord)
          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) AS ref_columns
  FROM pg_constraint con JOIN pg_class rc ON rc.oid = con.confrelid
  JOIN pg_namespace rn ON rn.oid = rc.relnamespace
 WHERE con.contype = 'f' AND con.conrelid = ANY(%(oids)s)
 ORDER BY con.conname
"""

_INDEXES = """
SELECT i.indrelid AS oid, array_agg(c.relname ORDER BY c.relname) AS names
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = ANY(%(oids)s) GROUP BY i.indrelid
"""

_SEQUENCES = """
SELECT n.nspname AS schema, c.relname AS name,
       (SELECT ARRAY[tn.nspname, tc.relname, a.attname]
          FROM pg_depend d JOIN pg_class tc ON tc.oid = d.refobjid
          JOIN pg_namespace tn ON tn.oid = tc.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
         LIMIT 1) AS owned_by
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S' AND n.nspname = ANY(%(schemas)s)
 ORDER BY 1, 2
"""

_ROLE = """
SELECT current_user AS user, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls
  FROM pg_roles r WHERE r.rolname = current_user
"""


def qualified(schema: str, name: str) -> sql.Identifier:
    """``"schema"."name"`` safely quoted."""
    return sql.Identifier(schema, name)


def role_info(conn: psycopg.Connection) -> dict:
    """current user, superuser flag, BYPASSRLS flag."""
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return one_row(cur.execute(_ROLE))


def existing_schemas(conn: psycopg.Connection, schemas: list[str]) -> list[str]:
    """Those of ``schemas`` that exist."""
    rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)).fetchall()
    return [r[0] for r in rows]


#: What objects in the backed-up schemas need from other schemas' own objects (a column
#: default calling a function, a view, trigger, policy, key or function using a relation,
#: function or type there): the dependent's schema found through its table where it has one.
_NEEDS_OUTSIDE = """
WITH inside AS (SELECT oid FROM pg_namespace WHERE nspname = ANY(%(schemas)s)),
provided AS (SELECT oid FROM pg_namespace WHERE nspname = ANY(%(provided)s)),
objs AS (
  SELECT 'pg_class'::regclass AS classid, c.oid AS objid FROM pg_class c
   WHERE c.relnamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_attrdef'::regclass, a.oid FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid
   WHERE c.relnamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_rewrite'::regclass, w.oid FROM pg_rewrite w JOIN pg_class c ON c.oid = w.ev_class
   WHERE c.relnamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_trigger'::regclass, t.oid FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace IN (SELECT oid FROM inside) AND NOT t.tgisinternal
  UNION ALL SELECT 'pg_policy'::regclass, p.oid FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
   WHERE c.relnamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_constraint'::regclass, k.oid FROM pg_constraint k
   WHERE k.connamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_proc'::regclass, f.oid FROM pg_proc f WHERE f.pronamespace IN (SELECT oid FROM inside)
  UNION ALL SELECT 'pg_type'::regclass, y.oid FROM pg_type y WHERE y.typnamespace IN (SELECT oid FROM inside)
),
refs AS (
  SELECT d.classid, d.objid, d.objsubid, d.refclassid, d.refobjid,
         CASE d.refclassid
           WHEN 'pg_class'::regclass THEN (SELECT relnamespace FROM pg_class WHERE oid = d.refobjid)
           WHEN 'pg_proc'::regclass THEN (SELECT pronamespace FROM pg_proc WHERE oid = d.refobjid)
           WHEN 'pg_type'::regclass THEN (SELECT typnamespace FROM pg_type WHERE oid = d.refobjid)
         END AS refnsp,
         -- an array type stands for its element type (an extension's citext[] is the extension's)
         CASE WHEN d.refclassid = 'pg_type'::regclass
              THEN coalesce((SELECT nullif(typelem, 0) FROM pg_type WHERE oid = d.refobjid AND typcategory = 'A'),
                            d.refobjid)
              ELSE d.refobjid END AS refbase
    FROM objs JOIN pg_depend d ON d.classid = objs.classid AND d.objid = objs.objid
   WHERE d.deptype = 'n' AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass)
)
SELECT DISTINCT rn.nspname, o.type, o.identity, r.type, r.identity
  FROM refs JOIN pg_namespace rn ON rn.oid = refs.refnsp,
       LATERAL pg_identify_object(refs.classid, refs.objid, refs.objsubid) o,
       LATERAL pg_identify_object(refs.refclassid, refs.refobjid, 0) r
 WHERE refs.refnsp NOT IN (SELECT oid FROM inside) AND refs.refnsp NOT IN (SELECT oid FROM provided)
   AND r.type <> 'index'
   AND NOT EXISTS (SELECT FROM pg_depend e
                    WHERE e.classid = refs.refclassid AND e.objid = refs.refbase AND e.deptype = 'e')
 ORDER BY 1, 2, 3
"""


def needs_outside(conn: psycopg.Connection, schemas: list[str]) -> dict[str, list[str]]:
    """{schema: ["<object> needs <type> <object>", ...]} for the schemas outside ``schemas`` whose
    own objects (not an extension's, not PostgreSQL's or the Supabase platform's) objects of
    ``schemas`` need: a backup of ``schemas`` alone does not restore into a new database."""
    provided = [*schemas, "pg_catalog", "information_schema", "pg_toast", *SUPABASE_MANAGED]
    needs: dict[str, list[str]] = {}
    for schema, kind, what, ref_kind, ref in conn.execute(_NEEDS_OUTSIDE, {"schemas": schemas, "provided": provided}):
        needs.setdefault(schema, []).append(f"{kind} {what} needs {ref_kind} {ref}")
    return needs


def needs_outside_warning(needs: dict[str, list[str]]) -> str:
    """One line about ``needs_outside``'s answer (not empty)."""
    first = next(iter(needs.values()))[0]
    return (
        f"the backed-up schemas need schema(s) {', '.join(needs)} that this backup leaves out (e.g. {first}): "
        "a restore into a new database fails on them; add them to `schemas`"
    )


def list_tables(conn: psycopg.Connection, schemas: list[str]) -> list[dict]:
    """Every ordinary table (partitions and inheritance children included) in ``schemas``.

    Partitioned parents hold no rows and are skipped; their partitions are
    listed, so every row is copied exactly once.

    Two round trips, each a pipeline of queries (the role and the tables, then the
    tables' columns, keys and indexes), not one per query: a backup lists its tables
    twice, and to a hosted database every round trip is tens of milliseconds.
    """
    role_cur, tables_cur = _pipelined(conn, [(_ROLE, {}), (_TABLES, {"schemas": schemas})])
    role, tables = one_row(role_cur), tables_cur.fetchall()
    by_oid = {"oids": [t["oid"] for t in tables]}
    col_rows, pkey_rows, fkey_rows, index_rows = (
        cur.fetchall()
        for cur in _pipelined(conn, [(_COLUMNS, by_oid), (_PKEYS, by_oid), (_FKEYS, by_oid), (_INDEXES, by_oid)])
    )
    cols: dict[int, list[dict]] = {}
    for c in col_rows:
        oid = c.pop("oid")
        cols.setdefault(oid, []).append(c)
    pkeys = {r["oid"]: r["cols"] for r in pkey_rows}
    fkeys: dict[int, list[dict]] = {}
    for f in fkey_rows:
        fkeys.setdefault(f.pop("oid"), []).append(f)
    indexes = {r["oid"]: r["names"] for r in index_rows}
    out = []
    for t in tables:
        columns = [
            {
                "name": c["name"],
                "type": c["type"],
                "base_type": c["base_type"],
                "enum": c["typtype"] == "e",
                "generated": c["generated"],
                "identity": c["identity"],
                "not_null": c["not_null"],
            }
            for c in cols.get(t["oid"], [])
        ]
        bypassed = (
            not t["rls_enabled"] or role["superuser"] or role["bypassrls"] or (t["is_owner"] and not t["rls_forced"])
        )
        out.append(
            {
                "oid": t["oid"],
                "schema": t["schema"],
                "name": t["name"],
                "parent": t["parent"],
                "is_partition": t["is_partition"],
                "columns": columns,
                "copy_columns": [c["name"] for c in columns if not c["generated"]],
                "primary_key": pkeys.get(t["oid"]),
                "foreign_keys": fkeys.get(t["oid"], []),
                "indexes": indexes.get(t["oid"], []),
                "rls": {"enabled": t["rls_enabled"], "forced": t["rls_forced"], "bypassed": bool(bypassed)},
                "estimated_rows": max(t["estimated_rows"], 0),
                "relation_bytes": t["relation_bytes"],
            }
        )
    return out


def _pipelined(conn: psycopg.Connection, queries: list[tuple[str, dict]]) -> list[psycopg.Cursor[dict]]:
    """A cursor (rows as dicts) holding the result of each of ``queries``, sent together in one pipeline."""
    with conn.pipeline():
        return [conn.cursor(row_factory=psycopg.rows.dict_row).execute(q, params) for q, params in queries]


def select_tables(tables: list[dict], include: list[str], exclude: list[str]) -> list[dict]:
    """Filter by ``schema.table`` names; unknown names are an error, not silently ignored."""
    names = {f"{t['schema']}.{t['name']}" for t in tables}
    schemas = {t["schema"] for t in tables}
    # Excluding a table of a schema that is not backed up is a no-op, not a typo.
    unknown = [n for n in [*include, *(e for e in exclude if e.split(".", 1)[0] in schemas)] if n not in names]
    if unknown:
        raise SourceError(
            f"no such table: {', '.join(unknown)}",
            hint="name tables as schema.table, and include their schema in `schemas` when it is not public",
        )
    chosen = [t for t in tables if not include or f"{t['schema']}.{t['name']}" in include]
    return [t for t in chosen if f"{t['schema']}.{t['name']}" not in exclude]


def list_sequences(conn: psycopg.Connection, schemas: list[str]) -> list[dict]:
    """Every sequence in ``schemas`` (schema, name, ``owned_by``), without its value: which of
    them a backup reads is decided first (``read_sequences``), as a role may not read one
    owned by a table the backup leaves out."""
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(_SEQUENCES, {"schemas": schemas}).fetchall()


def read_sequences(conn: psycopg.Connection, seqs: list[dict]) -> list[dict]:
    """``seqs`` with their current value and is_called flag.

    Sequences are not transactional: the value read may be ahead of the
    snapshot, never behind it, so restored ids never collide.  Each sequence is read
    by a query of its own, all in one pipeline: one round trip, not one per sequence.
    """
    with conn.pipeline():
        reads = [
            conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(qualified(s["schema"], s["name"])))
            for s in seqs
        ]
    for s, read in zip(seqs, reads, strict=True):
        s["last_value"], s["is_called"] = one_row(read)
    return seqs


def list_matviews(conn: psycopg.Connection, schemas: list[str]) -> list[dict]:
    """Materialized views in ``schemas``, in creation order, and whether they hold data.

    A schema-only dump creates them empty; restore refreshes the populated ones.
    """
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT n.nspname AS schema, c.relname AS name, c.relispopulated AS populated "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'm' AND n.nspname = ANY(%s) ORDER BY c.oid",
        (schemas,),
    ).fetchall()
