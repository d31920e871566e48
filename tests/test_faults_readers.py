"""Readers of a snapshot under faults and hostile input (issue 13): every reader checks what it
reads, glob characters in paths read nothing else, and the SQL lens reads the snapshot only."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import duckdb
import psycopg
import pytest
import zstandard
from helpers import copy_snapshot_folder, load_small, run_cli, stored_file

import backupkit
from backupkit.errors import SnapshotDamaged
from backupkit.lens.diff import diff_snapshots
from backupkit.lens.duck import open_snapshot, relation_sql
from backupkit.lens.integrity import integrity
from backupkit.notebook.explore import query
from backupkit.snapshot import datafile
from backupkit.snapshot import manifest as mf
from backupkit.storage import pool

CHANGED = 800


@pytest.fixture(scope="module")
def snaps(pg_server, tmp_path_factory):
    """The small database before and after CHANGED orders were updated."""
    dsn = pg_server.createdb("readers")
    root = tmp_path_factory.mktemp("readers")
    try:
        load_small(dsn)
        before = backupkit.backup(dsn, root, label="before", progress=False).path
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE orders SET note = 'changed' WHERE id <= {CHANGED}")
        after = backupkit.backup(dsn, root, label="after", progress=False).path
        yield before, after
    finally:
        pg_server.dropdb(dsn)


def copy_of(snapshot: Path, dest: Path) -> Path:
    """A private copy of a snapshot, its shared files in the pool of ``dest``'s parent folder."""
    return copy_snapshot_folder(snapshot, dest)


def entry_of(folder: Path, name: str) -> dict:
    return next(t for t in mf.read(folder)["tables"] if t["name"] == name)


def listing(folder: Path) -> dict[str, str]:
    """Every file of a snapshot's folder and of its repository's pool (its shared data files), hashed."""
    repo = folder.parent
    return {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted([*folder.rglob("*"), *(repo / pool.POOL).rglob("*")])
        if p.is_file()
    }


def reseal(folder: Path, manifest: dict) -> None:
    (folder / mf.MANIFEST).unlink()
    mf.write(folder, {k: v for k, v in manifest.items() if k != "manifest_sha256"})


def two_frames(folder: Path, name: str) -> tuple[Path, int]:
    """Rewrite a table's first file as two zstd frames (the manifest resealed to match);
    return the file and the length of its first frame.  A shared file is named by its
    hash: the new one goes into the pool under its own (the old one is left there)."""
    m = mf.read(folder)
    entry = next(t for t in m["tables"] if t["name"] == name)["files"][0]
    path = stored_file(folder, entry)
    data = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True).read()
    cut = data.index(b"\n", len(data) // 2) + 1
    first = zstandard.ZstdCompressor().compress(data[:cut])
    stored = first + zstandard.ZstdCompressor().compress(data[cut:])
    entry["bytes"], entry["sha256"] = len(stored), hashlib.sha256(stored).hexdigest()
    if entry.get("shared") is True:
        path = folder.parent / pool.blob_name(entry["sha256"])
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)
    reseal(folder, m)
    return path, len(first)


def damage(folder: Path, how: str) -> str:
    """Damage public.orders' first file of ``folder``; return its name (as the manifest names it)."""
    entry = entry_of(folder, "orders")["files"][0]
    if how == "truncated at a frame boundary":
        path, first = two_frames(folder, "orders")
        with open(path, "r+b") as f:
            f.truncate(first)
        return Path(entry["path"]).name
    path = stored_file(folder, entry)
    if how == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "missing":
        path.unlink()
    return Path(entry["path"]).name


DAMAGE = ["flipped byte", "truncated at a frame boundary", "missing"]


def test_a_frame_boundary_truncation_reads_as_a_shorter_file(snaps, tmp_path):
    # Why every reader must hash: DuckDB reads the truncated file without an error.
    copy = copy_of(snaps[0], tmp_path / "s")
    path, first = two_frames(copy, "orders")
    assert open_snapshot(copy).execute("SELECT count(*) FROM public.orders").fetchone()[0] == 20000
    with open(path, "r+b") as f:
        f.truncate(first)
    short = duckdb.connect().execute(f"SELECT count(*) FROM ({relation_sql(copy, entry_of(copy, 'orders'))})")
    assert 0 < short.fetchone()[0] < 20000


@pytest.mark.parametrize("how", DAMAGE)
def test_open_snapshot_refuses_a_damaged_file_naming_it(snaps, tmp_path, how):
    copy = copy_of(snaps[0], tmp_path / "s")
    name = damage(copy, how)
    datafile.forget_checked()
    with pytest.raises(SnapshotDamaged) as err:
        open_snapshot(copy)
    assert name in str(err.value) and "backupkit verify" in err.value.hint
    with pytest.raises(SnapshotDamaged, match=re.escape(name)):
        query(copy, "SELECT count(*) FROM public.customers")  # the explore notebook


@pytest.mark.parametrize("how", DAMAGE)
def test_sql_exits_6_on_damage_even_when_reading_another_table(snaps, tmp_path, how):
    copy = copy_of(snaps[0], tmp_path / "s")
    name = damage(copy, how)
    r = run_cli("sql", copy, "SELECT count(*) FROM public.customers")
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and name in r.stderr and "2000" not in r.stdout


def test_integrity_does_not_read_a_damaged_table(snaps, tmp_path):
    copy = copy_of(snaps[0], tmp_path / "s")
    name = damage(copy, "flipped byte")
    report = integrity(copy)
    assert report["ok"] is False
    orders = [c for c in report["checks"] if c["table"] == "public.orders"]
    assert orders and all(not c["ok"] and name in c["detail"] and "not checked" in c["detail"] for c in orders)
    customers = next(c for c in report["checks"] if c["table"] == "public.customers" and c["check"] == "primary_key")
    assert customers["ok"] is True


def test_diff_refuses_damaged_schema_sql(snaps, tmp_path):
    copy = copy_of(snaps[1], tmp_path / "s")
    pre = copy / mf.PRE_DATA
    pre.write_text(pre.read_text().replace("CREATE TABLE", "CREATE  TABLE", 1))
    with pytest.raises(SnapshotDamaged, match="pre-data.sql"):
        diff_snapshots(snaps[0], copy)


def test_files_are_hashed_once_per_process_until_they_change(snaps, tmp_path, monkeypatch):
    copy = copy_of(snaps[0], tmp_path / "s")
    hashed = []
    real = datafile.stream_sha256
    monkeypatch.setattr(datafile, "stream_sha256", lambda f: hashed.append(f) or real(f))
    datafile.forget_checked()
    files = sum(len(t["files"]) for t in mf.read(copy)["tables"])
    open_snapshot(copy).close()
    assert len(hashed) == files
    open_snapshot(copy).close()
    assert len(hashed) == files
    path = stored_file(copy, entry_of(copy, "orders")["files"][0])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    open_snapshot(copy).close()
    assert len(hashed) == files + 1


def test_manifest_paths_leaving_the_snapshot_are_refused(snaps, tmp_path):
    copy = copy_of(snaps[0], tmp_path / "s")
    m = mf.read(copy)
    entry = next(t for t in m["tables"] if t["name"] == "orders")["files"][0]
    stored, original = stored_file(copy, entry), entry["path"]
    outside = tmp_path / "outside.copy.zst"
    shutil.copy(stored, outside)
    for bad in (str(outside), "../outside.copy.zst"):
        entry["path"] = bad
        reseal(copy, m)
        with pytest.raises(SnapshotDamaged, match="outside"):
            open_snapshot(copy)
    # A link where a file of the snapshot's folder is read (an entry not shared)...
    (copy / mf.DATA_DIR).mkdir(exist_ok=True)
    link = copy / "data" / "link.copy.zst"
    link.symlink_to(outside)
    entry["path"] = "data/link.copy.zst"
    shared = entry.pop("shared", None)
    reseal(copy, m)
    datafile.forget_checked()
    with pytest.raises(SnapshotDamaged, match="symlink"):
        open_snapshot(copy)
    # ...and where a shared file is read: the repository's pool.
    assert shared is True
    link.unlink()
    entry.update(path=original, shared=True)
    reseal(copy, m)
    stored.unlink()
    stored.symlink_to(outside)
    datafile.forget_checked()
    with pytest.raises(SnapshotDamaged, match="symlink"):
        open_snapshot(copy)


# -- glob characters ----------------------------------------------------------------------


@pytest.mark.parametrize("name, decoys", [("glob[1]", ["glob1"]), ("st*r", ["star", "stXr"]), ("q?m", ["qxm"])])
def test_glob_characters_in_a_folder_read_only_that_folder(snaps, tmp_path, name, decoys):
    # The data files DuckDB reads are in the repository's pool: the repository folder (and the
    # snapshot's) has the glob characters, and each decoy repository holds the other snapshot,
    # plus the other snapshot's orders where the target's orders file would match the pattern.
    before, after = snaps
    target = copy_of(before, tmp_path / name / name)
    orders = entry_of(target, "orders")["files"][0]
    assert orders.get("shared") is True
    others = stored_file(after, entry_of(after, "orders")["files"][0]).read_bytes()
    for d in decoys:  # repositories the pattern would match, holding the other snapshot
        copy_of(after, tmp_path / d / d)
        decoy = tmp_path / d / stored_file(target, orders).relative_to(tmp_path / name)
        assert not decoy.exists()
        decoy.parent.mkdir(parents=True, exist_ok=True)
        decoy.write_bytes(others)
    with open_snapshot(target) as con:
        got = con.execute("SELECT count(*) FILTER (WHERE note = 'changed'), count(*) FROM public.orders").fetchone()
    assert got == (0, 20000)
    other = tmp_path / decoys[0] / decoys[0]
    for old, new in ((target, other), (other, target)):
        orders = next(t for t in diff_snapshots(old, new)["tables"] if t["name"] == "orders")
        assert orders["updated"] == CHANGED, (old, new)
    assert integrity(target)["ok"] is True
    r = run_cli("sql", target, "SELECT 'n=' || count(*) AS x FROM public.orders WHERE note = 'changed'")
    assert r.returncode == 0 and "n=0" in r.stdout, (r.stdout, r.stderr)


# -- the sandbox ----------------------------------------------------------------------------


def test_the_lens_reads_the_snapshot_and_nothing_else(snaps, tmp_path):
    snap = copy_of(snaps[0], tmp_path / "snap")
    files = listing(snap)
    data = stored_file(snap, entry_of(snap, "orders")["files"][0])  # the file DuckDB reads
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,2\n")
    out = tmp_path / "written"
    con = open_snapshot(snap)
    refused = [
        f"SELECT * FROM read_csv('{outside}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM read_csv('{tmp_path}/*.csv')",
        f"COPY (SELECT 1) TO '{out}.csv'",
        f"COPY (SELECT 1) TO '{snap}/new.csv'",
        f"COPY (SELECT 1) TO '{data}' (USE_TMP_FILE false)",  # a file DuckDB may read
        f"COPY public.orders TO '{data}'",
        f"ATTACH '{out}.db'",
        f"ATTACH '{data}' AS d",
        "ATTACH ':memory:' AS m",
        f"EXPORT DATABASE '{out}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "SET allowed_directories = ['/']",
        f"SET temp_directory = '{snap}'",
        f"SET log_query_path = '{out}.log'",
        f"PRAGMA log_query_path = '{out}.log'",
        f"CREATE TABLE t AS SELECT * FROM read_csv('{outside}')",
        "SELECT 1; COPY (SELECT 1) TO '/tmp/backupkit-lens-test.csv'",
    ]
    for sql in refused:
        with pytest.raises(duckdb.Error):
            con.execute(sql).fetchall()
    with pytest.raises(duckdb.PermissionException, match="opening it with `external_access` lifts this"):
        con.sql(f"COPY (SELECT 1) TO '{out}.csv'")
    shown = run_cli("sql", snap, f"COPY (SELECT 1) TO '{out}.csv'")  # in the command's words
    assert shown.returncode == 2 and "opening it with `--external-access` lifts this" in shown.stderr, shown.stderr
    with pytest.raises(duckdb.Error):  # cursors and chained calls are guarded too
        con.cursor().execute(f"COPY (SELECT 1) TO '{out}.csv'")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT 1").execute(f"COPY (SELECT 1) TO '{out}.csv'")
    # What a query needs still works.
    con.execute("SET TimeZone = 'Europe/Paris'")
    con.execute("CREATE TEMP TABLE few AS SELECT * FROM public.orders LIMIT 3")
    assert con.execute("SELECT count(*) FROM few").fetchall() == [(3,)]
    assert con.sql("SELECT count(*) FROM public.orders").fetchall() == [(20000,)]
    con.close()
    assert listing(snap) == files
    assert not list(tmp_path.glob("written*")) and not Path("/tmp/backupkit-lens-test.csv").exists()


def test_external_access_opts_out_of_the_sandbox(snaps, tmp_path):
    with open_snapshot(snaps[0], external_access=True) as con:
        con.execute(f"COPY (SELECT count(*) FROM public.orders) TO '{tmp_path / 'n.csv'}' (HEADER false)")
    assert (tmp_path / "n.csv").read_text().strip() == "20000"


def test_sql_command_is_sandboxed(snaps, tmp_path):
    snap = copy_of(snaps[0], tmp_path / "snap")
    files = listing(snap)
    out = tmp_path / "x.csv"
    for sql in (
        "select * from read_csv('/etc/passwd')",
        f"COPY (select 1) TO '{out}'",
        f"ATTACH '{tmp_path / 'x.db'}'",
        f"COPY (select 1) TO '{snap / 'x.csv'}'",
    ):
        r = run_cli("sql", snap, sql)
        assert r.returncode != 0, (sql, r.stdout)
        assert "Traceback" not in r.stderr and "Permission" in r.stderr, (sql, r.stderr)
    assert not out.exists() and not (tmp_path / "x.db").exists() and listing(snap) == files


def test_explore_query_is_sandboxed(snaps, tmp_path):
    with pytest.raises(duckdb.Error):
        query(snaps[0], f"COPY (select 1) TO '{tmp_path / 'x.csv'}'")
    with pytest.raises(duckdb.Error):
        query(snaps[0], "select * from read_csv('/etc/passwd')")
    assert query(snaps[0], "SELECT count(*) AS n FROM public.customers")["n"][0] == 2000
    assert not (tmp_path / "x.csv").exists()
