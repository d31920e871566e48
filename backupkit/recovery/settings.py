"""The roles' and the database's own settings a restore does not bring back, and the statements that would.

A role's settings (``ALTER ROLE authenticated SET statement_timeout = '8s'``, a user's
``app.tenant`` for RLS functions) and the database's (``ALTER DATABASE postgres SET timezone
TO 'America/New_York'``) are in nothing a restore runs (``snapshot/format_doc``): after a
disaster restore into a new project they have the platform's defaults.  The manifest's
``role_settings`` and ``database_settings`` recorded them; ``differences`` and
``database_differences`` compare them with the target's (``target_settings``,
``database_objects.database_settings``) and return one note per setting that differs, each
with the exact ``ALTER ROLE`` or ``ALTER DATABASE`` statement that would bring it back.
Nothing here changes the target: the statements are for a person to read and run (these
settings are the project's configuration, and the connecting role may not even be allowed
to change them).
"""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet

import psycopg
from psycopg import sql

from ..pg.database_objects import WITHHELD, role_settings

#: The settings whose value is a list of names, each quoted like an identifier: given as one
#: string literal, ``SET`` would take the whole list for one name.  They are written one
#: literal per element, as pg_dump does (its ``variable_is_guc_list_quote``).
LIST_QUOTE = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)

_SCOPES = {"all_databases": "for every database", "this_database": "in this database"}


def target_settings(conn: psycopg.Connection, manifest: dict) -> dict[str, dict[str, dict[str, str]]]:
    """The target's settings of the snapshot's roles, for every database and for the connected
    one, shaped like the manifest's ``role_settings`` (a value that may be a secret withheld alike)."""
    return role_settings(conn, _recorded_roles(manifest))


def _recorded_roles(manifest: dict) -> set[str]:
    """The roles whose settings a snapshot speaks for: those of ``roles``, and any with recorded settings."""
    recorded = manifest.get("role_settings") or {}
    return {r["name"] for r in manifest.get("roles", [])}.union(*(recorded.get(scope, {}) for scope in _SCOPES))


def differences(
    manifest: dict,
    target: dict[str, dict[str, dict[str, str]]],
    database: str,
    roles: AbstractSet[str] | None = None,
) -> list[str]:
    """One note per setting of the snapshot's roles that the target (``target_settings``, of
    database ``database``) lacks, has with another value, or has where the snapshot had none;
    each names the role, the setting, both values and the statement that brings it back.

    A snapshot without ``role_settings`` (written before they were recorded) gives none.
    A withheld value (a possible secret) is named only when the target lacks the setting.
    Only the roles in ``roles`` (those the target has or the restore creates) are compared, when
    given: another's ``ALTER ROLE`` would fail, and its grants were left out with a note already.
    """
    recorded = manifest.get("role_settings")
    if recorded is None:
        return []
    notes = []
    names = _recorded_roles(manifest)
    for role in sorted(names if roles is None else names & roles):
        for scope, where in _SCOPES.items():
            db = database if scope == "this_database" else None
            want = recorded.get(scope, {}).get(role, {})
            have = target.get(scope, {}).get(role, {})
            for name in sorted(want.keys() | have.keys()):
                ours, theirs = want.get(name), have.get(name)
                if (ours == WITHHELD and theirs is not None) or _same(name, ours, theirs):
                    continue
                alter = statement(role, name, ours, database=db)
                notes.append(_note(f"role {role}: setting {name} {where}", ours, theirs, alter))
    return notes


def database_differences(manifest: dict, target: dict[str, str], database: str) -> list[str]:
    """One note per setting of the snapshot's database (the manifest's ``database_settings``)
    that the target database ``database`` (its ``database_objects.database_settings``) lacks,
    has with another value, or has where the snapshot had none; each names the setting, both
    values and the ``ALTER DATABASE`` that brings it back.  A snapshot without
    ``database_settings`` (written before they were recorded) gives none."""
    recorded = manifest.get("database_settings")
    if recorded is None:
        return []
    notes = []
    for name in sorted(recorded.keys() | target.keys()):
        ours, theirs = recorded.get(name), target.get(name)
        if (ours == WITHHELD and theirs is not None) or _same(name, ours, theirs):
            continue
        alter = sql.SQL("ALTER DATABASE {} {}").format(sql.Identifier(database), _set_or_reset(name, ours)).as_string()
        notes.append(_note(f"database setting {name}", ours, theirs, alter))
    return notes


def _note(head: str, ours: str | None, theirs: str | None, alter: str) -> str:
    """A note on one setting that differs, ending with the statement that brings it back."""
    if ours == WITHHELD:
        return (
            f"{head} is set in the snapshot (its value {WITHHELD}), not set here; to bring it "
            f"back, with its value filled in: {alter};"
        )
    return f"{head} is {_shown(ours)} in the snapshot, {_shown(theirs)} here; to bring it back: {alter};"


def statement(role: str, name: str, value: str | None, *, database: str | None = None) -> str:
    """``ALTER ROLE role [IN DATABASE database] SET name TO value`` (``RESET name`` when ``value``
    is None), every name and value quoted: the value as ``pg_db_role_setting`` holds it."""
    parts = [sql.SQL("ALTER ROLE {}").format(sql.Identifier(role))]
    if database is not None:
        parts.append(sql.SQL("IN DATABASE {}").format(sql.Identifier(database)))
    parts.append(_set_or_reset(name, value))
    return sql.SQL(" ").join(parts).as_string()


def _set_or_reset(name: str, value: str | None) -> sql.Composed:
    """``SET name TO value`` (a list setting's elements each its own literal; a withheld value
    ``'...'``, for the user to fill in), or ``RESET name``."""
    if value == WITHHELD:
        value = "..."
    if value is None:
        return sql.SQL("RESET {}").format(sql.Identifier(name))
    items = split_list(value) if name in LIST_QUOTE else None
    values = sql.SQL(", ").join(sql.Literal(v) for v in (items if items is not None else [value]))
    return sql.SQL("SET {} TO {}").format(sql.Identifier(name), values)


def split_list(value: str) -> list[str] | None:
    """The elements of a list setting's stored value (``"$user", public``), quoted ones
    unquoted; None when it is not such a list (then it is given as one literal)."""
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            end = i + 1
            while True:
                end = value.find('"', end)
                if end < 0:
                    return None  # an unclosed quote
                if value[end + 1 : end + 2] != '"':
                    break
                end += 2
            items.append(value[i + 1 : end].replace('""', '"'))
            i = end + 1
        else:
            start = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            if i == start:
                return None  # an empty element
            items.append(value[start:i])
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return items
        if value[i] != ",":
            return None
        i += 1


def _same(name: str, ours: str | None, theirs: str | None) -> bool:
    """Equal values; for a list setting, equal elements (the spacing between them may differ)."""
    if ours is None or theirs is None or name not in LIST_QUOTE:
        return ours == theirs
    return (split_list(ours) or [ours]) == (split_list(theirs) or [theirs])


def _shown(value: str | None) -> str:
    """A value in a one-line note: quoted, with any control character escaped."""
    return "not set" if value is None else value if value == WITHHELD else json.dumps(value, ensure_ascii=False)
