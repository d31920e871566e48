"""The schema half of a snapshot: a real ``pg_dump --schema-only``, split like pg_restore.

Backup stores the custom-format archive (``schema.dump``) as the restore
source and renders its pre-data and post-data sections as plain SQL for people
and diffs.  Restore asks ``pg_restore`` to render chosen TOC entries of one
section to SQL, which backupkit runs in its own transaction.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolError
from ..runtime.lifeline import dies_with_us
from ..snapshot.manifest import DATABASE_DUMP, DATABASE_SQL, DUMP, POST_DATA, PRE_DATA, SCHEMA_DIR
from ..storage.local import LocalStorage
from ..storage.scratch import folder, scratch
from .tools import find_tool, run_tool

#: TOC entry types that belong to one table, named "table ..." in the TOC tag.
TABLE_TAGGED = {
    "CONSTRAINT",
    "FK CONSTRAINT",
    "CHECK CONSTRAINT",
    "TRIGGER",
    "POLICY",
    "DEFAULT",
    "ROW SECURITY",
    "RULE",
}
_MULTIWORD = sorted(
    [
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "ROW SECURITY",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "TABLE DATA",
        "DEFAULT ACL",
        "MATERIALIZED VIEW DATA",
        "MATERIALIZED VIEW",
        "FOREIGN TABLE",
        "TABLE ATTACH",
        "INDEX ATTACH",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "FOREIGN DATA WRAPPER",
        "FOREIGN SERVER",
        "USER MAPPING",
        "EVENT TRIGGER",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "PROCEDURAL LANGUAGE",
        "SHELL TYPE",
        "ACCESS METHOD",
        "DATABASE PROPERTIES",
        "LARGE OBJECT",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "STATISTICS DATA",
        "BLOB METADATA",
    ],
    key=len,
    reverse=True,
)


_META = re.compile(r"^\\(un)?restrict \S+\s*$")
#: pg_restore's preamble switches lock waits' limit off; the restore's own (--lock-wait-timeout)
#: must stay in force.  Its other SETs stay: a role's statement_timeout must not cut a long COPY.
_NO_LIMITS = re.compile(r"^SET lock_timeout = 0;\s*$")
#: pg_dump 17 and later write ``SET transaction_timeout = 0`` into every script, which a server
#: before 17 refuses as an unknown parameter: a PostgreSQL 15 database (Supabase's) could not
#: be restored into PostgreSQL 15.  The same setting, made only where the server has it:
_TRANSACTION_TIMEOUT = re.compile(r"^SET transaction_timeout = 0;\s*$")
_TRANSACTION_TIMEOUT_ANY_VERSION = (
    "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings WHERE name = 'transaction_timeout';\n"
)


def _runnable(lines: Iterable[str]) -> Iterator[str]:
    """pg_restore's output lines as psycopg runs them, on any server version: without psql's
    meta-commands (pg_dump 18's ``\\restrict`` / ``\\unrestrict``; any other backslash line may
    be part of a function body or a string literal and must survive untouched), without the
    preamble's lock-wait limit switched off, and with ``transaction_timeout`` set where it exists."""
    for line in lines:
        if _META.match(line) or _NO_LIMITS.match(line):
            continue
        yield _TRANSACTION_TIMEOUT_ANY_VERSION if _TRANSACTION_TIMEOUT.match(line) else line


_HEADER = re.compile(r"^--\n-- (?:Data for )?Name: [^\n]*?; Type: ([A-Z ]+); Schema: [^\n]*\n--\n", re.M)


#: ``pg_restore --list``: ``<dump id>; <catalog oid> <object oid> <type> ...``.
_TOC_OIDS = re.compile(r"^\d+; (\d+) (\d+) ")


def unquote_ident(ident: str) -> str:
    """A SQL identifier as written, quoted (doubled quotes inside) or plain, back to its name."""
    return ident[1:-1].replace('""', '"') if len(ident) > 1 and ident[0] == ident[-1] == '"' else ident


@dataclass(frozen=True)
class TocEntry:
    """One line of ``pg_restore -l``: its id, object type and the rest (schema, tag, owner)."""

    line: str
    type: str
    rest: str

    def belongs_to(self, schema: str, name: str) -> bool:
        """True when this entry's schema and tag start with the given ``schema`` and ``name``."""
        return self.rest.startswith(f"{schema} {name} ") or self.rest == f"{schema} {name}"

    @property
    def oids(self) -> tuple[int, int] | None:
        """The object's catalog's and its own oid (``<dump id>; <catalog> <oid> ...``): which
        object it is, whatever its name holds; None for entries of no catalog object (0 0)."""
        m = _TOC_OIDS.match(self.line)
        return (int(m.group(1)), int(m.group(2))) if m and m.group(2) != "0" else None


def dump_schema(
    dsn: str,
    out: LocalStorage,
    *,
    snapshot: str,
    schemas: list[str],
    tables: list[str] | None = None,
    exclude: list[str] | None = None,
    lock_wait_timeout: float | None = None,
) -> list[str]:
    """Run pg_dump --schema-only inside the exported ``snapshot``; write the archives and their
    SQL into ``out`` (a scratch space: pg_dump writes to a path) under the names they have in a
    snapshot, and return those names.

    ``lock_wait_timeout`` (seconds) becomes ``--lock-wait-timeout``; pg_dump dies with this
    process (it would otherwise hold its table locks until it finished on its own).
    """
    pg_dump = find_tool("pg_dump")
    folder(out, SCHEMA_DIR)
    args = ["--schema-only", "--format=custom", f"--snapshot={snapshot}", "--no-sync", f"--file={out.path(DUMP)}"]
    if lock_wait_timeout:
        args.append(f"--lock-wait-timeout={max(1, int(lock_wait_timeout * 1000))}")
    args += [f"--schema={_pattern(s)}" for s in schemas]
    args += [f"--table={_pattern(*t.split('.', 1))}" for t in tables or []]
    args += [f"--exclude-table={_pattern(*t.split('.', 1))}" for t in exclude or []]
    from .database_objects import dump_database_objects

    def database_objects() -> None:
        dump_database_objects(dsn, out.path(DATABASE_DUMP), snapshot=snapshot)
        # Its DDL for people and diffs; the large objects' data stays in the archive only.
        out.write(
            DATABASE_SQL,
            (render(out.path(DATABASE_DUMP), "pre-data") + render(out.path(DATABASE_DUMP), "post-data")).encode(),
        )

    # The two pg_dumps (and their renderings) at once: each is mostly waiting on the server.
    with ThreadPoolExecutor(1, thread_name_prefix="backupkit-pg-dump") as other:
        second = other.submit(database_objects)
        run_tool(pg_dump, args, dsn, preexec_fn=dies_with_us())
        for section, rel in (("pre-data", PRE_DATA), ("post-data", POST_DATA)):
            out.write(rel, render(out.path(DUMP), section).encode())
        second.result()
    return [DUMP, PRE_DATA, POST_DATA, DATABASE_DUMP, DATABASE_SQL]


def _pattern(*parts: str) -> str:
    """A pg_dump name pattern matching exactly these names (quotes defeat wildcards and dots)."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def toc(dump: Path) -> list[TocEntry]:
    """The archive's table of contents, comments dropped."""
    out = run_tool(find_tool("pg_restore"), ["--list", str(dump)], text=True).stdout
    entries = []
    for line in out.splitlines():
        if not line or line.startswith(";"):
            continue
        m = re.match(r"^\d+; \d+ \d+ (.*)$", line)
        if not m:
            continue
        body = m.group(1)
        etype = next((t for t in _MULTIWORD if body.startswith(t + " ")), body.split(" ", 1)[0])
        entries.append(TocEntry(line, etype, body[len(etype) + 1 :]))
    return entries


def render(
    dump: Path,
    section: str,
    entries: list[TocEntry] | None = None,
    *,
    no_owner: bool = False,
    no_acl: bool = False,
    clean: bool = False,
) -> str:
    """SQL for one section of the archive, optionally only the given TOC entries.

    Made runnable through psycopg on any server version (``_runnable``).
    """
    args = [f"--section={section}", "--file=-"]
    if no_owner:
        args.append("--no-owner")
    if no_acl:
        args.append("--no-acl")
    if clean:
        args += ["--clean", "--if-exists"]
    with contextlib.ExitStack() as stack:
        if entries is not None:
            args.append(f"--use-list={stack.enter_context(_toc_list(entries))}")
        out = run_tool(find_tool("pg_restore"), [*args, str(dump)], text=True).stdout
    return "".join(_runnable(out.splitlines(keepends=True)))


@contextlib.contextmanager
def render_lines(dump: Path, section: str, entries: list[TocEntry], *, no_owner: bool = False):
    """Like ``render`` but streamed: yields an iterator over pg_restore's output lines.

    For sections that hold data (large objects), which must never sit whole in memory.
    """
    args = [f"--section={section}", "--file=-"] + (["--no-owner"] if no_owner else [])
    with _toc_list(entries) as list_file, _pg_restore_lines([*args, f"--use-list={list_file}", str(dump)]) as lines:
        yield lines


@contextlib.contextmanager
def _toc_list(entries: list[TocEntry]) -> Iterator[Path]:
    """A ``pg_restore --use-list`` file of ``entries``, in scratch space: never inside the
    snapshot, which is write-once."""
    with scratch("backupkit-toc-") as tmp:
        tmp.write("toc.list", "".join(e.line + "\n" for e in entries).encode())
        yield tmp.path("toc.list")


@contextlib.contextmanager
def _pg_restore_lines(args: list[str]) -> Iterator[Iterator[str]]:
    proc = subprocess.Popen(
        [str(find_tool("pg_restore")), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both are pipes
    try:
        yield _runnable(stdout)
        stdout.read()
        err = stderr.read()
        if proc.wait() != 0:
            raise ToolError(f"pg_restore failed: {err.strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stdout.close()
        stderr.close()


def split_entries(script: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Split pg_restore's SQL into its preamble and (type, header, body) per TOC entry.

    The preamble holds the session SETs and, with --clean, the DROPs.  Entries
    are found by the ``-- Name: ...; Type: ...;`` header pg_restore writes
    before each, so text inside a function body is never taken for a statement.
    ``preamble + "".join(header + body ...)`` gives the script back unchanged.
    """
    matches = list(_HEADER.finditer(script))
    if not matches:
        return script, []
    entries = []
    for m, nxt in zip(matches, [*matches[1:], None], strict=True):
        end = nxt.start() if nxt else len(script)
        entries.append((m.group(1), m.group(0), script[m.end() : end]))
    return script[: matches[0].start()], entries


_IDENT = r'("(?:[^"]|"")*"|[^\s".]+)'
_ATTACH = re.compile(rf"^ALTER TABLE ONLY {_IDENT}\.{_IDENT} ATTACH PARTITION {_IDENT}\.{_IDENT} ", re.M)
_INDEX_ON = re.compile(rf"^CREATE (?:UNIQUE )?INDEX {_IDENT} ON (?:ONLY )?{_IDENT}\.{_IDENT} ", re.M)


def attached_partitions(dump: Path, entries: Iterable[TocEntry]) -> dict[tuple[str, str], tuple[str, str]]:
    """(schema, name) of each partition the archive attaches -> (schema, name) of its partitioned
    table, from the TABLE ATTACH entries as pg_restore renders them (``ALTER TABLE ONLY parent
    ATTACH PARTITION child``): the whole hierarchy, partitioned tables' own parents too."""
    attaches = [e for e in entries if e.type == "TABLE ATTACH"]
    if not attaches:
        return {}
    found = {}
    for m in _ATTACH.finditer(render(dump, "pre-data", attaches)):
        ps, pn, cs, cn = (unquote_ident(g) for g in m.groups())
        found[(cs, cn)] = (ps, pn)
    return found


def index_tables(dump: Path, entries: Iterable[TocEntry]) -> dict[tuple[str, str], tuple[str, str]]:
    """(schema, index) -> (schema, table) of the archive's INDEX ``entries`` (the TOC names no
    table for an index), as pg_restore renders them."""
    indexes = [e for e in entries if e.type == "INDEX"]
    if not indexes:
        return {}
    found = {}
    for m in _INDEX_ON.finditer(render(dump, "post-data", indexes)):
        index, schema, table = (unquote_ident(g) for g in m.groups())
        found[(schema, index)] = (schema, table)
    return found
