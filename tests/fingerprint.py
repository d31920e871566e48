"""A database fingerprint, computed in SQL, to prove a restore is exact.

``fingerprint(dsn)`` returns a plain dict (str/int/bool/None, lists, dicts —
JSON-serialisable) describing the data and the schema of a database by NAME,
never by OID, so the fingerprints of a source database and of its restore
(a different database with different OIDs) compare equal with ``==`` exactly
when the restore is faithful.  ``diff_fingerprints(a, b)`` lists the
differences in words, for assertion messages.

What it covers (system schemas pg_catalog, information_schema, pg_toast and
temporary schemas are excluded):

* ``data``: for every ordinary table (relkind ``r``: plain tables, partitions,
  inheritance parents and children) the row count and an order-independent,
  multiset-exact hash of every row's text representation (md5 per row, the
  row hashes sorted in "C" order and hashed again), read ``FROM ONLY``
  so a parent does not count its children's rows (partitioned parents, relkind
  ``p``, hold no rows and are skipped); for every materialized view its
  populated flag and, when populated, the same count and hash.
* ``sequences``: type, start, increment, min, max, cache, cycle, persistence,
  owner column (serial / identity), ``last_value`` and ``is_called``
  (``log_cnt`` is deliberately left out: it is WAL bookkeeping); owner,
  ACL, comment.
* ``relations``: for tables, partitioned tables, views, materialized views
  and foreign tables: kind, persistence, owner,
  ACL, comment, reloptions, replica identity, RLS enabled/forced, partition
  key and bound, inheritance parents in order, view definition, and per
  column (in column order, dropped columns skipped) the type (format_type),
  collation, NOT NULL, default, identity kind, generated kind, storage,
  compression, ACL and comment; constraints (pg_get_constraintdef plus
  local/inherited counts, enforced, and NO INHERIT for CHECK / NOT NULL, the
  only kinds where it means anything), indexes (pg_get_indexdef plus clustered /
  replica-identity / valid flags and comment), triggers (pg_get_triggerdef,
  enabled state, comment), rules and RLS policies.
* ``types``: enum labels in sort order, domains (base type, NOT NULL, default,
  collation, constraints), composite types' attributes, range types; each
  with owner, ACL and comment.
* ``functions``: pg_get_functiondef, owner, ACL, comment (extension members
  included: they must come back with the extension, in its schema).
* ``schemas`` (owner, ACL, comment) and ``extensions`` (version, schema).
* ``default_privileges`` (ALTER DEFAULT PRIVILEGES, pg_default_acl): per role,
  schema (``*`` for a database-wide entry) and object type, the ACL.

Objects that belong to no schema are covered only by a whole-database
fingerprint (no ``schemas`` filter; with one, these keys are empty, as are the
database-wide default privileges, and ``extensions`` lists only those in the
chosen schemas):

* ``publications``: owner, FOR ALL TABLES flag, published actions,
  publish_via_partition_root, publish_generated_columns (PostgreSQL 18+, else
  None), comment, member tables with their column lists (names, in column
  order; None for all columns) and row filters (pg_get_expr), member schemas
  (FOR TABLES IN SCHEMA).
* ``large_objects``, by OID (which pg_dump keeps): owner, ACL, comment, size
  and md5 of the content (read whole with lo_get: meant for test-sized objects).
* ``event_triggers``: event, owner, function, enabled state, tags, comment.

Owners and ACLs print role names (aclitem text), never role OIDs: roles are
cluster-wide, so a restore on the same server (or one with the same roles)
compares equal.

Every query runs in one REPEATABLE READ READ ONLY transaction with fixed
output settings (search_path=pg_catalog so every name printed by the
pg_get_* functions is schema-qualified the same way in every database,
TimeZone=UTC, DateStyle=ISO, IntervalStyle=postgres, extra_float_digits=3
so float text is exact and shows -0 and NaN, bytea_output=hex,
lc_monetary=C) and with row_security=off, so a table's rows can never be
silently hidden by a policy: if the role is subject to RLS the query fails
instead.  Use a superuser (or a BYPASSRLS role that may also read every large
object).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")

# SET LOCAL: the settings end with the fingerprint's transaction.
_SESSION = """
SET LOCAL search_path = pg_catalog;
SET LOCAL TimeZone = 'UTC';
SET LOCAL DateStyle = 'ISO, MDY';
SET LOCAL IntervalStyle = 'postgres';
SET LOCAL extra_float_digits = 3;
SET LOCAL bytea_output = 'hex';
SET LOCAL lc_monetary = 'C';
SET LOCAL row_security = off;
SET LOCAL statement_timeout = 0;
SET LOCAL jit = off
"""

# Relation key "schema.name", both parts quoted only when needed (quote_ident),
# so names containing dots or quotes cannot collide.
_QNAME = "(quote_ident(n.nspname) || '.' || quote_ident(c.relname))"


def fingerprint(dsn: str | psycopg.Connection, schemas: Iterable[str] | None = None) -> dict:
    """The fingerprint of the database at ``dsn`` (or on an open connection).

    ``schemas``: only these schemas (default: every non-system schema).
    On an open connection it runs in ``conn.transaction()`` (a savepoint
    inside the caller's transaction if one is open, whose snapshot it then
    sees; the SET LOCAL output settings then last until that transaction ends).
    """
    if isinstance(dsn, psycopg.Connection):
        with dsn.transaction():
            return _fingerprint_conn(dsn, schemas)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _fingerprint_conn(conn, schemas)


def _fingerprint_conn(conn: psycopg.Connection, schemas: Iterable[str] | None) -> dict:
    conn.execute(_SESSION)
    if schemas is None:
        nsp = [
            r[0]
            for r in conn.execute(
                """SELECT nspname FROM pg_namespace
               WHERE nspname <> ALL(%s) AND nspname NOT LIKE 'pg\\_temp\\_%%'
                 AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
               ORDER BY nspname""",
                (list(SYSTEM_SCHEMAS),),
            )
        ]
    else:
        nsp = sorted(set(schemas))
    fp: dict[str, Any] = {
        "schemas": _schemas(conn, nsp),
        "extensions": _extensions(conn, nsp, all_schemas=schemas is None),
        "types": _types(conn, nsp),
        "functions": _functions(conn, nsp),
        "relations": _relations(conn, nsp),
        "sequences": _sequences(conn, nsp),
        "data": _data(conn, nsp),
        # Objects outside every schema: only in a whole-database fingerprint.
        "publications": _publications(conn) if schemas is None else {},
        "large_objects": _large_objects(conn) if schemas is None else {},
        "default_privileges": _default_privileges(conn, nsp, all_schemas=schemas is None),
        "event_triggers": _event_triggers(conn) if schemas is None else {},
    }
    return fp


def _rows(conn, query: str, params=None) -> list[tuple]:
    return conn.execute(query, params).fetchall()


# -- schemas, extensions, types, functions --------------------------------------


def _schemas(conn, nsp) -> dict:
    return {
        name: {"owner": owner, "acl": acl, "comment": comment}
        for name, owner, acl, comment in _rows(
            conn,
            """
            SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text,
                   obj_description(n.oid, 'pg_namespace')
            FROM pg_namespace n WHERE n.nspname = ANY(%s)""",
            (nsp,),
        )
    }


def _extensions(conn, nsp, all_schemas: bool) -> dict:
    return {
        name: {"version": version, "schema": schema}
        for name, version, schema in _rows(
            conn,
            """
            SELECT e.extname, e.extversion, n.nspname
            FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
            WHERE %s OR n.nspname = ANY(%s)""",
            (all_schemas, nsp),
        )
    }


def _types(conn, nsp) -> dict:
    out: dict[str, Any] = {}
    for key, kind, oid, comment, owner, acl in _rows(
        conn,
        """
            SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname), t.typtype, t.oid,
                   obj_description(t.oid, 'pg_type'), pg_get_userbyid(t.typowner), t.typacl::text
            FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            LEFT JOIN pg_class c ON c.oid = t.typrelid
            WHERE n.nspname = ANY(%s)
              AND t.typtype IN ('e', 'd', 'c', 'r')
              AND (t.typtype <> 'c' OR c.relkind = 'c')  -- not a table's row type
            """,
        (nsp,),
    ):
        entry: dict[str, Any] = {"kind": kind, "comment": comment, "owner": owner, "acl": acl}
        if kind == "e":
            entry["labels"] = [
                r[0]
                for r in _rows(
                    conn,
                    """
                SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder""",
                    (oid,),
                )
            ]
        elif kind == "d":
            base, notnull, default, coll = _rows(
                conn,
                """
                SELECT format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
                       CASE WHEN t.typcollation <> b.typcollation
                            THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                                  FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                                  WHERE co.oid = t.typcollation) END
                FROM pg_type t JOIN pg_type b ON b.oid = t.typbasetype WHERE t.oid = %s""",
                (oid,),
            )[0]
            entry.update(base=base, notnull=notnull, default=default, collation=coll)
            entry["constraints"] = {
                name: {"def": d, "validated": v}
                for name, d, v in _rows(
                    conn,
                    """
                    SELECT conname, pg_get_constraintdef(oid), convalidated
                    FROM pg_constraint WHERE contypid = %s""",
                    (oid,),
                )
            }
        elif kind == "c":
            entry["attributes"] = [
                list(r)
                for r in _rows(
                    conn,
                    """
                SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                       CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation::text END
                FROM pg_type ct JOIN pg_attribute a ON a.attrelid = ct.typrelid
                JOIN pg_type t ON t.oid = a.atttypid
                WHERE ct.oid = %s AND a.attnum > 0 AND NOT a.attisdropped
                ORDER BY a.attnum""",
                    (oid,),
                )
            ]
        elif kind == "r":
            entry["range"] = list(
                _rows(
                    conn,
                    """
                SELECT format_type(rngsubtype, NULL), rngcollation::regcollation::text,
                       (SELECT opcname FROM pg_opclass WHERE oid = rngsubopc),
                       rngcanonical::text, rngsubdiff::text,
                       format_type(rngmultitypid, NULL)
                FROM pg_range WHERE rngtypid = %s""",
                    (oid,),
                )[0]
            )
        out[key] = entry
    return out


def _functions(conn, nsp) -> dict:
    return {
        key: {"def": d, "owner": owner, "acl": acl, "comment": comment}
        for key, d, owner, acl, comment in _rows(
            conn,
            """
            SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                       || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                   CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid)
                        ELSE 'aggregate' END,
                   pg_get_userbyid(p.proowner), p.proacl::text, obj_description(p.oid, 'pg_proc')
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = ANY(%s)""",
            (nsp,),
        )
    }


# -- database-wide objects -------------------------------------------------------


def _publications(conn) -> dict:
    pubs = {}
    for oid, name, owner, all_tables, ins, upd, dele, trunc, via_root, gencols, comment in _rows(
        conn,
        """
            SELECT p.oid, p.pubname, pg_get_userbyid(p.pubowner), p.puballtables,
                   p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot,
                   to_jsonb(p) ->> 'pubgencols',  -- PostgreSQL 18+, else NULL
                   obj_description(p.oid, 'pg_publication')
            FROM pg_publication p""",
    ):
        pubs[name] = {
            "owner": owner,
            "all_tables": all_tables,
            "publish": [a for a, on in (("insert", ins), ("update", upd), ("delete", dele), ("truncate", trunc)) if on],
            "via_partition_root": via_root,
            "generated_columns": gencols,
            "comment": comment,
            "tables": {},
            "schemas": [],
        }
        for key, columns, row_filter in _rows(
            conn,
            f"""
                SELECT {_QNAME},
                       CASE WHEN pr.prattrs IS NOT NULL THEN
                           ARRAY(SELECT a.attname::text FROM pg_attribute a
                                 WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs)
                                 ORDER BY a.attnum) END,
                       pg_get_expr(pr.prqual, pr.prrelid)
                FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE pr.prpubid = %s""",
            (oid,),
        ):
            pubs[name]["tables"][key] = {"columns": columns, "row_filter": row_filter}
        pubs[name]["schemas"] = [
            r[0]
            for r in _rows(
                conn,
                """
            SELECT n.nspname FROM pg_publication_namespace pn
            JOIN pg_namespace n ON n.oid = pn.pnnspid
            WHERE pn.pnpubid = %s ORDER BY n.nspname""",
                (oid,),
            )
        ]
    return pubs


def _large_objects(conn) -> dict:
    """By OID (pg_dump and pg_restore keep large objects' OIDs).  lo_get reads
    each whole object into memory: fine for test-sized objects."""
    return {
        str(oid): {"owner": owner, "acl": acl, "comment": comment, "size": size, "md5": digest}
        for oid, owner, acl, comment, size, digest in _rows(
            conn,
            """
            SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text,
                   obj_description(m.oid, 'pg_largeobject'),
                   length(lo_get(m.oid)), md5(lo_get(m.oid))
            FROM pg_largeobject_metadata m""",
        )
    }


def _default_privileges(conn, nsp, all_schemas: bool) -> dict:
    """ALTER DEFAULT PRIVILEGES, keyed ``role in schema on type`` (quote_ident
    names; schema ``*`` for a database-wide entry, only without a schema filter)."""
    return {
        key: {"role": role, "schema": schema, "object_type": objtype, "acl": acl}
        for key, role, schema, objtype, acl in _rows(
            conn,
            """
            SELECT quote_ident(pg_get_userbyid(d.defaclrole)) || ' in '
                       || coalesce(quote_ident(n.nspname), '*') || ' on ' || d.defaclobjtype::text,
                   pg_get_userbyid(d.defaclrole), n.nspname, d.defaclobjtype::text,
                   d.defaclacl::text
            FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
            WHERE (d.defaclnamespace = 0 AND %s) OR n.nspname = ANY(%s)""",
            (all_schemas, nsp),
        )
    }


def _event_triggers(conn) -> dict:
    return {
        name: {"event": event, "owner": owner, "function": func, "enabled": enabled, "tags": tags, "comment": comment}
        for name, event, owner, func, enabled, tags, comment in _rows(
            conn,
            """
            SELECT evtname, evtevent, pg_get_userbyid(evtowner), evtfoid::regprocedure::text,
                   evtenabled, evttags, obj_description(oid, 'pg_event_trigger')
            FROM pg_event_trigger""",
        )
    }


# -- relations -----------------------------------------------------------------


def _enforced(conn) -> str:
    """conenforced exists from PostgreSQL 18; older servers enforce every constraint."""
    return "conenforced" if conn.info.server_version >= 180000 else "true"


def _relations(conn, nsp) -> dict:
    rels: dict[str, dict] = {}
    oid_key: dict[int, str] = {}
    for (
        oid,
        key,
        kind,
        persistence,
        owner,
        acl,
        comment,
        options,
        replident,
        rls,
        force,
        partkey,
        partbound,
        viewdef,
        populated,
    ) in _rows(
        conn,
        f"""
            SELECT c.oid, {_QNAME}, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner),
                   c.relacl::text, obj_description(c.oid, 'pg_class'), c.reloptions::text,
                   c.relreplident, c.relrowsecurity, c.relforcerowsecurity,
                   CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                   CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   CASE WHEN c.relkind = 'm' THEN c.relispopulated END
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
        (nsp,),
    ):
        oid_key[oid] = key
        rels[key] = {
            "kind": kind,
            "persistence": persistence,
            "owner": owner,
            "acl": acl,
            "comment": comment,
            "options": options,
            "replica_identity": replident,
            "rls_enabled": rls,
            "rls_forced": force,
            "partition_key": partkey,
            "partition_bound": partbound,
            "view_definition": viewdef,
            "populated": populated,
            "inherits": [],
            "column_order": [],
            "columns": {},
            "constraints": {},
            "indexes": {},
            "triggers": {},
            "rules": {},
            "policies": {},
        }
    if not rels:
        return rels
    oids = list(oid_key)

    for relid, parent in _rows(
        conn,
        f"""
            SELECT i.inhrelid, {_QNAME} FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhparent JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.inhrelid = ANY(%s) ORDER BY i.inhrelid, i.inhseqno""",
        (oids,),
    ):
        rels[oid_key[relid]]["inherits"].append(parent)

    for (
        relid,
        name,
        typ,
        coll,
        notnull,
        default,
        identity,
        generated,
        storage,
        compression,
        islocal,
        inhcount,
        acl,
        comment,
    ) in _rows(
        conn,
        """
            SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod),
                   CASE WHEN a.attcollation <> t.typcollation
                        THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                              FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                              WHERE co.oid = a.attcollation) END,
                   a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                   a.attstorage, a.attcompression, a.attislocal, a.attinhcount, a.attacl::text,
                   col_description(a.attrelid, a.attnum)
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum""",
        (oids,),
    ):
        rel = rels[oid_key[relid]]
        rel["column_order"].append(name)
        rel["columns"][name] = {
            "type": typ,
            "collation": coll,
            "not_null": notnull,
            # a generated column's expression lives in pg_attrdef too
            "default": default if not generated else None,
            "generated": generated or None,
            "generation_expr": default if generated else None,
            "identity": identity or None,
            "storage": storage,
            "compression": compression or None,
            "is_local": islocal,
            "inherited_count": inhcount,
            "acl": acl,
            "comment": comment,
        }

    for (
        relid,
        name,
        contype,
        d,
        deferrable,
        deferred,
        validated,
        enforced,
        islocal,
        inhcount,
        noinherit,
        comment,
    ) in _rows(
        conn,
        f"""
            SELECT conrelid, conname, contype, pg_get_constraintdef(oid), condeferrable,
                   condeferred, convalidated, {_enforced(conn)}, conislocal, coninhcount,
                   -- NO INHERIT means something only for CHECK and NOT NULL constraints.
                   -- For PRIMARY KEY/UNIQUE/EXCLUDE/FOREIGN KEY the flag is inert, and
                   -- PostgreSQL itself sets it differently for the same definition (a
                   -- partition's PK cloned from its parent: false; the same PK added with
                   -- ALTER TABLE ONLY and ATTACHed, as pg_dump does: true).
                   CASE WHEN contype IN ('c', 'n') THEN connoinherit END,
                   obj_description(oid, 'pg_constraint')
            FROM pg_constraint WHERE conrelid = ANY(%s)""",
        (oids,),
    ):
        rels[oid_key[relid]]["constraints"][name] = {
            "type": contype,
            "def": d,
            "deferrable": deferrable,
            "deferred": deferred,
            "validated": validated,
            "enforced": enforced,
            "is_local": islocal,
            "inherited_count": inhcount,
            "no_inherit": noinherit,
            "comment": comment,
        }

    for relid, name, d, clustered, replident, valid, comment, parent in _rows(
        conn,
        """
            SELECT i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid), i.indisclustered,
                   i.indisreplident, i.indisvalid, obj_description(i.indexrelid, 'pg_class'),
                   (SELECT quote_ident(pn.nspname) || '.' || quote_ident(pc.relname)
                    FROM pg_inherits ih JOIN pg_class pc ON pc.oid = ih.inhparent
                    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                    WHERE ih.inhrelid = i.indexrelid)
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = ANY(%s)""",
        (oids,),
    ):
        rels[oid_key[relid]]["indexes"][name] = {
            "def": d,
            "clustered": clustered,
            "replica_identity": replident,
            "valid": valid,
            "comment": comment,
            "attached_to": parent,
        }

    for relid, name, d, enabled, cloned, comment in _rows(
        conn,
        """
            SELECT tgrelid, tgname, pg_get_triggerdef(oid), tgenabled, tgparentid <> 0,
                   obj_description(oid, 'pg_trigger')
            FROM pg_trigger WHERE tgrelid = ANY(%s) AND NOT tgisinternal""",
        (oids,),
    ):
        rels[oid_key[relid]]["triggers"][name] = {
            "def": d,
            "enabled": enabled,
            "cloned_from_parent": cloned,
            "comment": comment,
        }

    for relid, name, d, enabled in _rows(
        conn,
        """
            SELECT ev_class, rulename, pg_get_ruledef(oid), ev_enabled
            FROM pg_rewrite WHERE ev_class = ANY(%s) AND rulename <> '_RETURN'""",
        (oids,),
    ):
        rels[oid_key[relid]]["rules"][name] = {"def": d, "enabled": enabled}

    for relid, name, cmd, permissive, roles, qual, check in _rows(
        conn,
        """
            SELECT p.polrelid, p.polname, p.polcmd, p.polpermissive,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r) END
                         FROM unnest(p.polroles) AS r ORDER BY 1),
                   pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
            FROM pg_policy p WHERE p.polrelid = ANY(%s)""",
        (oids,),
    ):
        rels[oid_key[relid]]["policies"][name] = {
            "cmd": cmd,
            "permissive": permissive,
            "roles": roles,
            "using": qual,
            "with_check": check,
        }
    return rels


def _sequences(conn, nsp) -> dict:
    out = {}
    for (
        _oid,
        key,
        schema,
        name,
        persistence,
        owner,
        acl,
        comment,
        typ,
        start,
        inc,
        mx,
        mn,
        cache,
        cycle,
        owned_by,
        owned_kind,
    ) in _rows(
        conn,
        f"""
            SELECT c.oid, {_QNAME}, n.nspname, c.relname, c.relpersistence,
                   pg_get_userbyid(c.relowner), c.relacl::text, obj_description(c.oid, 'pg_class'),
                   format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax, s.seqmin,
                   s.seqcache, s.seqcycle,
                   (SELECT quote_ident(rn.nspname) || '.' || quote_ident(rc.relname) || '.'
                           || quote_ident(a.attname)
                    FROM pg_depend d JOIN pg_class rc ON rc.oid = d.refobjid
                    JOIN pg_namespace rn ON rn.oid = rc.relnamespace
                    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')),
                   (SELECT d.deptype FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_sequence s ON s.seqrelid = c.oid
            WHERE n.nspname = ANY(%s) AND c.relkind = 'S'""",
        (nsp,),
    ):
        last_value, is_called = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        out[key] = {
            "type": typ,
            "start": start,
            "increment": inc,
            "max": mx,
            "min": mn,
            "cache": cache,
            "cycle": cycle,
            "persistence": persistence,
            "owner": owner,
            "acl": acl,
            "comment": comment,
            "owned_by": owned_by,
            "owned_kind": {"a": "serial/OWNED BY", "i": "identity"}.get(owned_kind),
            "last_value": last_value,
            "is_called": is_called,
        }
    return out


# -- data ----------------------------------------------------------------------

_HASH = sql.SQL(
    "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h COLLATE \"C\"), ''))"
    " FROM (SELECT md5(t::text) AS h FROM ONLY {} AS t) AS s"
)


def _data(conn, nsp) -> dict:
    """Row count and multiset hash per table (and populated matview).

    Each row's text (record_out of the whole row) is hashed; the per-row hashes
    are sorted and hashed again, so row order does not matter but multiplicity
    does: duplicates in a table without a key must survive exactly.
    """
    out = {}
    for key, schema, name, kind, populated in _rows(
        conn,
        f"""
            SELECT {_QNAME}, n.nspname, c.relname, c.relkind, c.relispopulated
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'm')""",
        (nsp,),
    ):
        entry: dict[str, Any] = {"kind": kind}
        if kind == "m":
            entry["populated"] = populated
        if kind == "r" or populated:
            rows, digest = conn.execute(_HASH.format(sql.Identifier(schema, name))).fetchone()
            entry.update(rows=rows, hash=digest)
        else:
            entry.update(rows=None, hash=None)
        out[key] = entry
    return out


# -- comparison ----------------------------------------------------------------


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def diff_fingerprints(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two fingerprints ([] when equal).

    Paths read like ``data["public.no_pk_dups"].rows: 8 != 7`` (first value
    from ``a``, second from ``b``).
    """
    out: list[str] = []
    _diff(a, b, "", out)
    return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}[{json.dumps(k, ensure_ascii=False)}]" if path else str(k)
            if k not in b:
                out.append(f"{p}: only in first: {_short(a[k])}")
            elif k not in a:
                out.append(f"{p}: only in second: {_short(b[k])}")
            else:
                _diff(a[k], b[k], p, out)
    elif isinstance(a, list) and isinstance(b, list) and a != b:
        if len(a) != len(b):
            out.append(f"{path}: {_short(a)} != {_short(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {_short(a)} != {_short(b)}")
