"""What the notebooks call: one function per cell, each returning something worth showing.

The notebooks in ``notebooks/`` (backup, restore, prune, report, explore) hold
no logic of their own: every cell makes one call into this package (or the
public API) and shows the result.  This package provides

* **strict parameters** — ``check_parameters()`` fails the run when papermill
  injected a parameter the notebook does not declare (papermill itself only
  logs a warning) or gave a declared one a value of the wrong type (the hint
  says how to pass it: ``-y 'tables: [public.orders]'`` for a list) or a value that
  describes no run (an empty or in-snapshot place, ``jobs`` 0, a policy or ``max_age``
  that cannot be read: ``value_problems``), before the job does anything, and first
  of all when a ``*_env`` parameter is not an environment variable's name (the
  DSN or URL itself, often) or ``identity`` is a key, not a path: one line
  that shows nothing of the value, and no output echoes it;
* **a run record** — ``start_run()`` writes ``RUNS_DIR/<run_id>.json`` and keeps
  it current (steps and their durations, the snapshot, the outcome); an IPython
  ``post_run_cell`` hook marks the run failed when any cell raises, so a
  scheduled run that dies still leaves ``status: failed`` and the reason;
* **errors as the command shows them** — imported in a kernel, the package has
  IPython show a ``BackupkitError`` as ``error: …`` / ``hint: …`` (no traceback;
  papermill still fails the run and exits non-zero);
* **operations** taking the *name* of the environment variable that holds a
  DSN (``dsn_env``), never a DSN, so no secret enters a notebook's parameters,
  variables or outputs; ``""`` means the CLI's lookup, then the embedded demo
  database (restores: a scratch database on the demo server); and reading
  encrypted snapshots with ``identity``, an age identity file's path (``""``:
  ``$BACKUPKIT_IDENTITY`` when set, as for the command line);
* **progress** — backups, restores and diffs ask the library for its progress
  bars (tqdm's widget in a notebook);
* **display helpers** turning results into pandas DataFrames (``Table``: SQL
  NULL shown as ``NULL``, long text wrapped) and matplotlib figures, and
  ``explorer()``, the snapshot/table/SQL widget.

Decisions (which cells hold the parameters, which are unknown, whether demo
snapshots are needed, what a table shows) are pure functions; the I/O wraps them.

Notebooks import the package (``from backupkit import notebook as nb``) and
use the names re-exported here; the code lives in one module per concern:
``params`` (parameter discovery and checking), ``runs`` (run records, the
IPython hooks, errors as ``error:``/``hint:``), ``jobs`` (operations, snapshot
picking, demo snapshots and server), ``frames`` (how a table shows),
``tables`` (DataFrame helpers), ``charts`` (matplotlib figures) and
``explore`` (DuckDB queries and the explorer widget).  Imports point one way,
towards ``runs`` and ``frames``: ``params``, ``jobs`` and ``tables`` use
``runs``; ``jobs``, ``tables`` and ``explore`` use ``frames``; ``charts`` uses
``tables``; ``tables`` and ``explore`` use ``jobs`` (``resolve_identity``),
``params`` too (``make_policy``, to check a policy), ``explore`` also ``runs``.
"""

from __future__ import annotations

from ..demo.run import stop_demo_server
from . import _extra  # noqa: F401  (before the modules that import pandas and matplotlib)
from .charts import change_chart, history_chart, history_frame, table_chart
from .explore import MAX_ROWS, error_html, explorer, frame_html, preview_sql, query, run_query, snapshot_tables
from .frames import NULL, Table, frame_text
from .jobs import (
    DEMO_LABEL,
    RESTORE_SCRATCH_DB,
    DemoSnapshots,
    Pair,
    backup,
    demo_snapshots_needed,
    demo_snapshots_reason,
    diff,
    drill,
    ensure_demo_snapshots,
    failed_checks,
    is_demo_source,
    make_policy,
    pick_pair,
    pick_snapshot,
    preflight,
    prune,
    prune_table,
    resolve_identity,
    restore,
    status_table,
    verify,
)
from .params import (
    INJECTED_MARKER,
    Parameters,
    check_parameters,
    how_to_pass,
    is_injected,
    locate_parameters,
    namespace_parameters,
    parameter_hint,
    parameter_problems,
    value_problems,
)
from .runs import (
    ErrorNote,
    RunRecord,
    error_lines,
    install_error_display,
    misplaced_secret,
    new_run_id,
    one_line,
    start_run,
)
from .tables import (
    backup_table,
    check_integrity,
    diff_overview,
    diff_table,
    drill_history_table,
    history_rows,
    history_table,
    integrity_rows,
    integrity_table,
    restore_steps,
    restore_table,
    sample_updates_table,
    save_html_report,
    schema_change_rows,
    schema_changes_table,
    storage_files_table,
    table_stats,
)

__all__ = [
    # constants
    "INJECTED_MARKER",
    "RESTORE_SCRATCH_DB",
    "DEMO_LABEL",
    "MAX_ROWS",
    "NULL",
    # params
    "is_injected",
    "locate_parameters",
    "parameter_problems",
    "value_problems",
    "parameter_hint",
    "how_to_pass",
    "namespace_parameters",
    "Parameters",
    "check_parameters",
    # runs
    "new_run_id",
    "one_line",
    "RunRecord",
    "start_run",
    "error_lines",
    "ErrorNote",
    "install_error_display",
    "misplaced_secret",
    # jobs
    "is_demo_source",
    "demo_snapshots_needed",
    "demo_snapshots_reason",
    "DemoSnapshots",
    "ensure_demo_snapshots",
    "pick_snapshot",
    "resolve_identity",
    "Pair",
    "pick_pair",
    "failed_checks",
    "preflight",
    "backup",
    "verify",
    "drill",
    "status_table",
    "make_policy",
    "prune",
    "prune_table",
    "restore",
    "diff",
    "stop_demo_server",
    # frames
    "Table",
    "frame_text",
    # tables
    "table_stats",
    "backup_table",
    "history_rows",
    "history_table",
    "drill_history_table",
    "restore_steps",
    "restore_table",
    "diff_overview",
    "diff_table",
    "schema_change_rows",
    "schema_changes_table",
    "storage_files_table",
    "sample_updates_table",
    "integrity_rows",
    "check_integrity",
    "integrity_table",
    "save_html_report",
    # charts
    "table_chart",
    "history_frame",
    "history_chart",
    "change_chart",
    # explore
    "snapshot_tables",
    "run_query",
    "query",
    "preview_sql",
    "frame_html",
    "error_html",
    "explorer",
]

install_error_display()  # in a kernel: a BackupkitError shows as error:/hint: lines, not a traceback
