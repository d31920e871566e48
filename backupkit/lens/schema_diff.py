"""Which schema objects two snapshots differ in, named one by one.

A restore that loses a view, a trigger or a policy changes no row, so a diff
must name schema objects, not just say "the SQL differs".  The objects come
from the schema SQL pg_restore rendered (``schema.split_entries``: one TOC
entry per object, its header naming type, schema, tag and owner) and from the
manifest's database-level lists (extensions, publications, default privileges,
large objects), compared only when both manifests have them.

An object is keyed by (type, schema, table, name): ``table`` is set for what
pg_dump tags "table name" (triggers, policies, constraints, defaults, rules).
Its grants (ACL entries), comment and security labels count as parts of it, so
a revoked grant makes the object "changed", not a new object.  The owner is
compared apart from the definition: two databases often differ in owners only
(a restore with ``--no-owner``), and that must read as exactly that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..pg.schema import split_entries, unquote_ident
from ..snapshot import manifest as mf

_HEADER_LINE = re.compile(r"^-- Name: (.*?); Type: ([A-Z ]+); Schema: (.*?); Owner: (.*?)(?:; Tablespace: .*)?$", re.M)
#: pg_restore writes an object's owner as its own statement; owners are compared apart.
_OWNER_LINE = re.compile(r"^ALTER [A-Z ]+ .* OWNER TO .*;$")
#: Session settings pg_restore writes between entries land at the end of the previous one.
# (set_config also as backupkit renders pg_dump's ``SET transaction_timeout``: ``pg.schema._runnable``)
_TRAILER_LINE = re.compile(r"^(SET [a-z_.]+ = .*;|SELECT pg_catalog\.set_config\(.*;|--.*|)$")
#: TOC entry types that hold a part of another object, and what that part is called.
_PARTS = {"ACL": "grants", "COMMENT": "comment", "SECURITY LABEL": "security label"}
#: TOC entry types tagged "table name" (``pg.schema.TABLE_TAGGED`` but ROW SECURITY, whose tag
#: is the table alone), and the relations.
_TABLE_TAGGED = {"constraint", "fk constraint", "check constraint", "trigger", "policy", "default", "rule"}
_RELATIONS = {"table", "view", "materialized view", "foreign table"}
#: Entry types whose TOC owner is their table's: a new table owner is not their change.
_NO_OWNER = _TABLE_TAGGED | {"index", "row security", "sequence owned by", "table attach", "index attach"}
#: Manifest lists compared as objects, their object type, and the SQL entry types they
#: describe (left out of the SQL comparison when the manifests have the list, not to count twice).
_MANIFEST_LISTS = {
    "extensions": ("extension", {"extension"}),
    "publications": ("publication", {"publication", "publication table", "publication tables in schema"}),
    "default_privileges": ("default privileges", {"default acl"}),
    "large_objects": ("large object", {"large object", "blob", "blob metadata"}),
    # pg_cron's jobs (the manifest names them without their commands, which may hold keys).
    "cron_jobs": ("cron job", set()),
}
#: Order of changes in a listing: what was lost first.
_CHANGE_ORDER = {"removed": 0, "added": 1, "changed": 2}
#: A schema SQL file larger than this is not one backupkit wrote (as ``manifest.MAX_MANIFEST_BYTES``:
#: pg_restore's SQL for tens of thousands of tables and functions stays well below it).
MAX_SCHEMA_SQL_BYTES = 256 << 20


def _first_ident(text: str) -> tuple[str, str]:
    """The leading SQL identifier of ``text`` (quoted or not), unquoted, and what follows it."""
    m = re.match(r'("(?:[^"]|"")*"|[^\s."]+)', text)
    if not m:
        return text, ""
    return unquote_ident(m.group(1)), text[m.end() :]


def _entries(script: str) -> list[dict]:
    """Each TOC entry of pg_restore's SQL: its type (lower case), schema, tag, owner and body."""
    out = []
    for _, header, body in split_entries(script)[1]:
        m = _HEADER_LINE.search(header)
        if not m:
            continue
        name, etype, schema, owner = m.groups()
        out.append(
            {
                "type": etype.lower(),
                "schema": None if schema == "-" else schema,
                "tag": name,
                "owner": None if owner in ("", "-") else owner,
                "body": body,
            }
        )
    return out


def _definition(body: str) -> str:
    """An entry's SQL without its owner statement and the session settings trailing it."""
    lines = [line for line in body.strip().splitlines() if not _OWNER_LINE.match(line)]
    while lines and _TRAILER_LINE.match(lines[-1].strip()):
        lines.pop()
    return "\n".join(line.rstrip() for line in lines).strip()


def _split_tag(tag: str, schema, relations: set[tuple]) -> tuple[str | None, str]:
    """(table, name) of a "table name" tag: the longest relation of ``schema`` that starts it
    (table names may hold spaces), else the tag split at its first space."""
    cuts = [i for i, c in enumerate(tag) if c == " " and (schema, tag[:i]) in relations]
    if cuts:
        return tag[: cuts[-1]], tag[cuts[-1] + 1 :]
    table, _, name = tag.partition(" ")
    return (table, name) if name else (None, tag)


def _part_target(tag: str) -> tuple[str, str | None, str, str | None]:
    """What an ACL/COMMENT tag such as ``TRIGGER t ON "my tab"`` or ``COLUMN orders.v`` names:
    (kind, table, name, column).  Their identifiers are quoted, unlike main entries' tags."""
    m = re.match(r"^([A-Z]+(?: [A-Z]+)*) (.*)$", tag, re.S)
    if not m:
        return "", None, tag, None
    kind, rest = m.group(1).lower(), m.group(2)
    if kind == "column":
        table, after = _first_ident(rest)
        if after.startswith("."):
            return kind, None, table, _first_ident(after[1:])[0]
    if kind in ("trigger", "policy", "constraint", "rule"):
        name, after = _first_ident(rest)
        if after.startswith(" ON "):
            return kind, _first_ident(after[4:])[0], name, None
    if rest.startswith('"'):
        name, after = _first_ident(rest)
        return kind, None, name + after, None  # a function: "F"(integer) is tagged F(integer)
    return kind, None, rest, None


def _index(objects: dict) -> dict:
    """{(schema, table, name): [keys]} of the objects, to find what an ACL/COMMENT names."""
    index: dict[tuple, list] = {}
    for key in objects:
        index.setdefault(key[1:], []).append(key)
    return index


def _find(index: dict, kind: str, schema, table, name) -> tuple | None:
    """The key of the object an ACL/COMMENT names: the same type if there is one, else any
    object of that schema and name (grants on a view are tagged TABLE); a column's go to its table."""
    hits = index.get((schema, table, name), [])
    if kind == "column":
        hits = [k for k in hits if k[0] in _RELATIONS]
    same = [k for k in hits if k[0] == kind]
    return (same or hits or [None])[0]


def sql_objects(script: str) -> dict:
    """{(type, schema, table, name): {"owner": ..., part: text}} of one snapshot's schema SQL.

    Parts are "definition" and the grants, comment and security labels of the
    object (a column's prefixed with "column NAME: ").
    """
    entries = _entries(script)
    return _objects(entries, _relations(entries))


def _relations(entries: list[dict]) -> set[tuple]:
    """(schema, name) of the relations, which "table name" tags start with."""
    return {(e["schema"], e["tag"]) for e in entries if e["type"] in _RELATIONS}


def _objects(entries: list[dict], relations: set[tuple]) -> dict:
    """``sql_objects`` of parsed entries, "table name" tags split on the given relations."""
    objects: dict[tuple, dict] = {}
    parts = []
    for e in entries:
        part = _PARTS.get(e["type"].upper())
        if part:
            parts.append((part, e))
            continue
        table, name = _split_tag(e["tag"], e["schema"], relations) if e["type"] in _TABLE_TAGGED else (None, e["tag"])
        obj = objects.setdefault((e["type"], e["schema"], table, name), {})
        if e["type"] not in _NO_OWNER:
            obj["owner"] = e["owner"]
        obj["definition"] = (obj.get("definition", "") + "\n" + _definition(e["body"])).strip()
    index = _index(objects)
    for part, e in parts:
        kind, table, name, column = _part_target(e["tag"])
        # a column's grants and comment are parts of its table
        key = _find(index, kind, e["schema"], table, name) or ("table" if column else kind, e["schema"], table, name)
        label = f"column {column}: {part}" if column else part
        obj = objects.setdefault(key, {})
        obj[label] = (obj.get(label, "") + "\n" + _definition(e["body"])).strip()
    return objects


def _owner_text(owner: dict) -> str:
    return f"owner {owner['old']} → {owner['new']}"


def _entry(key: tuple, change: str, parts: Sequence[str] = (), owner: dict | None = None) -> dict:
    """One ``schema_objects`` item; a changed owner is also given as ``owner`` {old, new}."""
    etype, schema, table, name = key
    out = {
        "type": etype,
        "schema": schema,
        **({"table": table} if table is not None else {}),
        "name": name,
        "change": change,
    }
    if owner:
        out["owner"] = owner
        parts = [*parts, _owner_text(owner)]
    if parts:
        out["detail"] = ", ".join(parts)
    return out


def compare_objects(old: dict, new: dict) -> list[dict]:
    """Objects added, removed or changed between two ``sql_objects`` results.

    An object known on one side only by its grants or comment (a schema pg_dump
    does not create, such as ``public``) is "changed", never added or removed.
    The owner is compared only when both sides define the object.
    """
    out = []
    for key in old.keys() | new.keys():
        o, n = old.get(key, {}), new.get(key, {})
        if "definition" in n and "definition" not in o:
            out.append(_entry(key, "added"))
        elif "definition" in o and "definition" not in n:
            out.append(_entry(key, "removed"))
        else:
            parts = sorted(p for p in set(o) | set(n) if p not in ("owner", "definition") and o.get(p) != n.get(p))
            if o.get("definition") != n.get("definition"):
                parts.insert(0, "definition")
            owner = (
                {"old": o["owner"], "new": n["owner"]}
                if "definition" in o and o.get("owner") != n.get("owner")
                else None
            )
            if parts or owner:
                out.append(_entry(key, "changed", parts, owner))
    return out


def _identity(kind: str, item: dict) -> tuple:
    """(type, schema, table, name) of one manifest list item."""
    if kind == "large object":
        return kind, None, None, str(item.get("oid"))
    if kind == "default privileges":
        scope = item.get("object_type") or "?"
        return kind, item.get("schema"), None, f"{scope} for role {item.get('role')}"
    if kind == "cron job":
        name = item.get("name") or f"an unnamed job ({item.get('schedule')})"
        return kind, None, None, f"{name} of role {item.get('username')} in database {item.get('database')}"
    return kind, None, None, str(item.get("name"))


def _keyed(kind: str, items: list[dict]) -> dict[tuple, dict]:
    """``items`` by identity.  Unnamed pg_cron jobs of the same schedule, role and database
    are told apart by number, paused ones last: two such jobs becoming one is a removal, one
    of them paused a change, whatever their order in ``cron.job``."""
    if kind == "cron job":
        items = sorted(items, key=lambda j: not j.get("active", True))
    out: dict[tuple, dict] = {}
    for item in items:
        ident = _identity(kind, item)
        n = 1
        while (numbered := ident if n == 1 else (*ident[:3], f"{ident[3]} #{n}")) in out:
            n += 1
        out[numbered] = item
    return out


def _publication_tables(pub: dict) -> dict:
    return {f"{t.get('schema')}.{t.get('name')}": t for t in pub.get("tables") or []}


def _field_changes(kind: str, old: dict, new: dict) -> list[str]:
    """The fields (but the owner) of a manifest item that differ, values shown where short."""
    out = []
    for field in [f for f in old if f in new] + [f for f in new if f not in old]:
        a, b = old.get(field), new.get(field)
        if a == b or field == "owner" or (kind == "extension" and field == "required"):
            continue  # "required" says what uses the extension, not what the extension is
        if kind == "publication" and field == "tables":
            ta, tb = _publication_tables(old), _publication_tables(new)
            bits = [f"+{t}" for t in tb if t not in ta] + [f"-{t}" for t in ta if t not in tb]
            bits += [f"{t} columns/row filter" for t in ta if t in tb and ta[t] != tb[t]]
            out.append("tables " + " ".join(bits))
        elif field == "acl":
            out.append("grants")
        elif all(isinstance(v, (str, int, float, bool, type(None))) for v in (a, b)):
            out.append(f"{field} {json.dumps(a)} → {json.dumps(b)}")
        else:
            out.append(field)
    return out


def manifest_objects(old_m: dict, new_m: dict) -> list[dict]:
    """Extensions, publications, default privileges, large objects and pg_cron jobs added,
    removed or changed, for each list both manifests have (older manifests have none: nothing
    said).  A job's command is not in the manifest: a changed command is not seen here."""
    out = []
    for key, (kind, _) in _MANIFEST_LISTS.items():
        if not isinstance(old_m.get(key), list) or not isinstance(new_m.get(key), list):
            continue
        old, new = _keyed(kind, old_m[key]), _keyed(kind, new_m[key])
        for ident in old.keys() | new.keys():
            o, n = old.get(ident), new.get(ident)
            schema = (new[ident] if n else old[ident]).get("schema") if kind == "extension" else ident[1]
            shown = (kind, schema, None, ident[3])
            if o is None:
                out.append(_entry(shown, "added"))
            elif n is None:
                out.append(_entry(shown, "removed"))
            else:
                owner = {"old": o.get("owner"), "new": n.get("owner")} if o.get("owner") != n.get("owner") else None
                fields = _field_changes(kind, o, n)
                if fields or owner:
                    out.append(_entry(shown, "changed", fields, owner))
    return out


def owner_only(obj: dict) -> bool:
    """Whether a changed object differs in nothing but its owner."""
    return "owner" in obj and obj.get("detail") == _owner_text(obj["owner"])


def _sort_key(obj: dict) -> tuple:
    return (
        _CHANGE_ORDER[obj["change"]],
        owner_only(obj),
        obj["type"],
        obj["schema"] or "",
        obj.get("table") or "",
        obj["name"],
    )


def read_schema_sql(snapshot: mf.SnapshotArg, rel: str) -> str:
    """Schema SQL file ``rel`` of a snapshot (``manifest.PRE_DATA``, ``POST_DATA``); "" when it is absent.

    Read through the snapshot's storage, at most ``MAX_SCHEMA_SQL_BYTES`` (``SnapshotDamaged``
    when larger, a link or not a plain file); bytes that are not UTF-8 show as U+FFFD.
    """
    data = mf.read_member(snapshot, rel, MAX_SCHEMA_SQL_BYTES)
    return "" if data is None else data.decode("utf-8", "replace")


def sequence_increments(script: str) -> dict[tuple[str | None, str], int]:
    """{(schema, name): INCREMENT BY} of the sequences in pg_restore's SQL (identity columns' too:
    their SEQUENCE entry is the ``ADD GENERATED ... AS IDENTITY (...)`` that names it)."""
    out = {}
    for e in _entries(script):
        m = re.search(r"\bINCREMENT BY (-?\d+)", e["body"]) if e["type"] == "sequence" else None
        if m:
            out[(e["schema"], e["tag"])] = int(m.group(1))
    return out


def _read_sql(snapshot: mf.SnapshotArg) -> str:
    return "".join(read_schema_sql(snapshot, p) for p in (mf.PRE_DATA, mf.POST_DATA))


def schema_objects(old_dir: mf.SnapshotArg, new_dir: mf.SnapshotArg, old_m: dict, new_m: dict) -> list[dict]:
    """Every schema object added, removed or changed between two snapshots: removed first,
    then added, then changed (owner-only changes last), each by type, schema and name."""
    skip = set()
    for key, (_, types) in _MANIFEST_LISTS.items():
        if isinstance(old_m.get(key), list) and isinstance(new_m.get(key), list):
            skip |= types
    old_e, new_e = ([e for e in _entries(_read_sql(d)) if e["type"] not in skip] for d in (old_dir, new_dir))
    relations = _relations(old_e) | _relations(new_e)  # a table dropped on one side still splits its tags
    found = compare_objects(_objects(old_e, relations), _objects(new_e, relations))
    return sorted(found + manifest_objects(old_m, new_m), key=_sort_key)


def qualified(obj: dict) -> str:
    """``audit on public.orders``, ``public.active``, ``pgcrypto``: an object's name, as written."""
    prefix = ".".join(p for p in (obj["schema"], obj.get("table")) if p)
    if obj.get("table") is not None:
        return f"{obj['name']} on {prefix}"
    return f"{prefix}.{obj['name']}" if prefix else obj["name"]


def describe(obj: dict) -> str:
    """``trigger audit on public.orders``, ``view public.active``, ``extension pgcrypto``."""
    return f"{obj['type']} {qualified(obj)}"
