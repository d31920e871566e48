"""How the notebooks show a table: ``Table``, a DataFrame that shows SQL NULL as ``NULL``.

pandas shows a missing value as ``NaN``, ``None``, ``<NA>`` or ``NaT`` depending
on the column's type, and cuts text longer than 50 characters.  Every table the
notebook helpers return is a ``Table``: the same data, shown with ``NULL``
for every missing value (muted, in HTML), no row index, and long text wrapped
rather than cut.  ``frame_html``/``frame_text`` are the rendering, usable on
any DataFrame (the explorer widget uses ``frame_html`` for its results).

The HTML sets no width wider than the output area: tables scroll sideways
inside it when they must, and long text wraps within ``WRAP_WIDTH``.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

#: How a missing value (SQL NULL, NaN, None, <NA>, NaT) is shown.
NULL = "NULL"
#: Rows shown at most; a note says how many there are.
MAX_ROWS = 200
#: Text longer than this wraps in its cell (left-aligned) instead of widening the table.
WRAP_AT = 40
#: Widest a wrapped cell gets (CSS), well under a 1280 px window.
WRAP_WIDTH = "40em"

NULL_STYLE = "color:#888;font-style:italic"
WRAP_STYLE = f"text-align:left;white-space:pre-wrap;overflow-wrap:anywhere;min-width:12em;max-width:{WRAP_WIDTH}"


class Table(pd.DataFrame):
    """A DataFrame shown the notebooks' way: ``NULL`` for every missing value, long text wrapped."""

    @property
    def _constructor(self):  # slices, filters and copies stay Tables
        return Table

    def _repr_html_(self) -> str:
        return frame_html(self)

    def __repr__(self) -> str:
        return frame_text(self)


def table(df: pd.DataFrame) -> Table:
    """``df`` as a ``Table`` (no copy of the data)."""
    return df if isinstance(df, Table) else Table(df)


def is_null(value: Any) -> bool:
    """True for every kind of missing value pandas, NumPy or DuckDB hand back (not for lists)."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def cell_text(value: Any) -> str:
    """A value as a table shows it: ``NULL`` when missing, floats to 6 decimals, else ``str``."""
    if is_null(value):
        return NULL
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return repr(round(value, 6)) if math.isfinite(value) else str(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return str(value)


def _rows(df: pd.DataFrame, limit: int) -> tuple[list[str], list[list[Any]]]:
    columns = [str(c) for c in df.columns]
    return columns, [list(row) for row in df.head(limit).itertuples(index=False, name=None)]


def _note(shown: int, total: int) -> str:
    return f"first {shown} of {total} rows" if total > shown else ""


def frame_html(df: pd.DataFrame, limit: int = MAX_ROWS) -> str:
    """HTML of a table: no index, ``NULL`` muted, long text wrapped, a note when cut at ``limit`` rows."""
    columns, rows = _rows(df, limit)
    out = ['<div class="bk-table" style="max-width:100%;overflow-x:auto">', '<table class="dataframe bk-frame">']
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = []
        for value in row:
            text = cell_text(value)
            if is_null(value):
                cells.append(f'<td class="bk-null" style="{NULL_STYLE}">{NULL}</td>')
            elif len(text) > WRAP_AT:
                cells.append(f'<td class="bk-wrap" style="{WRAP_STYLE}">{html.escape(text)}</td>')
            else:
                cells.append(f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    note = _note(len(rows), len(df))
    if note:
        out.append(f'<p style="{NULL_STYLE}">{note}</p>')
    out.append("</div>")
    return "\n".join(out)


def frame_text(df: pd.DataFrame, limit: int = MAX_ROWS) -> str:
    """Plain text of a table (the same cells as ``frame_html``), nothing cut but the rows past ``limit``."""
    columns, rows = _rows(df, limit)
    if not columns:
        return "(no columns)"
    text = [[cell_text(v) for v in row] for row in rows]
    shown = pd.DataFrame(text, columns=pd.Index(columns, dtype=object), dtype=object)
    with pd.option_context("display.max_colwidth", None, "display.max_rows", None, "display.width", None):
        body = shown.to_string(index=False) if rows else "  ".join(columns) + "\n(no rows)"
    note = _note(len(rows), len(df))
    return body + (f"\n({note})" if note else "")
