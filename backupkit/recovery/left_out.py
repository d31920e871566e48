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

A ``clean`` restore into the project itself (its tables there) makes none it lacks: they may
have been dropped on purpose since the backup, and a rollback of ``public`` must not bring an
upload policy back (those it has and that use what it replaces are set aside and put back as
they are: ``in_the_way``).  A ``data_only`` restore makes none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..pg.left_out import describe, shown
from ..pg.schema import TocEntry, render, toc
from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.location import SnapshotLocation
from .obstacles import ObjectKey

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

    item: Mapping[str, Any]
    sql: str


@dataclass
class PlatformObjects:
    """What a whole restore does with the source's own objects on the platform's tables."""

    #: The objects the snapshot keeps (``schema/platform.dump``), by key, and where to read them.
    kept: dict[ObjectKey, TocEntry] = field(default_factory=dict)
    location: SnapshotLocation | None = None
    manifest: dict = field(default_factory=dict)
    #: Those the target lacks, made again (``leave_missing`` names them instead).
    missing: list[Remade] = field(default_factory=list)
    #: Those the target lacks and the snapshot does not hold; those whose table it lacks.
    unkept: list[dict[str, Any]] = field(default_factory=list)
    no_table: list[dict[str, Any]] = field(default_factory=list)
    #: Those the target lacks that a ``clean`` restore into the project leaves out.
    left_missing: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def make(self) -> list[Remade]:
        """What the restore makes, last, each in a savepoint (``make_again``)."""
        return self.missing

    @property
    def notes(self) -> list[str]:
        """What the plan says of them."""
        backed_up = list(self.manifest.get("schemas", []))
        notes = []
        if self.missing:
            made = ", ".join(describe(r.item) for r in self.missing)
            notes.append(f"making the source project's own objects on the platform's tables again, last: {made}")
        if self.left_missing:
            notes.append(
                f"the source project had {shown(self.left_missing)}, which this database lacks now: a clean "
                f"restore into the project does not make them again (they may have been dropped since); "
                f"{DEFINITION_AT}"
            )
        if self.unkept:
            schemas = [*backed_up, *sorted({i["schema"] for i in self.unkept})]
            notes.append(
                f"the source project had {shown(self.unkept)}, which this snapshot does not hold (its schemas "
                f"were {', '.join(backed_up)}) and this database lacks: restore a snapshot taken with "
                + " ".join(f"--schema {s}" for s in schemas)
                + " for them"
            )
        if self.no_table:
            tables = sorted({i["schema"] + "." + i["table"] for i in self.no_table})
            notes.append(
                f"the source project had {shown(self.no_table)}, and this database lacks their tables "
                f"({', '.join(tables)}): switch the feature on in the project (Realtime's tables come with "
                "its first start) and make them again"
            )
        return notes

    def leave_missing(self) -> None:
        """A ``clean`` restore into the project itself: what the project lacks now is named,
        not made again (dropped on purpose since the backup, a rollback must not bring back
        an upload policy)."""
        self.left_missing += [r.item for r in self.missing]
        self.missing = []

    def render(self, items: Sequence[Mapping[str, Any]]) -> list[Remade]:
        """pg_dump's SQL for each of ``items`` the snapshot keeps."""
        found = [(i, self.kept[_key(i)]) for i in items if _key(i) in self.kept]
        if not found or self.location is None:
            return []
        with encryption.local_path(self.location, mf.PLATFORM_DUMP, self.manifest) as dump:
            return [Remade(i, render(dump, "post-data", [e], no_owner=True, no_acl=True)) for i, e in found]


def _key(item: Mapping[str, Any]) -> ObjectKey:
    return item["kind"], item["schema"], item["table"], item["name"]


def _entry_oid(e: TocEntry) -> tuple[str, int] | None:
    """(kind, oid) of a policy's or trigger's TOC entry: found by oid, whatever its name holds
    (``pg_restore --list`` prints names unquoted, newlines as spaces)."""
    return (_KINDS[e.type], e.oids[1]) if e.type in _KINDS and e.oids is not None else None


def plan_platform_objects(conn: psycopg.Connection, location: SnapshotLocation, manifest: dict) -> PlatformObjects:
    """Which of the source's objects on the platform's tables the target (``conn``) lacks and
    the restore makes again, with their SQL; what it cannot make, for the notes."""
    backed_up = list(manifest.get("schemas", []))
    left = [i for i in manifest.get("left_on_platform") or [] if i["schema"] not in backed_up]
    found = PlatformObjects(location=location, manifest=manifest)
    if not left:
        return found
    if any(f["path"] == mf.PLATFORM_DUMP for f in manifest.get("schema_files", [])):
        by_oid = {(i["kind"], i["oid"]): i for i in left if isinstance(i.get("oid"), int)}
        with encryption.local_path(location, mf.PLATFORM_DUMP, manifest) as dump:
            found.kept = {_key(by_oid[o]): e for e in toc(dump) if (o := _entry_oid(e)) in by_oid}
    schemas = {"schemas": sorted({i["schema"] for i in left})}
    there = set(conn.execute(_THERE, schemas).fetchall())
    missing = [i for i in left if _key(i) not in there]
    if not missing:
        return found
    tables = set(conn.execute(_TABLES, schemas).fetchall())
    found.no_table = [i for i in missing if (i["schema"], i["table"]) not in tables]
    makeable = [i for i in missing if (i["schema"], i["table"]) in tables]
    found.missing = found.render(makeable)
    found.unkept = [i for i in makeable if _key(i) not in found.kept]
    return found


def make_again(conn: psycopg.Connection, objects: list[Remade]) -> list[str]:
    """Run each object's SQL in ``conn``'s transaction, in a savepoint of its own; the warnings
    for those the target refused (the object named, with the server's reason)."""
    refused = []
    for obj in objects:
        try:
            with conn.transaction():
                conn.execute(obj.sql)
        except psycopg.OperationalError:
            raise  # the time limit, a lock wait, a lost connection: the restore's failure, not the object's
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or type(exc).__name__
            refused.append(f"could not make {describe(obj.item)} again: {reason}; {DEFINITION_AT}")
    return refused
