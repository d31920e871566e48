"""verify catches every kind of damage, naming the file; an intact snapshot passes."""

from __future__ import annotations

import json

import pytest
from helpers import copy_snapshot_folder, load_small, run_cli, stored_file

import backupkit
from backupkit.snapshot import manifest as mf


@pytest.fixture(scope="module")
def pristine(pg_server, tmp_path_factory):
    dsn = pg_server.createdb("verify")
    load_small(dsn)
    res = backupkit.backup(dsn, tmp_path_factory.mktemp("verify"))
    pg_server.dropdb(dsn)
    return res.path


@pytest.fixture
def snap(pristine, tmp_path):
    """A private copy of the snapshot to damage (with its shared files, in its own repository)."""
    copy = copy_snapshot_folder(pristine, tmp_path / pristine.name)
    for p in tmp_path.rglob("*"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    return copy


def biggest_data_file(snap):
    m = mf.read(snap)
    entry = max((f for t in m["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    return stored_file(snap, entry), entry


def verify_cli(snap, *extra):
    out = run_cli("verify", snap, "--json", *extra)
    return out.returncode, json.loads(out.stdout)


def test_intact_snapshot_passes_deep(snap):
    code, report = verify_cli(snap, "--deep")
    assert code == 0 and report["ok"] and report["problems"] == [] and report["deep"]
    assert report["files"] == len(mf.all_files(mf.read(snap)))


def test_flipped_byte(snap):
    path, entry = biggest_data_file(snap)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    path.write_bytes(bytes(raw))
    code, report = verify_cli(snap)
    assert code == 6
    assert report["problems"] == [f"{entry['path']}: checksum mismatch (the file's content changed)"]


def test_truncated_file(snap):
    path, entry = biggest_data_file(snap)
    path.write_bytes(path.read_bytes()[: entry["bytes"] // 2])
    code, report = verify_cli(snap)
    assert code == 6
    rel = entry["path"]
    assert any(
        p.startswith(f"{rel}: {entry['bytes'] // 2} bytes, manifest says {entry['bytes']}") for p in report["problems"]
    )


def test_deleted_file(snap):
    path, entry = biggest_data_file(snap)
    path.unlink()
    code, report = verify_cli(snap)
    assert code == 6 and report["problems"] == [f"missing file {entry['path']}"]


def test_deleted_schema_file(snap):
    (snap / "schema" / "post-data.sql").unlink()
    code, report = verify_cli(snap)
    assert code == 6 and report["problems"] == ["missing file schema/post-data.sql"]


def test_extra_file(snap):
    (snap / "data").mkdir(exist_ok=True)  # absent when every data file is shared
    (snap / "data" / "sneaky.csv.zst").write_bytes(b"x")
    code, report = verify_cli(snap)
    assert code == 6 and report["problems"] == ["unexpected file data/sneaky.csv.zst (not in the manifest)"]


def test_edited_manifest(snap):
    m = json.loads((snap / "manifest.json").read_text())
    m["tables"][0]["rows"] += 1  # a "harmless" edit that would fool a row-count check
    (snap / "manifest.json").write_text(json.dumps(m, indent=2))
    code, report = verify_cli(snap)
    assert code == 6
    assert report["problems"] == ["manifest.json was edited after the backup (its checksum does not match)"]


def test_deep_recount_catches_a_consistent_lie(snap):
    """A manifest re-sealed with a wrong row count passes the checksums but not --deep."""
    m = mf.read(snap)
    table = next(t for t in m["tables"] if t["rows"] > 0)
    table["rows"] += 1
    table["files"][0]["rows"] += 1
    (snap / "manifest.json").write_text(json.dumps(mf.seal(m), indent=2))
    assert verify_cli(snap)[0] == 0
    code, report = verify_cli(snap, "--deep")
    assert code == 6 and "rows, manifest says" in report["problems"][0]


def test_missing_or_garbled_manifest(snap):
    (snap / "manifest.json").write_text("{not json")
    code, report = verify_cli(snap)
    assert code == 6 and "manifest.json is not valid JSON" in report["problems"][0]
    (snap / "manifest.json").unlink()
    code, report = verify_cli(snap)
    assert code == 6 and report["problems"] == ["missing manifest.json"]


def test_text_output_names_each_problem(snap):
    path, entry = biggest_data_file(snap)
    path.unlink()
    (snap / "extra.txt").write_text("x")
    out = run_cli("verify", snap)
    assert out.returncode == 6
    assert f"PROBLEM: missing file {entry['path']}" in out.stdout
    assert "PROBLEM: unexpected file extra.txt" in out.stdout and "DAMAGED (2 problems)" in out.stdout


def test_not_a_snapshot(tmp_path):
    out = run_cli("verify", tmp_path / "nope")
    assert out.returncode == 7 and "no snapshot at" in out.stderr


def test_a_verification_stopped_midway_never_passes(snap):
    """verify(stop=...) (a restore interrupted while it verifies): unchecked files are problems."""
    import threading

    from backupkit.snapshot.verify import verify

    stop = threading.Event()
    assert verify(snap, stop=stop).ok
    stop.set()
    report = verify(snap, stop=stop)
    assert not report.ok and report.problems
    assert all("not checked (verification stopped)" in p for p in report.problems), report.problems
