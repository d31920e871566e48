"""Baseline for ``backupkit diff``: one DuckDB process that reads every table of two snapshots.

Usage: ``python benchmarks/duckdb_scan.py SNAPSHOT [SNAPSHOT ...]``

For each table of each snapshot it runs ``SELECT count(*) FROM read_csv([...files...])``
with every column typed VARCHAR and the dialect the files were written in (COPY's text
format, or CSV for snapshots from before 2026-12), so
DuckDB decompresses and parses every byte once and does nothing else.  That is
the least work any exact comparison of the two snapshots has to do.  It prints
one ``snapshot table rows`` line per table and exits 1 if a count disagrees with
the manifest (so a broken scan cannot pass for a fast one).

It reads manifest.json itself and imports nothing from backupkit, so the
baseline does not move when backupkit's code does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def stored(folder: Path, entry: dict) -> Path:
    """Where a data file is: in the snapshot's folder, or (``"shared": true``) in the
    repository's pool of shared files, ``.shared/<2 hex digits>/<sha256>`` beside it."""
    if entry.get("shared") is True:
        return folder.parent / ".shared" / entry["sha256"][:2] / entry["sha256"]
    return folder / entry["path"]


def count_sql(folder: Path, table: dict) -> str:
    """A count(*) over one table's zstd chunk files, nothing sniffed, in the dialect they were written in."""
    files = ", ".join(_quote(str(stored(folder, f))) for f in table["files"])
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(table["copy_columns"])))
    if table.get("data_format", "csv") == "text":  # COPY's text format: tabs, nothing quoted
        dialect = "delim = '\t', quote = '', escape = ''"
    else:
        dialect = "delim = ',', quote = '\"', escape = '\"'"
    return (
        f"SELECT count(*) FROM read_csv([{files}], header = false, columns = {{{columns}}}, "
        f"auto_detect = false, {dialect}, compression = 'zstd', max_line_size = 134217728)"
    )


def scan(folders: list[Path]) -> list[tuple[str, str, int, int]]:
    """(snapshot id, table, rows read, rows in the manifest) for every non-empty table."""
    con = duckdb.connect(":memory:")
    out = []
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        for t in manifest["tables"]:
            if not t["files"] or not t["copy_columns"]:
                continue
            rows = con.execute(count_sql(folder.resolve(), t)).fetchone()[0]
            out.append((folder.name, f"{t['schema']}.{t['name']}", rows, t["rows"]))
    return out


def main(argv: list[str]) -> int:
    """Scan the snapshots named in ``argv``; 0 when every count matches its manifest."""
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    ok = True
    for snap, table, rows, expected in scan([Path(a) for a in argv]):
        print(snap, table, rows)
        if rows != expected:
            print(f"{snap} {table}: read {rows} rows, manifest says {expected}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
