"""The data formats a snapshot's data files can be in, in one registry.

A table entry's ``data_format`` names one (absent: ``csv``, format version 1).
New snapshots write ``text``, the format pg_dump uses, because PostgreSQL writes
it 15-20% faster than CSV and loads it 15-35% faster.  Everything that depends
on the format — COPY's option, the file suffix, how rows are counted, whether a
line is always a row — is looked up here (``of(table)``), never branched on by
name; readers with more to know (DuckDB's ``read_csv`` options in ``lens.duck``)
keep their own table keyed by ``DataFormat.name``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


def _count_text(blocks: Iterable[bytes]) -> int:
    # COPY's text format escapes a newline inside a value, so every newline ends a row.
    return sum(block.count(b"\n") for block in blocks)


def _count_csv(blocks: Iterable[bytes]) -> int:
    rows = 0
    in_quotes = False
    for block in blocks:
        # A newline ends a row only outside quotes; "" inside quotes toggles twice, harmlessly.
        if b'"' not in block and not in_quotes:
            rows += block.count(b"\n")
            continue
        for part_no, part in enumerate(block.split(b'"')):
            if part_no:
                in_quotes = not in_quotes
            if not in_quotes:
                rows += part.count(b"\n")
    return rows


@dataclass(frozen=True)
class DataFormat:
    """One way of writing a table's rows: what COPY calls it and what follows from that."""

    #: The manifest's ``data_format`` value, and COPY's ``FORMAT`` option.
    name: str
    #: Data file names end so.
    suffix: str
    #: Every newline ends a row (values escape theirs), so a line is a row.
    line_is_row: bool
    #: Rows in decompressed COPY output given as blocks.
    count_rows: Callable[[Iterable[bytes]], int]


TEXT = DataFormat("text", ".copy.zst", line_is_row=True, count_rows=_count_text)
CSV = DataFormat("csv", ".csv.zst", line_is_row=False, count_rows=_count_csv)

#: Every format a snapshot may use, by name.
FORMATS: dict[str, DataFormat] = {f.name: f for f in (TEXT, CSV)}
#: What a backup writes.
WRITTEN = TEXT
#: What a table entry without ``data_format`` holds (format version 1).
DEFAULT = CSV


def named(name: str) -> DataFormat:
    """The format called ``name`` (``KeyError`` if there is none: the manifest check reports it first)."""
    return FORMATS[name]


def of(table: dict) -> DataFormat:
    """The format of a manifest table entry's data files."""
    return FORMATS[table.get("data_format", DEFAULT.name)]
