"""Partitioned tables in a selective restore: the hierarchy above the chosen partitions.

The manifest knows a partition's immediate parent only; the schema archive's
TABLE ATTACH entries give every level.  A restore of some partitions makes the
partitioned tables above them too, keeps them when every chosen partition of
them stays in place, and refuses a ``clean`` that would drop their other
partitions with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from ..pg.schema import TocEntry, attached_partitions, index_tables, toc
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .selection import ancestors, partition_parents

if TYPE_CHECKING:  # plan imports this module
    from .plan import RestorePlan


def keep_parents_in_place(
    conn: psycopg.Connection, plan: RestorePlan, chosen: list[dict], parents: dict[str, str]
) -> list[dict]:
    """Take off ``plan.existing`` the partitioned tables whose partitions in this restore are all
    kept in place, and return them as table entries for the scripts to leave alone.

    A partitioned table holds no rows of its own, and its partitions have its columns: when
    they are all kept, so is it.  Dropped, it took every partition with it, those kept in
    place too, and the restore failed on them (``--schema public --clean`` of any project
    with a partitioned table).  Every level above them: a sub-partition's grandparent too.
    Its indexes are named as the target has them.
    """
    kept = set(plan.in_place)
    partitions = _partitions_below(chosen, parents)
    whole = [p for p in plan.existing if p in partitions and all(k in kept for k in partitions[p])]
    if not whole:
        return []
    plan.existing = [k for k in plan.existing if k not in whole]
    plan.drop_first = bool(plan.existing)
    # Schema and name as the catalog has them: a key ("a.b.c") does not say where the dot is.
    rows = conn.execute(
        "SELECT n.nspname, c.relname, array_remove(array_agg(i.relname ORDER BY i.relname), NULL) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_index x ON x.indrelid = c.oid LEFT JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid "
        "WHERE c.relkind = 'p' AND n.nspname || '.' || c.relname = ANY(%s) GROUP BY 1, 2",
        (whole,),
    ).fetchall()
    return [{"schema": schema, "name": name, "indexes": list(indexes), "columns": []} for schema, name, indexes in rows]


def partitions_lost(
    conn: psycopg.Connection, chosen: list[dict], existing: list[str], in_place: list[str], parents: dict[str, str]
) -> list[str]:
    """Partitions a `clean` restore would drop with their partitioned table and not bring back.

    Restoring one partition with `clean` drops and recreates its parent, and DROP TABLE takes
    every partition of it along: the others' rows, written after the snapshot too, would be lost."""
    keys = {mf.table_key(t) for t in chosen}
    below = _partitions_below(chosen, parents)
    problems = []
    for parent in sorted(set(below) & set(existing)):
        # Kept when every chosen partition of it is replaced in place: nothing drops it.
        if all(k in in_place for k in below[parent]):
            continue
        # Keys are "schema.name" (a schema may hold a dot): matched as written, as existing was.
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class p "
            "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace, "
            "LATERAL pg_catalog.pg_partition_tree(p.oid) t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE pn.nspname || '.' || p.relname = %s AND t.isleaf AND t.level > 0",
            (parent,),
        ).fetchall()
        others = sorted({r[0] for r in rows} - keys)
        if others:
            problems.append(
                f"`clean` would drop {parent} with its partitions {', '.join(others)}, which this restore "
                "does not bring back; name them in `tables` too, or reload the rows with `data_only`"
            )
    return problems


def _partitions_below(chosen: list[dict], parents: dict[str, str]) -> dict[str, list[str]]:
    """Each partitioned table above ``chosen`` -> the chosen partitions below it, any level.  Pure."""
    hierarchy = partition_parents({"tables": chosen}, parents)
    found: dict[str, list[str]] = {}
    for t in chosen:
        for a in ancestors(mf.table_key(t), hierarchy):
            found.setdefault(a, []).append(mf.table_key(t))
    return found


def partition_hierarchy(location: SnapshotLocation, manifest: dict) -> dict[str, str]:
    """The snapshot's partition hierarchy (``partition_parents``), read from its schema archive."""
    if not any(f["path"] == mf.DUMP for f in manifest.get("schema_files", [])):
        return partition_parents(manifest)
    with encryption.local_path(location, mf.DUMP, manifest) as dump:
        attached = attached_partitions(dump, toc(dump))
    return partition_parents(manifest, {f"{c[0]}.{c[1]}": f"{p[0]}.{p[1]}" for c, p in attached.items()})


def partitioned_tables(dump: Path, listed: list[TocEntry], manifest: dict, keys: list[str]) -> list[dict]:
    """Table entries, as the scripts take them, of the partitioned tables ``keys`` (no tables of
    the manifest): schema and name as the archive has them, and their indexes (their keys',
    and those of INDEX entries), which their partitions' indexes attach to."""
    if not keys:
        return []
    # A key ("a.b.c") does not say where the schema ends: the archive's TABLE entry does.
    splits = [(k[:i], k[i + 1 :]) for k in keys for i, c in enumerate(k) if c == "."]
    made = [(s, n) for s, n in splits if any(e.type == "TABLE" and e.belongs_to(s, n) for e in listed)]
    known = {(t["schema"], i) for t in manifest["tables"] for i in t.get("indexes", [])}
    others = [e for e in listed if e.type == "INDEX" and not any(e.belongs_to(s, i) for s, i in known)]
    on = index_tables(dump, others) if others else {}
    tables = []
    for s, n in made:
        indexes = [
            e.rest[len(f"{s} {n} ") :].rsplit(" ", 1)[0]
            for e in listed
            if e.type == "CONSTRAINT" and e.rest.startswith(f"{s} {n} ")
        ]
        indexes += [i for (si, i), table in on.items() if table == (s, n)]
        tables.append({"schema": s, "name": n, "indexes": indexes, "columns": []})
    return tables
