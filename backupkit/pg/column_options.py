"""Column options a snapshot's DDL sets that the target server does not know.

pg_dump writes each column's ``attoptions`` as ``ALTER TABLE ONLY t ALTER COLUMN c
SET (name=value, ...);`` inside the table's entry.  Core PostgreSQL knows only
``n_distinct`` and ``n_distinct_inherited``, planner hints; a server build can
add its own (Debian's PostgreSQL 15.20 puts ``pg_attver`` on every column), and
another server rejects the whole statement with "unrecognized parameter", which
would stop the restore.  Such options cannot mean anything to the target, so
they are left out and the restore says which; every option the target accepts
is kept as it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg

from .dsn import connect
from .schema import split_entries

#: The column options core PostgreSQL defines (attribute_reloptions).
_CORE_OPTIONS = {"n_distinct", "n_distinct_inherited"}
_SET_OPTIONS = re.compile(r"^(ALTER TABLE ONLY .+ ALTER COLUMN .+ SET \()(.+)\);$")
# One option of a reloptions list: name=value, the value bare or single-quoted.
_OPTION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*('(?:[^']|'')*'|[^,]*)\s*(?:,|$)")


def _options(listing: str) -> list[tuple[str, str]] | None:
    """[(name, "name=value")] of an option list, or None when it does not parse (left untouched)."""
    found, pos = [], 0
    while pos < len(listing):
        m = _OPTION.match(listing, pos)
        if not m or m.end() == pos:
            return None
        found.append((m.group(1), f"{m.group(1)}={m.group(2).strip()}"))
        pos = m.end()
    return found


def _lines_outside_quotes(body: str) -> set[int]:
    """Indexes of the lines of ``body`` that start outside any string or quoted identifier.

    pg_dump writes with standard_conforming_strings on: '...' with '' inside, E'...'
    with backslash escapes, "..." with "" inside.  A DEFAULT's string constant can
    span lines, and a line inside it is text, not a statement.
    """
    starts, quote, escapes, i, line = {0}, None, False, 0, 0
    while i < len(body):
        c = body[i]
        if c == "\n":
            line += 1
            if quote is None:
                starts.add(line)
        elif quote is None:
            if c in "'\"":
                quote, escapes = (
                    c,
                    c == "'"
                    and i > 0
                    and body[i - 1] in "Ee"
                    and not (i > 1 and (body[i - 2].isalnum() or body[i - 2] == "_")),
                )
        elif escapes and c == "\\":
            i += 1  # the escaped character, whatever it is
        elif c == quote:
            if i + 1 < len(body) and body[i + 1] == quote:
                i += 1  # a doubled quote stays inside
            else:
                quote = None
        i += 1
    return starts


def _statements(script: str) -> Iterator[tuple[int, int, str, list[tuple[str, str]]]]:
    """(entry index, line index, prefix, options) of every column-option line in a TABLE entry."""
    _, entries = split_entries(script)
    for n, (etype, _, body) in enumerate(entries):
        if etype != "TABLE" or " SET (" not in body:
            continue  # never a line of a function body; and most tables have no options to scan for
        statement_lines = _lines_outside_quotes(body)
        for i, line in enumerate(body.split("\n")):
            m = _SET_OPTIONS.match(line) if i in statement_lines else None
            if m and (opts := _options(m.group(2))) is not None:
                yield n, i, m.group(1), opts


def unknown_options(dsn: str, script: str) -> set[str]:
    """Names of the column options ``script`` sets that the server at ``dsn`` rejects as unknown.

    Each distinct option is tried once, as written, on a temporary table inside a
    savepoint.  An invalid value of an option core PostgreSQL has is not "unknown"
    and is kept, so the restore still reports it.  When the probe cannot run (no
    TEMP privilege), nothing is dropped and the restore fails as it would have.
    """
    samples: dict[str, str] = {}
    for _, _, _, opts in _statements(script):
        for name, text in opts:
            samples.setdefault(name, text)
    if not samples:
        return set()
    unknown = set()
    with connect(dsn) as conn, conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE backupkit_option_probe (x int)")
        except psycopg.Error:
            return set()
        for name, text in samples.items():
            try:
                with conn.transaction():
                    conn.execute(f"ALTER TABLE backupkit_option_probe ALTER COLUMN x SET ({text})")
            except psycopg.errors.InvalidParameterValue as exc:
                # The message may be translated (lc_messages): a name core PostgreSQL lacks decides too.
                if "unrecognized parameter" in str(exc) or name.lower() not in _CORE_OPTIONS:
                    unknown.add(name)
            except psycopg.Error:
                pass
    return unknown


def drop_options(script: str, names: set[str]) -> tuple[str, list[str]]:
    """``script`` without the column options ``names``, and the statements that lost some."""
    if not names:
        return script, []
    preamble, entries = split_entries(script)
    bodies = [body.split("\n") for _, _, body in entries]
    dropped = []
    for n, i, prefix, opts in list(_statements(script)):
        kept = [text for name, text in opts if name not in names]
        if len(kept) == len(opts):
            continue
        dropped.append(bodies[n][i])
        bodies[n][i] = f"{prefix}{', '.join(kept)});" if kept else ""
    return preamble + "".join(h + "\n".join(b) for (_, h, _), b in zip(entries, bodies, strict=True)), dropped
