"""Querying a snapshot with DuckDB, straight from its zstd data files (COPY text or CSV).

``open_snapshot(path)`` returns an in-memory DuckDB connection with one view
per table, named like the table (``SELECT * FROM public.orders``).  Nothing is
loaded or sniffed: every view reads its chunk files with explicit options and
columns, as text, and converts each column with an expression chosen from the
manifest's ``base_type`` (domains already resolved):

==============================================  ==========================================
PostgreSQL                                      DuckDB
==============================================  ==========================================
smallint, integer, bigint                       SMALLINT, INTEGER, BIGINT
boolean                                         BOOLEAN
real, double precision                          FLOAT, DOUBLE (NaN and ±Infinity kept)
numeric(p,s), 1 <= p <= 38, 0 <= s <= p         DECIMAL(p,s) (NaN becomes NULL)
numeric, numeric(p>38,s), other typmods         VARCHAR, the exact digits (lossless)
date                                            DATE (BC and ±infinity kept)
timestamp[(n)] [with time zone]                 TIMESTAMP / TIMESTAMPTZ (BC, ±infinity kept)
time[(n)] without time zone                     TIME
uuid                                            UUID
json, jsonb                                     JSON
bytea                                           BLOB (decoded from ``\\x`` hex)
1-D arrays of int2/int4/int8/bool/float/uuid    SMALLINT[] ... UUID[] (LIST, NULL elements
  and of text/varchar/char                      kept)
enums, interval, timetz, money, other arrays,   VARCHAR, the text PostgreSQL wrote
  everything else
==============================================  ==========================================

Conversions that can meet a value DuckDB cannot hold (dates and timestamps
beyond DuckDB's range, numeric NaN, a multi-dimensional array or one with
explicit bounds in an array column, invalid JSON in a ``json`` column) give
NULL for that value instead of failing the whole view.  So in a typed view a
NULL can mean "not representable"; ``open_snapshot(path, raw=True)`` gives
every column as VARCHAR holding exactly the text PostgreSQL printed for the
value (COPY's escapes undone; NULL is NULL, the empty string is ``''``), which
is what comparisons should use.  Snapshots hold COPY's text format; those from
before 2026-12 hold CSV, and read the same (``snapshot.formats``).

Generated columns are not in the files and so not in the views.  DuckDB
matches identifiers case-insensitively: when two tables of one schema differ
only in case, the later one gets no view (``backupkit.tables.view`` is NULL);
``relation_sql`` still reads it.  Columns differing only in case are both in
the view, but only ``SELECT *`` can tell them apart.  A view
``backupkit.tables`` (schema, name, rows, bytes, files, primary_key, view)
lists the snapshot's tables, unless the snapshot has a table of that name.

Every file is checked before any view exists.  DuckDB reads a truncated zstd file
as a shorter one without an error, so ``open_snapshot`` first checks every data file
of the snapshot against the manifest (a regular file inside the folder, its size,
its SHA-256; ``datafile.check_files``, several files at once, each file hashed once
per process) and raises SnapshotDamaged naming the damaged or missing files before
it creates a single view.  One damaged table therefore blocks queries on all the
others: a snapshot with a damaged file is a damaged snapshot, and the views cannot
check a file when a query reads it, so checking lazily per table would mean either
trusting files nobody checked or hashing on every query.  ``backupkit verify``
lists every problem; ``relation_sql`` still reads any table for someone who wants
the rest of a damaged snapshot.

File paths are given to DuckDB as exact lists, never as patterns: DuckDB globs
every path it reads (``[``, ``*``, ``?``), so a snapshot in ``backups/glob[1]/``
would read the files of ``backups/glob1/``.  ``path_sql`` escapes those
characters (``[[]``, ``[*]``, ``[?]``), which match only themselves.

The connection is a sandbox (unless ``external_access=True``): it can read the
snapshot's data files (an encrypted snapshot's: those of its decrypted copy) and
nothing else, and write nothing.  DuckDB's own file
access is off (``enable_external_access = false``) except for exactly those files
(``allowed_paths``, not ``allowed_directories``, which would let ``COPY`` create
files in the snapshot), extensions are neither installed nor loaded, and the
configuration is locked (``lock_configuration``; only ``TimeZone``, ``threads``,
``memory_limit`` and ``enable_progress_bar`` can still be set).  DuckDB lets a
file in ``allowed_paths`` be written too (``COPY ... TO`` it, ``ATTACH`` it), so
SQL given to the connection is also refused, before it runs, when it holds a
statement that writes files or reaches outside (``COPY``, ``EXPORT``, ``ATTACH``,
``DETACH``, ``INSTALL``, ``LOAD``); see ``SnapshotConnection``.  Spilling goes to
a temporary folder of its own (DuckDB removes it on close), never to the working
directory.

An encrypted snapshot is read with its identity (``open_snapshot(path,
identity=FILE)``, ``backupkit sql --identity FILE``) through a decrypted, verified
copy in private scratch space (``lens.source.readable``: a ``backupkit-plain-*``
folder, mode 0700, in the temporary directory) that lives exactly as long as the
connection: ``close()`` (or the end of a ``with`` block) removes it, so does the
connection being garbage-collected (nothing refers to it, nor to a relation it
returned) or the process ending normally without a ``close()`` (``weakref.finalize``),
and so does an error while opening.  Only a process killed outright leaves it behind.
Without the identity an encrypted snapshot is refused with one line
(``encryption.not_for_lens``), as every file is an age file DuckDB cannot read.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import zstandard

from ..errors import ConfigError, SnapshotDamaged
from ..snapshot import encryption, formats
from ..snapshot import manifest as mf
from ..snapshot.datafile import check_files, data_path
from ..storage.cache import local_copy
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from .source import readable

#: Longest CSV row DuckDB will read (its default, 2 MB, is too small for big jsonb or
#: bytea values).  A longer row fails loudly.  DuckDB needs a read buffer larger than
#: this and counts it against its memory limit for every file being read, so a full
#: 1 GB (PostgreSQL's field limit) would exhaust the limit with a few threads.
MAX_LINE_SIZE = 128 << 20

_SIMPLE = {
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "boolean": "BOOLEAN",
    "real": "FLOAT",
    "double precision": "DOUBLE",
    "uuid": "UUID",
}
#: Array element types whose every value converts exactly into a LIST element.
_ARRAY_ELEMENTS = {
    **_SIMPLE,
    "text": "VARCHAR",
    "character varying": "VARCHAR",
    "character": "VARCHAR",
    "name": "VARCHAR",
}
# One element of a 1-D array literal: a quoted string (\-escapes inside) or a bare token.
_ELEMENT_RE = r'"(?:[^"\\]|\\.)*"|[^,{}]+'


def ident(name: str) -> str:
    """A DuckDB identifier, double-quoted so any PostgreSQL name survives."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A DuckDB string literal (backslashes are not escapes in DuckDB strings)."""
    return "'" + text.replace("'", "''") + "'"


def glob_escape(path: str) -> str:
    """``path`` as a DuckDB file pattern matching only itself.

    DuckDB expands ``*``, ``?`` and ``[...]`` in every file path it reads, even in an
    explicit list; a one-character class (``[[]``, ``[*]``, ``[?]``) matches exactly
    that character.  Paths without those characters are returned unchanged.
    """
    return re.sub(r"[\[*?]", lambda m: f"[{m.group()}]", path)


def path_sql(path: Path | str) -> str:
    """A DuckDB string literal naming exactly the file ``path`` (an absolute path), never a pattern."""
    return literal(glob_escape(str(path)))


def _file_paths(folder: mf.SnapshotArg, files: list[dict]) -> list[Path]:
    """The resolved paths of a table's files (refused when one leaves the snapshot, see ``datafile.data_path``)."""
    location = locate(folder)
    return [data_path(location, f) for f in files]


def duck_type(base_type: str) -> str:
    """The DuckDB type a column of PostgreSQL type ``base_type`` is shown as (see the module table)."""
    t = base_type
    if t in _SIMPLE:
        return _SIMPLE[t]
    m = re.fullmatch(r"numeric\((\d+),(-?\d+)\)", t)
    if m:
        p, s = int(m.group(1)), int(m.group(2))
        # Larger precisions, negative scales and scale > precision (PostgreSQL 15+) do not fit.
        return f"DECIMAL({p},{s})" if 1 <= p <= 38 and 0 <= s <= p else "VARCHAR"
    if t == "date":
        return "DATE"
    if re.fullmatch(r"timestamp(\(\d\))? without time zone", t):
        return "TIMESTAMP"
    if re.fullmatch(r"timestamp(\(\d\))? with time zone", t):
        return "TIMESTAMP WITH TIME ZONE"
    if re.fullmatch(r"time(\(\d\))? without time zone", t):
        return "TIME"
    if t in ("json", "jsonb"):
        return "JSON"
    if t == "bytea":
        return "BLOB"
    if t.endswith("[]"):
        element = re.sub(r"\(\d+\)$", "", t[:-2])
        if element in _ARRAY_ELEMENTS:
            return _ARRAY_ELEMENTS[element] + "[]"
    return "VARCHAR"


def column_expr(raw: str, base_type: str) -> str:
    """SQL converting the text column ``raw`` (an already quoted reference) to ``duck_type(base_type)``."""
    target = duck_type(base_type)
    if target == "VARCHAR":
        return raw
    if target in _SIMPLE.values():
        # Every value PostgreSQL writes for these converts exactly; a failure is a real error.
        return f"CAST({raw} AS {target})"
    if target in ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        # PostgreSQL writes '0044-03-15 BC'; DuckDB reads '0044-03-15 (BC)' with the era after the date.
        bc = rf"regexp_replace({raw}, '^(\d+-\d\d-\d\d)(.*) BC$', '\1 (BC)\2')"
        return f"TRY_CAST({bc} AS {target})"
    if target.endswith("[]"):
        element = r"""CASE WHEN e = 'NULL' THEN NULL
                  WHEN e[1] = '"' THEN regexp_replace(substr(e, 2, length(e) - 2), '\\(.)', '\1', 'g')
                  ELSE e END"""
        # '{{' starts a multi-dimensional array, '[' explicit bounds: a LIST cannot hold them.
        return (
            f"CASE WHEN {raw}[1:2] = '{{{{' OR {raw}[1] = '[' THEN NULL ELSE "
            f"CAST([{element} FOR e IN regexp_extract_all({raw}, {literal(_ELEMENT_RE)})] "
            f"AS {target}) END"
        )
    if target == "BLOB":
        # Only the default hex output is decoded; bytea_output=escape text stays in raw mode.
        return rf"CASE WHEN starts_with({raw}, '\x') THEN unhex(substr({raw}, 3)) END"
    return f"TRY_CAST({raw} AS {target})"


def files_sql(folder: mf.SnapshotArg, table: dict, *, max_line_size: int = MAX_LINE_SIZE) -> str:
    """Rows of a table's chunk files, columns named c0, c1, ... as VARCHAR holding each value's text.

    Positional names keep odd or case-colliding column names out of DuckDB's way;
    callers alias them.  NULL is NULL and the empty string is ``''``, in either
    data format (``snapshot.formats``).  A smaller ``max_line_size`` makes
    DuckDB's read buffer (and the memory it reserves per file being read) smaller;
    a longer row then fails the query (``duckdb.InvalidInputException`` or
    ``NotImplementedException``) and a caller can retry with the default.  The
    column ``file_index`` numbers the files.  Each data format is read as ``READERS`` says;
    a file starting with a byte order mark as ``_marked_file_sql`` says.
    """
    paths = _file_paths(folder, table["files"])
    n = len(table["copy_columns"])
    if not paths:  # read_csv needs at least one file
        cols = ", ".join(f"NULL::VARCHAR AS c{i}" for i in range(n))
        return f"(SELECT {cols}, NULL::UBIGINT AS file_index WHERE false)"
    reader, common = READERS[formats.of(table).name], reader_options(max_line_size)
    marked = {i for i, p in enumerate(paths) if n and starts_with_bom(p)}
    plain = [i for i in range(len(paths)) if i not in marked]
    parts = [_marked_file_sql(reader, paths[i], i, n, common) for i in sorted(marked)]
    if plain:
        files = "[" + ", ".join(path_sql(paths[i]) for i in plain) + "]"
        # file_index counts the files read together; without the marked ones it needs mapping back.
        index = "file_index" if not marked else f"([{', '.join(map(str, plain))}])[file_index + 1]::UBIGINT"
        cols = ", ".join(f"{reader.value(f'c{i}')} AS c{i}" for i in range(n))
        parts.insert(0, f"SELECT {cols}, {index} AS file_index FROM {reader.raw(files, n, common)}")
    return "(" + " UNION ALL ".join(parts) + ")"


def _marked_file_sql(reader: Reader, path: Path, index: int, n: int, common: str) -> str:
    """The rows of one file that starts with a UTF-8 byte order mark, with ``index`` as ``file_index``.

    The mark is data (the first value begins with U+FEFF), but DuckDB drops a mark at
    the start of a file.  Its first row is the one row that reading the file whole has
    and reading it from the second row on has not (``EXCEPT ALL``: duplicates count),
    and gets the mark back in front of its first field.  DuckDB's ``skip`` counts rows
    (a CSV row may span lines), and a first field starting with the mark is never quoted
    (PostgreSQL quotes a CSV field only when it must, and then it starts with ``"``).
    """
    one = "[" + path_sql(path) + "]"
    raw = ", ".join(f"c{i}" for i in range(n))
    rest = reader.raw(one, n, common, skip=1)
    first = f"SELECT {raw} FROM {reader.raw(one, n, common)} EXCEPT ALL SELECT {raw} FROM {rest}"
    fields = ["chr(65279) || coalesce(c0, '')"] + [f"c{i}" for i in range(1, n)]
    restored = ", ".join(f"{reader.value(f)} AS c{i}" for i, f in enumerate(fields))
    cols = ", ".join(f"{reader.value(f'c{i}')} AS c{i}" for i in range(n))
    return (
        f"SELECT {restored}, {index}::UBIGINT AS file_index FROM ({first}) "
        f"UNION ALL SELECT {cols}, {index}::UBIGINT AS file_index FROM {rest}"
    )


_BOM = b"\xef\xbb\xbf"


def starts_with_bom(path: Path) -> bool:
    """Whether the decompressed data file ``path`` starts with a UTF-8 byte order mark (which DuckDB drops).

    A file that cannot be read says no: reading it fails again where the checksums are
    checked and reported (``check_files``), which is what should speak of the damage.
    """
    head = b""
    try:
        with LocalStorage(path.parent).open(path.name) as f, zstandard.ZstdDecompressor().stream_reader(f) as z:
            while len(head) < len(_BOM) and (block := z.read(len(_BOM) - len(head))):
                head += block
    except (OSError, zstandard.ZstdError):
        return False
    return head == _BOM


def _text_options(files: str, columns: str) -> str:
    """COPY's text format: nothing is quoted, a field ends at a tab, a row at a newline, and
    both are escaped inside values (``_text_value`` undoes the escapes)."""
    return f"read_csv({files}, columns = {columns}, delim = '\t', quote = '', escape = ''"


def _csv_options(files: str, columns: str) -> str:
    """COPY's CSV: quoting and NULL handling exactly as COPY (FORMAT csv) wrote them (an unquoted
    empty field is NULL, a quoted one '')."""
    return (
        f"read_csv({files}, columns = {columns}, delim = ',', quote = '\"', escape = '\"', allow_quoted_nulls = false"
    )


@dataclass(frozen=True)
class Reader:
    """How DuckDB reads one data format: nothing sniffed, every field as VARCHAR."""

    #: ``read_csv(files, columns = ..., <the format's options>`` without the closing parenthesis.
    options: Callable[[str, str], str]
    #: SQL turning a field as DuckDB read it into the value it stands for.
    value: Callable[[str], str]

    def raw(self, files: str, n: int, common: str, skip: int = 0) -> str:
        """``read_csv`` of ``files`` (a SQL list), fields c0.. as read, after the first ``skip`` rows."""
        columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(n)) + "}"
        return f"{self.options(files, columns)}, skip = {skip}, {common})"


def _as_read(c: str) -> str:
    """A CSV field as DuckDB read it is the value."""
    return c


#: The escapes COPY's text format writes (besides \\ for a backslash): \b \f \n \r \t \v.
_TEXT_ESCAPES = (("b", 8), ("f", 12), ("n", 10), ("r", 13), ("t", 9), ("v", 11))


def _text_value(c: str) -> str:
    r"""SQL turning the field ``c`` of a COPY text-format row, as DuckDB read it, into the value.

    DuckDB reads an empty field as NULL, which in this format is the empty string;
    ``\N`` is NULL (a value ``\N`` is written ``\\N``).  Escaped backslashes become
    NUL first, a byte no PostgreSQL text holds, so that ``\\n`` stays a backslash
    and an ``n``.
    """
    unescaped = rf"replace({c}, '\\', chr(0))"
    for letter, code in _TEXT_ESCAPES:
        unescaped = rf"replace({unescaped}, '\{letter}', chr({code}))"
    unescaped = rf"replace({unescaped}, chr(0), '\')"
    return (
        rf"CASE WHEN {c} IS NULL THEN '' WHEN {c} = '\N' THEN NULL "
        rf"WHEN contains({c}, '\') THEN {unescaped} ELSE {c} END"
    )


#: How DuckDB reads each data format (``snapshot.formats``), by ``DataFormat.name``.
READERS: dict[str, Reader] = {
    formats.TEXT.name: Reader(_text_options, _text_value),
    formats.CSV.name: Reader(_csv_options, _as_read),
}


def columns_sql(
    folder: mf.SnapshotArg,
    table: dict,
    columns: list[str],
    alias: str = "k",
    *,
    max_line_size: int = MAX_LINE_SIZE,
    extra: str = "",
) -> str:
    """``(SELECT c_i AS k0, ... FROM read_csv(...))`` with the given columns, by name, in order.

    ``extra`` is appended to the select list (it may use ``c_i`` and ``file_index``).
    A table whose ``files`` is empty reads as no rows of VARCHAR columns (``extra``
    must then be valid without a FROM).
    """
    pos = {c: i for i, c in enumerate(table["copy_columns"])}
    if not table["files"]:
        cols = ", ".join(f"NULL::VARCHAR AS {alias}{n}" for n in range(len(columns)))
        return f"(SELECT {', '.join(x for x in (cols, extra) if x)} WHERE false)"
    cols = ", ".join(f"c{pos[c]} AS {alias}{n}" for n, c in enumerate(columns))
    return (
        f"(SELECT {', '.join(x for x in (cols, extra) if x)} "
        f"FROM {files_sql(folder, table, max_line_size=max_line_size)})"
    )


#: The DuckDB connections this process opened and still holds (``interrupt_queries``).
_OPEN: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()


def interrupt_queries() -> None:
    """Make the query each open connection of the lens runs fail at once (InterruptException);
    callable from any thread (``runtime.signals.interrupting``)."""
    for con in list(_OPEN):
        with contextlib.suppress(duckdb.Error):
            con.interrupt()


def duck_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with UTC as its time zone."""
    con = duckdb.connect(":memory:")
    _OPEN.add(con)
    con.execute("SET TimeZone = 'UTC'")
    return con


def one_row(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The row of the query ``con`` just ran, which returns exactly one (an aggregate, a
    ``RETURNING`` of one row); DuckDB's ``fetchone`` allows for none."""
    row = con.fetchone()
    if row is None:
        raise RuntimeError("a one-row query returned no row")
    return row


def reader_options(max_line_size: int = MAX_LINE_SIZE) -> str:
    """The ``read_csv`` options every reader of data files shares: nothing sniffed, zstd, strict."""
    return (
        "header = false, auto_detect = false, compression = 'zstd', strict_mode = true, "
        "hive_partitioning = false, union_by_name = false, filename = false, encoding = 'utf-8', "
        f"new_line = '\\n', max_line_size = {max_line_size}, buffer_size = {read_buffer(max_line_size)}"
    )


def read_buffer(max_line_size: int = MAX_LINE_SIZE) -> int:
    """The read buffer ``files_sql`` asks for: DuckDB wants it larger than the longest row."""
    return max_line_size + (1 << 20)


def relation_sql(folder: mf.SnapshotArg, table: dict, *, raw: bool = False) -> str:
    """A SELECT returning one manifest table's rows with its column names (typed unless ``raw``)."""
    if not table["copy_columns"]:
        raise ValueError(f"{mf.table_key(table)} has no stored columns to read")
    types = {c["name"]: c.get("base_type") or c["type"] for c in table["columns"]}
    cols = []
    for i, name in enumerate(table["copy_columns"]):
        expr = f"c{i}" if raw else column_expr(f"c{i}", types.get(name, "text"))
        cols.append(f"{expr} AS {ident(name)}")
    return f"SELECT {', '.join(cols)} FROM {files_sql(folder, table)}"


def _tables_view(manifest: dict, views: dict[str, str | None]) -> str:
    rows = []
    for t in manifest["tables"]:
        pk = t.get("primary_key")
        pk_sql = "NULL::VARCHAR[]" if pk is None else "[" + ", ".join(literal(c) for c in pk) + "]::VARCHAR[]"
        view = views.get(mf.table_key(t))
        rows.append(
            f"({literal(t['schema'])}, {literal(t['name'])}, {int(t['rows'])}::BIGINT, "
            f"{sum(int(f['bytes']) for f in t['files'])}::BIGINT, {len(t['files'])}, {pk_sql}, "
            f"{'NULL' if view is None else literal(view)}::VARCHAR)"
        )
    names = "(schema, name, rows, bytes, files, primary_key, view)"
    if not rows:
        return (
            f"SELECT * FROM (VALUES ('', '', 0::BIGINT, 0::BIGINT, 0, NULL::VARCHAR[], NULL::VARCHAR)) "
            f"AS t{names} WHERE false"
        )
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS t{names}"


#: Statements SQL given to a sandboxed connection may hold: they read, or change only
#: the in-memory database.  Everything else (COPY, EXPORT, ATTACH, DETACH, INSTALL,
#: LOAD, ...) is refused before it runs.
_LENS_STATEMENTS = frozenset(
    getattr(duckdb.StatementType, n)
    for n in (
        "SELECT",
        "EXPLAIN",
        "PRAGMA",
        "SET",
        "VARIABLE_SET",
        "CREATE",
        "CREATE_FUNC",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE_INTO",
        "DROP",
        "ALTER",
        "PREPARE",
        "EXECUTE",
        "TRANSACTION",
        "CALL",
        "ANALYZE",
        "VACUUM",
    )
    if hasattr(duckdb.StatementType, n)
)
#: Settings a sandboxed connection may still change (none reaches a file).
LENS_SETTINGS = ("TimeZone", "threads", "memory_limit", "enable_progress_bar")
_LENS_HINT = (
    "the snapshot's SQL lens reads the snapshot's files and nothing else, and writes nothing; "
    "opening it with `external_access` lifts this"
)


def check_lens_sql(sql) -> None:
    """Raise ``duckdb.PermissionException`` when ``sql`` holds a statement a sandboxed connection refuses.

    ``sql`` is SQL text (parsed by DuckDB's own parser, so what is checked is what
    would run) or a ``duckdb.Statement``.  A parse error is raised as DuckDB raises it.
    """
    statements = [sql] if isinstance(sql, duckdb.Statement) else duckdb.extract_statements(sql)
    for st in statements:
        if st.type not in _LENS_STATEMENTS:
            name = str(st.type).rsplit(".", 1)[-1]
            raise duckdb.PermissionException(f"Permission Error: {name} statements are not allowed: {_LENS_HINT}")


class SnapshotConnection:
    """A sandboxed DuckDB connection over a snapshot (what ``open_snapshot`` returns).

    It behaves like the ``duckdb.DuckDBPyConnection`` it wraps (every attribute is
    passed on), except that SQL text given to ``execute``, ``executemany``, ``sql``,
    ``query`` and ``from_query`` is first checked by ``check_lens_sql``, cursors are
    wrapped the same way, and a permission error names the sandbox.  The DuckDB
    settings (see the module docstring) keep any query to the snapshot's files; this
    check stops what those settings cannot: writing over one of those very files
    (``COPY ... TO`` or ``ATTACH``).  It guards SQL, not Python: code holding the
    connection can do what Python can, e.g. ``con.sql(q).write_csv(path)`` (under
    DuckDB's settings, ``path`` must be one of the snapshot's files: don't).
    ``.duckdb`` is the wrapped connection.

    ``cleanup`` (an encrypted snapshot's: removing its decrypted copy) runs once, when
    the DuckDB connection ends: right after ``close()`` (or the end of a ``with``
    block) closed it, when nothing refers to it any more (neither this object nor a
    relation or cursor it returned: ``open_snapshot(p, identity=k).sql(q).df()``
    works), or when the process ends normally (``weakref.finalize``).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, cleanup: Callable[[], object] | None = None):
        self.duckdb = con
        # Keyed on the DuckDB connection, which every relation it returns refers to; only a
        # weak reference to it here, so that it can still be garbage-collected.
        self._finalizer = None if cleanup is None else weakref.finalize(con, _close_then, weakref.ref(con), cleanup)

    def _run(self, method: str, query, *args, **kwargs):
        check_lens_sql(query)
        try:
            result = getattr(self.duckdb, method)(query, *args, **kwargs)
        except duckdb.PermissionException as exc:
            raise duckdb.PermissionException(f"{exc} ({_LENS_HINT})") from None
        return self if result is self.duckdb else result

    def execute(self, query, *args, **kwargs):
        return self._run("execute", query, *args, **kwargs)

    def executemany(self, query, *args, **kwargs):
        return self._run("executemany", query, *args, **kwargs)

    def sql(self, query, *args, **kwargs):
        return self._run("sql", query, *args, **kwargs)

    def query(self, query, *args, **kwargs):
        return self._run("query", query, *args, **kwargs)

    def from_query(self, query, *args, **kwargs):
        return self._run("from_query", query, *args, **kwargs)

    def cursor(self) -> SnapshotConnection:
        cursor = self.duckdb.cursor()
        if self._finalizer is not None:  # the decrypted copy stays while the cursor (or a relation of it) lives
            weakref.finalize(cursor, _release, self.duckdb)
        return SnapshotConnection(cursor)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the connection, then cleans up; only the first call does
        else:
            self.duckdb.close()

    def __getattr__(self, name):
        return getattr(self.duckdb, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return f"<backupkit.lens.duck.SnapshotConnection over {self.duckdb!r}>"


def _close_then(con: Callable[[], duckdb.DuckDBPyConnection | None], cleanup: Callable[[], object]) -> None:
    """Close the connection ``con`` refers to (weakly; when it was collected there is none), then
    run ``cleanup`` (even when closing fails)."""
    try:
        found = con()
        if found is not None:
            found.close()
    finally:
        cleanup()


def _release(*objects: object) -> None:
    """Nothing: a ``weakref.finalize`` calling it holds ``objects`` until its referent is gone."""


def _sandbox(con: duckdb.DuckDBPyConnection, paths: list[Path], spill: str) -> None:
    """Let ``con`` read exactly ``paths`` (as written in the views and as DuckDB expands them), nothing else."""
    allowed = sorted({str(p) for p in paths} | {glob_escape(str(p)) for p in paths})
    con.execute(f"SET temp_directory = {literal(spill)}")
    con.execute("SET allowed_paths = [" + ", ".join(literal(a) for a in allowed) + "]::VARCHAR[]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET allowed_configs = [" + ", ".join(literal(c) for c in LENS_SETTINGS) + "]::VARCHAR[]")
    con.execute("SET lock_configuration = true")


def _manifest_damaged(folder: SnapshotLocation, exc: Exception) -> SnapshotDamaged:
    problem = f"manifest.json is malformed ({type(exc).__name__}: {exc})"
    return SnapshotDamaged(f"snapshot {folder.name}: {problem}", [problem], hint=f"run `backupkit verify {folder}`")


def open_snapshot(
    path: mf.SnapshotArg,
    *,
    raw: bool = False,
    external_access: bool = False,
    identity: encryption.IdentityArg | None = None,
) -> SnapshotConnection | duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per snapshot table, read from its files.

    With ``raw=True`` every column is VARCHAR holding PostgreSQL's exact text.

    Every data file is checked against the manifest first (see the module docstring):
    a missing, truncated or changed file raises SnapshotDamaged naming it, before any
    view exists, so no query on a damaged snapshot can return rows, whichever table
    it reads.

    The connection is a sandbox, a ``SnapshotConnection``: it reads the snapshot's
    data files and nothing else, and writes no file.  ``external_access=True`` gives
    a plain ``duckdb.DuckDBPyConnection`` with DuckDB's full file access instead, for
    exporting results (``COPY (...) TO 'out.parquet'``) or joining other files.

    ``identity`` (an age identity file, or what ``encryption.IdentityArg`` allows) reads
    an encrypted snapshot through a decrypted, verified copy in private scratch space,
    removed with the connection (``close()``, the end of a ``with`` block, garbage
    collection or the normal end of the process; see ``SnapshotConnection``); the
    sandbox then reads exactly that copy's data files.  A plain snapshot ignores it.
    It is not read from ``$BACKUPKIT_IDENTITY`` here: the command line does that
    (``encryption.identity_path``).  Without it an encrypted snapshot is refused with
    one line (``encryption.not_for_lens``); an identity that is not one of the
    snapshot's recipients is the usual one-line ConfigError.  ``identity`` with
    ``external_access=True`` on an encrypted snapshot is refused (ConfigError, before
    anything is decrypted): a plain DuckDB connection cannot remove the decrypted copy
    when it is closed, so plain data would outlive it.  Query it sandboxed and write
    results from Python (``con.sql(q).df()``, ``.fetch_arrow_table()``) instead.
    """
    location = local_copy(locate(path))  # DuckDB reads files here; a remote snapshot is fetched once
    decrypt = identity is not None and bool(encryption.recipients_of(mf.read(location)))
    if decrypt and external_access:
        raise ConfigError(
            f"snapshot {location.name} is encrypted: `identity` does not combine with `external_access` "
            "(a plain DuckDB connection could not remove the decrypted copy when it is closed); "
            "leave out `external_access`",
            hint="export rows from the sandboxed connection in Python (`con.sql(query).df()`), "
            "or restore the snapshot with the identity and query the database",
        )
    with contextlib.ExitStack() as stack:  # on any error: the decrypted copy (if any) is removed
        folder = readable(location, identity, stack)  # the decrypted copy when ``decrypt``
        con = _connect(folder, raw=raw, external_access=external_access)
        if not decrypt:
            return con if external_access else SnapshotConnection(con)
        cleanup = stack.pop_all()
    try:
        return SnapshotConnection(con, cleanup.close)
    except BaseException:
        _close_then(lambda: con, cleanup.close)
        raise


def _connect(folder: SnapshotLocation, *, raw: bool, external_access: bool) -> duckdb.DuckDBPyConnection:
    """``open_snapshot``'s DuckDB connection over the snapshot in local folder ``folder``."""
    manifest = mf.read(folder)
    try:
        tables = manifest["tables"]
        entries = [f for t in tables for f in t["files"]]
        paths = [data_path(folder, f) for f in entries]
        taken: set[tuple[str, str]] = set()
        views: dict[str, str | None] = {}
        statements = []
        for t in tables:
            key = (t["schema"].lower(), t["name"].lower())
            if key in taken or not t["copy_columns"]:
                views[mf.table_key(t)] = None
                continue
            taken.add(key)
            statements.append(f"CREATE SCHEMA IF NOT EXISTS {ident(t['schema'])}")
            statements.append(
                f"CREATE VIEW {ident(t['schema'])}.{ident(t['name'])} AS " + relation_sql(folder, t, raw=raw)
            )
            views[mf.table_key(t)] = f"{ident(t['schema'])}.{ident(t['name'])}"
        if ("backupkit", "tables") not in taken:
            from .bucket_files import storage_files_sql  # it uses this module's quoting

            statements.append("CREATE SCHEMA IF NOT EXISTS backupkit")
            statements.append("CREATE VIEW backupkit.tables AS " + _tables_view(manifest, views))
            if ("backupkit", "storage_files") not in taken:
                statements.append("CREATE VIEW backupkit.storage_files AS " + storage_files_sql(manifest))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _manifest_damaged(folder, exc) from None
    check_files(folder, entries)
    con = duckdb.connect(":memory:")
    _OPEN.add(con)
    try:
        # The files hold UTC timestamps; show them as such whatever the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        for statement in statements:
            con.execute(statement)
        if external_access:
            return con
        # Spilling goes to a folder of its own, which DuckDB creates when it first spills
        # and removes on close (by default it is .tmp in the working directory).
        spill = os.path.join(tempfile.gettempdir(), f"backupkit-sql-{os.getpid()}-{secrets.token_hex(8)}")
        _sandbox(con, paths, spill)
    except BaseException:
        con.close()
        raise
    return con
