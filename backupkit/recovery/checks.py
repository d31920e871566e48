"""Checks a restore runs against the target before it changes anything (and ``--dry-run`` reports).

Each returns problems in words; the restore refuses to start while any is
left, so a plan that would fail halfway never reports success.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet

import psycopg
from psycopg import sql

from ..pg.rows import one_row
from ..pg.schema import TocEntry, unquote_ident
from ..snapshot import manifest as mf
from .in_place import unqualified

_CREATES_IN_SCHEMA = {
    "TABLE",
    "VIEW",
    "MATERIALIZED VIEW",
    "SEQUENCE",
    "FUNCTION",
    "PROCEDURE",
    "TYPE",
    "DOMAIN",
    "AGGREGATE",
    "FOREIGN TABLE",
    "COLLATION",
}


def missing_references(conn: psycopg.Connection, chosen: list[dict], provided: set[str]) -> list[str]:
    """Foreign keys whose referenced table is neither restored, nor ``provided``, nor in the target."""
    keys = {mf.table_key(t) for t in chosen} | provided
    refs = {
        f"{fk['ref_schema']}.{fk['ref_table']}": (fk["ref_schema"], fk["ref_table"])
        for t in chosen
        for fk in t.get("foreign_keys", [])
    }
    wanted = [r for r in refs if r not in keys]
    present = (
        {
            r[0]
            for r in conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname || '.' || c.relname = ANY(%s)",
                (wanted,),
            ).fetchall()
        }
        if wanted
        else set()
    )
    missing = sorted(
        {
            f"{mf.table_key(t)} references {fk['ref_schema']}.{fk['ref_table']}"
            for t in chosen
            for fk in t.get("foreign_keys", [])
            if f"{fk['ref_schema']}.{fk['ref_table']}" in set(wanted) - present
        }
    )
    if not missing:
        return []
    return [
        "foreign keys point at tables this database does not have and the restore does not bring: "
        + "; ".join(missing)
        + " (restore those tables too, e.g. `with_dependencies`, or back up their schema)"
    ]


def schema_privileges(
    conn: psycopg.Connection, entries: list[TocEntry], more_schemas: AbstractSet[str] = frozenset()
) -> list[str]:
    """Schemas the restore creates objects in where the connecting role may not create;
    ``more_schemas`` are schemas it makes itself (an extension's, the auth stand-in's)."""
    creating = {e.rest.split(" ", 1)[0] for e in entries if e.type in _CREATES_IN_SCHEMA}
    new_schemas = {e.rest.split(" ")[1] for e in entries if e.type == "SCHEMA"} | set(more_schemas)
    problems = []
    rows = conn.execute(
        "SELECT nspname, has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = ANY(%s)",
        (sorted(creating - new_schemas),),
    ).fetchall()
    denied = sorted(name for name, ok in rows if not ok)
    if denied:
        problems.append(f"{conn.info.user} may not create objects in schema {', '.join(denied)}")
    if new_schemas and not one_row(conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')"))[0]:
        problems.append(
            f"{conn.info.user} may not create schemas in this database "
            f"(the snapshot needs {', '.join(sorted(new_schemas))})"
        )
    return problems


def role_creation(conn: psycopg.Connection, to_create: list[str]) -> list[str]:
    """--create-roles needs CREATEROLE (or a superuser)."""
    if not to_create:
        return []
    ok = one_row(conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"))[0]
    return [] if ok else [f"{conn.info.user} may not create roles ({', '.join(to_create)}): it lacks CREATEROLE"]


#: The target's columns of a table: name, type, generated, NOT NULL with nothing to fill it.
_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
  FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


def column_mismatches(conn: psycopg.Connection, tables: list[dict]) -> list[str]:
    """Tables that exist whose columns cannot take the snapshot's rows as they are (data_only).

    COPY maps the columns by name, so another order is fine; but a column the target lacks or
    generates fails the load, a NOT NULL one without a default the snapshot lacks too, and one
    of another type converts every value silently (numeric(12,2) into numeric(12,0) rounds,
    timestamptz into timestamp drops the zone).  Found here, before anything changes."""
    problems = []
    for t in tables:
        rel = sql.Identifier(t["schema"], t["name"]).as_string(conn)
        have = {name: (ty, gen, required) for name, ty, gen, required in conn.execute(_COLUMNS, (rel,)).fetchall()}
        types = {c["name"]: c["type"] for c in t["columns"]}
        wrong = []
        for name in t["copy_columns"]:
            if name not in have:
                wrong.append(f"{name} is missing")
            elif have[name][1]:
                wrong.append(f"{name} is a generated column")
            elif name in types and not takes_exactly(unqualified(have[name][0]), unqualified(types[name])):
                wrong.append(f"{name} is {have[name][0]}, not the snapshot's {types[name]}")
        wrong += [
            f"{name} is NOT NULL without a default and not in the snapshot"
            for name, (_, _, required) in have.items()
            if required and name not in t["copy_columns"]
        ]
        if wrong:
            problems.append(
                f"data_only loads {mf.table_key(t)} into the table the target has, whose columns are not the "
                f"snapshot's: {'; '.join(wrong)} (the rows would fail to load or change): change the table back "
                "to the snapshot's columns, or restore without `data_only` into another database"
            )
    return problems


_INTEGERS = ["smallint", "integer", "bigint", "numeric"]
_SIZED = re.compile(r"^(character varying|numeric)(?:\((\d+)(?:,(\d+))?\))?$")


def takes_exactly(have: str, want: str) -> bool:
    """Whether a column of type ``have`` takes every value of type ``want`` unchanged (its text the
    same): the same type, or a wider one a migration commonly makes (integer to bigint, a longer
    or unbounded varchar, text, more digits before a numeric's point).  Pure."""
    if have == want:
        return True
    if want in _INTEGERS and have in _INTEGERS:
        return _INTEGERS.index(have) >= _INTEGERS.index(want)
    h, w = _SIZED.match(have), _SIZED.match(want)
    if want == "text" or (w and w[1] == "character varying"):
        if have == "text":
            return True
        if not (h and h[1] == "character varying"):
            return False
        return h[2] is None or (w is not None and w[2] is not None and int(h[2]) >= int(w[2]))
    if w and h and w[1] == h[1] == "numeric":
        if h[2] is None:
            return True
        return w[2] is not None and int(h[3] or 0) == int(w[3] or 0) and int(h[2]) >= int(w[2])
    return False


#: Of each (relation, column or NULL, privilege) asked for, those the connecting role lacks, in
#: order: the relation as SQL, whether it is a sequence.  A relation or column the target lacks
#: is not asked about here (other checks name it).
_LACKING = """
SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname), c.relkind = 'S', u.i
  FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY u(rel, col, priv, i)
  JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(u.rel)
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = u.col AND a.attnum > 0
       AND NOT a.attisdropped
 WHERE NOT CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(c.oid, u.priv)
                WHEN u.col IS NULL THEN pg_catalog.has_table_privilege(c.oid, u.priv)
                WHEN a.attnum IS NULL THEN true
                ELSE pg_catalog.has_column_privilege(c.oid, a.attnum, u.priv) END
 ORDER BY u.i
"""


def privileges(conn: psycopg.Connection, needs: list[tuple[str, str | None, str, str]]) -> list[str]:
    """The privileges the restore uses on tables and sequences that exist that the connecting role
    lacks, in one problem naming each relation, privilege and why, and the GRANT to run.

    ``needs``: (relation as SQL, column or None, privilege, what for); a privilege such as
    ``"USAGE, SELECT"`` is had when any of them is (named by the first).  The real run failed
    on 'permission denied' and rolled back, after a dry run that passed."""
    if not needs:
        return []
    rows = conn.execute(_LACKING, ([n[0] for n in needs], [n[1] for n in needs], [n[2] for n in needs])).fetchall()
    lacking: dict[tuple[str, bool], tuple[list[str], list[str]]] = {}
    for rel, is_sequence, i in rows:
        _, _, priv, why = needs[i - 1]
        privs, whys = lacking.setdefault((rel, is_sequence), ([], []))
        name = priv.split(",")[0].strip().upper()
        if name not in privs:
            privs.append(name)
        # "to check foreign key a", "... b": "to check foreign key a, b"
        prefix, _, _ = why.rpartition(" ")
        same = [k for k, w in enumerate(whys) if w.startswith(prefix + " ")] if prefix else []
        if same and why not in whys[same[0]].split(", "):
            whys[same[0]] += ", " + why.rpartition(" ")[2]
        elif not same and why not in whys:
            whys.append(why)
    if not lacking:
        return []
    role = one_row(conn.execute("SELECT pg_catalog.quote_ident(current_user)"))[0]
    said = [
        f"{', '.join(privs)} on {'sequence ' if seq else ''}{rel} ({', '.join(whys)})"
        for (rel, seq), (privs, whys) in lacking.items()
    ]
    grants = [
        f"GRANT {', '.join(privs)} ON {'SEQUENCE ' if seq else ''}{rel} TO {role};"
        for (rel, seq), (privs, whys) in lacking.items()
    ]
    return [
        f"{conn.info.user} lacks privileges the restore uses on what it does not own: {'; '.join(said)}: "
        f"have their owner run `{' '.join(grants)}`, or restore as their owner or a superuser"
    ]


_IDENT = r'(?:"(?:[^"]|"")+"|[^\s."(;]+)'
#: pg_dump's CREATE TRIGGER, on one line, its function always schema-qualified.
_TRIGGER = re.compile(
    rf"^CREATE (?:CONSTRAINT )?TRIGGER ({_IDENT}) .*? ON ({_IDENT}\.{_IDENT}) .*?"
    rf"EXECUTE (?:FUNCTION|PROCEDURE) ({_IDENT})\.({_IDENT})\(",
    re.M,
)
_SCHEMA = re.compile(rf"^CREATE SCHEMA (?:IF NOT EXISTS )?({_IDENT})", re.M)
#: Schemas a Supabase project has only once a feature is switched on, and where to do it.
_FEATURES = {"supabase_functions": "enable Database Webhooks in the project (Database, Webhooks) first"}


def missing_trigger_functions(
    pre_data: str, post_data: str, schemas: AbstractSet[str], *, creates_extensions: bool = False
) -> list[str]:
    """Triggers of the rendered ``post_data`` whose function is in a schema that neither the
    target has (``schemas``, with those the restore makes outside ``pre_data``) nor
    ``pre_data`` creates: the CREATE TRIGGER would fail after everything before it ran.  A
    Database Webhook's ``supabase_functions.http_request`` in a project that has not switched
    webhooks on, or a function in a schema the snapshot left out (Supabase's guides put
    security-definer functions in ``private``).  When the restore creates an extension, only
    the schemas of Supabase's features (``_FEATURES``) are judged: an extension may bring a
    schema of its own (TimescaleDB's ``_timescaledb_functions``), which no script names.  Pure."""
    made = {unquote_ident(name) for name in _SCHEMA.findall(pre_data)}
    problems: dict[str, None] = {}
    for trigger, table, schema, name in _TRIGGER.findall(post_data):
        schema = unquote_ident(schema)
        if schema in schemas or schema in made or (creates_extensions and schema not in _FEATURES):
            continue
        fix = _FEATURES.get(schema, f"back up schema {schema} too, or create it and the function here first")
        problem = (
            f"trigger {unquote_ident(trigger)} on {table} calls {schema}.{unquote_ident(name)}(), "
            f"and this database has no schema {schema}: {fix}"
        )
        problems[problem] = None
    return list(problems)
