"""The privileges a restore's real run uses on what the target has, checked before it starts.

The restore makes and owns what it creates; on what it finds (tables loaded
into as they are, tables its foreign keys point at, sequences it sets) it needs
the target's grants, and a dry run that passed must not mean a real run that
fails on "permission denied".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from ..pg.platform import Platform
from ..pg.schema import TocEntry
from ..snapshot import manifest as mf
from .checks import privileges
from .in_place import foreign_keys, sequences_used, split_emptying
from .platform_rows import platform_loading
from .sequences import resolve, to_set

if TYPE_CHECKING:  # plan imports this module
    from .plan import Request, RestorePlan


def missing_privileges(
    conn: psycopg.Connection,
    manifest: dict,
    plan: RestorePlan,
    request: Request,
    entries: list[TocEntry],
    in_place: list[dict],
    defaults: set[tuple[str, str]],
    platform: Platform,
) -> list[str]:
    """Privileges the real run uses on what the target has and the restore does not make: INSERT
    (COPY), TRUNCATE or DELETE (emptying) on the tables loaded into as they are, SELECT for the
    foreign-key check after it, REFERENCES for the foreign keys it creates to existing tables,
    UPDATE on the sequences it sets (and USAGE to read one it only moves forward).  Records on
    ``plan`` the sequences a data_only restore leaves out, which the target lacks."""
    loading = set(platform_loading(platform)[1]) if platform else set()
    tables = [t for t in plan.tables if mf.table_key(t) not in platform.tables or mf.table_key(t) in loading]
    # The project's own tables: their INSERT is checked by platform_problems, and never emptied.
    into = [t for t in (tables if request.data_only else in_place) if mf.table_key(t) not in platform.tables]
    needs: list[tuple[str, str | None, str, str]] = []

    def rel(schema: str, name: str) -> str:
        return sql.Identifier(schema, name).as_string(conn)

    for t in into:
        needs += [(rel(t["schema"], t["name"]), c, "INSERT", "to load its rows") for c in t["copy_columns"]]
        if request.data_only and not request.clean:
            needs.append((rel(t["schema"], t["name"]), None, "SELECT", "to see that it is empty"))
    if request.data_only and request.clean:
        truncated, deleted = split_emptying(conn, into)
        needs += [(rel(t["schema"], t["name"]), None, "TRUNCATE", "to empty it") for t in truncated]
        needs += [(rel(t["schema"], t["name"]), None, "DELETE", "to empty it") for t in deleted]
    elif not request.data_only:
        needs += [(rel(t["schema"], t["name"]), None, "DELETE", "to empty it") for t in in_place]
    checked = tables if request.data_only else in_place
    for name, cs, ct, ps, pt, cols, refs in foreign_keys(conn, checked) if checked else []:
        why = f"to check foreign key {name}"
        needs += [(rel(cs, ct), c, "SELECT", why) for c in cols] + [(rel(ps, pt), r, "SELECT", why) for r in refs]
    if not request.data_only:
        restored = {mf.table_key(t) for t in plan.tables}
        kept = set(plan.in_place) | set(platform.tables)
        for t in plan.tables:
            if mf.table_key(t) in kept:
                continue
            needs += [
                (rel(fk["ref_schema"], fk["ref_table"]), r, "REFERENCES", f"for foreign key {fk['name']}")
                for fk in t.get("foreign_keys", [])
                if f"{fk['ref_schema']}.{fk['ref_table']}" not in restored
                for r in fk["ref_columns"]
            ]
    existing = [t for t in tables if request.data_only or mf.table_key(t) in set(plan.in_place)]
    used = set() if plan.full else sequences_used(conn, existing) | defaults
    values = to_set(manifest, tables, full=plan.full, schemas=plan.schemas, used=used)
    made = [e for e in entries if e.type == "SEQUENCE"]
    values = [v for v in values if not any(e.belongs_to(v.schema, v.name) for e in made)]
    left_out = []
    for v, target in zip(values, resolve(conn, values), strict=True):
        if target is None:
            left_out.append(v)
            continue
        needs.append((target, None, "UPDATE", "to set its value"))
        if v.forward:
            needs.append((target, None, "USAGE, SELECT", "to read its value"))
    if left_out:
        plan.sequences_left_out = [v.key for v in left_out]
        plan.notes.append(
            "did not set sequence "
            + ", ".join(f"{v.key} (the snapshot's value {v.last_value})" for v in left_out)
            + (
                ": the target does not have it, so no column there draws from it"
                if len(left_out) == 1
                else ": the target does not have them, so no column there draws from them"
            )
            + (" (data_only creates nothing)" if request.data_only else "")
            + "; if you need it, create it and set it: "
            + " ".join(
                f"`SELECT setval('{rel(v.schema, v.name)}', {v.last_value}, {str(v.is_called).lower()})`"
                for v in left_out
            )
        )
    return privileges(conn, needs)
