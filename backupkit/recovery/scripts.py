"""The SQL a restore runs, rendered by pg_restore from a snapshot's schema archive.

Which TOC entries a (selective) restore wants, the pre-data and post-data
scripts with grants to missing roles filtered out and unknown column options
dropped, each table's index builds for a parallel restore, and the DROPs that
undo a failed one. Nothing here changes the target database (the column-option
probe works on a temporary table).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import RestoreError
from ..pg.column_options import drop_options, unknown_options
from ..pg.cron import Statement
from ..pg.platform import Platform
from ..pg.schema import TABLE_TAGGED, TocEntry, render, split_entries, unquote_ident
from ..snapshot import manifest as mf
from .database_scripts import DatabasePlan
from .in_the_way import PutBack
from .left_out import Remade

#: pg_restore processes rendering a restore's scripts at once.
RENDERINGS_AT_ONCE = 4

_DROP_LINE = re.compile(r"^(DROP |ALTER (TABLE|FOREIGN TABLE|DOMAIN|TYPE) IF EXISTS .* DROP )")
_POLICY_ROLES = re.compile(r"^CREATE POLICY .*? TO (.+?)(?: USING | WITH CHECK |;)", re.M)
_GLOBAL_TYPES = {
    "SCHEMA",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "COLLATION",
    "EXTENSION",
    "SHELL TYPE",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "OPERATOR",
    "CAST",
}


@dataclass
class Scripts:
    """The SQL each step of a restore runs; None where the step has nothing to run."""

    pre_data: str | None = None
    post_data: str | None = None
    #: A parallel restore's post-data in two parts: each table's indexes and key constraints
    #: (``schema.table`` -> SQL), built as soon as that table is loaded, and the rest.
    index_groups: dict[str, str] = field(default_factory=dict)
    post_data_rest: str | None = None
    #: DROPs of everything this restore creates, for a failed parallel restore.
    undo: str | None = None
    #: What --clean drops or unlinks first.
    clean: str | None = None
    #: DELETEs of the tables whose rows are replaced in place.
    empty: str | None = None
    #: Setting and clearing the unfinished-restore mark (``recovery.mark``).
    mark: str | None = None
    unmark: str | None = None
    #: The large objects' entries of the database archive, created with their data after the tables.
    large_objects: list[TocEntry] = field(default_factory=list)
    #: The snapshot's pg_cron jobs to schedule (``pg.cron.schedule``), last.
    cron: list[Statement] = field(default_factory=list)
    #: The source's own objects on the platform's tables (``left_out.make_again``), before the jobs.
    platform_objects: list[Remade] = field(default_factory=list)
    #: The policies and triggers set aside in ``clean``, made again as they were (``in_the_way``).
    put_back: list[PutBack] = field(default_factory=list)
    #: Whether pg_restore keeps the snapshot's owners (``--owner``) in what is rendered later.
    owner: bool = False


@dataclass
class ScriptNotes:
    """What rendering the scripts left out or added, for the restore's plan and warnings."""

    skipped_grants: list[str] = field(default_factory=list)
    dropped_column_options: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)


def _existing_objects(target: psycopg.Connection) -> set[tuple[str, str, str]]:
    """(kind, schema, name) of the types, functions, collations, extensions and schemas the target has."""
    rows = target.execute("""
        SELECT 'TYPE', n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        UNION ALL SELECT 'FUNCTION', n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        UNION ALL SELECT 'COLLATION', n.nspname, c.collname FROM pg_collation c
                  JOIN pg_namespace n ON n.oid = c.collnamespace
        UNION ALL SELECT 'EXTENSION', '-', extname FROM pg_extension
        UNION ALL SELECT 'SCHEMA', '-', nspname FROM pg_namespace""").fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def object_key(e: TocEntry) -> tuple[str, str, str]:
    """(kind, schema, name) of a TOC entry for a type, function, collation, extension or schema."""
    schema, _, rest = e.rest.partition(" ")
    name = rest.rsplit(" ", 1)[0] if " " in rest else rest
    kind = {"DOMAIN": "TYPE", "SHELL TYPE": "TYPE", "PROCEDURE": "FUNCTION", "AGGREGATE": "FUNCTION"}.get(
        e.type, e.type
    )
    if kind == "FUNCTION":
        name = name.split("(", 1)[0]
    return kind, schema, name


def wanted_entries(
    entries: list[TocEntry],
    manifest: dict,
    chosen: list[dict],
    *,
    full: bool,
    target: psycopg.Connection,
    platform: Platform | None = None,
    schemas: Sequence[str] = (),
    tables_named: bool = True,
    in_place: Sequence[dict] = (),
    rebuilding: bool = False,
    in_place_sequences: Collection[tuple[str, str]] = (),
    new_sequences: Collection[tuple[str, str]] = (),
) -> list[TocEntry]:
    """TOC entries to restore: everything for a full restore, else what belongs to ``chosen``
    (the partitioned tables above its partitions among them, every level: the caller's) and,
    for ``schemas``, everything in those schemas (views, functions, sequences too) but
    what belongs to the ``in_place`` tables, whose rows alone are replaced (but, when
    ``rebuilding`` other tables, their foreign keys: one may point at a table dropped and
    recreated, so it is dropped first and made again).  ``in_place_sequences`` are the
    sequences their column defaults use, which stay too.  ``new_sequences`` are sequences no
    chosen table owns that their defaults use and the target lacks (``default_sequences``).

    Objects the target already has (the public schema, always; types and
    functions on a selective restore into a live database; whatever the
    Supabase platform already has) are not created again.  A restore of whole
    schemas only takes other schemas' types its tables' columns use, never
    their functions.
    """
    existing = _existing_objects(target)
    if platform:

        def key_of(e: TocEntry) -> tuple[str, str, str] | None:
            return object_key(e) if e.type in _GLOBAL_TYPES else None

        entries = [e for e in entries if platform.keeps(e, existing, key_of)]
    global_keys: dict[str, tuple[str, str, str]] = {}
    for e in entries:
        if e.type in _GLOBAL_TYPES:
            global_keys[e.line] = object_key(e)

    def new_global(e: TocEntry) -> bool:
        return global_keys[e.line] not in existing

    # Grants and comments on a schema the target has and the connecting role does not own
    # (Supabase's auth, storage) are the owner's to give; re-granting them fails or changes
    # nothing.  On a schema it owns (public, on Supabase) the snapshot's comment is put back:
    # pg_graphql reads its settings from it (``@graphql({"inflect_names": true})``).
    not_ours = {
        r[0]
        for r in target.execute("SELECT nspname FROM pg_namespace WHERE NOT pg_has_role(nspowner, 'USAGE')").fetchall()
    }

    def on_foreign_schema(e: TocEntry, kind: str) -> bool:
        return e.type == kind and any(e.rest.startswith(f"- SCHEMA {n} ") for n in not_ours)

    if full:
        return [
            e
            for e in entries
            if (e.type != "SCHEMA" or new_global(e))
            and not on_foreign_schema(e, "COMMENT")
            and not on_foreign_schema(e, "ACL")
        ]
    wanted = []
    chosen_keys = {mf.table_key(t) for t in chosen}
    seqs = {
        (s["schema"], s["name"])
        for s in manifest.get("sequences", [])
        if s.get("owned_by") and f"{s['owned_by'][0]}.{s['owned_by'][1]}" in chosen_keys
    } | set(new_sequences)
    names = {(t["schema"], t["name"]) for t in chosen}
    indexes = {(t["schema"], i) for t in chosen for i in t.get("indexes", [])}
    globals_kept = set()
    selected = set(schemas)
    used_types = {_bare_type(c["type"]) for t in chosen for c in t["columns"]}

    def in_selected(e: TocEntry) -> bool:
        return e.rest.split(" ", 1)[0] in selected

    def type_used(kind: str, schema: str, name: str) -> bool:
        return kind == "TYPE" and (f"{schema}.{name}" in used_types or (schema == "public" and name in used_types))

    # Schemas of other schemas' types the chosen columns use: created if the target lacks them.
    type_schemas = {k[1] for k in global_keys.values() if type_used(*k)}

    def global_wanted(e: TocEntry) -> bool:
        kind, schema, name = global_keys[e.line]
        if kind == "SCHEMA":
            return name in selected or tables_named or name in type_schemas
        return schema in selected or tables_named or type_used(kind, schema, name)

    kept = _belonging_to(in_place, manifest, foreign_keys=not rebuilding, sequences=in_place_sequences)

    for e in entries:
        if selected and in_selected(e) and e.type not in _GLOBAL_TYPES:
            # A whole schema: its views, sequences, comments and grants too, but not what
            # the tables kept in place have (they, their keys, triggers and grants stay).
            ok = not kept(e)
        elif e.type in ("TABLE", "TABLE ATTACH"):
            ok = any(e.belongs_to(s, n) for s, n in names)
        elif e.type in ("INDEX", "INDEX ATTACH"):
            ok = any(e.belongs_to(s, i) for s, i in indexes)
        elif e.type in ("SEQUENCE", "SEQUENCE OWNED BY"):
            ok = any(e.belongs_to(s, n) for s, n in seqs)
        elif e.type in TABLE_TAGGED:
            ok = any(e.belongs_to(s, n) for s, n in names)
        elif e.type in _GLOBAL_TYPES:
            # Types, functions and schemas the tables may need, unless the target has them.
            ok = new_global(e) and global_wanted(e)
            if ok:
                globals_kept.add(global_keys[e.line][1:])
        elif e.type in ("COMMENT", "ACL", "SECURITY LABEL"):
            ok = any(
                e.rest.startswith(f"{s} TABLE {n} ")
                or e.rest.startswith(f"{s} COLUMN {n}.")
                or e.rest.startswith(f"{s} SEQUENCE {n} ")
                for s, n in names | seqs
            ) or any(
                _names(e.rest, f"{s} {kind} {n}")
                for s, n in globals_kept
                for kind in ("TYPE", "DOMAIN", "FUNCTION", "SCHEMA")
            )
        else:
            ok = False
        if ok:
            wanted.append(e)
    return wanted


#: ``nextval('schema.name'::regclass)`` as pg_dump writes a column default, the name quoted as SQL.
_NEXTVAL = re.compile(r"nextval\('((?:[^']|'')+)'::regclass\)")
_PART = r'("(?:[^"]|"")*"|[^."]+)'


def default_sequences(dump: Path, entries: Sequence[TocEntry], tables: Sequence[dict]) -> set[tuple[str, str]]:
    """(schema, name) of the sequences the column defaults of ``tables`` draw from (``nextval``),
    as the archive says: in CREATE TABLE, or in a DEFAULT entry of its own (a serial column's)."""
    defaults = [
        e
        for e in entries
        if e.type in ("TABLE", "DEFAULT") and any(e.belongs_to(t["schema"], t["name"]) for t in tables)
    ]
    if not defaults:
        return set()
    found = set()
    for m in _NEXTVAL.finditer(render(dump, "pre-data", defaults)):
        parts = re.fullmatch(_PART + r"\." + _PART, m.group(1).replace("''", "'"))
        if parts:  # pg_dump qualifies every name (its search_path is empty)
            schema, name = (p[1:-1].replace('""', '"') if p.startswith('"') else p for p in parts.groups())
            found.add((schema, name))
    return found


def _belonging_to(
    tables: Sequence[dict],
    manifest: dict,
    *,
    foreign_keys: bool = True,
    sequences: Collection[tuple[str, str]] = (),
) -> Callable[[TocEntry], bool]:
    """Whether a TOC entry is one of ``tables``' own: the table, its constraints (foreign keys
    only with ``foreign_keys``), triggers, policies and defaults, its indexes, the sequences it
    owns, comments and grants on them."""
    keys = {mf.table_key(t) for t in tables}
    names = {(t["schema"], t["name"]) for t in tables}
    indexes = {(t["schema"], i) for t in tables for i in t.get("indexes", [])}
    seqs = {
        (s["schema"], s["name"])
        for s in manifest.get("sequences", [])
        if s.get("owned_by") and f"{s['owned_by'][0]}.{s['owned_by'][1]}" in keys
    } | set(sequences)

    def belongs(e: TocEntry) -> bool:
        if not tables:
            return False
        if e.type == "FK CONSTRAINT" and not foreign_keys:
            return False
        if e.type in ("TABLE", "TABLE ATTACH") or e.type in TABLE_TAGGED:
            return any(e.belongs_to(s, n) for s, n in names)
        if e.type in ("INDEX", "INDEX ATTACH"):
            return any(e.belongs_to(s, i) for s, i in indexes)
        if e.type in ("SEQUENCE", "SEQUENCE OWNED BY"):
            return any(e.belongs_to(s, n) for s, n in seqs)
        if e.type in ("COMMENT", "ACL", "SECURITY LABEL"):
            return any(
                e.rest.startswith(f"{s} TABLE {n} ")
                or e.rest.startswith(f"{s} COLUMN {n}.")
                or e.rest.startswith(f"{s} SEQUENCE {n} ")
                for s, n in names | seqs
            )
        return False

    return belongs


def _names(rest: str, prefix: str) -> bool:
    """Whether a TOC entry's ``rest`` is about the object ``prefix`` ("schema KIND name") itself:
    its name ends there (an owner or a function's arguments follow), so type ``mood`` does not
    take the comments of ``moods``."""
    return rest.startswith(prefix) and rest[len(prefix) : len(prefix) + 1] in ("", " ", "(")


def _bare_type(type_name: str) -> str:
    """``schema.type`` of a column type as format_type prints it, without typmod or array brackets."""
    return re.sub(r"(\(.*\))?(\[\])*$", "", type_name).replace('"', "")


def _acl_lines(script: str) -> Iterator[tuple[str, bool]]:
    """(line, is_acl) for every line, is_acl only inside pg_restore's ACL entries."""
    preamble, entries = split_entries(script)
    for line in preamble.splitlines(keepends=True):
        yield line, False
    for etype, header, body in entries:
        yield header, False
        for line in body.splitlines(keepends=True):
            yield line, etype in ("ACL", "DEFAULT ACL")


#: A token of a pg_dump SQL line: a quoted identifier (doubled quotes inside), a comma or a
#: semicolon, or a run of anything else up to a space: quoted names may hold ", " and " TO ".
_TOKEN = re.compile(r'"(?:[^"]|"")*"|[,;]|[^\s",;]+')
_NOT_ROLES = {"public", "PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"}


def _role_names(listing: str) -> set[str]:
    """The roles of a comma-separated list as pg_dump writes it (quoted names may hold commas)."""
    return {unquote_ident(t) for t in _TOKEN.findall(listing) if t not in (",", ";")} - _NOT_ROLES


def _grantee(line: str) -> str | None:
    """The role a pg_dump GRANT or REVOKE line names (after its last unquoted TO or FROM), or None."""
    tokens = _TOKEN.findall(line)
    ends = [i for i, t in enumerate(tokens) if t in ("TO", "FROM")]
    if not ends:
        return None
    names = [t for t in tokens[ends[-1] + 1 :] if t not in (",", ";")]
    return unquote_ident(names[0]) if names else None


def referenced_roles(script: str) -> tuple[set[str], set[str]]:
    """Roles named by the script's policies, and by its GRANT/REVOKE statements."""
    bodies = [body for etype, _, body in split_entries(script)[1] if etype == "POLICY"]
    policies = set().union(*(_role_names(m) for b in bodies for m in _POLICY_ROLES.findall(b)))
    grants = {
        who
        for line, acl in _acl_lines(script)
        if acl and line.startswith(("GRANT ", "REVOKE ")) and (who := _grantee(line)) is not None
    } - _NOT_ROLES
    return policies, grants


def _filter_grants(script: str, roles: set[str]) -> tuple[str, list[str]]:
    """Drop GRANT/REVOKE lines naming roles the target lacks (Supabase's roles on plain PostgreSQL)."""
    kept, skipped = [], []
    for line, acl in _acl_lines(script):
        grantee = _grantee(line) if acl and line.startswith(("GRANT ", "REVOKE ")) else None
        if grantee is not None and grantee.upper() != "PUBLIC" and grantee not in roles:
            skipped.append(line.strip())
            continue
        kept.append(line)
    return "".join(kept), skipped


def build_scripts(
    dsn: str,
    dump: Path,
    entries: list[TocEntry],
    chosen: list[dict],
    *,
    roles: set[str],
    owner: bool,
    create_roles: bool,
    parallel: bool,
    drop_first: bool,
    large_object_oids: Sequence[int] = (),
    database: tuple[Path, DatabasePlan] | None = None,
    more_roles: Collection[str] = frozenset(),
) -> tuple[Scripts, ScriptNotes]:
    """The SQL each step runs, rendered by pg_restore from the snapshot's archives, and what it left out.

    ``dump`` is the schema archive; ``database`` the database-level archive and the
    plan of its entries; ``more_roles`` roles to create with ``create_roles`` beyond
    those the SQL names (a large object's owner, a default privilege's role: the
    manifest's roles).  ``drop_first`` adds what --clean drops; ``large_object_oids``
    are the large objects a failed parallel restore unlinks again.
    """
    notes = ScriptNotes()
    with ThreadPoolExecutor(RENDERINGS_AT_ONCE, thread_name_prefix="backupkit-render") as pool:
        # Every pg_restore rendering of the run is started here, before any is needed: each is
        # a process of its own (~4 ms) and a parallel restore asks for a dozen.
        def rendered(archive: Path, section: str, some: list[TocEntry], clean: bool = False) -> Future[str]:
            if clean:
                return pool.submit(render, archive, section, some, clean=True)
            return pool.submit(render, archive, section, some, no_owner=not owner)

        sections = {section: rendered(dump, section, entries) for section in ("pre-data", "post-data")}
        # pg_restore --clean writes the DROPs, in reverse dependency order, before everything else.
        cleans = [rendered(dump, section, entries, clean=True) for section in ("post-data", "pre-data")]
        db_pre = db_post = None
        if database is not None:
            db_dump, dbplan = database
            db_pre = rendered(db_dump, "pre-data", dbplan.pre) if dbplan.pre else None
            db_post = rendered(db_dump, "post-data", dbplan.post) if dbplan.post else None
        if parallel:
            groups, rest = _index_groups(entries, chosen)
            group_sql = {key: pool.submit(render, dump, "post-data", g) for key, g in groups.items()}
            rest_sql = rendered(dump, "post-data", rest)
        texts = {section: text.result() for section, text in sections.items()}
        if database is not None:
            # Extensions before the types that use them; publications and default privileges last.
            texts["pre-data"] = _after_schemas(
                texts["pre-data"], database[1].setup_sql() + (db_pre.result() if db_pre else "")
            )
            if db_post:
                texts["post-data"] += db_post.result()
        texts["pre-data"], notes.dropped_column_options = drop_options(
            texts["pre-data"], unknown_options(dsn, texts["pre-data"])
        )
        policy_roles, grant_roles = referenced_roles(texts["pre-data"] + texts["post-data"])
        missing = sorted(policy_roles - roles)
        if missing and not create_roles:
            raise RestoreError(
                f"the snapshot's row-level security policies name roles this database does not have: "
                f"{', '.join(missing)}; skipping the policies would weaken security",
                hint="restore into a Supabase project (which has these roles), create them first, "
                "or pass `create_roles` to create them as NOLOGIN roles",
            )
        if create_roles:
            from ..pg.database_objects import referenced_roles as every_role  # owners too, with --owner

            notes.created_roles = sorted(
                (every_role(texts["pre-data"] + texts["post-data"]) | policy_roles | grant_roles | set(more_roles))
                - roles
            )
            roles = roles | set(notes.created_roles)
            texts["pre-data"] = (
                "".join(f"CREATE ROLE {sql.Identifier(r).as_string()} NOLOGIN;\n" for r in notes.created_roles)
                + texts["pre-data"]
            )
        filtered: dict[str, str] = {}
        for section, text in texts.items():
            filtered[section], skipped = _filter_grants(text, roles)
            notes.skipped_grants += skipped
        scripts = Scripts(pre_data=filtered["pre-data"], post_data=filtered["post-data"], owner=owner)
        if parallel:
            scripts.index_groups = {key: g.result() for key, g in group_sql.items()}
            scripts.post_data_rest = _filter_grants(rest_sql.result() + (db_post.result() if db_post else ""), roles)[0]
        # Take the DROPs from the --clean preamble only, never from inside a function body.
        post, pre = (
            [line for line in split_entries(c.result())[0].splitlines(keepends=True) if _DROP_LINE.match(line)]
            for c in cleans
        )
        partitions = {(t["schema"], t["name"]) for t in chosen if t.get("is_partition")}
        # A partitioned table attached to another (a sub-partitioned one) is no table of the
        # manifest: its TABLE ATTACH entry says it is a partition too.
        partitions |= {
            name
            for line in post
            if (m := _DROP_CONSTRAINT.match(line))
            and (name := (unquote_ident(m[1]), unquote_ident(m[2]))) not in partitions
            and any(e.type == "TABLE ATTACH" and e.belongs_to(*name) for e in entries)
        }
        drops = "".join(partitions_last(post, partitions) + pre)
        if database is not None:
            # Publications, large objects and extensions this restore made go after its tables.
            drops += database[1].undo_sql(list(large_object_oids))
    scripts.undo = drops or "SELECT 1"
    if drop_first:
        # Schemas that existed before are left alone; their other contents are not ours.
        scripts.clean = (
            "".join(line for line in drops.splitlines(keepends=True) if not line.startswith("DROP SCHEMA"))
            or "SELECT 1"
        )
    return scripts, notes


#: ``ALTER TABLE IF EXISTS ONLY schema.table DROP CONSTRAINT``, as pg_restore --clean writes it.
_DROP_CONSTRAINT = re.compile(
    r'^ALTER TABLE IF EXISTS ONLY ("(?:[^"]|"")*"|[^\s".]+)\.("(?:[^"]|"")*"|[^\s".]+) DROP CONSTRAINT '
)


def partitions_last(lines: list[str], partitions: AbstractSet[tuple[str, str]]) -> list[str]:
    """pg_restore --clean's post-data DROP lines, those dropping a constraint of one of
    ``partitions`` ((schema, name)) moved after the others.  Pure.

    pg_restore drops in reverse order of creation, so a partition's primary key (made after
    its partitioned table's) was dropped first, and PostgreSQL refuses to drop an inherited
    constraint: every `clean` restore of a database with a partitioned table and a key
    failed.  Dropped after its parent's, it is gone already (IF EXISTS: nothing to do)."""

    def on_partition(line: str) -> bool:
        m = _DROP_CONSTRAINT.match(line)
        return m is not None and (unquote_ident(m[1]), unquote_ident(m[2])) in partitions

    return [line for line in lines if not on_partition(line)] + [line for line in lines if on_partition(line)]


def _after_schemas(script: str, insert: str) -> str:
    """``insert`` placed after the script's leading CREATE SCHEMA entries, where pg_dump puts extensions."""
    preamble, entries = split_entries(script)
    n = 0
    while n < len(entries) and (
        entries[n][0] == "SCHEMA" or (entries[n][0] == "COMMENT" and "COMMENT ON SCHEMA" in entries[n][2])
    ):
        n += 1
    head = preamble + "".join(h + b for _, h, b in entries[:n])
    return head + insert + "".join(h + b for _, h, b in entries[n:])


def _index_groups(entries: list[TocEntry], chosen: list[dict]) -> tuple[dict[str, list[TocEntry]], list[TocEntry]]:
    """Split post-data into each table's indexes and key constraints, which can build as soon
    as that table is loaded (as ``pg_restore -j`` does), and the rest (foreign keys, triggers,
    policies), which comes after all data."""
    owner_of = {(t["schema"], i): t for t in chosen for i in t.get("indexes", [])}
    groups: dict[str, list[TocEntry]] = {}
    rest: list[TocEntry] = []
    for e in entries:
        table: dict | None = None
        if e.type == "INDEX":
            table = next((t for (s, i), t in owner_of.items() if e.belongs_to(s, i)), None)
        elif e.type == "CONSTRAINT":
            table = next((t for t in chosen if e.belongs_to(t["schema"], t["name"])), None)
        if table is None:
            rest.append(e)
        else:
            groups.setdefault(mf.table_key(table), []).append(e)
    return groups, rest
