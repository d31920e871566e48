"""Restore drills and ``status`` (issue 18): a drill restores a snapshot into a throwaway
database, compares it with what the backup recorded, records the result and cleans up (also
after kill -9); ``status`` gives a monitor one exit code per state, worst first.

Every drill here runs against the real embedded PostgreSQL (or, with ``--dsn``, the test
server).  Throwaway servers live under ``<tmp>/backupkit-drills``: each test that starts
one gets a private temporary folder (``drill_tmp``: ``TMPDIR`` and ``tempfile.tempdir``),
so "nothing is left there" means this test's drills left nothing, even with ``-n 2``.

The drill function is imported from ``backupkit.drills.job``: the public name
``backupkit.drill`` is the subpackage once anything imported ``backupkit.drills.*`` first
(see ``test_the_public_name_backupkit_drill_is_the_function``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import xxhash
import zstandard
from helpers import SMALL_SCHEMA, copy_snapshot_folder, run_cli, stored_file, wait_for
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import backupkit
from backupkit.drills import compare, record, target
from backupkit.drills.job import drill
from backupkit.errors import ConfigError, DrillFailed, RestoreError
from backupkit.monitor.status import STATE_CODES, Facts, assess, status
from backupkit.notebook.runs import RunRecord, new_run_id
from backupkit.pg.copyio import TEXT_HASH
from backupkit.pg.embedded import EmbeddedServer
from backupkit.snapshot import manifest as mf
from backupkit.storage import pool
from backupkit.storage.location import open_storage

#: On top of helpers.SMALL_SCHEMA (customers, orders with a foreign key to customers, identity
#: and serial sequences, an awkwardly named table): an index, a sequence of its own, an empty table.
EXTRA_SCHEMA = """
CREATE INDEX orders_note_idx ON orders (note);
CREATE SEQUENCE ticket_no START 500;
SELECT nextval('ticket_no') FROM generate_series(1, 3);
CREATE TABLE empty_one (a int PRIMARY KEY);
"""
ROWS = 2000 + 20000 + 3


@pytest.fixture(scope="module")
def source_snapshot(pg_server, tmp_path_factory):
    """One snapshot of the small database, ``orders`` cut into many files (64 KiB chunks).
    Tests drill and damage private copies of it (``snap``)."""
    dsn = pg_server.createdb("drillsrc")
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(SMALL_SCHEMA)
            conn.execute(EXTRA_SCHEMA)
        res = backupkit.backup(dsn, tmp_path_factory.mktemp("drillsrc"), chunk_bytes=64 * 1024, progress=False)
    finally:
        pg_server.dropdb(dsn)
    m = mf.read(res.path)
    tables = {t["name"]: t for t in m["tables"]}
    # What the drill must compare is really there (else the tests below prove little).
    assert len(tables["orders"]["files"]) > 3 and len(tables["customers"]["files"]) > 1
    assert all("text_hash" in f and "text_bytes" in f for t in m["tables"] for f in t["files"])
    assert "orders_note_idx" in tables["orders"]["indexes"]
    assert [fk["ref_table"] for fk in tables["orders"]["foreign_keys"]] == ["customers"]
    assert {s["name"]: s["last_value"] for s in m["sequences"]}["ticket_no"] == 502
    return Path(res.path)


def private_copy(snapshot: Path, repo: Path) -> Path:
    """A copy of ``snapshot`` alone in repository ``repo`` (its shared files in that pool)."""
    return copy_snapshot_folder(snapshot, repo / snapshot.name)


@pytest.fixture
def snap(source_snapshot, tmp_path) -> Path:
    """A private copy of the snapshot, alone in the repository ``tmp_path / "repo"``."""
    return private_copy(source_snapshot, tmp_path / "repo")


@pytest.fixture
def drill_tmp(monkeypatch) -> Path:
    """A private temporary folder for this test's drills (and its CLI children); the
    ``backupkit-drills`` folder inside it.  Any server a failed test left there is stopped."""
    tmp = Path(tempfile.mkdtemp(prefix="bk-drill-tmp-"))
    os.chmod(tmp, 0o755)  # as root the server runs as another user, who must pass through
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert target.drills_root() == tmp / "backupkit-drills"
    yield tmp / "backupkit-drills"
    for folder in (tmp / "backupkit-drills").glob(f"{target.PREFIX}*"):
        with contextlib.suppress(Exception):
            EmbeddedServer(folder / "data").shut_down()
    shutil.rmtree(tmp, ignore_errors=True)


# -- helpers ------------------------------------------------------------------------------


def reseal(folder: Path, manifest: dict) -> None:
    (folder / mf.MANIFEST).unlink()
    mf.write(folder, {k: v for k, v in manifest.items() if k != "manifest_sha256"})


def file_entry(manifest: dict, table: str, index: int) -> dict:
    return next(t for t in manifest["tables"] if t["name"] == table)["files"][index]


def copy_text(folder: Path, entry: dict) -> bytes:
    raw = stored_file(folder, entry).read_bytes()
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()


def replace_rows(folder: Path, table: str, index: int, change) -> str:
    """Replace data file ``index`` of ``table`` with ``change(its COPY text)``, update its
    size and hash and reseal the manifest, so that ``verify`` passes; the file's path."""
    m = mf.read(folder)
    entry = file_entry(m, table, index)
    stored = zstandard.ZstdCompressor().compress(change(copy_text(folder, entry)))
    path = stored_file(folder, entry)
    entry["bytes"], entry["sha256"] = len(stored), hashlib.sha256(stored).hexdigest()
    if entry.get("shared") is True:  # a pool file is named by its hash: the new one by its own
        path = folder.parent / pool.blob_name(entry["sha256"])
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)
    reseal(folder, m)
    return entry["path"]


def drill_databases(pg_server, pid: int) -> list[str]:
    """Throwaway databases on the test server made by the drill process ``pid``."""
    with psycopg.connect(pg_server.admin_dsn) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [f"{target.PREFIX}{pid}_"]
        )
        return [n for (n,) in rows]


def postmasters_of(folder: Path) -> list[int]:
    """Running processes whose command line names ``folder`` (a server's ``-D`` data folder)."""
    needle = str(folder.resolve()).encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"postgres" in cmdline:
            found.append(int(d.name))
    return found


def cli_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}


def run_cli_with_pid(*args: str) -> tuple[int, subprocess.CompletedProcess]:
    """``run_cli``, also returning the process id (the one a throwaway database is named after)."""
    cmd = [sys.executable, "-m", "backupkit", *map(str, args)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    out, err = child.communicate(timeout=300)
    return child.pid, subprocess.CompletedProcess(cmd, child.returncode, out, err)


#: The ``backupkit`` command, its comparison paused once the restore is done (only the timing
#: changes): it says "restored", then waits, its throwaway database made and filled.
_PAUSED_DRILL = r"""
import sys, time
from backupkit.drills import compare
def paused(conn, table):
    print("restored", flush=True)
    time.sleep(300)
compare.table_differences = paused
from backupkit.cli.run import main
sys.exit(main(sys.argv[1:]))
"""


def start_paused_drill(*args: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_DRILL, "drill", *map(str, args), "-q"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    ready, _, _ = select.select([child.stdout], [], [], 120)
    line = child.stdout.readline().strip() if ready else ""
    if line != "restored":
        child.kill()
        _, err = child.communicate(timeout=30)
        pytest.fail(f"the drill never reached its comparison: {err[-2000:]}")
    return child


def write_run(runs: Path, status_: str, started: datetime, reason: str | None = None) -> dict:
    """A run record as the scheduled notebooks write it (``RunRecord``)."""
    run_id = new_run_id("backup", started)
    rec = RunRecord(job="backup", run_id=run_id, path=runs / f"{run_id}.json", started_at=started, status=status_)
    if status_ != "running":
        rec.finished_at, rec.exit_reason = started + timedelta(seconds=5), reason or "completed"
    rec.write()
    return rec.to_dict()


def write_drill(repo: Path, snapshot_id: str, ok: bool, started: datetime) -> record.DrillRecord:
    rec = record.DrillRecord(
        snapshot=snapshot_id,
        started_at=started.isoformat(),
        seconds=1.0,
        ok=ok,
        differences=[] if ok else ["public.orders: 3 rows restored, the snapshot has 4"],
    )
    record.write(open_storage(repo), rec)
    return rec


def status_cli(repo: Path, *args: str) -> tuple[int, dict]:
    out = run_cli("status", repo, "--json", *args)
    assert "Traceback" not in out.stderr, out.stderr
    data = json.loads(out.stdout)
    assert {"state", "exit_code", "reasons"} <= set(data)
    assert data["exit_code"] == out.returncode == STATE_CODES[data["state"]]
    return out.returncode, data


def set_created_at(folder: Path, when: datetime) -> None:
    m = mf.read(folder)
    m["created_at"] = when.isoformat()
    reseal(folder, m)


def created_at(folder: Path) -> datetime:
    return datetime.fromisoformat(mf.read(folder)["created_at"])


# -- 1. a drill that passes ---------------------------------------------------------------


def test_a_drill_on_an_embedded_server_passes_records_its_result_and_leaves_nothing(snap, drill_tmp):
    repo = snap.parent
    m = mf.read(snap)
    res = drill(snap, progress=False)
    assert res.ok and res.record.ok and res.record.differences == []
    assert res.record.snapshot == snap.name and res.record.target == "embedded"
    assert res.record.tables == len(m["tables"]) == 4 and res.record.rows == ROWS
    recorded = Path(res.recorded_as)
    assert recorded.parent == repo / record.DRILLS / snap.name and recorded.suffix == ".json"
    assert json.loads(recorded.read_text()) == res.record.to_dict()
    assert record.latest(open_storage(repo)) == res.record
    # The drill used a server folder of its own there, and removed it.
    assert drill_tmp.is_dir() and list(drill_tmp.iterdir()) == []

    out = run_cli("drill", repo, "--json", "-q")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["differences"] == [] and data["snapshot"] == snap.name
    assert data["rows"] == ROWS and data["target"] == "embedded"
    assert Path(data["recorded_as"]).is_file() and Path(data["recorded_as"]).parent == recorded.parent
    assert len(record.history(open_storage(repo))) == 2
    assert list(drill_tmp.iterdir()) == []
    assert not postmasters_of(drill_tmp.parent)
    # Without --json: one line saying it passed.
    out = run_cli("drill", repo, snap.name, "-q")
    assert out.returncode == 0 and "passed" in out.stdout, out.stderr


def test_a_drill_through_dsn_passes_and_drops_its_database(snap, pg_server, drill_tmp):
    res = drill(snap, dsn=pg_server.admin_dsn, progress=False)
    assert res.ok and res.record.target == "dsn" and res.record.rows == ROWS
    assert Path(res.recorded_as).is_file()
    assert drill_databases(pg_server, os.getpid()) == []

    pid, out = run_cli_with_pid("drill", snap.parent, "--dsn", pg_server.admin_dsn, "--json", "-q")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["target"] == "dsn" and data["snapshot"] == snap.name
    assert pg_server.password is None or pg_server.password not in out.stdout + out.stderr
    assert drill_databases(pg_server, pid) == []
    assert not drill_tmp.exists()  # no embedded server was started for it


# -- 2. a drill that finds differences ----------------------------------------------------


def test_a_data_file_with_other_rows_passes_verify_but_fails_the_drill_naming_the_table(snap, pg_server):
    original = copy_text(snap, file_entry(mf.read(snap), "customers", 1))
    # Other rows, as many and as long: one customer's name changed ("c…" becomes "z…").
    rel = replace_rows(snap, "customers", 1, lambda text: text.replace(b"\tc", b"\tz", 1))
    changed = copy_text(snap, file_entry(mf.read(snap), "customers", 1))
    assert changed != original and len(changed) == len(original) and changed.count(b"\n") == original.count(b"\n")
    report = backupkit.verify(snap, deep=True)
    assert report.ok, report.problems

    with pytest.raises(DrillFailed) as caught:
        drill(snap, dsn=pg_server.admin_dsn, progress=False)
    assert caught.value.exit_code == 14
    # Only that file of that table: the files after it are cut where they were and still match.
    [difference] = caught.value.differences
    assert difference.startswith("public.customers: ") and rel in difference and "text hash" in difference
    assert "public.customers" in str(caught.value)
    # The failure is recorded beside the snapshot.
    last = record.latest(open_storage(snap.parent))
    assert last is not None and last.ok is False and last.differences == [difference]
    assert [p.parent.name for p in (snap.parent / record.DRILLS).rglob("*.json")] == [snap.name]

    out = run_cli("drill", snap.parent, "--dsn", pg_server.admin_dsn, "-q")
    assert out.returncode == 14, out.stderr
    assert "public.customers" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
    assert len(record.history(open_storage(snap.parent))) == 2
    # ...and a monitor sees it.
    code, data = status_cli(snap.parent)
    assert code == 14 and data["state"] == "drill_failed" and "public.customers" in data["reasons"][0]


def test_more_rows_than_recorded_fail_the_drill(snap, pg_server):
    """The last file holds one more row (counts resealed too, so verify --deep passes)."""
    name = 'Odd "Name".x'
    replace_rows(snap, name, -1, lambda t: t + b"2\tmore\n")
    m = mf.read(snap)
    table = next(t for t in m["tables"] if t["name"] == name)
    table["rows"] += 1
    table["files"][-1]["rows"] += 1
    reseal(snap, m)
    assert backupkit.verify(snap, deep=True).ok
    with pytest.raises(DrillFailed) as caught:
        drill(snap, dsn=pg_server.admin_dsn, progress=False)
    key = mf.table_key(table)
    assert [d for d in caught.value.differences if d.startswith(key)] == [
        f"{key}: more rows restored than the snapshot's files held"
    ]


def test_sequence_differences_names_a_changed_and_a_missing_sequence(make_db):
    dsn = make_db("seq")
    with psycopg.connect(dsn, autocommit=True) as conn:  # as the drill's: the restore is committed
        conn.execute("CREATE SEQUENCE s1; SELECT setval('s1', 42)")
        same = {"schema": "public", "name": "s1", "last_value": 42, "is_called": True}
        assert compare.sequence_differences(conn, [same]) == []
        found = compare.sequence_differences(
            conn,
            [
                {**same, "last_value": 41},
                {**same, "is_called": False},
                {**same, "name": "gone"},
                same,
            ],
        )
    assert len(found) == 3
    assert found[0].startswith("sequence public.s1: 42") and "41" in found[0]
    assert found[1].startswith("sequence public.s1: 42")
    assert found[2] == "sequence public.gone: missing"


def test_sequence_differences_names_a_sequence_behind_its_column(make_db):
    """A sequence restored as recorded can still be behind the rows its column holds: the
    restored database would not take the next insert, and the drill says so."""
    dsn = make_db("seqbehind")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t (note) SELECT 'n' FROM generate_series(1, 10)")
        recorded = {
            "schema": "public",
            "name": "t_id_seq",
            "last_value": 10,
            "is_called": True,
            "owned_by": ["public", "t", "id"],
        }
        assert compare.sequence_differences(conn, [recorded]) == []  # next is 11: fine
        conn.execute("SELECT setval('t_id_seq', 9)")
        found = compare.sequence_differences(conn, [{**recorded, "last_value": 9}])
        assert found == [
            "sequence public.t_id_seq: its next value 10 is not above the largest public.t.id restored (10): "
            "the next insert would collide"
        ]
        conn.execute("SELECT setval('t_id_seq', 10, false)")  # not called: next is 10 itself
        assert len(compare.sequence_differences(conn, [{**recorded, "is_called": False}])) == 1
        conn.execute("DELETE FROM t")
        assert compare.sequence_differences(conn, [{**recorded, "is_called": False}]) == []  # no rows


def test_a_sequence_recorded_behind_its_rows_fails_the_drill(snap, pg_server):
    m = mf.read(snap)
    seq = next(s for s in m["sequences"] if s["name"] == "orders_id_seq")
    assert seq["last_value"] == 20000
    seq["last_value"] = 5  # the next order would get id 6, which exists: the restore would not work
    reseal(snap, m)
    assert backupkit.verify(snap, deep=True).ok
    with pytest.raises(DrillFailed) as caught:
        drill(snap, dsn=pg_server.admin_dsn, progress=False)
    assert any("orders_id_seq" in d for d in caught.value.differences)


def test_a_drill_whose_restore_fails_is_recorded_as_failed(snap, pg_server):
    # One row with a column too many: verify (even --deep) passes, the restore's COPY fails.
    replace_rows(snap, "orders", 2, lambda text: text.replace(b"\n", b"\textra\n", 1))
    assert backupkit.verify(snap, deep=True).ok
    with pytest.raises(backupkit.BackupkitError):
        drill(snap, dsn=pg_server.admin_dsn, progress=False)
    last = record.latest(open_storage(snap.parent))
    assert last is not None and last.ok is False
    assert status(snap.parent).state == "drill_failed"


def test_indexes_named_with_a_dot_or_a_quote_are_not_reported_missing(make_db, tmp_path, pg_server):
    dsn = make_db("idx")
    with psycopg.connect(dsn) as conn:
        conn.execute('CREATE TABLE t (a int, b int); CREATE INDEX "t.a_idx" ON t (a); CREATE INDEX "q""b" ON t (b)')
        conn.execute("INSERT INTO t VALUES (1, 2)")
    res = backupkit.backup(dsn, tmp_path / "repo", progress=False)
    assert {"t.a_idx", 'q"b'} <= set(mf.read(res.path)["tables"][0]["indexes"])
    assert drill(res.path, dsn=pg_server.admin_dsn, progress=False).ok


def test_the_public_name_backupkit_drill_is_the_function():
    code = "import backupkit.monitor.status, backupkit; assert callable(backupkit.drill), backupkit.drill"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert out.returncode == 0, out.stderr


# -- 3. kill -9 mid-drill -----------------------------------------------------------------


@contextlib.contextmanager
def killed_9(child):
    """Run the block's checks on the paused drill ``child``, then kill -9 it (and reap it whatever happened)."""
    try:
        yield
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


def test_kill_9_mid_drill_leaves_a_server_that_the_next_drill_removes(snap, source_snapshot, tmp_path, drill_tmp):
    child = start_paused_drill(snap.parent)
    with killed_9(child):
        [folder] = list(drill_tmp.glob(f"{target.PREFIX}*"))
        assert folder.name.startswith(f"{target.PREFIX}{child.pid}_")
        assert postmasters_of(folder), "the throwaway server should be running"
    # Nothing could clean up: the server folder is left, its server still running.
    assert folder.is_dir() and postmasters_of(folder)
    # The next drill, of another snapshot in another repository, removes it first.
    other = private_copy(source_snapshot, tmp_path / "other-repo")
    out = run_cli("drill", other.parent, "-q")
    assert out.returncode == 0, out.stderr
    assert not folder.exists()
    assert wait_for(lambda: not postmasters_of(folder), 10), "the leftover server still runs"
    assert list(drill_tmp.iterdir()) == []
    assert not postmasters_of(drill_tmp.parent)


def test_kill_9_mid_drill_leaves_a_database_that_the_next_dsn_drill_drops(snap, source_snapshot, tmp_path, pg_server):
    child = start_paused_drill(snap.parent, "--dsn", pg_server.admin_dsn)
    with killed_9(child):
        assert len(drill_databases(pg_server, child.pid)) == 1
    [leftover] = drill_databases(pg_server, child.pid)
    other = private_copy(source_snapshot, tmp_path / "other-repo")
    try:
        res = drill(other, dsn=pg_server.admin_dsn, progress=False)
        assert res.ok
        assert drill_databases(pg_server, child.pid) == [], f"{leftover} was left"
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')


def test_remove_leftovers_keeps_what_a_running_drill_uses(pg_server, drill_tmp):
    """A server folder whose drill process is alive is not touched; a dead one's is.  A
    database is kept while a session holds its drill's advisory lock (a running drill, of
    this machine or another), and dropped once nobody does, whatever pid its name carries."""
    alive, dead = os.getpid(), _dead_pid()
    drill_tmp.mkdir(parents=True)
    mine, gone = drill_tmp / f"{target.PREFIX}{alive}_ab12", drill_tmp / f"{target.PREFIX}{dead}_cd34"
    mine.mkdir()
    gone.mkdir()
    # Running elsewhere (its pid means nothing here), and left by a drill that died here.
    names = [f"{target.PREFIX}{dead}_ef56", f"{target.PREFIX}{alive}_0a0b"]
    with (
        psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn,
        psycopg.connect(pg_server.admin_dsn, autocommit=True) as running,
    ):
        for n in names:
            conn.execute(f'CREATE DATABASE "{n}"')
        running.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [target.LOCK_CLASS, names[0]])
        try:
            removed = target.remove_leftovers(pg_server.admin_dsn)
            assert gone.name in removed and names[1] in removed
            assert mine.name not in removed and names[0] not in removed
            assert mine.is_dir() and not gone.exists()
            assert drill_databases(pg_server, dead) == [names[0]] and drill_databases(pg_server, alive) == []
            running.close()  # that drill dies: its session, and so its lock, is gone
            assert names[0] in target.remove_leftovers(pg_server.admin_dsn)  # (others' leftovers may go too)
            assert drill_databases(pg_server, dead) == []
        finally:
            for n in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- 4. status ----------------------------------------------------------------------------


def test_status_of_a_fresh_snapshot_is_ok(snap):
    repo = snap.parent
    st = status(repo)
    assert (st.state, st.exit_code, st.reasons) == ("ok", 0, [])
    assert st.newest == snap.name and st.snapshots == 1 and st.stored_bytes > 0
    assert st.newest_age_hours is not None and 0 <= st.newest_age_hours < 1
    assert st.last_drill is None and st.last_run is None
    code, data = status_cli(repo)
    assert code == 0 and data["state"] == "ok" and data["reasons"] == [] and data["newest"] == snap.name
    out = run_cli("status", repo)
    assert out.returncode == 0 and "OK (exit 0)" in out.stdout, out.stderr


def test_status_is_stale_past_max_age(snap):
    repo, made = snap.parent, created_at(snap)
    assert status(repo, now=made + timedelta(hours=25)).state == "ok"  # the default: 26 h
    st = status(repo, now=made + timedelta(hours=27))
    assert (st.state, st.exit_code) == ("stale", 15)
    assert len(st.reasons) == 1 and "27.0 h old" in st.reasons[0] and "26 h" in st.reasons[0]
    assert status(repo, max_age=timedelta(hours=1), now=made + timedelta(hours=2)).state == "stale"
    assert status(repo, max_age=timedelta(days=3), now=made + timedelta(days=2)).state == "ok"
    # The CLI, on a snapshot that says it was made two days ago (resealed: not damaged).
    set_created_at(snap, datetime.now(UTC) - timedelta(days=2))
    assert backupkit.verify(snap).ok
    code, data = status_cli(repo)
    assert code == 15 and data["state"] == "stale" and 47 < data["newest_age_hours"] < 49
    assert run_cli("status", repo).returncode == 15
    assert status_cli(repo, "--max-age", "3d")[0] == 0
    assert status_cli(repo, "--max-age", "1d12h")[0] == 15
    bad = run_cli("status", repo, "--max-age", "90s")
    assert bad.returncode not in (0, 15) and "max-age" in bad.stderr and "Traceback" not in bad.stderr


def test_status_without_a_snapshot_is_stale(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    st = status(repo)
    assert (st.state, st.exit_code, st.newest, st.snapshots) == ("stale", 15, None, 0)
    assert st.reasons == ["no complete snapshot"]
    code, data = status_cli(repo)
    assert code == 15 and data["state"] == "stale" and data["newest"] is None


def test_status_of_a_damaged_newest_snapshot(snap):
    repo = snap.parent
    entry = file_entry(mf.read(snap), "orders", 0)
    path = stored_file(snap, entry)
    with open(path, "r+b") as f:
        f.truncate(entry["bytes"] // 2)
    st = status(repo)
    assert (st.state, st.exit_code) == ("damaged", 6)
    assert snap.name in st.reasons[0]
    code, data = status_cli(repo)
    assert code == 6 and data["state"] == "damaged"
    # A manifest that cannot be read is damage too.
    (snap / mf.MANIFEST).write_text("{not json")
    assert status(repo).state == "damaged"
    assert status_cli(repo)[0] == 6


def test_status_reports_a_newer_snapshot_whose_manifest_is_unreadable(snap, source_snapshot, tmp_path):
    repo = snap.parent
    set_created_at(snap, datetime.now(UTC) - timedelta(hours=2))  # an older, good snapshot
    newer_id = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%S.") + "000Z"
    newer = copy_snapshot_folder(source_snapshot, repo / newer_id)
    (newer / mf.MANIFEST).write_text("{not json")
    assert status(repo).state == "damaged"


def test_status_when_the_last_drill_failed(snap):
    repo, now = snap.parent, datetime.now(UTC)
    write_drill(repo, snap.name, ok=True, started=now - timedelta(hours=2))
    assert status(repo).state == "ok"
    write_drill(repo, snap.name, ok=False, started=now - timedelta(hours=1))
    st = status(repo)
    assert (st.state, st.exit_code) == ("drill_failed", 14)
    assert "public.orders" in st.reasons[0] and st.last_drill["ok"] is False
    code, data = status_cli(repo)
    assert code == 14 and data["state"] == "drill_failed" and data["last_drill"]["ok"] is False
    write_drill(repo, snap.name, ok=True, started=now)  # a newer drill passed
    assert status(repo).state == "ok"
    assert status_cli(repo)[0] == 0


def test_status_when_the_last_run_failed(snap, tmp_path):
    repo, runs, now = snap.parent, tmp_path / "runs", datetime.now(UTC)
    write_run(runs, "succeeded", now - timedelta(hours=3))
    assert status(repo, runs_dir=runs).state == "ok"
    write_run(runs, "failed", now - timedelta(hours=2), reason="ConnectionFailed: could not connect")
    st = status(repo, runs_dir=runs)
    assert (st.state, st.exit_code) == ("run_failed", 16)
    assert "ConnectionFailed: could not connect" in st.reasons[0] and st.last_run["status"] == "failed"
    code, data = status_cli(repo, "--runs", runs)
    assert code == 16 and data["state"] == "run_failed" and data["last_run"]["job"] == "backup"
    assert status_cli(repo)[0] == 0  # without --runs, runs are not looked at
    (runs / "junk.json").write_text("{not json")  # an unreadable file is skipped
    assert status(repo, runs_dir=runs).state == "run_failed"
    write_run(runs, "running", now - timedelta(hours=1))  # the newest run has not finished: not a failure
    assert status(repo, runs_dir=runs).state == "ok"
    write_run(runs, "succeeded", now)
    assert status_cli(repo, "--runs", runs)[0] == 0


def test_status_reports_the_worst_state_first(snap, tmp_path):
    repo, runs, now = snap.parent, tmp_path / "runs", datetime.now(UTC)
    later = created_at(snap) + timedelta(hours=30)  # stale
    entry = file_entry(mf.read(snap), "customers", 0)
    path = stored_file(snap, entry)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # damaged
    write_drill(repo, snap.name, ok=False, started=now)  # drill failed
    write_run(runs, "failed", now, reason="SourceError: boom")  # run failed

    def states(st) -> list[str]:
        return [
            k for k in ("damaged", "drill_failed", "run_failed", "stale") if any(_matches(k, r) for r in st.reasons)
        ]

    st = status(repo, runs_dir=runs, now=later)
    assert (st.state, st.exit_code, len(st.reasons)) == ("damaged", 6, 4)
    assert states(st) == ["damaged", "drill_failed", "run_failed", "stale"]
    path.write_bytes(good)
    st = status(repo, runs_dir=runs, now=later)
    assert (st.state, st.exit_code, len(st.reasons)) == ("drill_failed", 14, 3)
    write_drill(repo, snap.name, ok=True, started=now + timedelta(seconds=1))
    st = status(repo, runs_dir=runs, now=later)
    assert (st.state, st.exit_code, len(st.reasons)) == ("run_failed", 16, 2)
    write_run(runs, "succeeded", now + timedelta(seconds=1))
    st = status(repo, runs_dir=runs, now=later)
    assert (st.state, st.exit_code, len(st.reasons)) == ("stale", 15, 1)
    assert status(repo, runs_dir=runs).state == "ok"

    # The CLI, everything wrong at once (stale by an old created_at), then repaired step by step.
    set_created_at(snap, now - timedelta(days=2))
    path.write_bytes(good[:10])
    write_drill(repo, snap.name, ok=False, started=now + timedelta(seconds=2))
    write_run(runs, "failed", now + timedelta(seconds=2), reason="SourceError: boom")
    code, data = status_cli(repo, "--runs", runs)
    assert (code, data["state"], len(data["reasons"])) == (6, "damaged", 4)
    path.write_bytes(good)
    code, data = status_cli(repo, "--runs", runs)
    assert (code, data["state"], len(data["reasons"])) == (14, "drill_failed", 3)
    code, data = status_cli(repo)
    assert (code, data["state"], len(data["reasons"])) == (14, "drill_failed", 2)


def _matches(state: str, reason: str) -> bool:
    return {
        "damaged": "is damaged",
        "drill_failed": "the last drill",
        "run_failed": "the last run",
        "stale": "old (more than",
    }[state] in reason


def test_assess_takes_the_worst_of_every_combination():
    now = datetime(2026, 1, 2, tzinfo=UTC)
    order = ["damaged", "drill_failed", "run_failed", "stale"]
    for flags in itertools.product([False, True], repeat=4):
        damaged, drill_bad, run_bad, stale = flags
        facts = Facts(
            newest_id="s",
            newest_at=now - timedelta(hours=30 if stale else 1),
            newest_problems=["data/x: size differs"] if damaged else [],
            drill=record.DrillRecord("s", now.isoformat(), 1.0, ok=not drill_bad, differences=["d"] * drill_bad),
            run={"job": "backup", "run_id": "r", "status": "failed" if run_bad else "succeeded"},
        )
        state, reasons = assess(facts, now, timedelta(hours=26))
        expected = [name for name, on in zip(order, flags, strict=True) if on]
        assert state == (expected[0] if expected else "ok"), flags
        assert len(reasons) == len(expected)
        assert all(_matches(k, r) for k, r in zip(expected, reasons, strict=True)), reasons
    assert assess(Facts(None, None), now, timedelta(hours=26)) == ("stale", ["no complete snapshot"])
    assert STATE_CODES == {"ok": 0, "damaged": 6, "drill_failed": 14, "stale": 15, "run_failed": 16}


# -- 5. piece_hashes ----------------------------------------------------------------------

TEXT = b"".join(f"{i}\trow {i}\t{'x' * (i % 13)}\n".encode() for i in range(200))


def h(data: bytes) -> str:
    return TEXT_HASH + xxhash.xxh3_128(data).hexdigest()


def blocks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for s in sizes:
        out.append(data[at : at + s])
        at += s
    return out


SIZES = [37, 0, 463, len(TEXT) - 500]  # a zero: an empty file


@pytest.mark.parametrize("block", [1, 7, 64, 500, len(TEXT)])
def test_piece_hashes_of_exact_pieces(block):
    expected = [h(p) for p in pieces(TEXT, SIZES)]
    assert len(set(expected)) == 4
    assert list(compare.piece_hashes(blocks_of(TEXT, block), SIZES)) == expected
    assert list(compare.piece_hashes(iter(blocks_of(TEXT, block)), SIZES)) == expected  # any iterable
    assert list(compare.piece_hashes([], [])) == []


@pytest.mark.parametrize("block", [1, 7, 500])
def test_piece_hashes_of_a_short_stream(block):
    short = TEXT[:300]  # the first piece whole, the third cut short, the fourth missing
    got = list(compare.piece_hashes(blocks_of(short, block), SIZES))
    assert got == [h(TEXT[:37]), h(b""), h(TEXT[37:300]), h(b"")]
    full = [h(p) for p in pieces(TEXT, SIZES)]
    assert [g == f for g, f in zip(got, full, strict=True)] == [True, True, False, False]
    assert list(compare.piece_hashes([], [3, 4])) == [h(b""), h(b"")]


@pytest.mark.parametrize("block", [1, 7, 500])
def test_piece_hashes_of_extra_trailing_rows(block):
    extra = b"200\trow 200\t\n201\tmore\t\n"
    got = list(compare.piece_hashes(blocks_of(TEXT + extra, block), SIZES))
    assert got == [*(h(p) for p in pieces(TEXT, SIZES)), h(extra)]
    assert list(compare.piece_hashes([b"a\n", b"b\n"], [])) == [h(b"a\nb\n")]
    assert list(compare.piece_hashes([b"ab"], [0])) == [h(b""), h(b"ab")]


# -- 6. a --dsn whose role cannot do everything a drill does --------------------------------


@pytest.fixture
def drill_role(pg_server):
    """Factory: ``drill_role("CREATEDB")`` makes a login role (never a superuser) with those
    attributes and returns a DSN of the test server's database as that role.  The role, and
    every database it owns, is dropped after the test."""
    made: list[str] = []

    def make(attributes: str = "") -> str:
        role = f"bk_drill_{secrets.token_hex(4)}"
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER {} PASSWORD {}").format(
                    sql.Identifier(role), sql.SQL(attributes), sql.Literal(ROLE_PASSWORD)
                )
            )
        made.append(role)
        return make_conninfo(pg_server.admin_dsn, user=role, password=ROLE_PASSWORD)

    yield make
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        for role in made:
            owned = conn.execute(
                "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s)", [role]
            )
            for (name,) in owned.fetchall():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))


#: The drill roles' password: a message that shows it leaks the DSN.
ROLE_PASSWORD = "drill-pw-" + secrets.token_hex(6)


def role_of(dsn: str) -> str:
    return conninfo_to_dict(dsn)["user"]


def database_exists(pg_server, name: str) -> bool:
    with psycopg.connect(pg_server.admin_dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def leftover_name() -> str:
    """A throwaway database's name as a drill that died (a pid no process has) left it."""
    return f"{target.PREFIX}{_dead_pid()}_{secrets.token_hex(4)}"


def test_a_dsn_role_without_createdb_gets_one_error_saying_to_grant_it(snap, pg_server, drill_role):
    dsn = drill_role()  # may log in, may not create databases
    role = role_of(dsn)
    with pytest.raises(ConfigError) as caught:
        drill(snap, dsn=dsn, progress=False)
    assert caught.value.exit_code == 2
    assert role in str(caught.value) and "may not create databases" in str(caught.value)
    assert "CREATEDB" in caught.value.hint and f'ALTER ROLE "{role}" CREATEDB' in caught.value.hint
    assert ROLE_PASSWORD not in str(caught.value) + caught.value.hint
    # Nothing was restored, so nothing is recorded against the snapshot, and no database is left.
    assert record.latest(open_storage(snap.parent)) is None
    assert drill_databases(pg_server, os.getpid()) == []

    out = run_cli("drill", snap.parent, "--dsn", dsn, "-q")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and ROLE_PASSWORD not in out.stdout + out.stderr
    error, hint = out.stderr.strip().splitlines()
    assert error.startswith(f"error: --dsn role {role} may not create databases")
    assert hint.startswith("hint: grant the role CREATEDB") and "another `--dsn`" in hint
    assert record.latest(open_storage(snap.parent)) is None


def test_leftovers_the_dsn_role_cannot_drop_are_warned_about_and_the_drill_still_runs(
    snap, pg_server, drill_role, caplog
):
    """Another role's leftover ("must be owner"), and the role's own one held open by a
    superuser's session (which it may not end): each is named in a warning and left; the drill
    makes, fills, compares and drops its own database as usual."""
    dsn = drill_role("CREATEDB")
    others, held = leftover_name(), leftover_name()
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(others)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(held)))
    session = psycopg.connect(pg_server.dsn(held), autocommit=True)  # the admin: a superuser
    try:
        with caplog.at_level(logging.WARNING, logger="backupkit"):
            res = drill(snap, dsn=dsn, progress=False)
        assert res.ok and res.record.target == "dsn" and res.record.rows == ROWS
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for name in (others, held):
            [line] = [w for w in warned if name in w]
            assert line.startswith(f"drill: cannot remove {name}, left by a drill that did not finish: ")
            assert "drop it as its owner or a superuser" in line
        assert "must be owner of database" in next(w for w in warned if others in w)
        assert ROLE_PASSWORD not in "".join(warned)
        assert database_exists(pg_server, others) and database_exists(pg_server, held)
        assert drill_databases(pg_server, os.getpid()) == []  # its own database is gone

        out = run_cli("drill", snap.parent, "--dsn", dsn, "-q")
        assert out.returncode == 0, out.stderr
        assert "passed" in out.stdout and "Traceback" not in out.stderr
        assert f"warning: drill: cannot remove {others}" in out.stderr
        assert f"warning: drill: cannot remove {held}" in out.stderr
        assert ROLE_PASSWORD not in out.stdout + out.stderr
    finally:
        session.close()
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            for name in (others, held):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _held_open_during_comparison(monkeypatch, pg_server) -> list[psycopg.Connection]:
    """While the drill compares, a superuser's session opens its throwaway database, so the
    drill's role cannot drop it at the end (it may not end a superuser's session).  Only the
    timing is arranged: the comparison itself runs unchanged."""
    sessions: list[psycopg.Connection] = []
    compare_table = compare.table_differences

    def hold_then_compare(conn, table):
        if not sessions:
            sessions.append(psycopg.connect(pg_server.dsn(conn.info.dbname), autocommit=True))
        return compare_table(conn, table)

    monkeypatch.setattr(compare, "table_differences", hold_then_compare)
    return sessions


def test_a_throwaway_database_that_cannot_be_dropped_leaves_the_verdict_and_a_warning(
    snap, pg_server, drill_role, caplog, monkeypatch
):
    dsn = drill_role("CREATEDB")
    sessions = _held_open_during_comparison(monkeypatch, pg_server)
    try:
        with caplog.at_level(logging.WARNING, logger="backupkit"):
            res = drill(snap, dsn=dsn, progress=False)
        assert res.ok and res.record.target == "dsn"
        assert record.latest(open_storage(snap.parent)) == res.record
        [name] = drill_databases(pg_server, os.getpid())  # left behind...
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.startswith(f"drill: cannot drop the throwaway database {name}: ")  # ...and said so
        assert "the next drill on this server removes it" in warning
    finally:
        for session in sessions:
            session.close()
    # Once nobody holds it, the next drill (as that role) removes it, as the warning said.
    monkeypatch.undo()
    assert name in target.remove_leftovers(dsn)
    assert drill_databases(pg_server, os.getpid()) == []


def test_a_drill_that_fails_keeps_its_verdict_when_its_database_cannot_be_dropped(
    snap, pg_server, drill_role, caplog, monkeypatch
):
    replace_rows(snap, "customers", 1, lambda text: text.replace(b"\tc", b"\tz", 1))
    dsn = drill_role("CREATEDB")
    sessions = _held_open_during_comparison(monkeypatch, pg_server)
    try:
        with caplog.at_level(logging.WARNING, logger="backupkit"), pytest.raises(DrillFailed) as caught:
            drill(snap, dsn=dsn, progress=False)
        assert caught.value.exit_code == 14 and "public.customers" in str(caught.value)
        [name] = drill_databases(pg_server, os.getpid())
        assert any(
            r.getMessage().startswith(f"drill: cannot drop the throwaway database {name}") for r in caplog.records
        )
        # An interruption (Ctrl-C) during the comparison stays an interruption too.
        sessions[0].close()
        sessions.clear()

        def interrupted(conn, table):
            sessions.append(psycopg.connect(pg_server.dsn(conn.info.dbname), autocommit=True))
            raise KeyboardInterrupt

        monkeypatch.setattr(compare, "table_differences", interrupted)
        with pytest.raises(KeyboardInterrupt):
            drill(snap, dsn=dsn, progress=False)
    finally:
        for session in sessions:
            session.close()
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            for name in drill_databases(pg_server, os.getpid()):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_server_that_refuses_the_new_database_for_another_reason_is_a_restore_error(snap):
    """A session on template1 (the template CREATE DATABASE copies) makes the server refuse it.
    On a server of its own: such a session stalls every other test's CREATE DATABASE."""
    import types

    from backupkit.pg.embedded import temporary_server

    server = temporary_server().start()
    password = server.password
    try:
        with psycopg.connect(server.dsn("template1"), autocommit=True), pytest.raises(RestoreError) as caught:
            drill(snap, dsn=server.dsn(), progress=False)
        left = drill_databases(types.SimpleNamespace(admin_dsn=server.dsn()), os.getpid())
    finally:
        server.stop()
    assert caught.value.exit_code == 9
    message = str(caught.value)
    assert message.startswith("cannot create the drill's throwaway database backupkit_drill_")
    assert 'source database "template1" is being accessed by other users' in message
    assert "run the drill again" in caught.value.hint
    assert password not in message + caught.value.hint
    assert record.latest(open_storage(snap.parent)) is None  # the snapshot was never tried
    assert left == []


def test_a_name_whose_lock_another_session_holds_is_replaced_by_a_fresh_one(snap, pg_server, monkeypatch):
    """The drill's lock on a new name can only be taken already when its key collides with
    another session's (hashtext): the drill takes another name; after five, it gives up."""
    taken = f"{target.PREFIX}{os.getpid()}_0c011ide"
    fresh = f"{target.PREFIX}{os.getpid()}_0f7e5400"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [target.LOCK_CLASS, taken])
        names = iter([taken, taken, fresh])
        monkeypatch.setattr(target, "_new_name", lambda: next(names))
        res = drill(snap, dsn=pg_server.admin_dsn, progress=False)
        assert res.ok and next(names, None) is None  # the third name was used
        monkeypatch.setattr(target, "_new_name", lambda: taken)
        with pytest.raises(RestoreError) as caught:
            drill(snap, dsn=pg_server.admin_dsn, progress=False)
    assert caught.value.exit_code == 9 and "cannot reserve a name" in str(caught.value)
    assert "run the drill again" in caught.value.hint
    assert drill_databases(pg_server, os.getpid()) == []
