"""The target's default privileges kept off the objects a restore creates.

A new Supabase project says ``ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES
TO anon, authenticated, service_role``: every table the connecting role creates there gets
those grants.  pg_dump writes an object's grants as changes from PostgreSQL's built-in
default, not from the target's, so a table whose ``anon`` privileges were revoked in the
source came back readable by ``anon`` (through the project's API, with its public key).

So the connecting role's schema-level default privileges are revoked for the moment the
snapshot's objects are created, and granted again right after, in the same transaction:
the objects get exactly the snapshot's grants, and the target keeps its default privileges
(a rollback puts them back as well).  Database-wide default privileges (``FOR ROLE r`` with
no schema) cannot be switched off the same way and are left as they are; other roles'
default privileges do not apply to what this role creates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg import sql

#: ``pg_default_acl.defaclobjtype`` -> the word ALTER DEFAULT PRIVILEGES uses for it.
_KINDS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES"}

_MINE = """
SELECT n.nspname, d.defaclobjtype::text, a.grantee, a.privilege_type, a.is_grantable
  FROM pg_catalog.pg_default_acl d
  JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace,
       LATERAL pg_catalog.aclexplode(d.defaclacl) a
 WHERE d.defaclrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
   AND d.defaclnamespace <> 0
 ORDER BY 1, 2, 3, 4
"""

_NAMES = "SELECT oid, rolname FROM pg_catalog.pg_roles WHERE oid = ANY(%s)"


def statements(grants: list[tuple[str, str, str, str, bool]]) -> tuple[list[sql.Composed], list[sql.Composed]]:
    """(revoke, grant again) statements for ``grants``: (schema, kind, grantee name or
    ``PUBLIC``, privilege, grantable) of the connecting role's schema-level default
    privileges.  Pure."""
    off, on = [], []
    for schema, kind, grantee, privilege, grantable in grants:
        if kind not in _KINDS:
            continue
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        head = sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} ").format(sql.Identifier(schema))
        what = sql.SQL("{} ON {}").format(sql.SQL(privilege), sql.SQL(_KINDS[kind]))
        off.append(head + sql.SQL("REVOKE {} FROM {}").format(what, who))
        option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
        on.append(head + sql.SQL("GRANT {} TO {}{}").format(what, who, option))
    return off, on


def _read(conn: psycopg.Connection) -> list[tuple[str, str, str, str, bool]]:
    rows = conn.execute(_MINE).fetchall()
    names: dict[int, str] = dict(conn.execute(_NAMES, ([r[2] for r in rows if r[2]],)).fetchall()) if rows else {}
    return [(s, k, "PUBLIC" if g == 0 else names[g], p, bool(grantable)) for s, k, g, p, grantable in rows]


@contextlib.contextmanager
def suspended(conn: psycopg.Connection) -> Iterator[None]:
    """The connecting role's schema-level default privileges off while the block runs, inside
    ``conn``'s transaction; granted again when it ends normally (an error rolls them back)."""
    off, on = statements(_read(conn))
    for statement in off:
        conn.execute(statement)
    yield
    for statement in on:
        conn.execute(statement)
