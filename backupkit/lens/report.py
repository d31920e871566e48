"""Rendering a snapshot diff (and integrity reports) as JSON, as one self-contained HTML page,
and the schema part of diff's text output.

The HTML page has no scripts, fonts or links to fetch: CSS is inline and the
charts are SVG drawn here from the numbers.  Every piece of text taken from a
snapshot (table and column names, values, SQL) goes through ``html.escape``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Set as AbstractSet
from html import escape
from pathlib import Path

from ..errors import StorageError
from .schema_diff import describe, owner_only, qualified

#: Bars drawn per chart; the rest are summarised in a line under it.
CHART_TABLES = 40
#: Schema objects diff's text output lists; --json and --html list more.
TEXT_SCHEMA_OBJECTS = 25
#: Schema objects the HTML report lists (a restore that kept no owner changes every object).
HTML_SCHEMA_OBJECTS = 2000

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;
     padding:0 1em;color:#1d2433}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d6dae3}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #d6dae3;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#137333}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7385}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #d6dae3;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.4em}
pre{background:#f7f8fa;border:1px solid #d6dae3;padding:.8em;overflow-x:auto;font-size:12px}
code{font-size:12px}svg text{font:11px system-ui,sans-serif;fill:#1d2433}
.s-old{fill:#9aa5b8}.s-new{fill:#3f6fd8}.s-ins{fill:#2e9d55}.s-del{fill:#d0453b}.s-upd{fill:#e0a21b}
.add{color:#137333}.del{color:#b3261e}
"""


def render_json(diff: dict) -> str:
    """The diff as indented JSON (values that JSON cannot hold are written as strings)."""
    return json.dumps(diff, indent=2, ensure_ascii=False, default=str)


def _e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _num(n) -> str:
    return "" if n is None else f"{n:,}"


def _delta(n: int) -> str:
    return f"+{n:,}" if n > 0 else f"{n:,}"


def _table(headers: list[str], rows: list[list[str]], numeric: AbstractSet[int] = frozenset()) -> str:
    """An HTML table; cells in ``rows`` must already be escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(title: str, labels: list[str], series: list[tuple[str, list[int], str]], *, stacked: bool = False) -> str:
    """A horizontal bar chart as inline SVG: one group per label, one bar per series.

    ``series`` holds (name, values, css class); stacked puts a group's bars end to end.
    """
    if not labels:
        return ""
    label_w, bar_w, bar_h, gap = 230, 420, 10, 8
    per_group = bar_h if stacked else bar_h * len(series)
    totals = (
        [sum(s[1][i] for s in series) for i in range(len(labels))]
        if stacked
        else [max(s[1][i] for s in series) for i in range(len(labels))]
    )
    top = max(totals + [1])
    legend_h = 22
    height = legend_h + len(labels) * (per_group + gap) + 4
    width = label_w + bar_w + 110
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
    ]
    x = label_w
    for name, _, css in series:
        parts.append(
            f'<rect x="{x}" y="4" width="10" height="10" class="{css}"/><text x="{x + 14}" y="13">{_e(name)}</text>'
        )
        x += 24 + 7 * len(name)
    for i, label in enumerate(labels):
        y = legend_h + i * (per_group + gap)
        short = label if len(label) <= 36 else label[:35] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + per_group / 2 + 4:.1f}" text-anchor="end">'
            f"<title>{_e(label)}</title>{_e(short)}</text>"
        )
        offset = 0.0
        for k, (name, values, css) in enumerate(series):
            w = bar_w * values[i] / top
            by = y if stacked else y + k * bar_h
            bx = label_w + (offset if stacked else 0)
            parts.append(
                f'<rect x="{bx:.1f}" y="{by}" width="{w:.1f}" height="{bar_h - 1}" class="{css}">'
                f"<title>{_e(label)} {_e(name)}: {values[i]:,}</title></rect>"
            )
            if stacked:
                offset += w
        parts.append(
            f'<text x="{label_w + bar_w * totals[i] / top + 4:.1f}" y="{y + per_group / 2 + 4:.1f}" '
            f'class="muted">{totals[i]:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _charts(tables: list[dict]) -> str:
    biggest = sorted(tables, key=lambda t: -max(t["rows_old"], t["rows_new"]))[:CHART_TABLES]
    out = [
        bar_chart(
            "Rows per table",
            [f"{t['schema']}.{t['name']}" for t in biggest],
            [("old", [t["rows_old"] for t in biggest], "s-old"), ("new", [t["rows_new"] for t in biggest], "s-new")],
        )
    ]
    if len(tables) > len(biggest):
        out.append(f'<p class="muted">{len(tables) - len(biggest)} smaller tables not drawn.</p>')
    changed = [t for t in tables if t["inserted"] or t["deleted"] or t["updated"]]
    changed.sort(key=lambda t: -(t["inserted"] + t["deleted"] + (t["updated"] or 0)))
    shown = changed[:CHART_TABLES]
    if shown:
        out.append("<h3>Changed rows per table</h3>")
        out.append(
            bar_chart(
                "Changed rows per table",
                [f"{t['schema']}.{t['name']}" for t in shown],
                [
                    ("inserted", [t["inserted"] for t in shown], "s-ins"),
                    ("deleted", [t["deleted"] for t in shown], "s-del"),
                    ("updated", [t["updated"] or 0 for t in shown], "s-upd"),
                ],
                stacked=True,
            )
        )
        if len(changed) > len(shown):
            out.append(f'<p class="muted">{len(changed) - len(shown)} more changed tables not drawn.</p>')
    return "".join(out)


def _schema_changes(tables: list[dict]) -> str:
    rows = []
    for t in tables:
        sc = t["schema_changes"]
        if not sc.get("changed"):
            continue
        items = []
        for key, label in (
            ("columns_added", "columns added"),
            ("columns_dropped", "columns dropped"),
            ("indexes_added", "indexes added"),
            ("indexes_removed", "indexes removed"),
        ):
            if sc[key]:
                items.append(f"{label}: " + ", ".join(f"<code>{_e(c)}</code>" for c in sc[key]))
        for r in sc["columns_retyped"]:
            items.append(f"column <code>{_e(r['column'])}</code>: {_e(r['old'])} → {_e(r['new'])}")
        if sc["primary_key"]:
            pk = sc["primary_key"]
            items.append(f"primary key: {_e(pk['old'])} → {_e(pk['new'])}")
        for key, label in (
            ("foreign_keys_added", "foreign key added"),
            ("foreign_keys_removed", "foreign key removed"),
        ):
            for fk in sc[key]:
                items.append(
                    f"{label}: <code>{_e(fk['name'])}</code> ({_e(', '.join(fk['columns']))}) → "
                    f"{_e(fk['ref_schema'])}.{_e(fk['ref_table'])}({_e(', '.join(fk['ref_columns']))})"
                )
        rows.append([f"<code>{_e(t['schema'])}.{_e(t['name'])}</code>", "<br>".join(items)])
    return _table(["table", "changes"], rows) if rows else '<p class="muted">No column, key or index changes.</p>'


def _samples(tables: list[dict]) -> str:
    rows = []
    for t in tables:
        for s in t.get("sample_updates") or []:
            key = ", ".join(f"{_e(k)}={_e(v)}" for k, v in s["key"].items())
            changes = "<br>".join(
                f"<code>{_e(c)}</code>: {_e(repr(o))} → {_e(repr(n))}" for c, (o, n) in s["changes"].items()
            )
            rows.append([f"<code>{_e(t['schema'])}.{_e(t['name'])}</code>", key, changes])
    return (
        _table(["table", "key", "changed columns (old → new)"], rows)
        if rows
        else '<p class="muted">No updated rows.</p>'
    )


def _counted(objects: list[dict]) -> str:
    """``3 objects changed (2 removed, 1 changed)``."""
    by = {c: sum(o["change"] == c for o in objects) for c in ("removed", "added", "changed")}
    return (
        f"{len(objects)} object{'s' if len(objects) != 1 else ''} changed ("
        + ", ".join(f"{n} {c}" for c, n in by.items() if n)
        + ")"
    )


def _owner_note(objects: list[dict]) -> str | None:
    """A line saying how many objects differ in their owner only: a restore that does not keep
    owners (the default) gives every object to the restoring role: a difference, not a lost object."""
    n = sum(owner_only(o) for o in objects)
    if not n:
        return None
    return (
        f"{n} of them differ only in owner (a restore that does not keep owners, the default, "
        f"makes the restoring role the owner of everything)"
    )


def schema_text(diff: dict, limit: int = TEXT_SCHEMA_OBJECTS) -> list[str]:
    """The "schema: ..." section of diff's text output: each object added, removed or
    changed, at most ``limit`` of them, or "schema: same"."""
    objects = diff.get("schema_objects") or []
    if not objects:
        return [
            "schema: same"
            + (" (the schema SQL differs only outside object definitions)" if diff.get("schema_sql_changed") else "")
        ]
    lines = [f"schema: {_counted(objects)}"]
    for o in objects[:limit]:
        lines.append(f"  {o['change']:<8} {describe(o)}" + (f": {o['detail']}" if o.get("detail") else ""))
    if len(objects) > limit:
        lines.append(f"  ... and {len(objects) - limit} more (--json lists them all)")
    note = _owner_note(objects)
    if note:
        lines.append(f"  {note}")
    return lines


def _schema_objects(diff: dict) -> str:
    objects = diff.get("schema_objects") or []
    if not objects:
        return '<p class="muted">No schema object added, removed or changed.</p>'
    css = {"removed": "del", "added": "add", "changed": ""}
    shown = objects[:HTML_SCHEMA_OBJECTS]
    rows = [
        [
            f'<span class="{css[o["change"]]}">{_e(o["change"])}</span>' if css[o["change"]] else _e(o["change"]),
            _e(o["type"]),
            f"<code>{_e(qualified(o))}</code>",
            _e(o.get("detail")),
        ]
        for o in shown
    ]
    out = [f"<p>{_e(_counted(objects))}</p>", _table(["change", "type", "object", "detail"], rows)]
    if len(objects) > len(shown):
        out.append(f'<p class="muted">... and {len(objects) - len(shown)} more (the JSON output lists them all).</p>')
    note = _owner_note(objects)
    if note:
        out.append(f'<p class="muted">{_e(note)}.</p>')
    return "".join(out)


def _integrity(title: str, report: dict | None) -> str:
    if report is None:
        return ""
    status = '<span class="ok">passed</span>' if report["ok"] else '<span class="bad">FAILED</span>'
    cs = report["checksums"]
    out = [
        f"<h3>{_e(title)}: {status}</h3>",
        f"<p>Checksums: {'ok' if cs['ok'] else 'problems'} ({_num(cs.get('files'))} files, "
        f"{_num(cs.get('bytes'))} bytes)</p>",
    ]
    if cs.get("problems"):
        out.append("<ul>" + "".join(f'<li class="bad">{_e(p)}</li>' for p in cs["problems"]) + "</ul>")
    rows = [
        [
            _e(c["check"]),
            f"<code>{_e(c['table'])}</code>",
            '<span class="ok">ok</span>' if c["ok"] else '<span class="bad">failed</span>',
            _e(c["detail"])
            + (
                '<br><span class="muted">e.g. ' + _e(json.dumps(c["samples"], default=str)) + "</span>"
                if c.get("samples")
                else ""
            ),
        ]
        for c in report["checks"]
    ]
    out.append(
        _table(["check", "table", "result", "detail"], rows) if rows else '<p class="muted">No data checks apply.</p>'
    )
    return "".join(out)


def _storage_files(diff: dict) -> str:
    """Bucket files added, removed and changed, per bucket (a count and the first keys)."""
    changes = diff.get("storage_files") or {}
    if not changes:
        return '<p class="muted">None changed (or no bucket files in these snapshots).</p>'
    rows = []
    for bucket, change in changes.items():
        for kind in ("added", "removed", "changed"):
            keys = change[kind]
            if keys:
                shown = ", ".join(f"<code>{_e(k)}</code>" for k in keys[:20])
                rows.append([_e(bucket), kind, _num(len(keys)), shown + (" …" if len(keys) > 20 else "")])
    return _table(["bucket", "change", "files", "keys"], rows, {2})


def render_html(diff: dict, integrity_old: dict | None = None, integrity_new: dict | None = None) -> str:
    """A self-contained HTML page for a diff, with integrity results when given."""
    tables = diff["tables"]
    old, new = diff["old"], diff["new"]
    totals = diff["totals"]
    cards = "".join(
        f'<div class="card"><b>{v}</b>{_e(k)}</div>'
        for k, v in (
            ("tables compared", _num(len(tables))),
            ("tables added", _num(len(diff["tables_added"]))),
            ("tables removed", _num(len(diff["tables_removed"]))),
            ("rows inserted", _num(totals["inserted"])),
            ("rows deleted", _num(totals["deleted"])),
            ("rows updated", _num(totals["updated"])),
            ("schema objects changed", _num(len(diff.get("schema_objects") or []))),
            ("schema SQL", "changed" if diff["schema_sql_changed"] else "same"),
        )
    )
    added, removed = (
        _table(
            [f"{what} table", "rows"],
            [[f"<code>{_e(t['schema'])}.{_e(t['name'])}</code>", _num(t["rows"])] for t in diff[key]],
            {1},
        )
        if diff[key]
        else ""
        for what, key in (("added", "tables_added"), ("removed", "tables_removed"))
    )
    counts = _table(
        ["table", "rows old", "rows new", "delta", "inserted", "deleted", "updated", "compared by"],
        [
            [
                f"<code>{_e(t['schema'])}.{_e(t['name'])}</code>",
                _num(t["rows_old"]),
                _num(t["rows_new"]),
                _delta(t["rows_new"] - t["rows_old"]),
                _num(t["inserted"]),
                _num(t["deleted"]),
                "n/a" if t["updated"] is None else _num(t["updated"]),
                _e(t["method"]) + (f'<br><span class="muted">{_e(t["note"])}</span>' if t.get("note") else ""),
            ]
            for t in tables
        ],
        {1, 2, 3, 4, 5, 6},
    )
    sql_diff = ""
    if diff["schema_sql_changed"]:
        lines = []
        for line in diff["schema_sql_diff"].splitlines():
            css = (
                "muted"
                if line.startswith(("+++", "---", "@@"))
                else "add"
                if line.startswith("+")
                else "del"
                if line.startswith("-")
                else ""
            )
            lines.append(f'<span class="{css}">{_e(line)}</span>' if css else _e(line))
        more = '<p class="muted">Diff truncated.</p>' if diff.get("schema_sql_diff_truncated") else ""
        sql_diff = f"<pre>{chr(10).join(lines)}</pre>{more}"
    else:
        sql_diff = '<p class="muted">pre-data and post-data SQL are identical.</p>'
    integrity = _integrity(f"Old snapshot {old['id']}", integrity_old) + _integrity(
        f"New snapshot {new['id']}", integrity_new
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>backupkit diff {_e(old["id"])} → {_e(new["id"])}</title>
<style>{_CSS}</style></head><body>
<h1>Snapshot diff</h1>
<p><b>old</b> <code>{_e(old["id"])}</code> <span class="muted">{_e(old.get("created_at"))}</span><br>
<b>new</b> <code>{_e(new["id"])}</code> <span class="muted">{_e(new.get("created_at"))}</span></p>
<div class="cards">{cards}</div>
<h2>Tables added and removed</h2>
{added}{removed}{"" if added or removed else '<p class="muted">None.</p>'}
<h2>Rows</h2>
{_charts(tables)}
{counts}
<h2>Schema objects</h2>
{_schema_objects(diff)}
<h2>Schema changes</h2>
{_schema_changes(tables)}
<h3>Schema SQL</h3>
{sql_diff}
<h2>Sample updates</h2>
{_samples(tables)}
<h2>Storage bucket files</h2>
{_storage_files(diff)}
{"<h2>Integrity</h2>" + integrity if integrity else ""}
</body></html>
"""


def save_html(path: str | os.PathLike[str], page: str) -> Path:
    """Write an HTML ``page`` (``render_html``) to the file the user named, making its folder.

    The file is readable by its owner only (``0600`` whatever the umask, as ``diff --html``
    writes it): a report shows row values, as private as the snapshot's own files.  An
    existing file is replaced.  Returns the path written; ``StorageError`` (exit 8) when it
    cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
            f.write(page)
    except OSError as exc:
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}", hint="name a file in a folder you may write"
        ) from None
    return path
