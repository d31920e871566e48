"""Display helpers: results, manifests and diffs as pandas DataFrames (one row per thing shown).

Each function turns what the public API returns (a manifest, the snapshot
history, a restore result, a diff, integrity reports) into a DataFrame with
fixed columns, so an empty result still shows its header: a ``frames.Table``,
which shows every missing value (SQL NULL) as ``NULL`` and wraps long text
(an integrity check's detail) instead of cutting it.  The row-building
parts are pure functions; ``check_integrity`` and ``save_html_report`` wrap
``backupkit.lens.integrity`` and the HTML report for the report notebook.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..capture.result import BackupResult
from ..recovery.job import RestoreResult
from ..snapshot import manifest as mf
from ..snapshot.encryption import IdentityArg
from ..storage.location import locate
from ..storage.repository import list_snapshots
from .frames import Table
from .runs import _iso


def _mb(n: int | float) -> float:
    return round(n / 1e6, 3)


def table_stats(manifest: dict) -> Table:
    """One row per table of a manifest: rows, compressed MB, files."""
    rows = [
        {
            "table": mf.table_key(t),
            "rows": t["rows"],
            "MB": _mb(sum(f["bytes"] for f in t["files"])),
            "files": len(t["files"]),
        }
        for t in manifest["tables"]
    ]
    return Table(rows, columns=["table", "rows", "MB", "files"])


def _manifest_of(source: BackupResult | Path | str) -> dict:
    return source.manifest if isinstance(source, BackupResult) else mf.read(source)


def backup_table(source: BackupResult | Path | str) -> Table:
    """A backup (or any snapshot) per table: rows, compressed MB and files, with a total line."""
    df = table_stats(_manifest_of(source))
    total = pd.DataFrame(
        [
            {
                "table": "(total)",
                "rows": int(df["rows"].sum()),
                "MB": round(df["MB"].sum(), 3),
                "files": int(df["files"].sum()),
            }
        ]
    )
    return Table(pd.concat([df, total], ignore_index=True))


def history_rows(snapshots: list, unfinished: list) -> list[dict]:
    """Rows of the snapshot history (newest first), unfinished folders last."""
    rows = [
        {
            "snapshot": s.id,
            "created_at": _iso(s.created_at),
            "label": s.label or "",
            "tables": s.tables,
            "rows": s.rows,
            "MB": _mb(s.bytes),
            "pinned": s.pinned,
            "partial": s.partial,
            "status": "unreadable: " + s.error if s.error else "complete",
        }
        for s in snapshots
    ]
    rows += [
        {"snapshot": u.name, "status": f"unfinished ({u.kind}, {u.age_seconds / 3600:.1f} h old)"} for u in unfinished
    ]
    return rows


def history_table(backup_dir: Path | str = "backups") -> Table:
    """Every snapshot in ``backup_dir``, newest first (``backupkit list`` as a table)."""
    columns = ["snapshot", "created_at", "label", "tables", "rows", "MB", "pinned", "partial", "status"]
    return Table(history_rows(*list_snapshots(backup_dir)), columns=columns)


def drill_history_table(backup_dir: Path | str = "backups") -> Table:
    """Backups and drills over time, newest first: each snapshot, the hours since the one
    before it (the backup's rhythm; a gap is a missed backup), and its drills' outcome."""
    from ..drills import record
    from ..storage.location import open_storage

    snaps = [s for s in list_snapshots(backup_dir)[0] if s.created_at is not None]
    drills: dict[str, list] = {}
    for r in record.history(open_storage(backup_dir)):
        drills.setdefault(r.snapshot, []).append(r)
    rows = []
    times = [s.created_at for s in snaps if s.created_at is not None]
    for s, at, before in zip(snaps, times, [*times[1:], None], strict=True):
        done = drills.get(s.id, [])
        last = done[-1] if done else None
        rows.append(
            {
                "snapshot": s.id,
                "created_at": _iso(at),
                "hours since previous": None if before is None else round((at - before).total_seconds() / 3600, 1),
                "drills": len(done),
                "last drill": None if last is None else ("passed" if last.ok else "FAILED"),
                "drill seconds": None if last is None else last.seconds,
            }
        )
    columns = ["snapshot", "created_at", "hours since previous", "drills", "last drill", "drill seconds"]
    return Table(rows, columns=columns)


def restore_steps(result: RestoreResult) -> Table:
    """The restore's steps, planned (dry run) or done."""
    state = "planned" if result.dry_run else "done"
    rows = [{"step": s, "state": state} for s in result.plan.describe()]
    rows += [{"step": w, "state": "warning"} for w in result.warnings]
    rows += [{"step": n, "state": "note"} for n in result.plan.notes]
    return Table(rows, columns=["step", "state"])


def restore_table(result: RestoreResult) -> Table:
    """The restore's tables: rows, whether the target already had them, and what happens to them."""
    plan = result.plan
    existing = set(plan.existing) | set(plan.in_place) | set(plan.platform_tables)
    rows = []
    for t in plan.tables:
        key = mf.table_key(t)
        if key in plan.in_place:
            action = "replace rows in place"
        elif key in plan.platform_tables:
            action = "load into the project's own table"
        elif key in existing:
            action = (
                ("empty, then load" if not plan.schema else "drop, create, load")
                if plan.drop_first
                else "exists (refused)"
            )
        else:
            action = "create" + (", load" if plan.data else "") if plan.schema else "load"
        rows.append({"table": key, "rows": t["rows"], "in target before": key in existing, "action": action})
    return Table(rows, columns=["table", "rows", "in target before", "action"])


def diff_overview(diff: dict) -> Table:
    """Tables added and removed between two snapshots (empty when the set of tables is the same)."""
    rows = [{"table": f"{t['schema']}.{t['name']}", "change": "added", "rows": t["rows"]} for t in diff["tables_added"]]
    rows += [
        {"table": f"{t['schema']}.{t['name']}", "change": "removed", "rows": t["rows"]} for t in diff["tables_removed"]
    ]
    return Table(rows, columns=["table", "change", "rows"])


def diff_table(diff: dict) -> Table:
    """Per table in both snapshots: row counts, delta, inserted / deleted / updated rows."""
    rows = [
        {
            "table": f"{t['schema']}.{t['name']}",
            "rows_old": t["rows_old"],
            "rows_new": t["rows_new"],
            "delta": t["rows_new"] - t["rows_old"],
            "inserted": t["inserted"],
            "deleted": t["deleted"],
            "updated": t["updated"],
            "compared by": t.get("method"),
        }
        for t in diff["tables"]
    ]
    columns = ["table", "rows_old", "rows_new", "delta", "inserted", "deleted", "updated", "compared by"]
    return Table(rows, columns=columns).astype({"updated": "Int64"})


def schema_change_rows(diff: dict) -> list[dict]:
    """One row per schema change the manifests show (columns, types, keys, indexes)."""
    rows = []
    for t in diff["tables"]:
        c = t.get("schema_changes") or {}
        if not c.get("changed"):
            continue
        name = f"{t['schema']}.{t['name']}"
        rows += [{"table": name, "change": "column added", "detail": x} for x in c.get("columns_added", [])]
        rows += [{"table": name, "change": "column dropped", "detail": x} for x in c.get("columns_dropped", [])]
        rows += [
            {"table": name, "change": "column type", "detail": f"{x['column']}: {x['old']} → {x['new']}"}
            for x in c.get("columns_retyped", [])
        ]
        if c.get("primary_key"):
            rows.append(
                {
                    "table": name,
                    "change": "primary key",
                    "detail": f"{c['primary_key']['old']} → {c['primary_key']['new']}",
                }
            )
        rows += [
            {"table": name, "change": "foreign key added", "detail": f.get("name")}
            for f in c.get("foreign_keys_added", [])
        ]
        rows += [
            {"table": name, "change": "foreign key removed", "detail": f.get("name")}
            for f in c.get("foreign_keys_removed", [])
        ]
        rows += [{"table": name, "change": "index added", "detail": x} for x in c.get("indexes_added", [])]
        rows += [{"table": name, "change": "index removed", "detail": x} for x in c.get("indexes_removed", [])]
    if diff.get("schema_sql_changed"):
        files = [p for p, changed in diff.get("schema_sql_files", {}).items() if changed]
        rows.append({"table": "(schema SQL)", "change": "differs", "detail": ", ".join(files)})
    return rows


def schema_changes_table(diff: dict) -> Table:
    """Schema changes between two snapshots (empty when there are none)."""
    return Table(schema_change_rows(diff), columns=["table", "change", "detail"])


def storage_files_table(diff: dict) -> Table:
    """Storage bucket files added, removed and changed between two snapshots, and the rows
    and files that did not match when the newer one was taken (empty when there are none)."""
    rows = [
        {"bucket": bucket, "what": kind, "key": key}
        for bucket, change in (diff.get("storage_files") or {}).items()
        for kind, keys in change.items()
        for key in keys
    ]
    rows += [
        {"bucket": m["bucket"], "what": f"mismatch: {m['kind'].replace('_', ' ')}", "key": m["key"]}
        for m in diff["new"].get("storage_mismatches") or []
    ]
    return Table(rows, columns=["bucket", "what", "key"])


def sample_updates_table(diff: dict) -> Table:
    """A few updated rows per table: key, column, old and new value (PostgreSQL's text)."""
    rows = []
    for t in diff["tables"]:
        for s in t.get("sample_updates") or []:
            key = ", ".join(f"{k}={v}" for k, v in s["key"].items())
            rows += [
                {"table": f"{t['schema']}.{t['name']}", "key": key, "column": col, "old": old, "new": new}
                for col, (old, new) in s["changes"].items()
            ]
    return Table(rows, columns=["table", "key", "column", "old", "new"])


def integrity_rows(name: str, report: dict) -> list[dict]:
    """Rows for one snapshot's integrity report: the checksum check, then every data check."""
    sums = report["checksums"]
    rows = [
        {
            "snapshot": name,
            "check": "checksums",
            "table": "",
            "ok": sums["ok"],
            "detail": "; ".join(sums["problems"][:5]) or f"{sums['files']} files intact",
        }
    ]
    rows += [
        {"snapshot": name, "check": c["check"], "table": c["table"], "ok": c["ok"], "detail": c["detail"]}
        for c in report["checks"]
    ]
    return rows


def check_integrity(*snapshots: mf.SnapshotArg, identity: IdentityArg | None = "") -> dict[str, dict]:
    """``backupkit.lens.integrity`` of each snapshot (checksums; primary keys, foreign keys and
    sequences checked in DuckDB), keyed by snapshot id; encrypted ones need ``identity``
    (``jobs.resolve_identity``: ``""``, ``$BACKUPKIT_IDENTITY`` when set)."""
    from ..lens.integrity import integrity
    from .jobs import resolve_identity

    key = resolve_identity(identity)
    return {locate(s).name: integrity(s, identity=key) for s in snapshots}


def integrity_table(reports: Mapping[str, dict]) -> Table:
    """The checks of ``check_integrity``'s reports, one row each; ``ok`` False marks a problem."""
    rows = []
    for name, report in reports.items():
        rows += integrity_rows(name, report)
    return Table(rows, columns=["snapshot", "check", "table", "ok", "detail"])


def save_html_report(diff: dict, reports: Mapping[str, dict] | None = None, path: Path | str = "") -> Path | None:
    """Write the diff (and integrity reports) as one self-contained HTML page; "" writes nothing.

    The file is the user's own (``lens.report.save_html``: its folder made, readable by its owner only).
    """
    if not path:
        return None
    from ..lens.report import render_html, save_html

    reports = reports or {}
    return save_html(path, render_html(diff, reports.get(diff["old"]["id"]), reports.get(diff["new"]["id"])))
