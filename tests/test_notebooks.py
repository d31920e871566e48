"""The notebooks, run as a scheduler runs them (papermill) and as a fresh checkout runs them (nbval).

Papermill runs use non-default parameters against a ``make_db`` database loaded
with the demo data; the DSN reaches the kernel only through an environment
variable whose *name* is the ``dsn_env`` parameter.  Every test checks what is
on disk afterwards: snapshots, run records, restored tables, and that no
password appears in an executed notebook or a run record.  Also what a user
sees: progress widgets, a failure as one ``error:``/``hint:`` pair instead of a
traceback, ``NULL`` for every missing value.  (The defaults, run from a copy of
the repository after ``backupkit demo``: test_first_ten_minutes.py.)
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import psycopg
import pytest
from helpers import load_small, snapshot_dirs
from monitor import Monitor
from papermill.exceptions import PapermillExecutionError
from papermill.inspection import _infer_parameters
from papermill.iorw import load_notebook_node
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit import notebook as nb
from backupkit.capture.job import backup
from backupkit.demo.data import create_demo, mutate_demo
from backupkit.errors import ConfigError
from backupkit.notebook.params import _literal_assignments
from backupkit.notebook.runs import _post_run_cell
from backupkit.pg.dsn import DSN_ENV_VARS
from backupkit.snapshot.verify import verify
from backupkit.storage.location import SnapshotLocation
from backupkit.storage.repository import list_snapshots

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
NAMES = ["backup", "drill", "explore", "prune", "report", "restore"]
SOURCE_VAR = "BK_NB_SOURCE"
TARGET_VAR = "BK_NB_TARGET"
DRILL_CELL = "nb.drill(backup_dir, snapshot, dsn_env=dsn_env, identity=identity, run=run)"
RESTORE_CELL = (
    "outcome = nb.restore(snap, target_dsn_env, tables=tables, with_dependencies=with_dependencies,\n"
    "                     clean=clean, create_roles=create_roles, jobs=jobs, dry_run=dry_run,\n"
    "                     identity=identity, cron_jobs=cron_jobs, run=run)"
)


# -- helpers ------------------------------------------------------------------------------------


def execute(name: str, cwd: Path, **parameters) -> Path:
    """Run notebooks/<name>.ipynb with papermill in ``cwd``; returns the executed notebook's path."""
    out = cwd / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(cwd),
        progress_bar=False,
    )
    return out


def outputs_of(notebook: Path, source: str) -> list[dict]:
    """Outputs of the code cell whose source is exactly ``source``."""
    book = nbformat.read(notebook, as_version=4)
    cells = [c for c in book.cells if c.cell_type == "code" and c.source.strip() == source]
    assert len(cells) == 1, f"no single cell {source!r} in {notebook.name}"
    return cells[0].outputs


def html_table(notebook: Path, source: str) -> list[dict[str, str]]:
    """The DataFrame a cell displayed, parsed back from its text/html output."""
    (out,) = [o for o in outputs_of(notebook, source) if "text/html" in o.get("data", {})]
    page = out["data"]["text/html"]
    head, body = page.split("</thead>", 1)
    columns = [html.unescape(c) for c in re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", head, re.S)]
    rows = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        cells = [html.unescape(c) for c in re.findall(r"<t[hd](?:\s[^>]*)?>(.*?)</t[hd]>", tr, re.S)]
        rows.append(dict(zip(columns, cells, strict=False)))  # up to the shorter of header and row
    return rows


WIDGET = "application/vnd.jupyter.widget-view+json"


def widgets(outputs: list[dict]) -> list[dict]:
    """The ipywidgets among a cell's outputs."""
    return [o for o in outputs if WIDGET in o.get("data", {})]


def free_port() -> int:
    """A local TCP port nothing listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def assert_no_secret(paths: list[Path], *dsns: str) -> None:
    """No DSN, and no password of one, anywhere in these files."""
    for path in paths:
        text = path.read_text()
        for dsn in dsns:
            assert dsn not in text, f"{path.name} contains a DSN"
            password = conninfo_to_dict(dsn).get("password")
            if password:
                assert password not in text, f"{path.name} contains a password"


def row_counts(dsn: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*t.split(".", 1)))).fetchone()[0]
            for t in tables
        }


PUBLIC = [
    "public.audit_log",
    "public.events",
    "public.order_items",
    "public.orders",
    "public.products",
    "public.profiles",
]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def source(make_db, home, monkeypatch):
    """A demo database (scale 0.02) whose DSN only the kernel's $BK_NB_SOURCE holds."""
    dsn = make_db("nbsrc")
    create_demo(dsn, scale=0.02)
    monkeypatch.setenv(SOURCE_VAR, dsn)
    return dsn


# -- the notebooks as files ----------------------------------------------------------------------

FORBIDDEN = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.For,
    ast.While,
    ast.If,
    ast.IfExp,
    ast.With,
    ast.Try,
    ast.ListComp,
    ast.DictComp,
    ast.SetComp,
    ast.GeneratorExp,
)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_files_are_clean_and_declare_their_parameters(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    assert book.nbformat == 4 and book.metadata.kernelspec.name == "python3"
    first = book.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    declared = _literal_assignments(first.source)
    assert declared is not None
    # papermill's own reading of the parameters cell agrees (else it would warn about real parameters),
    # and `papermill --help-notebook` shows a type and a description for each.
    inferred = _infer_parameters(load_notebook_node(str(path)))
    assert [p.name for p in inferred] == list(declared)
    assert [p.name for p in inferred if p.inferred_type_name == "None" or not p.help] == []
    # The snapshots `backupkit demo` writes (the repository's backups/, seen from notebooks/).
    assert declared["backup_dir"] == "../backups"
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be cleared"
        tree = ast.parse(cell.source)
        logic = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, FORBIDDEN)]
        assert logic == [], f"{name}: a cell holds logic ({logic}): {cell.source!r}"
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert len(calls) <= 1, f"{name}: a cell makes more than one call: {cell.source!r}"


# -- papermill runs -------------------------------------------------------------------------------


def test_backup_notebook_backs_up_verifies_prunes_and_records_the_run(source, tmp_path):
    older = [backup(source, tmp_path / "bk", label=f"old{i}", progress=False) for i in range(2)]

    out = execute(
        "backup",
        tmp_path,
        backup_dir="bk",
        dsn_env=SOURCE_VAR,
        schemas=["public", "auth"],
        jobs=2,
        label="nightly",
        runs_dir="runs",
        prune=True,
        keep_last=2,
    )

    snaps = list_snapshots(tmp_path / "bk")[0]
    new = snaps[0]
    assert new.label == "nightly"
    # keep_last=2 with prune=True removed the oldest snapshot and kept the other two.
    assert [s.id for s in snaps] == [new.id, older[1].id]
    report = verify(new.path, deep=True)
    assert report.ok, report.problems
    manifest = json.loads((new.path / "manifest.json").read_text())
    assert manifest["schemas"] == ["public", "auth"]
    db = row_counts(source, [*PUBLIC, "auth.users"])
    assert {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"]} == db

    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded" and record["exit_reason"] == "completed"
    assert record["snapshot"] == {"id": new.id, "path": str(Path("bk") / new.id)}
    assert set(record["steps"]) == {"parameters", "preflight", "backup", "verify", "prune"}
    assert record["summary"]["removed"] == [older[0].id]
    assert record["parameters"]["dsn_env"] == SOURCE_VAR and record["finished_at"]

    summary = {r["table"]: int(r["rows"]) for r in html_table(out, "nb.backup_table(result)")}
    assert summary == {**db, "(total)": sum(db.values())}
    assert any("image/png" in o.get("data", {}) for o in outputs_of(out, "nb.table_chart(result)"))
    assert_no_secret([out, *(tmp_path / "runs").glob("*.json")], source)


def test_report_notebook_shows_the_changes_between_two_snapshots(source, tmp_path):
    before = row_counts(source, PUBLIC)
    first = backup(source, tmp_path / "bk", label="before", progress=False)
    changed = mutate_demo(source)
    after = row_counts(source, PUBLIC)
    second = backup(source, tmp_path / "bk", label="after", progress=False)
    third = backup(source, tmp_path / "bk", label="again", progress=False)
    backupkit.drill(second.path, progress=False)

    # Not the defaults: an explicit old id, and `new` as latest~1 (the "after" snapshot, not the newest).
    out = execute(
        "report", tmp_path, backup_dir="bk", old=first.id, new="latest~1", sample=2, html_report="report.html"
    )

    rows = {r["table"]: r for r in html_table(out, "nb.diff_table(diff)")}
    assert set(rows) == set(PUBLIC)
    for table in PUBLIC:
        assert int(rows[table]["rows_old"]) == before[table]
        assert int(rows[table]["rows_new"]) == after[table]
        assert int(rows[table]["delta"]) == after[table] - before[table]
    # mutate_demo's own counts (audit_log rows written by its trigger are not in them).
    counted = ["public.orders", "public.order_items", "public.profiles", "public.events"]
    assert sum(int(rows[t]["inserted"]) for t in counted) == changed["inserted"]
    assert sum(int(rows[t]["deleted"]) for t in counted) == changed["deleted"]
    assert sum(int(rows[t]["updated"]) for t in counted) == changed["updated"]
    assert int(rows["public.audit_log"]["inserted"]) == after["public.audit_log"] - before["public.audit_log"]
    assert rows["public.products"]["compared by"] == "identical"

    pair = outputs_of(out, "pair = nb.pick_pair(backup_dir, old, new)\npair")[0]["data"]["text/plain"]
    assert first.id in pair and third.id not in pair
    samples = html_table(out, "nb.sample_updates_table(diff)")
    assert samples and {r["table"] for r in samples} <= set(counted)
    for table in {r["table"] for r in samples}:
        assert 1 <= len({r["key"] for r in samples if r["table"] == table}) <= 2  # sample=2
    assert any(r["table"] == "public.orders" for r in samples)
    integrity = html_table(out, "nb.integrity_table(checks)")
    assert integrity and all(r["ok"] == "True" for r in integrity)
    # Nothing cut: every detail as the integrity report has it (pandas would cut at 50 characters).
    reports = nb.check_integrity(first.path, second.path)
    expected = [r["detail"] for name, report in reports.items() for r in nb.integrity_rows(name, report)]
    assert [r["detail"] for r in integrity] == expected and max(map(len, expected)) > 50
    for source_ in ("nb.diff_table(diff)", "nb.sample_updates_table(diff)", "nb.integrity_table(checks)"):
        page = next(o["data"]["text/html"] for o in outputs_of(out, source_) if "text/html" in o.get("data", {}))
        assert not re.search(r">(NaN|None|&lt;NA&gt;|NaT)<", page), source_
    assert {r["check"] for r in integrity} >= {"checksums", "primary_key", "foreign_key", "sequence"}
    assert html_table(out, "nb.diff_overview(diff)") == []
    timeline = {r["snapshot"]: r for r in html_table(out, "nb.drill_history_table(backup_dir)")}
    assert list(timeline) == [third.id, second.id, first.id]
    assert (timeline[second.id]["drills"], timeline[second.id]["last drill"]) == ("1", "passed")
    assert timeline[third.id]["drills"] == "0" and timeline[first.id]["hours since previous"] == "NULL"
    assert float(timeline[third.id]["hours since previous"]) >= 0
    page = (tmp_path / "report.html").read_text()
    assert first.id in page and "<svg" in page
    assert_no_secret([out, tmp_path / "report.html"], source)


def test_restore_notebook_restores_a_chosen_snapshot_into_an_empty_database(source, make_db, tmp_path, monkeypatch):
    tables = [*PUBLIC, "auth.users"]
    before = row_counts(source, tables)
    first = backup(source, tmp_path / "bk", schemas=["public", "auth"], progress=False)
    mutate_demo(source)
    backup(source, tmp_path / "bk", schemas=["public", "auth"], progress=False)
    target = make_db("nbtgt")
    monkeypatch.setenv(TARGET_VAR, target)

    out = execute(
        "restore",
        tmp_path,
        backup_dir="bk",
        snapshot=first.id,
        target_dsn_env=TARGET_VAR,
        dry_run=False,
        jobs=2,
        runs_dir="runs",
    )

    assert row_counts(target, tables) == before  # the older snapshot's rows, not today's
    with psycopg.connect(target) as conn:
        fks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        ).fetchone()[0]
    assert fks > 0
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded" and record["snapshot"]["id"] == first.id
    assert record["summary"]["rows_loaded"] == sum(before.values())
    assert widgets(outputs_of(out, RESTORE_CELL)), "no progress widget for the restore"
    steps = html_table(out, "nb.restore_steps(outcome)")
    assert steps and all(s["state"] == "done" for s in steps)
    assert_no_secret([out, *(tmp_path / "runs").glob("*.json")], source, target)


def test_prune_notebook_dry_run_removes_nothing_and_a_real_run_applies_the_policy(source, tmp_path):
    snaps = [backup(source, tmp_path / "bk", label=f"s{i}", progress=False).id for i in range(3)]

    out = execute("prune", tmp_path, backup_dir="bk", keep_last=1, runs_dir="runs")  # dry_run defaults to True

    assert sorted(p.name for p in snapshot_dirs(tmp_path / "bk")) == sorted(snaps)
    decisions = {r["snapshot"]: r for r in html_table(out, "nb.prune(backup_dir, policy, dry_run=dry_run, run=run)")}
    assert decisions[snaps[2]]["action"] == "keep" and "last 1/1" in decisions[snaps[2]]["reasons"]
    assert [decisions[s]["action"] for s in snaps[:2]] == ["would remove", "would remove"]
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded" and record["summary"]["removed"] == []
    assert sorted(record["summary"]["would_remove"]) == sorted(snaps[:2])

    execute("prune", tmp_path, backup_dir="bk", keep_last=1, dry_run=False, runs_dir="runs2")
    assert [p.name for p in snapshot_dirs(tmp_path / "bk")] == [snaps[2]]
    (record,) = run_records(tmp_path / "runs2")
    assert sorted(record["summary"]["removed"]) == sorted(snaps[:2])


def test_drill_notebook_proves_the_newest_snapshot_restores_and_shows_the_status(source, tmp_path):
    snap = backup(source, tmp_path / "bk", progress=False)

    out = execute("drill", tmp_path, backup_dir="bk", runs_dir="runs")

    (row,) = html_table(out, DRILL_CELL)
    assert row["snapshot"] == snap.id and row["passed"] == "True"
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded" and record["summary"]["drill_ok"] is True
    assert len(list((tmp_path / "bk" / ".drills" / snap.id).glob("*.json"))) == 1
    status = {
        r["what"]: r["value"]
        for r in html_table(out, "nb.status_table(backup_dir, max_age=max_age, runs_dir=runs_dir)")
    }
    assert status["state"] == "ok (exit 0)" and status["last drill"] == f"{snap.id}: passed"


def test_drill_notebook_pings_the_monitor_its_notify_env_names_and_never_shows_the_url(source, tmp_path, monkeypatch):
    backup(source, tmp_path / "bk", progress=False)
    ping = "ping-" + secrets.token_hex(8)  # a Healthchecks ping URL's path is its secret
    monitor = Monitor()
    try:
        monkeypatch.setenv("BK_NB_MONITOR", f"{monitor.url}/{ping}")
        out = execute("drill", tmp_path, backup_dir="bk", runs_dir="runs", notify_env="BK_NB_MONITOR")
    finally:
        monitor.close()
    assert [path for path, _ in monitor.requests] == [f"/{ping}/start", f"/{ping}"]
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded" and record["parameters"]["notify_env"] == "BK_NB_MONITOR"
    for written in (out, *(tmp_path / "runs").glob("*.json")):
        assert ping not in written.read_text()


def test_a_failing_backup_notebook_pings_fail_with_the_one_line_reason(source, tmp_path, monkeypatch):
    wrong_password = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("BK_NB_WRONG", make_conninfo(source, password=wrong_password))
    monitor = Monitor()
    try:
        monkeypatch.setenv("BACKUPKIT_NOTIFY", f"{monitor.url}/ping")  # no notify_env: the default variable
        with pytest.raises(PapermillExecutionError):
            execute("backup", tmp_path, backup_dir="bk", dsn_env="BK_NB_WRONG", runs_dir="runs")
    finally:
        monitor.close()
    assert [path for path, _ in monitor.requests] == ["/ping/start", "/ping/fail"]
    reason = monitor.requests[1][1]
    assert reason.startswith("ConnectionFailed: cannot connect to ") and "\n" not in reason
    assert wrong_password not in reason


def test_a_notify_env_that_is_not_set_fails_the_run_in_one_line(source, tmp_path, monkeypatch):
    monkeypatch.delenv("BK_NB_NO_SUCH", raising=False)
    with pytest.raises(PapermillExecutionError) as info:
        execute("prune", tmp_path, backup_dir="bk", runs_dir="runs", notify_env="BK_NB_NO_SUCH")
    assert info.value.ename == "ConfigError"
    assert "the environment variable BK_NB_NO_SUCH is not set" in info.value.evalue


@pytest.mark.parametrize(
    "bad, expected",
    [
        (
            {"backupdir": "elsewhere"},
            ["unknown parameter 'backupdir'", "did you mean 'backup_dir'", "backup_dir, dsn_env"],
        ),
        ({"label": 2024}, ["parameter 'label' must be text", "-r NAME VALUE"]),
    ],
)
def test_unknown_or_mistyped_parameter_fails_the_run(source, tmp_path, bad, expected):
    with pytest.raises(PapermillExecutionError) as info:
        execute("backup", tmp_path, dsn_env=SOURCE_VAR, runs_dir="runs", **bad)
    assert info.value.ename == "ConfigError"
    for text in expected:
        assert text in info.value.evalue
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "failed" and record["failed_step"] == "parameters"
    assert all(text in record["exit_reason"] for text in expected)
    assert record["steps"].keys() == {"parameters"}  # nothing ran after the check
    assert not (tmp_path / "backups").exists() and not (tmp_path / "elsewhere").exists()


def test_a_failing_run_says_why_records_failed_and_leaves_no_snapshot(source, tmp_path, monkeypatch):
    wrong_password = "wrong-" + secrets.token_hex(8)
    wrong = make_conninfo(source, password=wrong_password)
    monkeypatch.setenv("BK_NB_WRONG", wrong)

    with pytest.raises(PapermillExecutionError) as info:
        execute("backup", tmp_path, backup_dir="bk", dsn_env="BK_NB_WRONG", runs_dir="runs")

    assert info.value.ename == "ConnectionFailed"
    assert "password authentication failed" in info.value.evalue
    out = tmp_path / "backup.out.ipynb"
    errors = [
        o
        for c in nbformat.read(out, as_version=4).cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert len(errors) == 1 and "password authentication failed" in errors[0]["evalue"]
    assert errors[0]["traceback"][0].startswith("error: cannot connect to ")
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "failed" and record["failed_step"] == "preflight"
    assert record["exit_reason"].startswith("ConnectionFailed: cannot connect to ")
    assert "password authentication failed" in record["exit_reason"]
    assert record["snapshot"] is None and "backup" not in record["steps"]
    assert snapshot_dirs(tmp_path / "bk") == []
    assert wrong_password not in out.read_text()
    assert_no_secret([out, *(tmp_path / "runs").glob("*.json")], source, wrong)


def test_a_failed_run_ends_with_the_error_and_its_hint_not_a_traceback(source, tmp_path, monkeypatch):
    monkeypatch.setenv("BK_NB_CLOSED", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=5")

    with pytest.raises(PapermillExecutionError) as info:
        execute("backup", tmp_path, backup_dir="bk", dsn_env="BK_NB_CLOSED", runs_dir="runs")

    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "failed" and record["failed_step"] == "preflight"
    assert record["exit_reason"].startswith("ConnectionFailed: cannot connect to 127.0.0.1:") and record["hint"]
    expected = ["error: " + record["exit_reason"].split(": ", 1)[1], "hint: " + record["hint"]]
    book = nbformat.read(tmp_path / "backup.out.ipynb", as_version=4)
    failed = [c for c in book.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert [c.source for c in failed] == ["nb.preflight(backup_dir, dsn_env, schemas, run=run)"]
    *shown, last = failed[0].outputs
    # The cell's last output, the error papermill reports: the error and the hint, nothing else.
    assert last.output_type == "error" and last.ename == "ConnectionFailed" and last.traceback == expected
    # Before it, the same as text and as a small HTML block, with the run record that says failed.
    (note,) = [o for o in shown if "text/html" in o.get("data", {})]
    run_json = Path("runs") / f"{record['run_id']}.json"
    assert note["data"]["text/plain"].splitlines() == [*expected, f"run record: {run_json} (failed)"]
    assert all(html.escape(line) in note["data"]["text/html"] for line in expected)
    # No traceback anywhere: not in the notebook, not in what papermill raises.
    assert "Traceback" not in (tmp_path / "backup.out.ipynb").read_text()
    assert "Traceback" not in str(info.value) and str(info.value).strip().splitlines()[-2:] == expected
    assert snapshot_dirs(tmp_path / "bk") == []


#: A secret given where the NAME of a variable belongs, per notebook and parameter: (notebook,
#: parameter, the example variable the error names, what such a variable holds).
MISPLACED = [
    ("backup", "dsn_env", "BACKUPKIT_DSN", "a DSN"),
    ("drill", "dsn_env", "BACKUPKIT_DSN", "a DSN"),
    ("restore", "target_dsn_env", "TARGET_DSN", "a DSN"),
    ("backup", "notify_env", "BACKUPKIT_NOTIFY", "a monitor URL"),
    ("drill", "notify_env", "BACKUPKIT_NOTIFY", "a monitor URL"),
    ("prune", "notify_env", "BACKUPKIT_NOTIFY", "a monitor URL"),
]


def test_every_env_parameter_of_every_notebook_is_checked_for_a_misplaced_secret():
    declared = {
        name: _literal_assignments(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells[0].source)
        for name in NAMES
    }
    found = {(name, p) for name, params in declared.items() for p in params if p.endswith("_env")}
    assert found == {(name, p) for name, p, _, _ in MISPLACED}


@pytest.mark.parametrize("name, parameter, example, holds", MISPLACED)
def test_a_dsn_or_url_given_where_a_variable_name_belongs_is_refused_and_shown_nowhere(
    tmp_path, name, parameter, example, holds
):
    """``-r dsn_env postgresql://postgres:PW@…``: the run fails in one line that shows nothing of the
    value, before any cell shows the parameters; only papermill's own injected cell holds it."""
    password = "pw" + secrets.token_hex(8)
    if parameter == "notify_env":
        value = f"https://hc-ping.com/{password}"  # a ping URL's path is its secret
    else:
        value = f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/demo"
    line = f"{parameter} takes the NAME of an environment variable (e.g. {example}), not {holds}: nothing of the value is shown"

    with pytest.raises(PapermillExecutionError) as info:
        execute(name, tmp_path, backup_dir="bk", runs_dir="runs", **{parameter: value})

    assert info.value.ename == "ConfigError" and info.value.evalue == line
    out = tmp_path / f"{name}.out.ipynb"
    book = nbformat.read(out, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0]["evalue"] == line
    assert errors[0]["traceback"][0] == f"error: {line}" and f"-r {parameter} {example}" in errors[0]["traceback"][1]
    # Refused before the parameters are shown: nothing after the failed cell ran, and a DSN
    # fails the check of the parameters itself (a monitor URL, the run's start: it pings it).
    failed = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs))
    assert ("nb.start_run(" if parameter == "notify_env" else "nb.check_parameters(run)") in code[failed].source
    assert all(c.outputs == [] for c in code[failed + 1 :])
    # No output, no error holds the value or its secret.
    for cell in code:
        for output in cell.outputs:
            assert password not in json.dumps(output), (cell.source, output)
    # Papermill's injected cell and its record of the parameters hold what was passed (nothing in
    # the notebook can prevent that); nothing else in the executed notebook does.
    injected = [c for c in code if nb.is_injected(c.source)]
    assert len(injected) == 1 and password in injected[0].source
    del book.metadata["papermill"]["parameters"]
    book.cells = [c for c in book.cells if c not in injected]
    assert password not in nbformat.writes(book)
    for record in run_records(tmp_path / "runs"):  # none when the run could not start
        assert record["status"] == "failed" and record["failed_step"] == "parameters"
        assert record["exit_reason"] == f"ConfigError: {line}" and record["parameters"][parameter] == "(not shown)"
    assert all(password not in p.read_text() for p in (tmp_path / "runs").glob("*.json"))


def test_a_list_passed_as_text_fails_with_the_papermill_option_that_passes_a_list(tmp_path):
    # papermill -p tables '["public.orders"]' (and -r) gives the notebook that text.
    with pytest.raises(PapermillExecutionError) as info:
        execute("restore", tmp_path, backup_dir="bk", tables='["public.orders"]', runs_dir="runs")

    assert info.value.ename == "ConfigError"
    assert info.value.evalue == "parameter 'tables' must be a list like its default [], not text '[\"public.orders\"]'"
    hint = "pass a list with papermill's YAML option: -y 'tables: [public.orders]'"
    (record,) = run_records(tmp_path / "runs")
    assert record["hint"] == hint and record["failed_step"] == "parameters"
    assert str(info.value).strip().splitlines()[-1] == f"hint: {hint}"
    # The option the hint shows gives the notebook the list (papermill's command, preparing only).
    option = shlex.split(hint.split(": ", 1)[1])
    assert option == ["-y", "tables: [public.orders]"]
    prepared = tmp_path / "prepared.ipynb"
    subprocess.run(
        [sys.executable, "-m", "papermill", "--prepare-only", str(NOTEBOOKS / "restore.ipynb"), str(prepared), *option],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (cell,) = [c for c in nbformat.read(prepared, as_version=4).cells if nb.is_injected(c.source)]
    assert _literal_assignments(cell.source) == {"tables": ["public.orders"]}


def test_a_notebook_backup_of_the_demo_database_shows_tqdm_progress_widgets(source, tmp_path):
    out = execute("backup", tmp_path, backup_dir="bk", dsn_env=SOURCE_VAR, runs_dir="runs")

    book = nbformat.read(out, as_version=4)
    cell = next(c for c in book.cells if c.cell_type == "code" and c.source.startswith("result = nb.backup("))
    (bar,) = widgets(cell.outputs)  # one bar for the backup
    # tqdm's notebook bar: an HBox whose text form is the bar's line, its state saved with the notebook.
    assert bar["data"]["text/plain"].startswith("backup:")
    model = bar["data"][WIDGET]["model_id"]
    state = book.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert state[model]["model_name"] == "HBoxModel"
    assert any(m["model_name"] == "FloatProgressModel" for m in state.values())


def test_missing_values_show_as_null_and_long_text_wraps():
    diff = {
        "tables": [
            {
                "schema": "public",
                "name": "profiles",
                "sample_updates": [{"key": {"id": 1}, "changes": {"bio": [None, "hi"], "age": ["3", None]}}],
            }
        ]
    }
    table = nb.sample_updates_table(diff)
    assert table["old"].isna().tolist() == [True, False]  # the data keeps its NULLs ...
    page = table._repr_html_()  # ... and shows them as NULL, muted
    assert page.count('class="bk-null"') == 2 and not re.search(r">(NaN|None|&lt;NA&gt;)<", page)
    assert "NaN" not in repr(table) and repr(table).count("NULL") == 2
    detail = "orders_customer_id_fkey: every (customer_id) found in public.customers(id); " * 3
    integrity = nb.integrity_table(
        {
            "s1": {
                "checksums": {"ok": True, "problems": [], "files": 3},
                "checks": [{"check": "foreign_key", "table": "public.orders", "ok": True, "detail": detail}],
            }
        }
    )
    page = integrity._repr_html_()
    assert html.escape(detail) in page and "overflow-wrap:anywhere" in page  # whole, wrapped
    assert detail in repr(integrity)
    # No width in the HTML wider than a 1280 px window.
    assert all(int(px) <= 1280 for px in re.findall(r"(\d+)px", page))
    # pandas' own display of these values, for comparison: what the helpers no longer show.
    diff_rows = nb.diff_table(
        {
            "tables": [
                {
                    "schema": "public",
                    "name": "t",
                    "rows_old": 1,
                    "rows_new": 1,
                    "inserted": 0,
                    "deleted": 0,
                    "updated": None,
                    "method": None,
                }
            ]
        }
    )
    assert ">NULL<" in diff_rows._repr_html_() and "<NA>" not in repr(diff_rows)


def test_demo_snapshots_say_where_they_went_and_why(tmp_path):
    reason = nb.demo_snapshots_reason([], 2, "", {})
    assert reason.startswith("fewer than the 2 this notebook needs, and no database is named")
    taken = nb.DemoSnapshots(["20250101T000000Z-demo"], tmp_path / "nb" / ".." / "backups", 0, reason)
    assert taken == ["20250101T000000Z-demo"]  # still the list of ids taken
    text = repr(taken)
    assert f"into {(tmp_path / 'backups').resolve()}: 20250101T000000Z-demo" in text and reason in text
    assert "backupkit demo" in text and "border-left" in taken._repr_html_()
    assert "2 snapshots, enough" in repr(
        nb.DemoSnapshots([], Path("backups"), 2, nb.demo_snapshots_reason([None, None], 2, "", {}))
    )
    assert "a database is named ($MY_DSN)" in nb.demo_snapshots_reason([], 1, "MY_DSN", {})


# -- encrypted repositories ------------------------------------------------------------------------

IDENTITY_VAR = "BACKUPKIT_IDENTITY"


@pytest.fixture
def sealed(source, tmp_path):
    """Two snapshots of the demo database in ``tmp_path/bk``, encrypted to a new age key, a day of
    traffic between them: their results, the identity file, the rows of the first and the changes."""
    from backupkit.snapshot import encryption

    (tmp_path / "keys").mkdir()
    identity = tmp_path / "keys" / "age.txt"
    recipient = encryption.keygen(identity)
    before = row_counts(source, PUBLIC)
    first = backupkit.backup(source, tmp_path / "bk", recipients=[recipient], progress=False)
    changed = mutate_demo(source)
    second = backupkit.backup(source, tmp_path / "bk", recipients=[recipient], progress=False)
    assert first.manifest["encryption"]["recipients"] == [recipient]
    return SimpleNamespace(first=first, second=second, identity=identity, before=before, changed=changed)


@pytest.mark.parametrize("given", ["environment", "parameter"])
def test_drill_restore_and_report_notebooks_read_an_encrypted_repository(
    sealed, source, make_db, pg_server, tmp_path, monkeypatch, given
):
    """The identity as the command line takes it: ``$BACKUPKIT_IDENTITY`` in the kernel's
    environment, or the notebooks' ``identity`` parameter (the path of the file)."""
    if given == "environment":
        monkeypatch.setenv(IDENTITY_VAR, str(sealed.identity))
        identity = {}
    else:
        monkeypatch.delenv(IDENTITY_VAR, raising=False)
        identity = {"identity": str(sealed.identity)}
    monkeypatch.setenv(DRILL_VAR, pg_server.admin_dsn)

    out = execute("drill", tmp_path, backup_dir="bk", dsn_env=DRILL_VAR, runs_dir="runs", **identity)
    (row,) = html_table(out, DRILL_CELL)
    assert row["snapshot"] == sealed.second.id and row["passed"] == "True"

    target = make_db("nbenctgt")
    monkeypatch.setenv(TARGET_VAR, target)
    execute(
        "restore",
        tmp_path,
        backup_dir="bk",
        snapshot=sealed.first.id,
        target_dsn_env=TARGET_VAR,
        dry_run=False,
        runs_dir="runs",
        **identity,
    )
    assert row_counts(target, PUBLIC) == sealed.before

    report = execute("report", tmp_path, backup_dir="bk", **identity)
    rows = {r["table"]: r for r in html_table(report, "nb.diff_table(diff)")}
    assert set(rows) == set(PUBLIC)
    counted = ["public.orders", "public.order_items", "public.profiles", "public.events"]
    assert sum(int(rows[t]["updated"]) for t in counted) == sealed.changed["updated"]
    integrity = html_table(report, "nb.integrity_table(checks)")
    assert {r["snapshot"] for r in integrity} == {sealed.first.id, sealed.second.id}
    assert integrity and all(r["ok"] == "True" for r in integrity)

    records = run_records(tmp_path / "runs")
    assert sorted(r["job"] for r in records) == ["drill", "restore"] and all(
        r["status"] == "succeeded" for r in records
    )
    key = next(line for line in sealed.identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    for path in [out, report, tmp_path / "restore.out.ipynb", *(tmp_path / "runs").glob("*.json")]:
        assert key not in path.read_text()


def test_an_encrypted_snapshot_without_an_identity_says_to_pass_the_parameter(sealed, pg_server, tmp_path, monkeypatch):
    monkeypatch.delenv(IDENTITY_VAR, raising=False)
    monkeypatch.setenv(DRILL_VAR, pg_server.admin_dsn)
    with pytest.raises(PapermillExecutionError) as info:
        execute("drill", tmp_path, backup_dir="bk", dsn_env=DRILL_VAR, runs_dir="runs")
    assert info.value.ename == "ConfigError"
    assert f"snapshot {sealed.second.id} is encrypted" in info.value.evalue and "pass `identity`" in info.value.evalue
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "failed" and record["failed_step"] == "drill"
    assert not (tmp_path / "bk" / ".drills").exists()  # the caller's to fix, not a failed drill on record
    # A key pasted where the identity file's path belongs: refused, and shown nowhere.
    key = next(line for line in sealed.identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    with pytest.raises(PapermillExecutionError) as info:
        execute("drill", tmp_path, backup_dir="bk", dsn_env=DRILL_VAR, runs_dir="runs2", identity=key)
    assert info.value.evalue.startswith("identity takes the PATH of an age identity file")
    book = nbformat.read(tmp_path / "drill.out.ipynb", as_version=4)
    assert all(key not in json.dumps(o) for c in book.cells if c.cell_type == "code" for o in c.outputs)
    assert all(key not in p.read_text() for p in (tmp_path / "runs2").glob("*.json"))


# -- a fresh checkout: nbval, defaults only, the embedded demo database ----------------------------


def test_every_notebook_runs_as_is_under_nbval(home, tmp_path):
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    env = {k: v for k, v in os.environ.items() if k not in DSN_ENV_VARS and not k.startswith("BK_NB_")}
    env["BACKUPKIT_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "notebooks/", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b(\d+) passed\b", proc.stdout) and "failed" not in proc.stdout.splitlines()[-1]

    # backup took one snapshot of the demo database into ../backups (the repository's backups/, where
    # `backupkit demo` writes); prune's defaults added the second one it needs.
    assert not (tmp_path / "notebooks" / "backups").exists()
    snaps = list_snapshots(tmp_path / "backups")[0]
    assert len(snaps) == 2 and all(verify(s.path).ok for s in snaps)
    assert all(nb.is_demo_source(json.loads((s.path / "manifest.json").read_text())["source"]) for s in snaps)
    records = run_records(tmp_path / "notebooks" / "runs")
    assert sorted(r["job"] for r in records) == ["backup", "drill", "prune", "restore"]
    assert all(r["status"] == "succeeded" for r in records)
    password = (home / "demo-pg" / "data.password").read_text().strip()
    for path in (tmp_path / "notebooks" / "runs").glob("*.json"):
        assert password not in path.read_text()


# -- the library side, without a kernel ---------------------------------------------------------------


def test_locate_parameters_finds_declared_and_injected_cells():
    declared = 'a = 1\nb = "x"  # text\nc = ["public"]'
    history = [
        "",
        declared,
        "# Parameters\na = 2\nzz = 3\n",
        "from backupkit import notebook as nb",
        'run = nb.start_run("backup", runs_dir="runs")',
    ]
    assert nb.locate_parameters(history) == ({"a": 1, "b": "x", "c": ["public"]}, {"a": 2, "zz": 3})
    # Interactive: no injected cell, and a re-run parameters cell wins.
    assert nb.locate_parameters(["", declared, "x = f()", "a = 5\nb = 'y'\nc = []"]) == (
        {"a": 5, "b": "y", "c": []},
        {},
    )
    with pytest.raises(ConfigError):
        nb.locate_parameters(["", "import os"])


def test_parameter_problems_name_unknown_and_mistyped_parameters():
    declared = {
        "backup_dir": "backups",
        "jobs": 1,
        "prune": False,
        "schemas": ["public"],
        "keep_last": None,
        "ratio": 0.5,
    }
    ok = {"backup_dir": "x", "jobs": 2, "prune": True, "schemas": ["a", "b"], "keep_last": 3, "ratio": 1}
    assert nb.parameter_problems(declared, ["jobs", "prune"], ok) == []
    problems = nb.parameter_problems(declared, ["backupdir"], {**ok, "jobs": "2", "prune": 1, "schemas": "public"})
    assert problems[0] == "unknown parameter 'backupdir' (did you mean 'backup_dir'?)"
    assert problems[1].startswith("this notebook's parameters are: backup_dir, jobs, prune")
    assert [p.split("'")[1] for p in problems[2:]] == ["jobs", "prune", "schemas"]


def test_demo_snapshots_are_only_taken_for_the_defaults_and_never_mixed_in():
    demo = {"host": "127.0.0.1", "database": "demo"}
    real = {"host": "db.example.supabase.co", "database": "postgres"}
    assert nb.demo_snapshots_needed([], 2, "", {}) == 2
    assert nb.demo_snapshots_needed([demo], 2, "", {}) == 1
    assert nb.demo_snapshots_needed([demo, demo], 2, "", {}) == 0
    assert nb.demo_snapshots_needed([], 2, "MY_DSN", {}) == 0
    assert nb.demo_snapshots_needed([], 2, "", {"DATABASE_URL": "postgresql://x"}) == 0
    assert nb.demo_snapshots_needed([real], 2, "", {}) == 0


def test_a_variable_name_is_all_an_env_parameter_takes_and_a_refused_value_is_never_repeated():
    for fine in ("", "BACKUPKIT_DSN", "_x", "app_database_url2"):
        assert nb.misplaced_secret("dsn_env", fine) is None
    for wrong in (
        "postgresql://postgres:pw@127.0.0.1:5432/demo",
        "host=db password=pw",
        "A=B",
        "user@host",
        "MY DSN",
        "1DSN",
        "https://hc-ping.com/uuid",
        ["BACKUPKIT_DSN"],
        5,
    ):
        error = nb.misplaced_secret("target_dsn_env", wrong)
        assert isinstance(error, ConfigError) and error.exit_code == 2
        for line in nb.error_lines(error):
            assert str(wrong) not in line
    assert nb.misplaced_secret("identity", "/secure/age.txt") is None
    assert nb.misplaced_secret("identity", "AGE-SECRET-KEY-1QQQ") is not None
    # The helpers refuse it too, called from a cell of one's own.
    with pytest.raises(ConfigError, match="^dsn_env takes the NAME"):
        nb.preflight("bk", "postgresql://u:pw@h/d")
    with pytest.raises(ConfigError, match="^identity takes the PATH"):
        nb.resolve_identity("AGE-SECRET-KEY-1QQQ")
    # A mistyped *_env parameter's value is not repeated either; the shown parameters are masked.
    (problem,) = nb.parameter_problems({"dsn_env": ""}, [], {"dsn_env": ["postgresql://u:pw@h/d"]})
    assert (
        problem.startswith("parameter 'dsn_env' must be text like its default '', not a list (") and "pw" not in problem
    )
    shown = nb.Parameters({"dsn_env": "postgresql://u:pw@h/d", "jobs": 2})
    assert "pw" not in repr(shown) and "(not shown)" in repr(shown)


def test_the_hint_for_a_mistyped_parameter_shows_the_papermill_option_that_passes_it():
    assert nb.how_to_pass("tables", [], '["public.orders", "auth.users"]') == (
        "pass a list with papermill's YAML option: -y 'tables: [public.orders, auth.users]'"
    )
    assert nb.how_to_pass("tables", [], "public.orders") == (
        "pass a list with papermill's YAML option: -y 'tables: [public.orders]'"
    )
    assert nb.how_to_pass("storage_buckets", [], "*").endswith("""-y 'storage_buckets: ["*"]'""")
    assert nb.how_to_pass("schemas", ["public"], 3).endswith("-y 'schemas: [public]'")
    assert nb.how_to_pass("label", "", 2024) == "pass text with -r: -r label 2024"
    assert nb.how_to_pass("jobs", 1, "2") == "pass a number with -p: -p jobs 2"
    assert nb.how_to_pass("prune", False, "true") == "pass True or False with -p: -p prune True"
    declared = {"backup_dir": "bk", "schemas": ["public"]}
    assert nb.parameter_hint(declared, ["schemas"], {"backup_dir": "bk", "schemas": "public,auth"}) == (
        "pass a list with papermill's YAML option: -y 'schemas: [public, auth]'"
    )
    assert "papermill --help-notebook" in nb.parameter_hint(declared, ["backupdir"], declared)


def test_run_record_hook_marks_a_failed_cell_and_redacts(tmp_path, monkeypatch):
    monkeypatch.setenv("BK_NB_SECRET", "postgresql://u:hunter2secret@h:5432/d")
    run = nb.start_run("backup", {"dsn_env": "BK_NB_SECRET"}, tmp_path / "runs")
    assert json.loads(run.path.read_text())["status"] == "running"
    with run.step("backup"):
        pass
    _post_run_cell(SimpleNamespace(error_in_exec=None, error_before_exec=None))
    assert run.status == "running"
    _post_run_cell(
        SimpleNamespace(error_in_exec=RuntimeError("no route to h with hunter2secret\nmore"), error_before_exec=None)
    )
    record = json.loads(run.path.read_text())
    assert record["status"] == "failed" and record["exit_reason"] == "RuntimeError: no route to h with ****"
    assert "backup" in record["steps"] and "hunter2secret" not in run.path.read_text()
    # The first failure stays the reason; a later finish() does not turn it into a success.
    assert run.finish()["status"] == "failed"


def test_explorer_previews_tables_and_runs_sql(source, tmp_path):
    snap = backup(source, tmp_path / "bk", progress=False)
    box = nb.explorer(tmp_path / "bk", table="public.products", limit=3)
    assert box.table.value == '"public"."products"' and box.preview.value.split("<tbody>")[1].count("<tr>") == 3
    box.table.value = '"public"."orders"'
    assert "placed_at" in box.preview.value
    box.sql.value = "SELECT count(*) AS n FROM public.orders"
    box.run.click()
    orders = next(t["rows"] for t in snap.manifest["tables"] if t["name"] == "orders")
    assert f"<td>{orders}</td>" in box.result.value
    box.sql.value = "SELECT * FROM public.nope"
    box.run.click()
    assert "CatalogException" in box.result.value and "Traceback" not in box.result.value


def _fake_shell(history: list[str], user_ns: dict) -> SimpleNamespace:
    return SimpleNamespace(
        history_manager=SimpleNamespace(input_hist_raw=["", *history]),
        user_ns=user_ns,
        user_ns_hidden={"In": [], "Out": {}},
    )


def test_check_parameters_uses_the_history_papermill_keeps_else_the_namespace(tmp_path):
    params = 'backup_dir = "backups"\njobs = 1'
    this_cell = "nb.check_parameters(run)"
    run = nb.start_run("backup", runs_dir=tmp_path / "runs")
    ns = {"In": [], "Out": {}, "backup_dir": "x", "jobs": 2, "jbos": 3, "nb": nb, "run": run}
    shell = _fake_shell([params, "# Parameters\nbackup_dir = 'x'\njobs = 2\njbos = 3\n", "import x", this_cell], ns)
    with pytest.raises(ConfigError, match="unknown parameter 'jbos' .did you mean 'jobs'"):
        nb.check_parameters(run, shell=shell)
    record = json.loads(run.path.read_text())
    assert record["status"] == "failed" and record["failed_step"] == "parameters"
    assert record["parameters"] == {"backup_dir": "x", "jobs": 2, "jbos": 3}

    ok = _fake_shell([params, "# Parameters\njobs = 2\n", this_cell], {**ns, "jbos": None})
    assert nb.check_parameters(shell=ok) == {"backup_dir": "x", "jobs": 2}
    # No history kept (nbval runs cells with store_history=False): the namespace's plain values.
    ns.pop("jbos")
    assert nb.check_parameters(shell=_fake_shell([], ns)) == {"backup_dir": "x", "jobs": 2}


def test_the_runs_folder_is_private_whatever_the_umask(tmp_path):
    from backupkit.notebook import start_run

    old = os.umask(0)
    try:
        start_run("backup", runs_dir=tmp_path / "runs").write()
    finally:
        os.umask(old)
    assert (tmp_path / "runs").stat().st_mode & 0o777 == 0o700


# -- the operations, called as a notebook's cells call them ------------------------------------

DRILL_VAR = "BK_NB_DRILL_SERVER"


def test_a_drill_whose_dsn_env_is_unset_or_empty_fails_in_one_line_naming_it(make_db, tmp_path, monkeypatch):
    dsn = make_db("nbdrill")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (a int PRIMARY KEY); INSERT INTO t VALUES (1)")
    backup(dsn, tmp_path / "bk", progress=False)
    for value in (None, ""):  # unset; set but empty (libpq would take that for its defaults)
        if value is None:
            monkeypatch.delenv(DRILL_VAR, raising=False)
        else:
            monkeypatch.setenv(DRILL_VAR, value)
        run = nb.start_run("drill", {"dsn_env": DRILL_VAR}, tmp_path / f"runs-{value is None}")
        with pytest.raises(ConfigError) as caught:
            nb.drill(tmp_path / "bk", dsn_env=DRILL_VAR, run=run)
        assert caught.value.exit_code == 2
        assert nb.error_lines(caught.value) == [
            f"error: ${DRILL_VAR} is not set, or is empty",
            f"hint: export {DRILL_VAR}=postgresql://... (a role with CREATEDB) or leave dsn_env empty "
            "to drill on a temporary embedded server",
        ]
        (record,) = run_records(tmp_path / f"runs-{value is None}")
        assert record["status"] == "failed" and record["failed_step"] == "drill"
        assert record["exit_reason"] == f"ConfigError: ${DRILL_VAR} is not set, or is empty"
        assert not (tmp_path / "bk" / ".drills").exists()  # nothing was drilled, so nothing recorded


def test_verify_restore_and_drill_take_a_snapshot_on_s3(make_db, pg_server, s3_bucket, tmp_path, monkeypatch):
    """``pick_snapshot`` of an s3:// repository is a ``SnapshotLocation`` (no folder on this
    machine): the jobs show and record it by its id, after doing their work as usual."""
    source, target = make_db("nbs3src"), make_db("nbs3tgt")
    load_small(source)
    url = f"s3://{s3_bucket}/repo"
    made = backup(source, url, progress=False)
    snap = nb.pick_snapshot(url)
    assert isinstance(snap, SnapshotLocation) and snap.id == made.id
    runs = tmp_path / "runs"

    run = nb.start_run("verify", {}, runs)
    (row,) = nb.verify(snap, deep=True, run=run).to_dict("records")
    assert row["snapshot"] == snap.id and bool(row["intact"]) and row["files"] > 0
    assert run.finish()["status"] == "succeeded"
    (row,) = nb.verify(f"{url}/{snap.id}", deep=False).to_dict("records")  # named by its URL
    assert row["snapshot"] == snap.id

    monkeypatch.setenv(TARGET_VAR, target)
    run = nb.start_run("restore", {"target_dsn_env": TARGET_VAR}, runs)
    outcome = nb.restore(snap, TARGET_VAR, dry_run=False, run=run)
    assert outcome.rows == 22003
    assert row_counts(target, ["public.customers", "public.orders"]) == {
        "public.customers": 2000,
        "public.orders": 20000,
    }
    record = run.finish()
    assert record["status"] == "succeeded" and record["snapshot"] == {"id": snap.id, "path": f"{url}/{snap.id}"}

    monkeypatch.setenv(DRILL_VAR, pg_server.admin_dsn)
    run = nb.start_run("drill", {"dsn_env": DRILL_VAR}, runs)
    (row,) = nb.drill(url, dsn_env=DRILL_VAR, run=run).to_dict("records")
    assert row["snapshot"] == snap.id and bool(row["passed"]) and row["rows"] == 22003
    record = run.finish()
    assert record["status"] == "succeeded" and record["snapshot"]["id"] == snap.id
    assert record["summary"]["drill_ok"] is True
    assert len(run_records(runs)) == 3
    assert_no_secret(list(runs.glob("*.json")), source, target, pg_server.admin_dsn)
