"""What in the target stands in the way of a restore plan, found before anything changes.

A dry run that passes must mean the real run can: each check here names, in
words, what would otherwise stop the restore halfway (tables it already has,
objects that depend on the tables ``clean`` drops, tables only another role may
drop, names another table holds, triggers that fire with triggers off, row-level
security, a role that may not set ``session_replication_role``).  ``survey``
collects their problems with every other one.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import psycopg
from psycopg import sql

from ..errors import RestoreError, TargetNotEmpty
from ..pg.rows import one_row
from ..pg.schema import TocEntry
from ..snapshot import manifest as mf
from .selection import partition_parents, partitioned_above

#: A policy or trigger: (kind, its table's schema, its table, its name).
ObjectKey = tuple[str, str, str, str]


def check_target(
    conn: psycopg.Connection, chosen: list[dict], data_only: bool, clean: bool, parents: dict[str, str] | None = None
) -> list[str]:
    """The snapshot's tables the target already has; refuse what would mix old and new rows.

    ``parents`` is the partition hierarchy (``partition_parents``)."""
    keys = [mf.table_key(t) for t in chosen]
    # A clean restore drops and makes again the partitioned tables above its partitions, every
    # level; a data-only load fills the partitions alone and leaves those as they are.
    above = [] if data_only else partitioned_above(chosen, partition_parents({"tables": chosen}, parents))
    existing = _existing_tables(conn, keys + above)
    if data_only:
        missing = sorted(set(keys) - set(existing))
        if missing:
            raise RestoreError(
                f"data_only needs the tables to exist; missing: {', '.join(missing)}",
                hint="restore without `data_only` to create them",
            )
        # Tables this role may not read are named by the privilege check (``missing_privileges``).
        rels = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in chosen]
        may_read = conn.execute(
            "SELECT pg_catalog.has_table_privilege(r::regclass, 'SELECT') "
            "FROM unnest(%s::text[]) WITH ORDINALITY u(r, i) ORDER BY i",
            (rels,),
        ).fetchall()
        readable = {k for k, (ok,) in zip(keys, may_read, strict=True) if ok}
        nonempty = [
            k
            for k in keys
            if not clean
            and k in readable
            and one_row(
                conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(*k.split(".", 1))))
            )[0]
        ]
        if nonempty and not clean:
            raise TargetNotEmpty(
                f"the target's tables already hold rows: {', '.join(nonempty)}",
                hint="pass `clean` to empty them first, or restore elsewhere",
            )
    elif existing and not clean:
        raise TargetNotEmpty(
            f"the target already has {len(existing)} of the snapshot's tables: "
            + ", ".join(existing[:10])
            + (" ..." if len(existing) > 10 else ""),
            hint="restore into an empty database, or pass `clean` to drop those tables first",
        )
    return existing


def _existing_tables(conn: psycopg.Connection, keys: list[str]) -> list[str]:
    """Which of ``keys`` (``schema.name``) the target has as a table, view or foreign table, sorted."""
    if not keys:
        return []
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname || '.' || c.relname = ANY(%s)",
        (keys,),
    ).fetchall()
    return sorted(r[0] for r in rows)


_DEPENDENTS = """
WITH names AS (
  SELECT c.oid, pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS name, n.nspname || '.' || c.relname AS key,
         n.nspname AS schema, c.relname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
)
SELECT t.name, x.what || ' ' || r.name, t.schema, t.relname, r.schema, r.relname, x.kind, x.object FROM (
  SELECT c.confrelid AS target, c.conrelid AS rel, 'foreign key ' || pg_catalog.quote_ident(c.conname) || ' of' AS what,
         false AS kept, 'FK CONSTRAINT' AS kind, c.conname::text AS object
    FROM pg_catalog.pg_constraint c
   WHERE c.contype = 'f' AND c.conrelid <> c.confrelid
     -- A partition's copy of a partitioned table's key goes with that key (whole restores).
     AND (%(skip_dropped)s OR c.conparentid = 0)
     AND c.confrelid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s))
  UNION
  SELECT d.refobjid, v.oid, 'view', false, 'VIEW', NULL
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid
    JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
   WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
     AND d.refobjid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s)) AND v.oid <> d.refobjid
  UNION
  -- A policy whose expression reads the table (a storage.objects policy checking public.profiles):
  -- kept, unless its table is remade, even in a restored schema when its table stays in place.
  SELECT d.refobjid, p.polrelid, 'policy ' || pg_catalog.quote_ident(p.polname) || ' on',
         p.polrelid IN (SELECT oid FROM names WHERE key = ANY(%(in_place)s)), 'POLICY', p.polname::text
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_policy p ON p.oid = d.objid
   WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
     AND d.deptype = 'n' AND d.refobjid IN (SELECT oid FROM names WHERE key = ANY(%(dropped)s))
     AND p.polrelid <> d.refobjid
) x
JOIN names t ON t.oid = x.target JOIN names r ON r.oid = x.rel
WHERE NOT ((%(skip_dropped)s AND r.key = ANY(%(dropped)s)) OR (r.schema = ANY(%(schemas)s) AND NOT x.kept))
ORDER BY 1, 2
"""


def dependents_in_the_way(
    conn: psycopg.Connection, dropped: list[str], schemas: list[str], in_place: list[str]
) -> list[str]:
    """What stops ``clean`` from dropping the tables it recreates: other tables' foreign keys,
    views and policies on them that this restore neither drops nor makes again (those in
    ``schemas`` it does, but the policies of tables kept ``in_place``).  Found here, not by the
    real run failing after a dry run that passed."""
    if not dropped:
        return []
    found: dict[str, list[str]] = {}
    params = {"dropped": dropped, "schemas": schemas, "in_place": in_place, "skip_dropped": True}
    for table, what, *_ in conn.execute(_DEPENDENTS, params):
        found.setdefault(table, []).append(what)
    return [
        f"`clean` would drop and make again {table} (its columns are not the snapshot's), but "
        f"{', '.join(whats)} depend on it: undo the column change first (the schema part of the "
        "down-migration) so its rows are replaced in place, or restore what depends on it too"
        for table, whats in found.items()
    ]


#: The archive's entries whose object ``pg_restore --clean`` drops and makes again as a relation.
_RELATIONS = {"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"}


def dependents_outside(
    conn: psycopg.Connection,
    manifest: dict,
    entries: list[TocEntry],
    remade: AbstractSet[ObjectKey] = frozenset(),
) -> list[str]:
    """What stops a whole-snapshot ``clean`` restore: the target's foreign keys, views and
    policies that depend on a table or view the restore drops and makes again (its ``entries``
    of the snapshot's archive), that the archive does not have (another schema's, or made after
    the backup), and that pg_restore does not drop first with their own table (it drops in
    the archive's reverse order, keys and policies before tables).  Found here, not by the
    real run failing on 'other objects depend on it' after a dry run that passed.  Policies and
    triggers in ``remade`` ((kind, schema, table, name): the restore drops them first and makes
    them again, ``left_out.PlatformObjects.in_the_way``) stand in no one's way."""
    relations = _positions(e for e in entries if e.type in _RELATIONS)
    archived = {kind: _positions(e for e in entries if e.type == kind) for kind in ("FK CONSTRAINT", "POLICY")}
    archived["VIEW"] = relations
    dropped = [mf.table_key(t) for t in manifest["tables"] if f"{t['schema']} {t['name']}" in relations]
    # pg_restore -l writes "schema name owner"; each name is found again by its entry above.
    dropped += [f"{e.rest.split(' ')[0]}.{' '.join(e.rest.split(' ')[1:-1])}" for e in entries if e.type in _RELATIONS]
    found: dict[str, list[str]] = {}
    params = {"dropped": sorted(set(dropped)), "schemas": [], "in_place": [], "skip_dropped": False}
    for table, what, t_schema, t_name, schema, name, kind, obj in conn.execute(_DEPENDENTS, params):
        own = f"{schema} {name}" + (f" {obj}" if obj is not None else "")
        if own in archived[kind] or (kind == "POLICY" and ("policy", schema, name, obj) in remade):
            continue  # pg_restore drops it first, as it is in the archive
        # A policy goes with its table, when that is dropped before the one it reads; a foreign
        # key never does: the key it references is dropped first, before any table.
        if kind == "POLICY" and relations.get(f"{schema} {name}", -1) > relations.get(f"{t_schema} {t_name}", -1) >= 0:
            continue
        found.setdefault(table, []).append(what)
    # A trigger calling one of the archive's functions (Supabase's on_auth_user_created on
    # auth.users, calling public.handle_new_user): pg_restore drops the function after the
    # tables, so a trigger the archive does not drop, on a table it keeps, stands in the way.
    functions = _positions(e for e in entries if e.type == "FUNCTION")
    triggers = _positions(e for e in entries if e.type == "TRIGGER")
    for function, f_schema, signature, what, schema, name, trigger in conn.execute(_TRIGGERS):
        if f"{f_schema} {signature}" in functions and not (
            f"{schema} {name} {trigger}" in triggers
            or f"{schema} {name}" in relations
            or ("trigger", schema, name, trigger) in remade
        ):
            found.setdefault(function, []).append(what)
    return [
        f"`clean` drops and makes again {table}, but these depend on it and the restore would not "
        f"drop and make them again: {', '.join(whats)}; name the schemas (`schemas`) to replace the "
        "tables' rows in place instead, drop those first if they should go, or restore into an empty database"
        for table, whats in found.items()
    ]


#: Every trigger (a partition's clone goes with its parent's) with the function it calls.
_TRIGGERS = """
SELECT pg_catalog.format('%I.%I()', n.nspname, p.proname), n.nspname,
       p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')',
       'trigger ' || pg_catalog.quote_ident(t.tgname) || ' on ' || pg_catalog.format('%I.%I', tn.nspname, c.relname),
       tn.nspname, c.relname, t.tgname
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND n.nspname <> 'pg_catalog'
 ORDER BY 1, 4
"""


def _positions(entries: Iterable[TocEntry]) -> dict[str, int]:
    """Each entry's possible "schema name" (every start of its text ending before a space: its
    owner, or a name with spaces, follows) -> the entry's position among them, the first kept."""
    found: dict[str, int] = {}
    for i, e in enumerate(entries):
        words = e.rest.split(" ")
        for n in range(2, len(words)):
            found.setdefault(" ".join(words[:n]), i)
    return found


#: The functions, types and relations of the given schemas, as ``archived_positions`` names
#: them: an array type (or multirange) by its element's (or range's) name, as it goes with it.
REFS = """
  SELECT 'pg_catalog.pg_proc'::regclass AS cls, p.oid, 'FUNCTION' AS kind, n.nspname,
         p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')' AS name, false AS relation
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = ANY(%(schemas)s)
  UNION ALL
  SELECT 'pg_catalog.pg_type'::regclass, t.oid, 'TYPE', n.nspname,
         coalesce((SELECT e.typname FROM pg_catalog.pg_type e WHERE e.typarray = t.oid),
                  (SELECT r.typname FROM pg_catalog.pg_range g JOIN pg_catalog.pg_type r ON r.oid = g.rngtypid
                    WHERE g.rngmultitypid = t.oid), t.typname), false
    FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname = ANY(%(schemas)s)
  UNION ALL
  SELECT 'pg_catalog.pg_class'::regclass, c.oid, 'TYPE', n.nspname, c.relname, true
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = ANY(%(schemas)s)
"""

#: Objects outside the given schemas (by their table's, or their own, schema; casts, event
#: triggers and transforms have none) that depend on a function or type in them, or a
#: function (a SQL-standard body) on a table: what they depend on (its kind, schema and
#: name as pg_restore lists it), the object in words, and a policy's or trigger's own key.
#: Left to ``dependents_outside``: triggers through the function they execute, and views and
#: policies that also depend on one of those schemas' tables or views.
_ON_ROUTINES = (
    "WITH refs AS ("
    + REFS
    + """), deps AS (
  SELECT r.kind, r.nspname, r.name, r.relation, d.classid, d.objid, d.objsubid,
         CASE d.classid
           WHEN 'pg_catalog.pg_class'::regclass THEN (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_attrdef'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_attrdef a
                JOIN pg_catalog.pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
           WHEN 'pg_catalog.pg_rewrite'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_rewrite w
                JOIN pg_catalog.pg_class c ON c.oid = w.ev_class WHERE w.oid = d.objid)
           WHEN 'pg_catalog.pg_policy'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_policy p
                JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
           WHEN 'pg_catalog.pg_trigger'::regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_trigger t
                JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
           WHEN 'pg_catalog.pg_proc'::regclass THEN (SELECT pronamespace FROM pg_catalog.pg_proc WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_type'::regclass THEN (SELECT typnamespace FROM pg_catalog.pg_type WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_operator'::regclass THEN (
                SELECT oprnamespace FROM pg_catalog.pg_operator WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_opclass'::regclass THEN (
                SELECT opcnamespace FROM pg_catalog.pg_opclass WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_opfamily'::regclass THEN (
                SELECT opfnamespace FROM pg_catalog.pg_opfamily WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_statistic_ext'::regclass THEN (
                SELECT stxnamespace FROM pg_catalog.pg_statistic_ext WHERE oid = d.objid)
           WHEN 'pg_catalog.pg_constraint'::regclass THEN (
                SELECT coalesce(c.relnamespace, t.typnamespace, k.connamespace) FROM pg_catalog.pg_constraint k
                  LEFT JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
                  LEFT JOIN pg_catalog.pg_type t ON t.oid = k.contypid WHERE k.oid = d.objid)
         END AS namespace,
         d.classid IN ('pg_catalog.pg_cast'::regclass, 'pg_catalog.pg_event_trigger'::regclass,
                       'pg_catalog.pg_transform'::regclass) AS global
    FROM pg_catalog.pg_depend d JOIN refs r ON r.cls = d.refclassid AND r.oid = d.refobjid
   WHERE d.deptype = 'n' AND (NOT r.relation OR d.classid = 'pg_catalog.pg_proc'::regclass)
     AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass AND EXISTS (
              SELECT FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid
                 AND (t.tgparentid <> 0 OR (d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = t.tgfoid))))
)
SELECT x.kind, x.nspname, x.name, x.relation, pg_catalog.quote_ident(x.nspname),
       CASE WHEN x.classid = 'pg_catalog.pg_rewrite'::regclass AND (
                 SELECT rulename = '_RETURN' FROM pg_catalog.pg_rewrite WHERE oid = x.objid)
            THEN 'view ' || (SELECT ev_class::regclass::text FROM pg_catalog.pg_rewrite WHERE oid = x.objid)
            ELSE pg_catalog.pg_describe_object(x.classid, x.objid, x.objsubid) END,
       CASE x.classid WHEN 'pg_catalog.pg_policy'::regclass THEN 'policy'
                      WHEN 'pg_catalog.pg_trigger'::regclass THEN 'trigger' END,
       coalesce((SELECT p.polname::text FROM pg_catalog.pg_policy p WHERE x.classid = 'pg_catalog.pg_policy'::regclass
                  AND p.oid = x.objid),
                (SELECT t.tgname::text FROM pg_catalog.pg_trigger t WHERE x.classid = 'pg_catalog.pg_trigger'::regclass
                  AND t.oid = x.objid)),
       coalesce((SELECT c.relname::text FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
                  WHERE x.classid = 'pg_catalog.pg_policy'::regclass AND p.oid = x.objid),
                (SELECT c.relname::text FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                  WHERE x.classid = 'pg_catalog.pg_trigger'::regclass AND t.oid = x.objid)),
       n.nspname
  FROM deps x LEFT JOIN pg_catalog.pg_namespace n ON n.oid = x.namespace
 WHERE (x.global OR (n.nspname <> ALL(%(schemas)s) AND n.nspname NOT IN ('pg_catalog', 'information_schema')))
   AND NOT (x.classid IN ('pg_catalog.pg_rewrite'::regclass, 'pg_catalog.pg_policy'::regclass) AND EXISTS (
            SELECT FROM pg_catalog.pg_depend e JOIN pg_catalog.pg_class c ON c.oid = e.refobjid
              JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
             WHERE e.classid = x.classid AND e.objid = x.objid AND e.deptype = 'n'
               AND e.refclassid = 'pg_catalog.pg_class'::regclass AND cn.nspname = ANY(%(schemas)s)))
 ORDER BY 1, 2, 3, 6
"""
)


def archived_positions(entries: list[TocEntry]) -> dict[str, dict[str, int]]:
    """The archive's functions (``FUNCTION``: "schema name(args)") and types (``TYPE``: "schema
    name", tables' and views' row types among them, as they go with their relation), each as
    ``_positions`` has it: what a whole ``clean`` restore drops and makes again."""
    return {
        "FUNCTION": _positions(e for e in entries if e.type in ("FUNCTION", "PROCEDURE", "AGGREGATE")),
        "TYPE": _positions(e for e in entries if e.type in ("TYPE", "DOMAIN", *_RELATIONS)),
    }


def routine_dependents(
    conn: psycopg.Connection,
    entries: list[TocEntry],
    schemas: list[str],
    remade: AbstractSet[ObjectKey] = frozenset(),
) -> list[str]:
    """What else stops a whole-snapshot ``clean`` restore (``dependents_outside`` has tables,
    views and triggers): objects in other schemas, or in none, that depend on one of the
    archive's functions or types, which pg_restore drops and makes again (a column default
    calling public.new_id(), a view in reporting calling a public function, a column of a
    public enum type, of an array of it or of a public table's row type, a policy calling
    public.is_admin(), a trigger's WHEN clause, a cast or an event trigger using one), or a
    function whose SQL-standard body reads one of its tables.  DROP would fail on each in the
    real run; those in ``remade`` the restore drops first itself."""
    archived = archived_positions(entries)
    found: dict[str, list[str]] = {}
    rows = conn.execute(_ON_ROUTINES, {"schemas": schemas})
    for kind, schema, name, relation, shown_schema, what, own_kind, own_name, table, dependent_schema in rows:
        if f"{schema} {name}" not in archived[kind]:
            continue  # not the archive's: the restore neither drops nor makes it
        if own_kind is not None and (own_kind, dependent_schema, table, own_name) in remade:
            continue
        label = f"{'function' if kind == 'FUNCTION' else 'table' if relation else 'type'} {shown_schema}.{name}"
        if what not in found.setdefault(label, []):
            found[label].append(what)
    return [
        f"`clean` drops and makes again {ref}, but these depend on it and the restore would not drop "
        f"and make them again: {', '.join(whats)}; restore into an empty database, or drop those first "
        "(and make them again after)"
        for ref, whats in found.items()
    ]


def parents_missing(conn: psycopg.Connection, chosen: list[dict]) -> list[str]:
    """Tables the restore makes that inherit (``INHERITS``, not a partition) from a table it
    neither makes nor finds in the target: their CREATE TABLE failed on 'relation does not
    exist' after a dry run that passed.  (The manifest names a table's first parent.)"""
    keys = {mf.table_key(t) for t in chosen}
    children = {mf.table_key(t): t["parent"] for t in chosen if t.get("parent") and not t.get("is_partition")}
    outside = sorted({p for p in children.values() if p not in keys})
    have = set(_existing_tables(conn, outside))
    return [
        f"{child} inherits from {parent}, which the target does not have and this restore does not "
        f"make: restore {parent} too (`tables`), or make it first"
        for child, parent in sorted(children.items())
        if parent not in keys and parent not in have
    ]


def dropped_not_owned(conn: psycopg.Connection, dropped: list[str]) -> list[str]:
    """Tables ``clean`` would drop that only another role may drop (DROP TABLE needs their
    owner): the real run failed on 'must be owner' after a dry run that passed."""
    if not dropped:
        return []
    rows = conn.execute(
        "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname), pg_catalog.pg_get_userbyid(c.relowner) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname || '.' || c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE') ORDER BY 1",
        (dropped,),
    ).fetchall()
    return [
        f"`clean` would drop {rel} to make it again, and only its owner {owner} may drop it: "
        f"restore as {owner} or a superuser"
        for rel, owner in rows
    ]


_TAKEN = """
SELECT r.n, CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'index' END,
       pg_catalog.format('%%I.%%I', tn.nspname, t.relname), tn.nspname || '.' || t.relname
  FROM unnest(%s::text[]) WITH ORDINALITY r(n, i)
  JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(r.n)
  LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') AND c.relkind = 'S'
  JOIN pg_catalog.pg_class t ON t.oid = coalesce(x.indrelid, d.refobjid)
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
 ORDER BY r.i
"""


def names_taken(conn: psycopg.Connection, created: list[dict], manifest: dict, dropped: list[str]) -> list[str]:
    """Names the tables this restore creates need for their indexes and sequences, held in the
    target by another table's (not one it drops first) (a migration renamed messages to posts: posts keeps
    messages_pkey and messages_id_seq).  Found here, not by the real run failing on
    'already exists' after a dry run that passed."""
    if not created:
        return []
    keys = {mf.table_key(t): t for t in created}
    wanted: list[tuple[str, dict]] = []
    for t in created:
        wanted += [(sql.Identifier(t["schema"], i).as_string(conn), t) for i in t.get("indexes", [])]
    for s in manifest.get("sequences", []):
        owner = s.get("owned_by")
        if owner and f"{owner[0]}.{owner[1]}" in keys:
            wanted.append((sql.Identifier(s["schema"], s["name"]).as_string(conn), keys[f"{owner[0]}.{owner[1]}"]))
    if not wanted:
        return []
    table_of = dict(wanted)
    return [
        f"{name} already exists ({kind} of {owner}), and {mf.table_key(table_of[name])} needs that name for its "
        f"own: was {mf.table_key(table_of[name])} renamed to {owner}? Rename it back (or drop it) first, "
        "or restore into another database"
        for name, kind, owner, key in conn.execute(_TAKEN, ([n for n, _ in wanted],)).fetchall()
        if key not in dropped and key != mf.table_key(table_of[name])
    ]


def firing_triggers(
    conn: psycopg.Connection, tables: list[dict]
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """Triggers of ``tables`` that session_replication_role = replica does not stop: those this
    role may switch off (schema, table, trigger, ALWAYS or REPLICA), and those only their table's
    owner may (table and trigger quoted as SQL, ALWAYS or REPLICA, the owner)."""
    if not tables:
        return [], []
    names = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in tables]
    rows = conn.execute(
        "SELECT n.nspname, c.relname, t.tgname, CASE t.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END, "
        # ALTER TABLE ... DISABLE TRIGGER needs the table's owner.
        "pg_catalog.pg_has_role(c.relowner, 'USAGE'), pg_catalog.format('%%I.%%I', n.nspname, c.relname), "
        "pg_catalog.quote_ident(t.tgname), pg_catalog.pg_get_userbyid(c.relowner) "
        "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgrelid = ANY(%s::regclass[]) AND t.tgenabled IN ('A', 'R') AND NOT t.tgisinternal "
        "ORDER BY 1, 2, 3",
        (names,),
    ).fetchall()
    mine = [(s, t, g, m) for s, t, g, m, may, *_ in rows if may]
    others = [(rel, name, m, owner) for _, _, _, m, may, rel, name, owner in rows if not may]
    return mine, others


_ROW_SECURITY = """
SELECT n.nspname, c.relname, pg_catalog.format('%%I.%%I', n.nspname, c.relname),
       pg_catalog.pg_get_userbyid(c.relowner), pg_catalog.pg_has_role(c.relowner, 'USAGE'), c.relforcerowsecurity
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%s::regclass[]) AND c.relrowsecurity
   AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user)
 ORDER BY 1, 2
"""


def row_security(conn: psycopg.Connection, tables: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """Row-level security of tables loaded into as they are, where it applies to this role: the
    tables it owns with FORCE (switched off for the load: ALTER TABLE needs their owner), and
    problems for those of other roles.  COPY FROM under RLS is refused, and so is, with
    row_security off, anything it would affect: the real run failed after a dry run that passed."""
    if not tables:
        return [], []
    names = [sql.Identifier(t["schema"], t["name"]).as_string(conn) for t in tables]
    forced, problems = [], []
    for schema, name, rel, owner, mine, force in conn.execute(_ROW_SECURITY, (names,)).fetchall():
        if mine and force:
            forced.append((schema, name))
        elif not mine:
            problems.append(
                f"row-level security of {rel} applies to {conn.info.user} (not its owner {owner}, no BYPASSRLS), "
                f"so it may not load every row: restore as {owner}, a superuser, or a role with BYPASSRLS"
            )
    return forced, problems


def may_disable_triggers(conn: psycopg.Connection) -> bool:
    """Whether this role may SET session_replication_role (superuser, or granted as Supabase does)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False
