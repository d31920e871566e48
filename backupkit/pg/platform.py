"""Supabase's platform tables: what a restore into a project must fill, never recreate.

A Supabase project already has the ``auth`` and ``storage`` tables, owned by
``supabase_auth_admin`` and ``supabase_storage_admin`` with the grants its
services need.  Restoring a snapshot there loads those tables' rows into the
project's own tables and adds the app's objects on them (a trigger on
``auth.users``, policies on ``storage.objects``); it never drops, recreates or
re-owns them, which would lock Auth and Storage out of their own data.

A schema counts as the platform's when Supabase manages it, the target has
it, and the connecting role does not own it.  Tables that only record the
platform's own migrations keep the target's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ..snapshot import manifest as mf
from .catalog import SUPABASE_MANAGED
from .rows import one_row
from .schema import TocEntry

#: Migration bookkeeping of the platform's services: it describes the target, not the snapshot.
BOOKKEEPING = frozenset(
    {
        "auth.schema_migrations",
        "storage.migrations",
        "realtime.schema_migrations",
        "_realtime.schema_migrations",
        "supabase_functions.migrations",
    }
)


@dataclass
class Platform:
    """The target's platform schemas and, per platform table the snapshot holds, what it already has."""

    schemas: set[str] = field(default_factory=set)
    tables: dict[str, dict] = field(default_factory=dict)
    #: (schema, name) of every table, view, sequence and index in the platform schemas.
    relations: set[tuple[str, str]] = field(default_factory=set)
    triggers: set[tuple[str, str, str]] = field(default_factory=set)
    policies: set[tuple[str, str, str]] = field(default_factory=set)
    nonempty: set[str] = field(default_factory=set)
    #: platform tables with rows in the snapshot that the connecting role may not insert into
    denied: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.tables)

    def keeps(self, e: TocEntry, existing_objects: set[tuple[str, str, str]], object_key) -> bool:
        """False for entries that would recreate or alter what the platform has.

        ``object_key(e)`` gives (kind, schema, name) of a type, function or schema
        entry, which is left out when the target has that object in a platform schema.
        """
        schema = e.rest.split(" ", 1)[0]
        if schema not in self.schemas:
            return True
        for s, n in self.relations:
            if not e.belongs_to(s, n):
                continue
            if e.type in ("TRIGGER", "POLICY") and f"{s}.{n}" in self.tables:
                name = e.rest[len(f"{s} {n} ") :].rsplit(" ", 1)[0]
                made = self.triggers if e.type == "TRIGGER" else self.policies
                return (s, n, name) not in made  # the app's own, on the platform's table
            return False
        if e.type in ("COMMENT", "ACL", "SECURITY LABEL"):
            return False  # comments and grants of the platform's objects are the platform's
        return object_key(e) not in existing_objects


def read_platform(conn: psycopg.Connection, chosen: list[dict]) -> Platform:
    """Find the platform schemas and tables among ``chosen`` in the target (no changes made)."""
    managed = [s for s in {t["schema"] for t in chosen} if s in SUPABASE_MANAGED]
    if not managed:
        return Platform()
    schemas = {
        r[0]
        for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) "
            "AND NOT pg_has_role(current_user, nspowner, 'USAGE')",
            (managed,),
        ).fetchall()
    }
    keys = [mf.table_key(t) for t in chosen if t["schema"] in schemas]
    present = {
        r[0]
        for r in conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY(%s)",
            (keys,),
        ).fetchall()
    }
    platform = Platform(schemas=schemas, tables={mf.table_key(t): t for t in chosen if mf.table_key(t) in present})
    platform.relations = {
        tuple(r)
        for r in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I') AND n.nspname = ANY(%s)",
            (sorted(schemas),),
        ).fetchall()
    }
    platform.triggers = {
        tuple(r)
        for r in conn.execute(
            "SELECT n.nspname, c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND n.nspname = ANY(%s)",
            (sorted(schemas),),
        ).fetchall()
    }
    platform.policies = {
        tuple(r)
        for r in conn.execute(
            "SELECT schemaname, tablename, policyname FROM pg_policies WHERE schemaname = ANY(%s)", (sorted(schemas),)
        ).fetchall()
    }
    for key, t in platform.tables.items():
        if (
            t["rows"]
            and not one_row(
                conn.execute(
                    "SELECT has_table_privilege(%s, 'INSERT')", (sql.Identifier(*key.split(".", 1)).as_string(conn),)
                )
            )[0]
        ):
            platform.denied.add(key)
        if one_row(conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(*key.split(".", 1)))))[
            0
        ]:
            platform.nonempty.add(key)
    return platform


def problems(platform: Platform) -> list[str]:
    """Platform tables that already hold rows of their own (bookkeeping aside)."""
    out = []
    denied = sorted(platform.denied - BOOKKEEPING)
    if denied:
        out.append(f"the connecting role may not insert into the project's {', '.join(denied)}")
    full = sorted(platform.nonempty - BOOKKEEPING)
    if not full:
        return out
    return out + [
        f"the project's own {', '.join(full)} already hold rows; restore into a new project, "
        "or empty them there first (backupkit never drops or empties the platform's tables)"
    ]


def kept_rows(platform: Platform) -> list[str]:
    """Bookkeeping tables whose target rows are kept instead of the snapshot's."""
    return sorted((platform.nonempty | platform.denied) & BOOKKEEPING)


def empty(platform: Platform) -> list[str]:
    """Platform tables the snapshot holds no rows of: nothing to load (and maybe no right to)."""
    return sorted(k for k, t in platform.tables.items() if not t["rows"])
