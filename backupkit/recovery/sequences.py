"""Which of the snapshot's sequences a restore sets, and how.

Decided the same way when the restore is planned (to find the sequences the target
lacks and those the restoring role may not set) and when it runs (``LoadRun.sequences``),
so a dry run that passes sees every ``setval`` the real run makes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..snapshot import manifest as mf


@dataclass(frozen=True)
class SequenceValue:
    """One ``setval`` of a restore."""

    schema: str
    name: str
    last_value: int
    is_called: bool
    #: (schema, table, column) of the restored column that owns it: the sequence that column
    #: draws from in the target is the one set (a table that existed may have one of another name).
    column: tuple[str, str, str] | None = None
    #: Set only forward, never back: no restored table owns it, their defaults use it, and
    #: other tables may draw from it too.
    forward: bool = False

    @property
    def key(self) -> str:
        """schema.name, as the manifest's table keys are written."""
        return f"{self.schema}.{self.name}"


def to_set(
    manifest: dict, tables: list[dict], *, full: bool, schemas: Collection[str], used: Collection[tuple[str, str]]
) -> list[SequenceValue]:
    """The snapshot's sequences a restore of ``tables`` sets: all (``full``), those of whole
    ``schemas``, those the tables own, and, forward only, those their defaults ``used`` (in the target)."""
    keys = {mf.table_key(t) for t in tables}
    out = []
    for s in manifest.get("sequences", []):
        owned = s.get("owned_by")
        base = (s["schema"], s["name"], s["last_value"], s["is_called"])
        if owned and len(owned) > 2 and f"{owned[0]}.{owned[1]}" in keys:
            out.append(SequenceValue(*base, column=(owned[0], owned[1], owned[2])))
        elif full or s["schema"] in schemas or (owned and f"{owned[0]}.{owned[1]}" in keys):
            out.append(SequenceValue(*base))
        elif (s["schema"], s["name"]) in used and s["is_called"]:
            out.append(SequenceValue(*base, forward=True))
    return out


#: The target's sequence each value goes to (NULL: none), in order: the sequence the owning
#: column draws from, else the one of the snapshot's name (not a relation of another kind).
_RESOLVE = """
SELECT CASE WHEN c.oid IS NOT NULL THEN pg_catalog.format('%%I.%%I', n.nspname, c.relname) END
  FROM unnest(%s::text[], %s::text[], %s::text[]) WITH ORDINALITY u(name, rel, col, i)
  LEFT JOIN pg_catalog.pg_class c ON c.relkind = 'S' AND c.oid = coalesce(
       CASE WHEN u.rel IS NOT NULL AND pg_catalog.to_regclass(u.rel) IS NOT NULL
            AND EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass(u.rel)
                        AND a.attname = u.col AND a.attnum > 0 AND NOT a.attisdropped)
            THEN pg_catalog.to_regclass(pg_catalog.pg_get_serial_sequence(u.rel, u.col)) END,
       pg_catalog.to_regclass(u.name))
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 ORDER BY u.i
"""


def resolve(conn: psycopg.Connection, values: list[SequenceValue]) -> list[str | None]:
    """The target's sequence (quoted name) each of ``values`` would set, None where it has none."""
    if not values:
        return []
    names = [sql.Identifier(v.schema, v.name).as_string(conn) for v in values]
    rels = [sql.Identifier(*v.column[:2]).as_string(conn) if v.column else None for v in values]
    cols = [v.column[2] if v.column else None for v in values]
    return [r[0] for r in conn.execute(_RESOLVE, (names, rels, cols)).fetchall()]
