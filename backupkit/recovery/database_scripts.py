"""The part of a restore that comes from ``schema/database.dump``: extensions, publications,
database-wide default privileges, event triggers and large objects.

Which of the archive's entries a restore runs depends on the target: an
extension or publication it already has (a Supabase project has
``supabase_realtime`` and its extensions) is not created again, only the
missing publication members are added; default privileges FOR ROLE a role the
connecting role cannot act for (Supabase's ``supabase_admin``, seen from its
non-superuser ``postgres``) are skipped and named; an extension the server does
not offer is a problem found before anything changes, unless nothing in the
snapshot depends on it.  ``plan_database`` decides all of that from a
``Target`` read once; nothing here changes the target.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..pg.schema import TocEntry, render_lines, unquote_ident

#: Entry types that carry large objects (pg_dump 17+ "BLOB METADATA"/"BLOBS"; older "BLOB").
_LO_TYPES = {"BLOB METADATA", "BLOB", "BLOBS", "LARGE OBJECT"}


@dataclass
class Target:
    """What the target database already has, read once before a restore plans anything."""

    user: str
    superuser: bool
    roles: set[str]
    member_of: set[str]
    schemas: set[str]
    extensions: dict[str, str]
    available: set[str]
    publications: set[str]
    publication_tables: set[tuple[str, str, str]]
    publication_schemas: set[tuple[str, str]]
    event_triggers: set[str]
    large_objects: set[int]
    #: ``schema.name`` of every function (an event trigger's must exist)
    functions: set[str] = field(default_factory=set)
    #: The target server's ``server_version_num``.
    server_version_num: int = 0
    #: The target database's ``server_encoding``.
    encoding: str = ""

    #: roles the restore will create (--create-roles) before it needs them
    will_create: set[str] = field(default_factory=set)

    def may_act_for(self, role: str) -> bool:
        """Whether the connecting role may ALTER DEFAULT PRIVILEGES FOR ROLE ``role``."""
        if role in self.will_create:
            return self.superuser  # a CREATEROLE creator is not a member with SET/INHERIT
        return role in self.roles and (self.superuser or role in self.member_of)


#: What ``read_target`` asks the target, each answer a list of rows.
_TARGET_QUERIES = {
    "me": "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user",
    "roles": "SELECT rolname FROM pg_roles",
    # From PostgreSQL 16, ALTER DEFAULT PRIVILEGES FOR ROLE needs the role's privileges (USAGE):
    # a CREATEROLE role is made an ADMIN-only member (no INHERIT, no SET) of the roles it
    # creates.  Before 16 membership was enough.
    "member_of": "SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, "
    "CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'USAGE' ELSE 'MEMBER' END)",
    "schemas": "SELECT nspname FROM pg_namespace",
    "extensions": "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace",
    # pg_cron installs only where the server runs it: preloaded, for the database its
    # cron.database_name names (else CREATE EXTENSION fails, after a dry run that passed).
    # A role that may not read that setting (not a superuser or pg_read_all_settings)
    # sees no row for it, and cannot tell: then it counts as available, as before.
    "available": "SELECT name FROM pg_available_extensions WHERE name <> 'pg_cron' "
    "OR coalesce((SELECT setting = current_database() FROM pg_settings WHERE name = 'cron.database_name'), "
    "NOT pg_has_role('pg_read_all_settings', 'USAGE'))",
    "publications": "SELECT pubname FROM pg_publication",
    "publication_tables": "SELECT pubname, schemaname, tablename FROM pg_publication_tables",
    "publication_schemas": "SELECT p.pubname, n.nspname FROM pg_publication_namespace pn "
    "JOIN pg_publication p ON p.oid = pn.pnpubid JOIN pg_namespace n ON n.oid = pn.pnnspid",
    "event_triggers": "SELECT evtname FROM pg_event_trigger",
    "functions": "SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace",
    "large_objects": "SELECT oid::bigint FROM pg_largeobject_metadata WHERE oid::bigint = ANY(%s)",
}


_PG_CRON_WHERE = (
    " in this database (pg_cron runs only where shared_preload_libraries loads it, in the one"
    " database its cron.database_name names)"
)


def read_target(conn: psycopg.Connection, manifest: dict) -> Target:
    """The target's roles, schemas, extensions, publications, event triggers and clashing large objects.

    The queries go out together in one pipeline: one wait for the network instead of one
    per query (to a hosted database tens of milliseconds each).
    """
    params = {"large_objects": [[lo["oid"] for lo in manifest.get("large_objects", [])]]}
    with conn.pipeline():
        cursors = {name: conn.execute(query, params.get(name)) for name, query in _TARGET_QUERIES.items()}
    rows = {name: cur.fetchall() for name, cur in cursors.items()}

    def col(name: str) -> set:
        return {r[0] for r in rows[name]}

    (user, superuser), *_ = rows["me"]
    return Target(
        server_version_num=conn.info.server_version,
        encoding=conn.info.parameter_status("server_encoding") or "",
        user=user,
        superuser=superuser,
        roles=col("roles"),
        member_of=col("member_of"),
        schemas=col("schemas"),
        extensions=dict(rows["extensions"]),
        available=col("available"),
        publications=col("publications"),
        publication_tables={tuple(r) for r in rows["publication_tables"]},
        publication_schemas={tuple(r) for r in rows["publication_schemas"]},
        event_triggers=col("event_triggers"),
        functions=col("functions"),
        large_objects=col("large_objects"),
    )


@dataclass
class DatabasePlan:
    """The database-level entries a restore runs, and what it made, skipped or cannot do."""

    pre: list[TocEntry] = field(default_factory=list)
    post: list[TocEntry] = field(default_factory=list)
    large_objects: list[TocEntry] = field(default_factory=list)
    schemas_to_create: list[str] = field(default_factory=list)
    extensions_to_create: list[str] = field(default_factory=list)
    publications_to_create: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def setup_sql(self) -> str:
        """CREATE SCHEMA for the schemas the snapshot's extensions live in and the target lacks."""
        return "".join(
            f"CREATE SCHEMA IF NOT EXISTS {sql.Identifier(s).as_string()};\n" for s in self.schemas_to_create
        )

    def undo_sql(self, lo_oids: list[int]) -> str:
        """Statements that remove what this plan created, for a failed parallel restore."""
        out = [f"DROP PUBLICATION IF EXISTS {sql.Identifier(p).as_string()};\n" for p in self.publications_to_create]
        if self.large_objects and lo_oids:
            out.append(
                "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata "
                f"WHERE oid::bigint IN ({', '.join(str(int(o)) for o in lo_oids)});\n"
            )
        out += [f"DROP EXTENSION IF EXISTS {sql.Identifier(e).as_string()};\n" for e in self.extensions_to_create]
        out += [f"DROP SCHEMA IF EXISTS {sql.Identifier(s).as_string()};\n" for s in self.schemas_to_create]
        return "".join(out)


def _name(e: TocEntry) -> str:
    """The tag of an entry with no schema ("- NAME OWNER"), owner dropped."""
    body = e.rest[2:] if e.rest.startswith("- ") else e.rest
    return body.rsplit(" ", 1)[0] if " " in body.rstrip() else body.strip()


def plan_database(
    entries: list[TocEntry],
    manifest: dict,
    target: Target,
    *,
    tables: set[str],
    full: bool,
    clean: bool,
    schemas_made: AbstractSet[str] = frozenset(),
    functions_made: AbstractSet[str] = frozenset(),
    event_functions: dict[str, str] | None = None,
) -> DatabasePlan:
    """Choose the archive entries for ``target``; ``tables`` are the restored ``schema.name`` keys,
    ``schemas_made`` the schemas the restore itself creates (an extension's schema may be one),
    ``functions_made`` the ``schema.name`` of functions it creates, and ``event_functions``
    each event trigger's function (``event_trigger_functions``)."""
    event_functions = event_functions or {}
    plan = DatabasePlan()
    by_name = {x["name"]: x for x in manifest.get("extensions", [])}
    created: set[str] = set()
    for e in entries:
        if e.type != "EXTENSION":
            continue
        name = e.rest[2:].strip()
        ext = by_name.get(name, {"name": name, "schema": None, "required": True})
        if name in target.extensions:
            if ext.get("schema") and target.extensions[name] != ext["schema"] and ext.get("required"):
                plan.notes.append(
                    f"extension {name} is in schema {target.extensions[name]} here, "
                    f"in {ext['schema']} in the snapshot; objects that name it may fail"
                )
            continue
        if name not in target.available:
            if ext.get("required"):
                plan.problems.append(
                    f"extension {name} is not available on this server, and the snapshot's "
                    "objects use it (install it on the server, or restore elsewhere)"
                )
            else:
                plan.notes.append(
                    f"skipped extension {name}: this server does not offer it"
                    + (_PG_CRON_WHERE if name == "pg_cron" else "")
                    + ", and nothing restored uses it"
                )
            continue
        created.add(name)
        plan.pre.append(e)
        schema = ext.get("schema")
        if schema and schema not in target.schemas | schemas_made and schema not in plan.schemas_to_create:
            plan.schemas_to_create.append(schema)
    plan.extensions_to_create = sorted(created)
    if plan.schemas_to_create:
        plan.notes.append("created schema " + ", ".join(plan.schemas_to_create) + " for the snapshot's extensions")
    if created:
        plan.notes.append("created extension " + ", ".join(sorted(created)))
    plan.pre += [
        e
        for e in entries
        if e.type == "COMMENT"
        and e.rest.startswith("- EXTENSION ")
        and e.rest[len("- EXTENSION ") :].strip() in created
    ]
    _plan_publications(plan, entries, manifest, target, tables, full)
    for e in entries:
        if e.type == "DEFAULT ACL" and e.rest.startswith("- "):
            keep, note = default_acl_allowed(e, target)
            if keep:
                plan.post.append(e)
            elif note not in plan.notes:
                plan.notes.append(note)
        elif e.type == "EVENT TRIGGER" and full:
            name = _name(e)
            if name in target.event_triggers:
                continue
            function = event_functions.get(name)
            if not target.superuser:
                plan.notes.append(f"skipped event trigger {name}: only a superuser can create one")
            elif function and function not in target.functions | functions_made:
                plan.notes.append(
                    f"skipped event trigger {name}: its function {function} is neither "
                    "in the snapshot nor in this database"
                )
            else:
                plan.post.append(e)
    los = [
        e
        for e in entries
        if e.type in _LO_TYPES
        or (e.type in ("COMMENT", "ACL", "SECURITY LABEL") and e.rest.startswith("- LARGE OBJECT "))
    ]
    if full and los:
        if target.large_objects and not clean:
            plan.problems.append(
                f"the target already has {len(target.large_objects)} of the snapshot's large "
                "objects (e.g. " + str(min(target.large_objects)) + "); pass `clean` to replace them"
            )
        plan.large_objects = los
    return plan


def _plan_publications(
    plan: DatabasePlan, entries: list[TocEntry], manifest: dict, target: Target, tables: set[str], full: bool
) -> None:
    """Create the snapshot's publications the target lacks; add the members it lacks."""
    pubs = manifest.get("publications", [])
    wanted: set[str] = set()
    members: list[str] = []
    for pub in pubs:
        for t in pub.get("tables", []):
            key = f"{t['schema']}.{t['name']}"
            if (full or key in tables) and (pub["name"], t["schema"], t["name"]) not in target.publication_tables:
                wanted.add(pub["name"])
                members.append(f"{pub['name']}: {key}")
                plan.post += [
                    e
                    for e in entries
                    if e.type == "PUBLICATION TABLE" and e.rest.startswith(f"{t['schema']} {pub['name']} {t['name']} ")
                ]
        for s in pub.get("schemas", []):
            in_scope = full or any(k.startswith(s + ".") for k in tables)
            if in_scope and (pub["name"], s) not in target.publication_schemas:
                wanted.add(pub["name"])
                members.append(f"{pub['name']}: tables in schema {s}")
                plan.post += [
                    e
                    for e in entries
                    if e.type == "PUBLICATION TABLES IN SCHEMA" and e.rest.startswith(f"{s} {pub['name']} {s} ")
                ]
        if full:
            wanted.add(pub["name"])
    create = [p for p in sorted(wanted) if p not in target.publications]
    plan.publications_to_create = create
    # Creation first: members are added to a publication that exists by then.
    plan.post[:0] = [
        e
        for e in entries
        if (e.type == "PUBLICATION" and _name(e) in create)
        or (e.type == "COMMENT" and any(e.rest.startswith(f"- PUBLICATION {p} ") for p in create))
    ]
    if members:
        plan.notes.append(f"added {len(members)} publication member(s): " + "; ".join(members))


def default_acl_allowed(e: TocEntry, target: Target) -> tuple[bool, str]:
    """Whether a DEFAULT ACL entry can run here, and if not, the note that says why."""
    role = e.rest.rsplit(" ", 1)[-1].strip()
    if target.may_act_for(role):
        return True, ""
    why = (
        "that role does not exist here"
        if role not in target.roles | target.will_create
        else f"{target.user} is not a member of it"
    )
    scope = "database-wide" if e.rest.startswith("- ") else f"in schema {e.rest.split(' ', 1)[0]}"
    return False, f"skipped default privileges FOR ROLE {role} ({scope}): {why}"


_EXECUTE = re.compile(r"^CREATE EVENT TRIGGER (.+?) ON .*?EXECUTE (?:FUNCTION|PROCEDURE) (.+?)\(\);", re.M | re.S)


def event_trigger_functions(script: str) -> dict[str, str]:
    """Each event trigger's function, ``schema.name``, from pg_restore's SQL of the triggers."""
    return {
        unquote_ident(m.group(1)): ".".join(unquote_ident(p) for p in m.group(2).split("."))
        for m in _EXECUTE.finditer(script)
    }


_TX_LINE = re.compile(r"^(BEGIN|COMMIT);\s*$")


def large_object_statements(lines: Iterator[str]) -> Iterator[str]:
    """Statements of pg_restore's large-object SQL, one at a time, without its BEGIN/COMMIT.

    The data is a stream of one-line ``lowrite`` calls; they are yielded as they
    come, so a large object never sits whole in memory.  Other statements (a
    multi-line COMMENT) are gathered until their closing ``;``.
    """
    pending: list[str] = []
    for line in lines:
        if not pending and (not line.strip() or line.startswith(("--", "\\")) or _TX_LINE.match(line)):
            continue
        pending.append(line)
        if line.rstrip().endswith(";") and _complete("".join(pending)):
            yield "".join(pending)
            pending = []
    if "".join(pending).strip():
        yield "".join(pending)


def _complete(statement: str) -> bool:
    """True when the statement's single quotes are balanced (a ';' inside a string ends nothing)."""
    return statement.count("'") % 2 == 0


def restore_large_objects(conn: psycopg.Connection, dump: Path, entries: list[TocEntry], *, no_owner: bool) -> None:
    """Create the snapshot's large objects and stream their data in, in ``conn``'s transaction."""
    with render_lines(dump, "data", entries, no_owner=no_owner) as lines:
        for statement in large_object_statements(lines):
            conn.execute(statement)
