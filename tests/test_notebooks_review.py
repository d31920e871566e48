"""Review of the scheduled notebooks as a job: papermill runs with real parameters, real servers.

Each test names what a user saw before its fix.  Papermill runs as ``tests/test_notebooks.py``
runs it (``execute``), against a ``make_db`` database loaded with the demo data whose DSN
only the kernel's environment holds.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from helpers import snapshot_dirs
from papermill.exceptions import PapermillExecutionError
from test_notebooks import SOURCE_VAR, execute, run_records

import backupkit
from backupkit.demo.data import create_demo
from backupkit.snapshot import encryption, signing
from backupkit.snapshot.verify import verify
from backupkit.storage.repository import list_snapshots


@pytest.fixture
def source(make_db, home, monkeypatch):
    """A demo database (scale 0.02) whose DSN only the kernel's environment holds (``SOURCE_VAR``)."""
    dsn = make_db("nbrev")
    create_demo(dsn, scale=0.02)
    monkeypatch.setenv(SOURCE_VAR, dsn)
    return dsn


def _error_outputs(notebook) -> list[dict]:
    book = nbformat.read(notebook, as_version=4)
    return [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_the_backup_notebook_encrypts_and_signs_as_the_environment_says_like_the_command(source, tmp_path, monkeypatch):
    """The README's backup host exports ``BACKUPKIT_RECIPIENTS=age1...`` (and
    ``BACKUPKIT_SIGN_KEY``) in /etc/backupkit.env for the cron line that runs the backup
    notebook: ``backupkit backup`` encrypted and signed, the notebook wrote a plaintext,
    unsigned snapshot and said "succeeded"."""
    (tmp_path / "keys").mkdir(mode=0o700)
    recipient = encryption.keygen(tmp_path / "keys" / "age.txt")
    signing.keygen(tmp_path / "keys" / "sign.pem", tmp_path / "keys" / "sign.pub")
    monkeypatch.setenv("BACKUPKIT_RECIPIENTS", recipient)
    monkeypatch.setenv("BACKUPKIT_SIGN_KEY", str(tmp_path / "keys" / "sign.pem"))
    monkeypatch.setenv("BACKUPKIT_PUBLIC_KEY", str(tmp_path / "keys" / "sign.pub"))
    monkeypatch.delenv("BACKUPKIT_IDENTITY", raising=False)  # the backup host holds no identity

    execute("backup", tmp_path, backup_dir="bk", dsn_env=SOURCE_VAR, runs_dir="runs")

    (snap,) = list_snapshots(tmp_path / "bk")[0]
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["encryption"]["recipients"] == [recipient]
    assert manifest.get("signed_by") and (snap.path / "manifest.json.sig").is_file()
    assert verify(snap.path, public_key=tmp_path / "keys" / "sign.pub").signature == "valid"
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded"
    # Hashes checked, rows not recounted (no identity here, by design), signature checked.
    assert record["summary"]["encrypted"] is True and record["summary"]["rows_recounted"] is False
    assert record["summary"]["signature"] == "valid"
    # The restore side, with the identity, reads it back.
    assert backupkit.verify(snap.path, deep=True, identity=tmp_path / "keys" / "age.txt").ok


def test_the_backup_notebook_backs_up_to_an_s3_repository_end_to_end(source, s3_bucket, tmp_path):
    """README: set `backup_dir` to the URL.  The notebook published the snapshot, then failed
    on `result.path` ("not in a folder on this machine"): never verified, never pruned, the
    run failed and the monitor told so, every night."""
    url = f"s3://{s3_bucket}/prod"

    out = execute("backup", tmp_path, backup_dir=url, dsn_env=SOURCE_VAR, runs_dir="runs", prune=True)

    (snap,) = list_snapshots(url)[0]
    assert _error_outputs(out) == []
    (record,) = run_records(tmp_path / "runs")
    assert record["status"] == "succeeded", record
    assert {"backup", "verify", "prune"} <= set(record["steps"])
    assert record["summary"]["rows_recounted"] is True
    assert backupkit.verify(snap.location).ok


@pytest.mark.parametrize(
    "name, bad, expected",
    [
        # was: failed in the backup cell, after the preflight had connected
        ("backup", {"jobs": 0}, "parameter 'jobs' is 0: use 1 to 64"),
        # was: a snapshot in the working directory, exit 0 (-r backup_dir "$UNSET")
        ("backup", {"backup_dir": ""}, "parameter 'backup_dir' is empty"),
        # was: the backup taken and verified, then the policy cell failed: exit 1, record failed
        ("backup", {"keep_daily": -3}, "keep_daily = -3 makes no sense"),
        # was: the drill ran, its record said succeeded, then the status cell failed: exit 1
        ("drill", {"max_age": "2x"}, "parameter 'max_age': cannot read duration '2x'"),
        # was: exit 0, the query cell showing every row (no limit), the explorer a DuckDB Binder Error
        ("explore", {"limit": -1}, "parameter 'limit' is -1: use 1 or more"),
        # a staging copy's jobs: a misspelt choice must not schedule them as they were
        ("restore", {"cron_jobs": "pause"}, "parameter 'cron_jobs' is 'pause'"),
    ],
)
def test_a_bad_value_fails_the_parameters_check_before_the_job_does_anything(source, tmp_path, name, bad, expected):
    """A value of the right type that describes no run failed late, after the work it was
    scheduled for (or not at all); now the parameters check refuses it in one line."""
    params = {"backup_dir": "bk", "runs_dir": "runs", **bad}
    if name == "explore":
        params.pop("runs_dir")  # an interactive notebook: no run record
    else:
        params["target_dsn_env" if name == "restore" else "dsn_env"] = SOURCE_VAR
    if name != "backup":
        backupkit.backup(source, tmp_path / "bk", progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(PapermillExecutionError) as info:
        execute(name, tmp_path, **params)

    assert info.value.ename == "ConfigError" and info.value.evalue.startswith(expected)
    (error,) = _error_outputs(tmp_path / f"{name}.out.ipynb")
    assert error["traceback"][0] == f"error: {info.value.evalue}" and error["traceback"][1].startswith("hint: ")
    for record in run_records(tmp_path / "runs") if (tmp_path / "runs").exists() else []:
        assert record["status"] == "failed" and record["failed_step"] == "parameters"
        assert list(record["steps"]) == ["parameters"]
    # Nothing written but the executed notebook and the run record: no snapshot, no drill.
    after = sorted(p.name for p in tmp_path.iterdir())
    assert set(after) - set(before) <= {f"{name}.out.ipynb", "runs"}
    assert not (tmp_path / "bk" / ".drills").exists()
    assert len(snapshot_dirs(tmp_path / "bk")) == (0 if name == "backup" else 1)


@pytest.mark.parametrize("where", ["backup_dir", "runs_dir"])
def test_a_snapshot_given_as_a_folder_to_write_is_refused_and_left_intact(source, tmp_path, where):
    """``-p backup_dir /var/backups/app/<id>`` (a snapshot, not the directory of snapshots), or a
    ``runs_dir`` inside one: the notebook wrote a new snapshot and a pool, or the run record,
    into the snapshot and exited 0; ``backupkit verify`` then called it DAMAGED."""
    snap = backupkit.backup(source, tmp_path / "bk", progress=False)
    params = {"backup_dir": "bk", "dsn_env": SOURCE_VAR, "runs_dir": "runs"}
    params[where] = str(snap.path) if where == "backup_dir" else str(snap.path / "runs")

    with pytest.raises(PapermillExecutionError) as info:
        execute("backup", tmp_path, **params)

    assert info.value.ename == "ConfigError"
    assert f"parameter '{where}' {params[where]} is" in info.value.evalue
    assert info.value.evalue.endswith("writing there would damage it")
    report = verify(snap.path)
    assert report.ok, report.problems
    assert [p.name for p in snapshot_dirs(tmp_path / "bk")] == [snap.id]


@pytest.mark.parametrize(
    "runs_dir, expected",
    [
        (5, "parameter 'runs_dir' must be text (a path), not 5"),  # -p runs_dir 5
        ("", "parameter 'runs_dir' is empty"),  # -r runs_dir "$UNSET"
        ("a-file/runs", "cannot write the run record in runs_dir a-file/runs: Not a directory"),
    ],
)
def test_a_runs_dir_that_is_no_folder_fails_the_first_cell_in_one_line(home, tmp_path, monkeypatch, runs_dir, expected):
    """A ``runs_dir`` papermill read as a number, or under a file: the first cell failed with a
    TypeError / NotADirectoryError traceback as the only output; an empty one (an unset
    variable) put the run record in the working directory, where no monitor looks."""
    (tmp_path / "a-file").write_text("")
    # A database named: the prune notebook takes no demo snapshots into the missing "bk".
    monkeypatch.setenv("BACKUPKIT_DSN", "postgresql://nobody@127.0.0.1:1/none")

    with pytest.raises(PapermillExecutionError) as info:
        execute("prune", tmp_path, backup_dir="bk", runs_dir=runs_dir)

    assert info.value.ename == "ConfigError" and info.value.evalue == expected
    (error,) = _error_outputs(tmp_path / "prune.out.ipynb")
    assert error["traceback"][0] == f"error: {expected}" and error["traceback"][1].startswith("hint: ")
    assert "Traceback" not in (tmp_path / "prune.out.ipynb").read_text()
    assert list(tmp_path.glob("*.json")) == []


def test_an_executed_notebook_keeps_only_the_redacted_error(tmp_path, monkeypatch):
    """A failed cell showed the redacted error lines, but the executed notebook also keeps the
    error's text as its ``evalue``, and that was the raw message: a password that reached a
    message would be masked on screen and kept in the .ipynb (and in papermill's log)."""
    import papermill

    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell(
            "import os\nimport backupkit.notebook as nb\nfrom backupkit.errors import ConfigError"
        ),
        nbformat.v4.new_code_cell('raise ConfigError(f"cannot use {os.environ[\'APP_DSN\']}", hint="check it")'),
    ]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    monkeypatch.setenv("APP_DSN", "postgresql://app:TopSecret-77@db.example/app")
    source, out = tmp_path / "fails.ipynb", tmp_path / "fails.out.ipynb"
    nbformat.write(book, source)

    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(str(source), str(out), kernel_name="python3", progress_bar=False)

    assert "TopSecret-77" not in out.read_text() and "TopSecret-77" not in str(info.value)
    (error,) = _error_outputs(out)
    assert error["ename"] == "ConfigError"
    assert error["evalue"] == "cannot use postgresql://app:****@db.example/app"
    assert error["traceback"] == ["error: cannot use postgresql://app:****@db.example/app", "hint: check it"]
