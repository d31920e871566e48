"""The source project's own objects on the platform's tables, made again by a whole restore.

A backup of some schemas of a Supabase project leaves out the platform's tables (auth,
storage, realtime), and with them the project's own policies and triggers on those tables:
the sign-up trigger on ``auth.users``, the upload policies on ``storage.objects``.  The backup
names them (the manifest's ``left_on_platform``) and keeps them (``schema/platform.dump``,
``pg.left_out``).  Restoring the snapshot whole into a project that lacks them, each is made
again, as pg_dump wrote it, last and in a savepoint of its own: one the target refuses (a
role without the right on a platform table, a function the target lacks) is a warning
naming it, and costs nothing else.  Those the snapshot does not hold (older snapshots, a
role that could not dump those tables) or whose table the target lacks are named in notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from ..pg.left_out import describe, shown
from ..pg.schema import TocEntry, render, toc
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation

_THERE = """
SELECT 'policy', n.nspname, c.relname, p.polname
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%(schemas)s)
UNION ALL
SELECT 'trigger', n.nspname, c.relname, t.tgname
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND n.nspname = ANY(%(schemas)s)
"""

_TABLES = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%(schemas)s)
"""

#: Where a warning or note sends a person for an object's definition.
DEFINITION_AT = f"its definition is in the snapshot's {mf.PLATFORM_DUMP} (pg_restore -f - shows it)"

_KINDS = {"POLICY": "policy", "TRIGGER": "trigger"}


@dataclass(frozen=True)
class Remade:
    """One object to make again: as the manifest names it, and pg_dump's SQL for it."""

    item: dict[str, str]
    sql: str


@dataclass
class PlatformObjects:
    """What a whole restore does with the source's own objects on the platform's tables."""

    make: list[Remade] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _key(item: dict[str, str]) -> tuple[str, str, str, str]:
    return item["kind"], item["schema"], item["table"], item["name"]


def _entry_key(e: TocEntry) -> tuple[str, str, str, str] | None:
    """(kind, schema, table, name) of a policy's or trigger's TOC entry (``schema table name
    owner``; the name, usually a sentence, may hold spaces: the owner, last, holds none)."""
    if e.type not in _KINDS or e.rest.count(" ") < 3:
        return None
    schema, table, rest = e.rest.split(" ", 2)
    return _KINDS[e.type], schema, table, rest.rsplit(" ", 1)[0]


def plan_platform_objects(conn: psycopg.Connection, location: SnapshotLocation, manifest: dict) -> PlatformObjects:
    """Which of the source's objects on the platform's tables the target (``conn``) lacks and
    the restore makes again, with their SQL; notes for those it cannot make."""
    backed_up = list(manifest.get("schemas", []))
    left = [i for i in manifest.get("left_on_platform") or [] if i["schema"] not in backed_up]
    if not left:
        return PlatformObjects()
    schemas = {"schemas": sorted({i["schema"] for i in left})}
    there = set(conn.execute(_THERE, schemas).fetchall())
    missing = [i for i in left if (i["kind"], i["schema"], i["table"], i["name"]) not in there]
    if not missing:
        return PlatformObjects()
    tables = set(conn.execute(_TABLES, schemas).fetchall())
    found = PlatformObjects()
    no_table = [i for i in missing if (i["schema"], i["table"]) not in tables]
    makeable = [i for i in missing if (i["schema"], i["table"]) in tables]
    if makeable and any(f["path"] == mf.PLATFORM_DUMP for f in manifest.get("schema_files", [])):
        with encryption.local_path(location, mf.PLATFORM_DUMP, manifest) as dump:
            entries = {k: e for e in toc(dump) if (k := _entry_key(e)) is not None}
            for item in makeable:
                entry = entries.get(_key(item))
                if entry is not None:
                    sql = render(dump, "post-data", [entry], no_owner=True, no_acl=True)
                    found.make.append(Remade(item, sql))
    made = {_key(r.item) for r in found.make}
    unkept = [i for i in makeable if _key(i) not in made]
    if found.make:
        found.notes.append(
            "making the source project's own objects on the platform's tables again, last: "
            + ", ".join(describe(r.item) for r in found.make)
        )
    if unkept:
        whole = " ".join(f"--schema {s}" for s in [*backed_up, *sorted({i["schema"] for i in unkept})])
        found.notes.append(
            f"the source project had {shown(unkept)}, which this snapshot does not hold (its schemas were "
            f"{', '.join(backed_up)}) and this database lacks: restore a snapshot taken with {whole} for them"
        )
    if no_table:
        found.notes.append(
            f"the source project had {shown(no_table)}, and this database lacks their tables "
            f"({', '.join(sorted({i['schema'] + '.' + i['table'] for i in no_table}))}): switch the feature on "
            "in the project (Realtime's tables come with its first start) and make them again"
        )
    return found


def make_again(conn: psycopg.Connection, objects: list[Remade]) -> list[str]:
    """Run each object's SQL in ``conn``'s transaction, in a savepoint of its own; the warnings
    for those the target refused (the object named, with the server's reason)."""
    refused = []
    for obj in objects:
        try:
            with conn.transaction():
                conn.execute(obj.sql)
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or type(exc).__name__
            refused.append(f"could not make {describe(obj.item)} again: {reason}; {DEFINITION_AT}")
    return refused
