"""Deduplication: a repository stores each distinct data file once (``backupkit.storage.pool``).

Real backups of a real database into real folders and a real S3 server: a second backup
of unchanged rows adds only its manifest and schema; appended rows add only the chunks
they land in; prune removes what no kept snapshot uses, also when killed half-way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
from helpers import load_small, run_cli, stored_file

import backupkit
from backupkit.snapshot import manifest as mf
from backupkit.storage import pool
from backupkit.storage.repository import list_snapshots

REPO = Path(__file__).resolve().parents[1]


def files_under(root: Path) -> set[str]:
    """Every file in a repository folder, relative to it (the lock aside)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def pool_files(root: Path) -> set[str]:
    return {f for f in files_under(root) if f.startswith(pool.POOL + "/")}


def shared_of(snapshot: Path) -> set[str]:
    return set(pool.referenced(mf.read(snapshot)))


def test_a_second_backup_of_unchanged_data_adds_only_its_manifest_and_schema(make_db, tmp_path):
    dsn = make_db("dd1")
    load_small(dsn)
    repo = tmp_path / "repo"
    first = backupkit.backup(dsn, repo, progress=False)
    before = files_under(repo)
    second = backupkit.backup(dsn, repo, progress=False)
    added = files_under(repo) - before
    assert added == {f"{second.id}/{f['path']}" for f in second.manifest["schema_files"]} | {
        f"{second.id}/{mf.MANIFEST}"
    }
    # Every data file is shared, the same files as the first snapshot's, and none is in a folder.
    data = [f for t in second.manifest["tables"] for f in t["files"]]
    assert data and all(f.get("shared") is True for f in data)
    assert shared_of(second.path) == shared_of(first.path) == pool_files(repo)
    assert not (second.path / mf.DATA_DIR).exists()
    assert second.reused_bytes == sum(f["bytes"] for f in data) and second.new_bytes < second.bytes
    for res in (first, second):
        assert backupkit.verify(res.location, deep=True).ok

    # list: each snapshot's size, what it alone holds, and the repository's totals.
    listing = json.loads(run_cli("list", repo, "--json").stdout)
    sizes = {s["id"]: s for s in listing["snapshots"]}
    schema_bytes = sum(f["bytes"] for f in second.manifest["schema_files"])
    assert sizes[second.id]["bytes"] == second.bytes and sizes[second.id]["unique_bytes"] == schema_bytes
    assert listing["logical_bytes"] == first.bytes + second.bytes
    assert listing["stored_bytes"] == first.bytes + schema_bytes
    text = run_cli("list", repo).stdout
    assert "total: 2 snapshot(s)" in text and "stored" in text


def test_appended_rows_add_only_the_chunks_they_land_in(make_db, tmp_path):
    dsn = make_db("dd2")
    load_small(dsn)
    repo = tmp_path / "repo"
    chunk = 128 << 10  # orders (20,000 rows) in several chunks
    first = backupkit.backup(dsn, repo, chunk_bytes=chunk, progress=False)
    orders = next(t for t in first.manifest["tables"] if t["name"] == "orders")
    assert len(orders["files"]) >= 4
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (customer_id, total, note) SELECT 1, i, 'new' FROM generate_series(1, 200) i")
    before = pool_files(repo)
    second = backupkit.backup(dsn, repo, chunk_bytes=chunk, progress=False)
    new = pool_files(repo) - before
    orders2 = next(t for t in second.manifest["tables"] if t["name"] == "orders")
    changed = {f["path"] for f in orders2["files"] if pool.blob_name(f["sha256"]) in new}
    # The rows went to the table's end: its last chunk (or a new one after it) is new, nothing else.
    assert new and changed <= {f["path"] for f in orders2["files"][-2:]}
    assert new == {pool.blob_name(f["sha256"]) for f in orders2["files"] if f["path"] in changed}
    assert second.new_bytes < second.bytes / 4
    assert backupkit.verify(second.location, deep=True).ok and orders2["rows"] == orders["rows"] + 200


def test_prune_removes_what_no_kept_snapshot_uses(make_db, tmp_path):
    dsn = make_db("dd3")
    load_small(dsn)
    repo = tmp_path / "repo"
    old = backupkit.backup(dsn, repo, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = name || '!'")
    new = backupkit.backup(dsn, repo, progress=False)
    only_old = shared_of(old.path) - shared_of(new.path)
    assert only_old and shared_of(new.path) & shared_of(old.path)  # some changed, some shared

    dry = json.loads(run_cli("prune", repo, "--keep-last", "1", "--dry-run", "--json").stdout)
    assert dry["shared_removed"] == len(only_old) and pool_files(repo) == shared_of(old.path) | shared_of(new.path)
    out = run_cli("prune", repo, "--keep-last", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["removed"] == [old.id] and result["shared_removed"] == len(only_old)
    assert result["shared_bytes_freed"] == sum(pool.referenced(old.manifest)[n] for n in only_old)
    assert pool_files(repo) == shared_of(new.path)
    assert backupkit.verify(new.location, deep=True).ok
    assert "freed" not in run_cli("prune", repo, "--keep-last", "1").stdout  # nothing more to free


#: prune in a child process, killed (SIGKILL) as it removes its second shared file.
KILLED_PRUNE = """
import os, signal, sys
from backupkit.storage.local import LocalStorage
real, seen = LocalStorage.remove, []
def remove(self, name):
    if name.startswith(".shared/"):
        seen.append(name)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, name)
LocalStorage.remove = remove
from backupkit.cli import main
main(["prune", sys.argv[1], "--keep-last", "1"])
print("not reached", flush=True)
"""


def test_prune_killed_while_collecting_never_harms_a_kept_snapshot(make_db, tmp_path):
    dsn = make_db("dd4")
    load_small(dsn)
    repo = tmp_path / "repo"
    chunk = 128 << 10
    old = backupkit.backup(dsn, repo, chunk_bytes=chunk, progress=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE orders SET note = 'changed' WHERE id % 2 = 0")  # every chunk changes
        conn.execute("INSERT INTO customers (name) VALUES ('one more')")
    kept = backupkit.backup(dsn, repo, chunk_bytes=chunk, progress=False)
    doomed = shared_of(old.path) - shared_of(kept.path)
    assert len(doomed) >= 3

    child = subprocess.run(
        [sys.executable, "-c", KILLED_PRUNE, str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "not reached" not in child.stdout
    left = pool_files(repo)
    assert shared_of(kept.path) <= left and 0 < len(left & doomed) < len(doomed)  # killed half-way
    assert [s.id for s in list_snapshots(repo)[0]] == [kept.id]
    assert backupkit.verify(kept.location, deep=True).ok

    # The files left over now belong to no snapshot ever listed: orphans, kept for a grace period
    # (they could be a running backup's), then removed.  The next prune takes over the dead lock.
    out = run_cli("prune", repo, "--keep-last", "1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["shared_removed"] == 0, out.stderr
    assert pool_files(repo) == shared_of(kept.path) | (left & doomed)
    out = run_cli("prune", repo, "--keep-last", "1", "--stale-after-hours", "0", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["shared_removed"] == len(left & doomed)
    assert pool_files(repo) == shared_of(kept.path)
    assert backupkit.verify(kept.location, deep=True).ok


def test_copy_carries_shared_files_and_stores_each_once(make_db, tmp_path):
    dsn = make_db("dd5")
    load_small(dsn)
    repo = tmp_path / "a"
    ids = [backupkit.backup(dsn, repo, progress=False).id for _ in range(2)]
    out = run_cli("copy", repo, tmp_path / "b")
    assert out.returncode == 0, out.stderr
    assert pool_files(tmp_path / "b") == pool_files(repo)
    for sid in ids:
        assert backupkit.verify(tmp_path / "b" / sid, deep=True).ok
        assert (tmp_path / "b" / sid / mf.MANIFEST).read_bytes() == (repo / sid / mf.MANIFEST).read_bytes()
    a = json.loads(run_cli("list", repo, "--json").stdout)
    b = json.loads(run_cli("list", tmp_path / "b", "--json").stdout)
    assert (a["logical_bytes"], a["stored_bytes"]) == (b["logical_bytes"], b["stored_bytes"])


def test_a_damaged_shared_file_is_never_reused(make_db, tmp_path):
    """A pool file whose size is wrong (a crash mid-copy, an edit) is not trusted: the next
    backup keeps its own copy, verifies, and the snapshot that uses the damaged file fails."""
    dsn = make_db("dd6")
    load_small(dsn)
    repo = tmp_path / "repo"
    first = backupkit.backup(dsn, repo, progress=False)
    entry = max((f for t in first.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    damaged = stored_file(first.path, entry)
    damaged.write_bytes(damaged.read_bytes()[:-1])
    second = backupkit.backup(dsn, repo, progress=False)
    own = next(f for t in second.manifest["tables"] for f in t["files"] if f["path"] == entry["path"])
    assert "shared" not in own and (second.path / own["path"]).is_file()
    assert backupkit.verify(second.location, deep=True).ok
    assert not backupkit.verify(first.location).ok


def test_no_dedup_writes_a_folder_that_stands_alone(make_db, tmp_path):
    dsn = make_db("dd7")
    load_small(dsn)
    out = run_cli("backup", "--dsn", dsn, "--to", tmp_path / "repo", "--no-dedup", "-q")
    assert out.returncode == 0, out.stderr
    snapshot = Path(out.stdout.strip())
    assert not (tmp_path / "repo" / pool.POOL).exists()
    assert all("shared" not in f for t in mf.read(snapshot)["tables"] for f in t["files"])
    assert backupkit.verify(snapshot, deep=True).ok


def test_on_s3_a_second_unchanged_backup_uploads_no_data_file(make_db, s3_bucket, s3_client):
    dsn = make_db("dd8")
    load_small(dsn)
    url = f"s3://{s3_bucket}/repo"

    def keys() -> set[str]:
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    first = backupkit.backup(dsn, url, progress=False)
    before = keys()
    second = backupkit.backup(dsn, url, progress=False)
    added = keys() - before
    assert added == {f"repo/{second.id}/{f['path']}" for f in second.manifest["schema_files"]} | {
        f"repo/{second.id}/{mf.MANIFEST}"
    }
    assert backupkit.verify(second.location, deep=True).ok
    out = run_cli("prune", url, "--keep-last", "1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["removed"] == [first.id], out.stderr
    assert {k for k in keys() if "/.shared/" in k} == {f"repo/{n}" for n in pool.referenced(second.manifest)}
    assert backupkit.verify(second.location, deep=True).ok


def test_on_s3_a_damaged_shared_file_is_never_reused(make_db, s3_bucket, s3_client):
    """On S3 a small data file goes straight to its pool name as it is uploaded; where that
    name holds a damaged file (other bytes, another size), the new file stays the snapshot's own."""
    dsn = make_db("dd9")
    load_small(dsn)
    url = f"s3://{s3_bucket}/repo"
    first = backupkit.backup(dsn, url, progress=False)
    entries = [f for t in first.manifest["tables"] for f in t["files"]]
    assert entries and all(f.get("shared") is True for f in entries)
    entry = max(entries, key=lambda f: f["bytes"])
    key = f"repo/{pool.blob_name(entry['sha256'])}"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body[:-1])
    second = backupkit.backup(dsn, url, progress=False)
    own = next(f for t in second.manifest["tables"] for f in t["files"] if f["path"] == entry["path"])
    assert "shared" not in own
    stored = s3_client.get_object(Bucket=s3_bucket, Key=f"repo/{second.id}/{own['path']}")["Body"].read()
    assert stored == body
    assert backupkit.verify(second.location, deep=True).ok
    assert not backupkit.verify(first.location).ok


def test_rows_removed_inside_a_table_change_only_the_files_around_them(make_db, tmp_path):
    """A table's COPY is cut into files where its rows say (``copyio.FileCuts``), not at fixed
    offsets: rows deleted near its start change one file or two, and the files after them are
    shared with the day before.  The snapshot restores exactly."""
    dsn = make_db("dd7")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events AS SELECT g AS id, md5(g::text) || repeat('x', g % 97) AS body "
            "FROM generate_series(1, 220000) g"
        )
    repo = tmp_path / "repo"
    first = backupkit.backup(dsn, repo, progress=False)
    files = next(t for t in first.manifest["tables"] if t["name"] == "events")["files"]
    assert len(files) >= 3 and sum(f["text_bytes"] for f in files) < 64 << 20  # one COPY, several files
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE id BETWEEN 5000 AND 5050")
    before = pool_files(repo)
    second = backupkit.backup(dsn, repo, progress=False)
    files2 = next(t for t in second.manifest["tables"] if t["name"] == "events")["files"]
    new = [f for f in files2 if pool.blob_name(f["sha256"]) in pool_files(repo) - before]
    assert files2[0] in new and len(new) <= 2
    assert {f["sha256"] for f in files2[2:]} <= {f["sha256"] for f in files}

    target = make_db("dd7r")
    backupkit.restore(second.location, target, progress=False)
    fingerprint = "SELECT count(*), md5(string_agg(id::text || body, ',' ORDER BY id)) FROM events"
    with psycopg.connect(dsn) as a, psycopg.connect(target) as b:
        assert a.execute(fingerprint).fetchone() == b.execute(fingerprint).fetchone()
