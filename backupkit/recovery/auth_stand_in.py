"""A minimal ``auth`` schema for restoring a Supabase app's snapshot into plain PostgreSQL.

A snapshot of only ``public`` still points at Supabase's ``auth``: foreign keys
to ``auth.users`` and policies calling ``auth.uid()``.  Restored into a
database without an ``auth`` schema (local development, the embedded server),
those fail.  The stand-in is just enough for them to load: ``auth.uid()``,
``auth.role()`` and ``auth.jwt()`` read the JWT claims the way Supabase's own
definitions do (``request.jwt.claims``), and ``auth.users`` holds only the ids
the snapshot's rows reference.  It is made only where the target has no
``auth`` schema, so a Supabase project's real one is never shadowed, and the
restore says exactly what it made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from psycopg import sql

_AUTH_CALL = re.compile(r"\bauth\.(uid|role|jwt|email)\(\)")

# Supabase's definitions (supabase/postgres, migrations/db/init-scripts), reading
# the claims PostgREST sets; the older per-claim settings are read first, as there.
_FUNCTIONS = {
    "uid": (
        "uuid",
        "nullif(coalesce(current_setting('request.jwt.claim.sub', true), "
        "(current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid",
    ),
    "role": (
        "text",
        "nullif(coalesce(current_setting('request.jwt.claim.role', true), "
        "(current_setting('request.jwt.claims', true)::jsonb ->> 'role')), '')::text",
    ),
    "email": (
        "text",
        "nullif(coalesce(current_setting('request.jwt.claim.email', true), "
        "(current_setting('request.jwt.claims', true)::jsonb ->> 'email')), '')::text",
    ),
    "jwt": (
        "jsonb",
        "coalesce(nullif(current_setting('request.jwt.claim', true), ''), "
        "nullif(current_setting('request.jwt.claims', true), ''))::jsonb",
    ),
}


@dataclass
class StandIn:
    """The auth stand-in a restore makes: the functions, and the auth.users columns and sources."""

    functions: list[str] = field(default_factory=list)
    #: auth.users column -> its type, from the referencing columns
    columns: dict[str, str] = field(default_factory=dict)
    #: (schema, table, column, auth.users column) whose values become auth.users rows
    sources: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: roles given USAGE on the schema (Supabase's anon, authenticated, service_role)
    grantees: list[str] = field(default_factory=list)

    def create_sql(self) -> str:
        """The schema, functions and table, created before the snapshot's own objects."""
        out = ["CREATE SCHEMA auth;\n"]
        for name in self.functions:
            returns, body = _FUNCTIONS[name]
            out.append(f"CREATE FUNCTION auth.{name}() RETURNS {returns} LANGUAGE sql STABLE AS $$ SELECT {body} $$;\n")
        if self.columns:
            cols = ", ".join(f"{sql.Identifier(c).as_string()} {t}" for c, t in self.columns.items())
            keys = ", ".join(sql.Identifier(c).as_string() for c in self.columns)
            out.append(f"CREATE TABLE auth.users ({cols}, PRIMARY KEY ({keys}));\n")
        return "".join(out)

    def fill_sql(self) -> str:
        """auth.users rows for every id the restored rows reference (after the data, before foreign
        keys), and USAGE on the schema for the API roles (made by then, with --create-roles)."""
        out = []
        if self.grantees:
            out.append(
                "GRANT USAGE ON SCHEMA auth TO "
                + ", ".join(sql.Identifier(r).as_string() for r in self.grantees)
                + ";\n"
            )
        for schema, table, column, target in self.sources:
            out.append(
                sql.SQL(
                    "INSERT INTO auth.users ({}) SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL "
                    "ON CONFLICT DO NOTHING;\n"
                )
                .format(
                    sql.Identifier(target),
                    sql.Identifier(column),
                    sql.Identifier(schema, table),
                    sql.Identifier(column),
                )
                .as_string()
            )
        return "".join(out)

    def describe(self) -> str:
        """One line for the restore's notes (a dry run's too): what the stand-in makes."""
        made = [f"auth.{f}()" for f in self.functions]
        if self.columns:
            made.append(
                f"auth.users ({', '.join(self.columns)}) holding the ids referenced by "
                + ", ".join(sorted({f"{s}.{t}" for s, t, _, _ in self.sources}))
            )
        return "a stand-in auth schema for plain PostgreSQL (none in the target), with " + ", ".join(made)


def plan_stand_in(manifest: dict, chosen: list[dict], schema_sql: str, target_schemas: set[str]) -> StandIn | None:
    """The stand-in the restore needs, or None (the target has ``auth``, or nothing points at it)."""
    if "auth" in target_schemas or any(t["schema"] == "auth" for t in chosen):
        return None
    if not _AUTH_CALL.search(schema_sql) and not any(
        fk["ref_schema"] == "auth" for t in chosen for fk in t.get("foreign_keys", [])
    ):
        return None
    # All four, not only those the policies name: function bodies are not checked when
    # created, so an app function calling auth.role() would fail only when it runs.
    stand_in = StandIn(functions=sorted(_FUNCTIONS))
    for t in chosen:
        types = {c["name"]: c["type"] for c in t["columns"]}
        for fk in t.get("foreign_keys", []):
            if fk["ref_schema"] != "auth" or fk["ref_table"] != "users" or len(fk["columns"]) != 1:
                continue
            col, ref = fk["columns"][0], fk["ref_columns"][0]
            stand_in.columns.setdefault(ref, types[col])
            stand_in.sources.append((t["schema"], t["name"], col, ref))
    return stand_in
