"""Damaged or tampered snapshots: never restored silently, never called good.

Each test is one fault found in a review: real backups of a real database, damaged the
way a disk, a partial copy or a person would, then checked through the command a user runs.
"""

from __future__ import annotations

import json
import shutil

import psycopg
import pytest
from helpers import load_small, run_cli, stored_file

import backupkit
from backupkit.errors import SnapshotError
from backupkit.snapshot import manifest as mf


@pytest.fixture(scope="module")
def source(pg_server):
    dsn = pg_server.createdb("dmg")
    load_small(dsn)
    yield dsn
    pg_server.dropdb(dsn)


def public_tables(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]


def flip_a_bit(path) -> None:
    """Bit rot: one bit of the file changes, its size does not."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_bit_flipped_shared_file_does_not_fail_every_later_backup(source, tmp_path):
    """Bit rot in a pool file (same size) made every later backup of the unchanged rows fail
    with exit 8, "the snapshot did not verify right after writing ... the storage under --to
    may be faulty; try another folder", naming its own new file: the new backup had taken
    the damaged pool file for its own because its size was right.  Now the new backup keeps
    its own copy, verifies, and only the old snapshot is reported damaged."""
    repo = tmp_path / "repo"
    first = backupkit.backup(source, repo, progress=False)
    entry = max((f for t in first.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    assert entry.get("shared") is True
    flip_a_bit(stored_file(first.path, entry))
    out = run_cli("backup", "--dsn", source, "--to", repo, "-q")
    assert out.returncode == 0, out.stderr
    second = backupkit.verify(out.stdout.strip().splitlines()[-1], deep=True)
    assert second.ok, second.problems
    out = run_cli("verify", first.path)
    assert out.returncode == 6
    # What to do, and that other snapshots may share the damaged file.
    assert "hint:" in out.stderr and "other snapshots may use it too" in out.stderr, out.stderr


def test_a_snapshot_from_a_newer_backupkit_is_not_called_damaged(source, tmp_path, make_db):
    """A snapshot whose format_version is newer than this backupkit reads was reported as
    "damaged" (exit 6) by verify, and restore said "snapshot … is damaged: unsupported
    format_version 3 / hint: restore from another snapshot": wrong advice, since every snapshot
    the newer backupkit wrote is refused alike.  Now both say it was written by a newer
    backupkit and to upgrade (exit 7: unusable here, not damaged), and nothing is restored."""
    snap = backupkit.backup(source, tmp_path / "repo", progress=False, dedup=False).path
    m = json.loads((snap / mf.MANIFEST).read_text())
    m["format_version"] = mf.FORMAT_VERSION + 1
    (snap / mf.MANIFEST).write_text(json.dumps(mf.seal(m), indent=2))
    out = run_cli("verify", snap)
    assert out.returncode == 7, out.stdout + out.stderr
    assert "newer backupkit" in out.stderr and "upgrade backupkit" in out.stderr
    target = make_db("dmg_newer")
    out = run_cli("restore", snap, "--dsn", target)
    assert out.returncode == 7, out.stderr
    assert "newer backupkit" in out.stderr and "upgrade backupkit" in out.stderr
    assert "another snapshot" not in out.stderr
    assert public_tables(target) == 0


def test_an_unfinished_backup_folder_is_never_restored(source, tmp_path, make_db):
    """A backup killed after writing its manifest but before publishing it leaves a complete-looking
    `.tmp-…` folder.  `list` calls it "incomplete … not a snapshot", yet `restore` of that folder
    restored it like a snapshot.  Now restore refuses it (exit 7) before touching the target,
    saying it is an unfinished backup and to pick a snapshot from `backupkit list`."""
    repo = tmp_path / "repo"
    snap = backupkit.backup(source, repo, progress=False, dedup=False).path
    unfinished = repo / f".tmp-{snap.name}-0a1b2c3d"
    shutil.move(snap, unfinished)
    listed = run_cli("list", repo)
    assert f"incomplete: {unfinished.name}" in listed.stdout
    target = make_db("dmg_tmp")
    out = run_cli("restore", unfinished, "--dsn", target)
    assert out.returncode == 7, out.stdout + out.stderr
    assert "unfinished backup" in out.stderr and "backupkit list" in out.stderr
    assert public_tables(target) == 0
    with pytest.raises(SnapshotError, match="unfinished backup"):
        backupkit.restore(unfinished, target, dry_run=True)


def test_a_damaged_shared_file_is_not_answered_with_another_snapshot_that_shares_it(source, tmp_path, make_db):
    """Two snapshots of unchanged rows share their data files.  With one shared file gone, the
    restore of the newer one said "restore from another snapshot", and the older one, which
    uses the same pool file, failed the same way.  Now the hint says the file is shared, where
    it is stored, and to verify the snapshot picked before restoring it."""
    repo = tmp_path / "repo"
    older = backupkit.backup(source, repo, progress=False)
    newer = backupkit.backup(source, repo, progress=False)
    entry = max((f for t in newer.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    assert entry in [f for t in older.manifest["tables"] for f in t["files"]]
    stored_file(newer.path, entry).unlink()
    target = make_db("dmg_shared")
    out = run_cli("restore", newer.path, "--dsn", target)
    assert out.returncode == 6, out.stderr
    hint = next(line for line in out.stderr.splitlines() if line.startswith("hint:"))
    assert "another snapshot" not in hint
    assert "other snapshots may use it too" in hint and ".shared/" in hint and "verify" in hint
    assert public_tables(target) == 0
    assert run_cli("verify", older.path).returncode == 6
