"""``backupkit copy``: snapshots replicated between repositories, verified on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_small, run_cli, snapshot_dirs, stored_file

import backupkit
from backupkit.snapshot import manifest as mf
from backupkit.storage.repository import list_snapshots


@pytest.fixture
def two_snapshots(make_db, tmp_path):
    dsn = make_db("copy")
    load_small(dsn)
    repo = tmp_path / "a"
    return repo, [backupkit.backup(dsn, repo, progress=False, label=f"n{i}").id for i in range(2)]


def test_copy_replicates_every_snapshot_once(two_snapshots, tmp_path):
    repo, ids = two_snapshots
    out = run_cli("copy", repo, tmp_path / "b", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"copied": sorted(ids), "present": [], "unreadable": {}}
    copied = list_snapshots(tmp_path / "b")[0]
    assert sorted(s.id for s in copied) == sorted(ids)
    for s in copied:  # byte for byte the same snapshot, and it verifies where it now is
        assert (s.location.path / mf.MANIFEST).read_bytes() == (repo / s.id / mf.MANIFEST).read_bytes()
        assert backupkit.verify(s.location, deep=True).ok
    again = run_cli("copy", repo, tmp_path / "b")
    assert again.returncode == 0 and "copied 0 snapshot(s); 2 already there" in again.stdout


def test_copy_of_named_snapshots_only(two_snapshots, tmp_path):
    repo, ids = two_snapshots
    out = run_cli("copy", repo, tmp_path / "c", "latest")
    assert out.returncode == 0, out.stderr
    assert [s.id for s in list_snapshots(tmp_path / "c")[0]] == [max(ids)]


def test_a_damaged_source_is_not_copied_and_leaves_nothing_that_looks_complete(two_snapshots, tmp_path):
    repo, ids = two_snapshots
    data = stored_file(repo / ids[0], mf.read(repo / ids[0])["tables"][0]["files"][0])
    data.write_bytes(data.read_bytes()[:-1] + b"\x00")  # same size, other bytes
    out = run_cli("copy", repo, tmp_path / "d", ids[0])
    assert out.returncode == 6, out.stdout + out.stderr  # snapshot damaged
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert snapshot_dirs(tmp_path / "d") == [] and list_snapshots(tmp_path / "d") == ([], [])


def test_a_damaged_snapshot_does_not_stop_the_others_from_being_copied(two_snapshots, tmp_path):
    """Copying every snapshot, an old one damaged in the source is named and left out; the newer
    ones still leave the machine, and the command exits 7 (it did not do all it was for)."""
    repo, ids = two_snapshots
    old, new = sorted(ids)
    own = next(f for f in mf.all_files(mf.read(repo / old)) if not f.get("shared"))  # not in the pool
    data = repo / old / own["path"]
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 1]))  # same size, other bytes

    out = run_cli("copy", repo, tmp_path / "f", "--json")

    assert out.returncode == 7, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["copied"] == [new] and list(result["unreadable"]) == [old]
    assert result["unreadable"][old].startswith("damaged: ")
    assert [s.id for s in list_snapshots(tmp_path / "f")[0]] == [new]
    assert list_snapshots(tmp_path / "f")[1] == []  # nothing half-copied left


def test_a_snapshot_that_cannot_be_read_does_not_stop_the_others_from_being_copied(two_snapshots, tmp_path):
    repo, ids = two_snapshots
    old, new = sorted(ids)
    manifest = repo / old / mf.MANIFEST
    manifest.chmod(0o644)
    manifest.write_text("{ not json")

    out = run_cli("copy", repo, tmp_path / "e")

    assert out.returncode == 7, out.stdout + out.stderr  # the copy did not do all it was for
    assert f"copied {new}" in out.stdout and f"error: {old} was not copied" in out.stderr
    assert "Traceback" not in out.stderr
    assert [s.id for s in list_snapshots(tmp_path / "e")[0]] == [new]
    again = run_cli("copy", repo, tmp_path / "e", "--json")
    assert again.returncode == 7
    assert json.loads(again.stdout)["present"] == [new] and list(json.loads(again.stdout)["unreadable"]) == [old]


def test_the_commands_work_on_an_s3_repository(two_snapshots, tmp_path, s3_bucket, make_db):
    """3-2-1 in commands: copy off-site, list, verify and restore from there, copy back, prune there."""
    repo, ids = two_snapshots
    remote = f"s3://{s3_bucket}/prod"
    out = run_cli("copy", repo, remote)
    assert out.returncode == 0, out.stderr
    listed = json.loads(run_cli("list", remote, "--json").stdout)
    assert sorted(s["id"] for s in listed["snapshots"]) == sorted(ids)
    out = run_cli("verify", f"{remote}/{ids[1]}", "--deep")
    assert out.returncode == 0 and "intact" in out.stdout, out.stdout + out.stderr
    target = make_db("from_s3")
    out = run_cli("restore", f"{remote}/{ids[1]}", "--dsn", target, "-q")
    assert out.returncode == 0, out.stderr
    out = run_cli("copy", remote, tmp_path / "back", "latest")
    assert out.returncode == 0 and [s.id for s in list_snapshots(tmp_path / "back")[0]] == [max(ids)]
    cache = {"BACKUPKIT_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cli("sql", f"{remote}/{ids[1]}", "select count(*) as n from public.orders", env=cache)
    orders = next(t["rows"] for t in mf.read(repo / ids[1])["tables"] if t["name"] == "orders")
    assert out.returncode == 0 and str(orders) in out.stdout, out.stderr
    out = run_cli("diff", f"{remote}/{ids[0]}", f"{remote}/{ids[1]}", "--json", env=cache)
    assert out.returncode == 0 and json.loads(out.stdout)["same"] is True, out.stderr  # two backups, no change
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*/*") if not p.name.startswith("."))
    assert cached == sorted(ids)  # only the snapshots asked for were fetched, each once, verified
    checks = {
        c["check"]: c
        for c in json.loads(run_cli("check", "--to", remote, "--json", env={"BACKUPKIT_DSN": target}).stdout)["checks"]
    }
    assert checks["repository"]["status"] == "ok" and "reachable, 2 snapshot(s)" in checks["repository"]["detail"]
    missing = run_cli("check", "--to", "s3://no-such-bucket-here/x", "--json", env={"BACKUPKIT_DSN": target})
    assert missing.returncode == 5 and json.loads(missing.stdout)["ok"] is False
    out = run_cli("prune", remote, "--keep-last", "1")
    assert out.returncode == 0, out.stderr
    assert [s.id for s in list_snapshots(remote)[0]] == [max(ids)]
    assert run_cli("pin", f"{remote}/{max(ids)}").returncode == 0
    assert [s["pinned"] for s in json.loads(run_cli("list", remote, "--json").stdout)["snapshots"]] == [True]
    assert run_cli("unpin", f"{remote}/{max(ids)}").returncode == 0
    assert [s.pinned for s in list_snapshots(remote)[0]] == [False]
    out = run_cli("backup", "--dsn", target, "--to", f"s3://{s3_bucket}/fresh", "-q")
    assert out.returncode == 0, out.stderr
    assert len(list_snapshots(f"s3://{s3_bucket}/fresh")[0]) == 1


def test_the_explore_and_report_notebooks_read_an_s3_repository(two_snapshots, tmp_path, s3_bucket, monkeypatch):
    """``backup_dir`` may be a URL: the notebooks list, pick and compare the snapshots there."""
    import nbformat
    import papermill

    repo, ids = two_snapshots
    remote = f"s3://{s3_bucket}/nb"
    assert run_cli("copy", repo, remote).returncode == 0
    monkeypatch.setenv("BACKUPKIT_CACHE_DIR", str(tmp_path / "cache"))
    notebooks = Path(__file__).parent.parent / "notebooks"
    for name in ("report", "explore"):
        out = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(
            str(notebooks / f"{name}.ipynb"),
            str(out),
            parameters={"backup_dir": remote},
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
        )
        shown = "\n".join(
            o.get("text", "") + o.get("data", {}).get("text/plain", "")
            for c in nbformat.read(out, as_version=4).cells
            if c.cell_type == "code"
            for o in c.outputs
        )
        assert max(ids) in shown, name  # the newest snapshot of the bucket is what it shows
    assert [s.id for s in list_snapshots(remote)[0]] == sorted(ids, reverse=True)  # nothing made there
