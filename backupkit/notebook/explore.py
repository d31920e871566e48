"""The snapshot explorer: query a snapshot with DuckDB, and ``explorer()``, the ipywidgets UI over it.

``snapshot_tables``, ``query`` and ``run_query`` run DuckDB SQL over a
snapshot's views (tables named as in PostgreSQL, e.g. ``public.orders``) and
return at most ``MAX_ROWS`` rows as a ``frames.Table`` (SQL NULL shown as ``NULL``).  ``explorer()`` builds a
widget (its state an ``Explorer``) to pick a snapshot and a table, preview its rows and run SQL; errors
show as a short red message in the widget and are never raised into its loop.

Everything here reads through ``duck.open_snapshot``, so a snapshot whose data
files do not match its manifest is refused as a whole (SnapshotDamaged naming the
files; the widget shows it and lets you pick another), and the SQL is sandboxed:
it reads the snapshot's files and nothing else, and writes no file (``COPY``,
``ATTACH``, ``read_csv('/etc/passwd')`` fail).  For exports use
``open_snapshot(path, external_access=True)`` in your own cell.

An encrypted snapshot needs ``identity``, the age identity file of one of its
recipients (``""`` or None: ``$BACKUPKIT_IDENTITY`` if set, as for the command
line); each connection then reads a decrypted copy in private scratch space, removed
when the connection is closed (``snapshot_tables`` and ``query``: when they return;
the explorer: when another snapshot is picked, or the kernel ends).  Without it an
encrypted snapshot is refused with one line.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SnapshotNotFound
from ..snapshot.encryption import IdentityArg
from ..storage.repository import list_snapshots
from . import frames
from .frames import MAX_ROWS, NULL_STYLE, Table
from .jobs import pick_snapshot, resolve_identity
from .runs import one_line


def _open(snapshot: Path | str, identity: IdentityArg | None):
    from ..lens.duck import open_snapshot

    return open_snapshot(snapshot, identity=resolve_identity(identity))


def snapshot_tables(snapshot: Path | str, identity: IdentityArg | None = None) -> Table:
    """The tables of a snapshot (DuckDB's ``backupkit.tables`` view); ``identity`` for an encrypted one."""
    con = _open(snapshot, identity)
    try:
        return Table(
            con.sql(
                "SELECT schema, name, rows, bytes, files, primary_key, view FROM backupkit.tables ORDER BY schema, name"
            ).df()
        )
    finally:
        con.close()


def run_query(con, sql: str, limit: int = MAX_ROWS) -> Table:
    """The first ``limit`` rows of ``sql`` on a DuckDB connection (empty table for statements)."""
    rel = con.sql(sql)
    if rel is None:
        return Table()
    return Table(rel.limit(limit).df())


def query(snapshot: Path | str, sql: str, limit: int = MAX_ROWS, identity: IdentityArg | None = None) -> Table:
    """Run DuckDB SQL over a snapshot's views (tables named as in PostgreSQL, e.g. public.orders);
    ``identity`` for an encrypted one."""
    con = _open(snapshot, identity)
    try:
        return run_query(con, sql, limit)
    finally:
        con.close()


def preview_sql(view: str, limit: int = 20) -> str:
    """SQL previewing the first rows of a DuckDB view."""
    return f"SELECT * FROM {view} LIMIT {int(limit)}"


def frame_html(df: pd.DataFrame, limit: int = MAX_ROWS) -> str:
    """HTML of a result table (``NULL`` for SQL NULL), noting when it was cut at ``limit`` rows."""
    note = f'<p style="{NULL_STYLE}">first {limit} rows</p>' if len(df) >= limit else ""
    return frames.frame_html(df, limit) + note


def error_html(exc: BaseException) -> str:
    """An error as a short red message (no traceback)."""
    return f'<pre style="color:#b00">{html.escape(one_line(exc))}</pre>'


def _snapshot_options(backup_dir: Path | str, snapshot: Path | str) -> tuple[list[tuple[str, str]], str]:
    """The snapshot dropdown's ``(label, location)`` options and the one to open first."""
    snaps = [s for s in list_snapshots(backup_dir)[0] if s.error is None]
    if not snaps:
        raise SnapshotNotFound(
            f"no complete snapshot in {backup_dir}", hint="take one with notebooks/backup.ipynb or `backupkit backup`"
        )
    chosen = str(pick_snapshot(backup_dir, str(snapshot))) if snapshot else str(snaps[0].location)
    options = [(f"{s.id}  ({s.tables} tables, {s.rows} rows)", str(s.location)) for s in snaps]
    if chosen not in [v for _, v in options]:
        options.insert(0, (Path(chosen).name, chosen))
    return options, chosen


class Explorer:
    """The explorer widget's state: its widgets and the DuckDB connection to the picked snapshot.

    One connection is open at a time: picking another snapshot closes the previous one (and
    removes an encrypted one's decrypted copy).  The widgets' handlers are this object's methods,
    so it lives as long as the widgets do.
    """

    def __init__(
        self,
        backup_dir: Path | str,
        snapshot: Path | str,
        *,
        table: str,
        sql: str,
        limit: int,
        identity: IdentityArg | None,
    ) -> None:
        import ipywidgets as w

        self.identity = resolve_identity(identity)
        options, chosen = _snapshot_options(backup_dir, snapshot)
        self.wanted_table = table
        self.limit = limit
        self.con: Any = None
        # True while the table list is replaced: one preview after the switch, not one per option change.
        self.loading = False
        self.snapshot = w.Dropdown(options=options, value=chosen, description="snapshot", layout=w.Layout(width="60%"))
        self.table = w.Dropdown(description="table", layout=w.Layout(width="35%"))
        self.preview = w.HTML()
        self.sql = w.Textarea(
            value=sql, placeholder="SELECT ... FROM public.orders", layout=w.Layout(width="100%", height="6em")
        )
        self.run = w.Button(description="Run query", button_style="primary", icon="play")
        self.result = w.HTML()

    def show_table(self, change=None) -> None:
        """Preview the first ``limit`` rows of the picked table (not while the table list is replaced)."""
        if self.loading:
            return
        if not self.table.value:
            self.preview.value = "<i>this snapshot has no tables</i>"
            return
        try:
            self.preview.value = frame_html(
                run_query(self.con, preview_sql(self.table.value, self.limit), self.limit), self.limit
            )
        except Exception as exc:
            self.preview.value = error_html(exc)

    def open_selected(self, change=None) -> None:
        """Open the picked snapshot (closing the previous one), list its tables and preview one."""
        if self.con is not None:
            self.con.close()
            self.con = None
        try:
            self.con = _open(self.snapshot.value, self.identity)
        except Exception as exc:
            self.loading = True
            try:
                self.table.options = []
            finally:
                self.loading = False
            self.preview.value = error_html(exc)
            return
        views = [
            r[0]
            for r in self.con.sql(
                "SELECT view FROM backupkit.tables WHERE view IS NOT NULL ORDER BY schema, name"
            ).fetchall()
        ]
        labels = [(v.replace('"', ""), v) for v in views]
        wanted = next((v for lbl, v in labels if lbl == self.wanted_table), None)
        self.loading = True
        try:
            self.table.options = labels
            self.table.value = wanted or (views[0] if views else None)
        finally:
            self.loading = False
        self.show_table()

    def run_sql(self, _button=None) -> None:
        """Run the SQL box's query on the open snapshot and show its first rows (or the error)."""
        if self.con is None:
            self.result.value = error_html(SnapshotNotFound("no snapshot is open: pick an intact one"))
            return
        try:
            self.result.value = frame_html(run_query(self.con, self.sql.value), MAX_ROWS)
        except Exception as exc:
            self.result.value = error_html(exc)

    def start(self):
        """Open the chosen snapshot, wire the handlers, run the SQL once, and return the widget box."""
        import ipywidgets as w

        self.open_selected()
        self.snapshot.observe(self.open_selected, "value")
        self.table.observe(self.show_table, "value")
        self.run.on_click(self.run_sql)
        self.run_sql()
        box = w.VBox([w.HBox([self.snapshot, self.table]), self.preview, self.sql, self.run, self.result])
        # Reachable for scripts and tests: box.snapshot.value = ..., box.run.click(), box.result.value
        box.snapshot, box.table, box.preview, box.sql, box.run, box.result = (
            self.snapshot,
            self.table,
            self.preview,
            self.sql,
            self.run,
            self.result,
        )
        return box


def explorer(
    backup_dir: Path | str = "backups",
    snapshot: Path | str = "",
    table: str = "",
    sql: str = "SELECT schema, name, rows, bytes FROM backupkit.tables ORDER BY rows DESC",
    limit: int = 20,
    identity: IdentityArg | None = None,
):
    """A widget: pick a snapshot and a table, preview its rows, run DuckDB SQL over the views
    (``identity``: to read encrypted snapshots with)."""
    return Explorer(backup_dir, snapshot, table=table, sql=sql, limit=limit, identity=identity).start()
