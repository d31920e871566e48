"""A newcomer's first ten minutes: ``backupkit demo``, then the report and explore notebooks.

README: run the demo from the repository root (it writes ``./backups``), then
open ``notebooks/report.ipynb`` and ``notebooks/explore.ipynb`` in JupyterLab,
which runs them with the notebooks folder as working directory.  Both must show
the demo's two snapshots, with their default parameters, and take none of
their own.  Here the repository is ``tmp_path``: the demo writes
``tmp_path/backups``, the notebooks are copied to ``tmp_path/notebooks`` and
run there by papermill with nothing but their defaults.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import papermill

from backupkit import notebook as nb
from backupkit.demo.run import run_demo
from backupkit.lens.diff import diff_snapshots
from backupkit.storage.repository import list_snapshots

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def run_as_jupyterlab_does(notebooks: Path, name: str) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>.ipynb`` with its defaults, in its own folder; the executed notebook."""
    out = notebooks / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(notebooks / f"{name}.ipynb"), str(out), kernel_name="python3", cwd=str(notebooks), progress_bar=False
    )
    return nbformat.read(out, as_version=4)


def text_of(book: nbformat.NotebookNode, source: str) -> str:
    """The text/plain of what the code cell whose source is ``source`` showed."""
    (cell,) = [c for c in book.cells if c.cell_type == "code" and c.source.strip() == source]
    # A progress widget's display carries a text/plain copy of the bar: not what the cell showed.
    shown = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    return "\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in shown)


def test_report_and_explore_read_the_snapshots_the_demo_just_wrote(home, tmp_path):
    demo = run_demo(tmp_path / "backups", scale=0.05)
    before, after = (p.name for p in demo.snapshots)
    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, notebooks)

    report = run_as_jupyterlab_does(notebooks, "report")
    explore = run_as_jupyterlab_does(notebooks, "explore")

    # No snapshot of their own: the folder holds the demo's two, and notebooks/backups was never made.
    assert [s.id for s in list_snapshots(tmp_path / "backups")[0]] == [after, before]
    assert not (notebooks / "backups").exists()
    assert not any(s.id.endswith(f"-{nb.DEMO_LABEL}") for s in list_snapshots(tmp_path / "backups")[0])

    # Each says which folder it reads (and where that is), and that it took nothing.
    for book, n in ((report, 2), (explore, 1)):
        said = text_of(book, f"nb.ensure_demo_snapshots(backup_dir, n={n})")
        assert said.startswith(f"../backups ({(tmp_path / 'backups').resolve()}): 2 snapshots, enough"), said
        assert "Took" not in said

    # The report compares the demo's "before" with its "after", and counts what the demo changed.
    pair = text_of(report, "pair = nb.pick_pair(backup_dir, old, new)\npair")
    assert pair.index(before) < pair.index(after)
    totals = diff_snapshots(demo.snapshots[0], demo.snapshots[1])["totals"]
    assert text_of(
        report, 'diff = nb.diff(pair.old, pair.new, sample=sample, identity=identity)\ndiff["totals"]'
    ) == repr(totals)
    assert totals["inserted"] and totals["updated"] and totals["deleted"]
    history = text_of(report, "nb.history_table(backup_dir)")
    assert before in history and after in history

    # The explorer opens the demo's newest snapshot.
    assert after in text_of(explore, "snap = nb.pick_snapshot(backup_dir, snapshot)\nsnap")
    tables = text_of(explore, "nb.snapshot_tables(snap, identity=identity)")
    assert "public" in tables and "orders" in tables and "auth" in tables  # the demo backs up auth too
