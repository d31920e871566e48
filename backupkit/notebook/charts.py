"""Display helpers: matplotlib figures of a backup, the snapshot history and a diff.

Each chart function returns a closed figure, so it shows once, as the cell's
result (ipykernel's inline backend displays returned figures), and not again by
pyplot.  The data comes from the DataFrame helpers in ``tables`` and from
``history_frame``, the per-table history of every complete snapshot.
"""

from __future__ import annotations

from pathlib import Path

# In a kernel, importing pyplot (with the inline backend ipykernel selects) registers the
# display of figures, so a chart function's returned figure shows as the cell's result.
import matplotlib.pyplot as plt
import pandas as pd

from ..capture.result import BackupResult
from ..snapshot import manifest as mf
from ..storage.repository import list_snapshots
from .tables import _manifest_of, diff_table, table_stats


def _figure(ncols: int, height: float):
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, height), squeeze=False, layout="constrained")
    plt.close(fig)  # shown once, as the cell's result, not again by pyplot
    return fig, axes[0]


def table_chart(source: BackupResult | Path | str):
    """Bar charts of rows and compressed size per table of a backup or snapshot."""
    df = table_stats(_manifest_of(source)).sort_values("rows")
    fig, (left, right) = _figure(2, 0.35 * len(df) + 1.5)
    left.barh(df["table"], df["rows"], color="tab:blue")
    left.set_title("rows per table")
    right.barh(df["table"], df["MB"], color="tab:orange")
    right.set_title("compressed MB per table")
    right.tick_params(labelleft=False)
    return fig


def history_frame(backup_dir: Path | str) -> pd.DataFrame:
    """Rows and MB per table per complete snapshot, oldest first (for charts)."""
    rows = []
    for s in reversed(list_snapshots(backup_dir)[0]):
        if s.error:
            continue
        for t in table_stats(mf.read(s.location)).to_dict("records"):
            rows.append({"snapshot": s.id, "created_at": s.created_at, **t})
    return pd.DataFrame(rows, columns=["snapshot", "created_at", "table", "rows", "MB", "files"])


def history_chart(backup_dir: Path | str = "backups"):
    """Row counts per table and total size over every snapshot in ``backup_dir``."""
    df = history_frame(backup_dir)
    fig, (left, right) = _figure(2, 4)
    if df.empty:
        left.set_title("no snapshots yet")
        return fig
    order = list(dict.fromkeys(df["snapshot"]))
    x = range(len(order))
    labels = [s[:15] for s in order]
    for table, g in df.groupby("table"):
        left.plot([order.index(s) for s in g["snapshot"]], g["rows"], marker="o", label=table)
    left.set_title("rows per table")
    left.set_yscale("log")
    left.legend(fontsize="small")
    total = df.groupby("snapshot", sort=False)["MB"].sum().reindex(order)
    right.bar(list(x), total.values, color="tab:orange")
    right.set_title("snapshot size (compressed MB)")
    for ax in (left, right):
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize="small")
    return fig


def change_chart(diff: dict):
    """Inserted, deleted and updated rows per table between two snapshots."""
    df = diff_table(diff).set_index("table")[["inserted", "deleted", "updated"]].astype(float).fillna(0)
    fig, (ax,) = _figure(1, 0.4 * max(len(df), 1) + 1.5)
    if df.empty:
        ax.set_title("no tables in common")
        return fig
    df.plot.barh(ax=ax, color={"inserted": "tab:green", "deleted": "tab:red", "updated": "tab:blue"})
    ax.set_title(f"changes from {diff['old']['id']} to {diff['new']['id']}")
    ax.set_xlabel("rows")
    return fig
