"""The snapshot explorer: query a snapshot with DuckDB, and ``explorer()``, the ipywidgets UI over it.

``snapshot_tables``, ``query`` and ``run_query`` run DuckDB SQL over a
snapshot's views (tables named as in PostgreSQL, e.g. ``public.orders``) and
return at most ``MAX_ROWS`` rows as a ``frames.Table`` (SQL NULL shown as ``NULL``).  ``explorer()`` builds a
widget to pick a snapshot and a table, preview its rows and run SQL; errors
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
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SnapshotNotFound
from ..snapshot.encryption import IdentityArg, identity_path
from ..storage.repository import list_snapshots
from . import frames
from .frames import MAX_ROWS, NULL_STYLE, Table
from .jobs import pick_snapshot
from .runs import one_line


def _resolved_identity(identity: IdentityArg | None) -> IdentityArg | None:
    """The identity to read snapshots with: a file path as given (``""`` or None:
    ``$BACKUPKIT_IDENTITY`` if set, else None), other identities (pyrage's) unchanged."""
    if identity is None or isinstance(identity, (str, os.PathLike)):
        return identity_path(identity)
    return identity


def _open(snapshot: Path | str, identity: IdentityArg | None):
    from ..lens.duck import open_snapshot

    return open_snapshot(snapshot, identity=_resolved_identity(identity))


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
    import ipywidgets as w

    identity = _resolved_identity(identity)
    snaps = [s for s in list_snapshots(backup_dir)[0] if s.error is None]
    if not snaps:
        raise SnapshotNotFound(
            f"no complete snapshot in {backup_dir}", hint="take one with notebooks/backup.ipynb or `backupkit backup`"
        )
    chosen = str(pick_snapshot(backup_dir, str(snapshot))) if snapshot else str(snaps[0].location)
    options = [(f"{s.id}  ({s.tables} tables, {s.rows} rows)", str(s.location)) for s in snaps]
    if chosen not in [v for _, v in options]:
        options.insert(0, (Path(chosen).name, chosen))

    snap_dd = w.Dropdown(options=options, value=chosen, description="snapshot", layout=w.Layout(width="60%"))
    table_dd = w.Dropdown(description="table", layout=w.Layout(width="35%"))
    preview = w.HTML()
    sql_box = w.Textarea(
        value=sql, placeholder="SELECT ... FROM public.orders", layout=w.Layout(width="100%", height="6em")
    )
    button = w.Button(description="Run query", button_style="primary", icon="play")
    result = w.HTML()
    state: dict[str, Any] = {"con": None, "loading": False}

    def show_table(change=None):
        if state["loading"]:
            return
        if not table_dd.value:
            preview.value = "<i>this snapshot has no tables</i>"
            return
        try:
            preview.value = frame_html(run_query(state["con"], preview_sql(table_dd.value, limit), limit), limit)
        except Exception as exc:
            preview.value = error_html(exc)

    def open_selected(change=None):
        if state["con"] is not None:
            state["con"].close()
            state["con"] = None
        try:
            state["con"] = _open(snap_dd.value, identity)
        except Exception as exc:
            state["loading"] = True
            try:
                table_dd.options = []
            finally:
                state["loading"] = False
            preview.value = error_html(exc)
            return
        views = [
            r[0]
            for r in state["con"]
            .sql("SELECT view FROM backupkit.tables WHERE view IS NOT NULL ORDER BY schema, name")
            .fetchall()
        ]
        labels = [(v.replace('"', ""), v) for v in views]
        wanted = next((v for lbl, v in labels if lbl == table), None)
        state["loading"] = True  # one preview after the switch, not one per option change
        try:
            table_dd.options = labels
            table_dd.value = wanted or (views[0] if views else None)
        finally:
            state["loading"] = False
        show_table()

    def run_sql(_button=None):
        if state["con"] is None:
            result.value = error_html(SnapshotNotFound("no snapshot is open: pick an intact one"))
            return
        try:
            result.value = frame_html(run_query(state["con"], sql_box.value), MAX_ROWS)
        except Exception as exc:
            result.value = error_html(exc)

    open_selected()
    snap_dd.observe(open_selected, "value")
    table_dd.observe(show_table, "value")
    button.on_click(run_sql)
    run_sql()
    box = w.VBox([w.HBox([snap_dd, table_dd]), preview, sql_box, button, result])
    # Reachable for scripts and tests: box.snapshot.value = ..., box.run.click(), box.result.value
    box.snapshot, box.table, box.preview, box.sql, box.run, box.result = (
        snap_dd,
        table_dd,
        preview,
        sql_box,
        button,
        result,
    )
    return box
