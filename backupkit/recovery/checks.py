"""Checks a restore runs against the target before it changes anything (and ``--dry-run`` reports).

Each returns problems in words; the restore refuses to start while any is
left, so a plan that would fail halfway never reports success.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import psycopg

from ..pg.rows import one_row
from ..pg.schema import TocEntry
from ..snapshot import manifest as mf

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
