"""Hostile and broken input (issue 13, cases 5, 9, 10, 12, 13 and the smaller ones), through the CLI.

Every snapshot here is a real one written by ``backupkit.backup`` from the
embedded server, then cloned, damaged or resealed.  Each case asserts the
documented exit code and a one-line error without a traceback.

Permissions: the suite runs as root, for whom ``chmod 000`` denies nothing.
``run_cli_limited`` therefore starts the CLI with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH dropped from its capability bounding set (``prctl``
before ``exec``): it is still uid 0 and owns the files, but the kernel now
applies their permission bits to it as to any user.  (Switching to an
unprivileged uid is not possible here: the interpreter lives under a 0700
``/root``.)  Run as a normal user, the same tests need no such step.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from helpers import copy_snapshot_folder, load_small, run_cli, stored_file

import backupkit
from backupkit.errors import StorageError
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.verify import verify
from backupkit.storage import pool
from backupkit.storage.lock import DirLock
from backupkit.storage.repository import new_id

UTC = UTC
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


@pytest.fixture(scope="module")
def pristine(pg_server, tmp_path_factory) -> Path:
    dsn = pg_server.createdb("faults")
    try:
        load_small(dsn)
        path = backupkit.backup(dsn, tmp_path_factory.mktemp("faults-src")).path
    finally:
        pg_server.dropdb(dsn)
    assert verify(path).ok
    return path


@pytest.fixture(scope="module")
def changed(pg_server, tmp_path_factory) -> Path:
    """A snapshot of the same database after every orders row changed: that table's data
    files are not the ones ``pristine`` has (a clone of each in one directory shares the rest)."""
    dsn = pg_server.createdb("faults_changed")
    try:
        load_small(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE orders SET note = 'changed'")
        path = backupkit.backup(dsn, tmp_path_factory.mktemp("faults-changed")).path
    finally:
        pg_server.dropdb(dsn)
    assert verify(path).ok
    return path


def clone(source: Path, directory: Path, created_at: datetime) -> Path:
    """A private copy of ``source`` in ``directory`` under a new id and time, resealed.

    Its shared data files are copied into ``directory``'s pool (clones in one directory
    share them, as snapshots of unchanged data do)."""
    sid = new_id(created_at, None)
    dest = directory / sid
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy_snapshot_folder(source, dest)
    m = mf.read(dest)
    m.update(id=sid, created_at=created_at.isoformat(), finished_at=(created_at + timedelta(seconds=5)).isoformat())
    write_manifest(dest, mf.seal(m))
    for p in [dest, *dest.rglob("*"), *(directory / pool.POOL).rglob("*")]:
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    return dest


def write_manifest(snap: Path, manifest: dict | str) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest, indent=2)
    (snap / mf.MANIFEST).unlink(missing_ok=True)
    (snap / mf.MANIFEST).write_text(text)


def reseal(snap: Path, change) -> None:
    """Edit the manifest with ``change(m)`` and reseal it, as a forger (or a careless tool) would."""
    m = json.loads((snap / mf.MANIFEST).read_text())
    change(m)
    write_manifest(snap, mf.seal(m))


def biggest(m: dict) -> dict:
    return max((f for t in m["tables"] for f in t["files"]), key=lambda f: f["bytes"])


def one_line_error(out: subprocess.CompletedProcess, code: int) -> str:
    """Assert exit ``code`` and a one-line ``error:`` (plus an optional hint), no traceback."""
    assert out.returncode == code, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    assert all(ln.startswith(("error: ", "hint: ", "warning: ")) for ln in lines), out.stderr
    return errors[0]


@pytest.fixture
def dir2(pristine, tmp_path) -> tuple[Path, Path, Path]:
    """A backup directory with an older snapshot A and a newer B; returns (DIR, A, B)."""
    d = tmp_path / "backups"
    a = clone(pristine, d, datetime(2025, 11, 1, 10, tzinfo=UTC))
    b = clone(pristine, d, datetime(2025, 11, 2, 10, tzinfo=UTC))
    return d, a, b


# -- running without the power to ignore permissions -----------------------------------------


def _drop_dac() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli_limited(*args, umask: int | None = None) -> subprocess.CompletedProcess:
    """``run_cli``, but the child obeys permission bits even when the tests run as root."""

    def pre():
        if os.geteuid() == 0:
            _drop_dac()
        if umask is not None:
            os.umask(umask)

    env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    return subprocess.run(
        [sys.executable, "-m", "backupkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=pre,
        timeout=600,
    )


def test_the_limited_child_really_is_denied(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    out = subprocess.run(
        [sys.executable, "-c", f"open({str(secret)!r}).read()"],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.geteuid() == 0 and _drop_dac(),
    )
    assert out.returncode == 1 and "PermissionError" in out.stderr


# -- 5. manifest paths are contained -------------------------------------------------------------


@pytest.fixture
def snap(pristine, tmp_path) -> Path:
    return clone(pristine, tmp_path / "d", datetime(2025, 11, 1, 10, tzinfo=UTC))


def _outside_copy(snap: Path, entry: dict, tmp_path: Path) -> Path:
    """The same bytes as a data file, outside the snapshot (so hashes would match)."""
    outside = tmp_path / "outside" / "stolen.copy.zst"
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(stored_file(snap, entry), outside)
    return outside


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dot-segment", "backslash", "empty-segment"])
def test_uncontained_manifest_path_is_refused_without_disclosing_the_outside_file(snap, tmp_path, kind):
    m = mf.read(snap)
    entry = biggest(m)
    outside = _outside_copy(snap, entry, tmp_path)
    outside.write_bytes(outside.read_bytes() + b"\0" * 4242)  # a size the output must not reveal
    size = str(outside.stat().st_size)
    path = {
        "dotdot": os.path.relpath(outside, snap),
        "absolute": str(outside),
        "dot-segment": "data/./" + entry["path"].split("/", 1)[1],
        "backslash": entry["path"].replace("/", "\\"),
        "empty-segment": entry["path"].replace("/", "//"),
    }[kind]

    def change(m):
        biggest(m)["path"] = path

    reseal(snap, change)
    out = run_cli("verify", snap, "--json")
    assert out.returncode == 6, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert any(
        repr(path) in p and ("not normalized" in p or "absolute" in p or "backslash" in p) for p in report["problems"]
    ), report
    assert size not in out.stdout + out.stderr
    text = run_cli("verify", snap)
    assert text.returncode == 6 and "Traceback" not in text.stderr


def test_restore_refuses_a_manifest_reaching_outside(snap, tmp_path, make_db):
    m = mf.read(snap)
    entry = biggest(m)
    outside = _outside_copy(snap, entry, tmp_path)
    stored_file(snap, entry).unlink()

    def change(m):
        biggest(m)["path"] = os.path.relpath(outside, snap)

    reseal(snap, change)
    target = make_db("faults_target")
    out = run_cli("restore", snap, "--dsn", target)
    line = one_line_error(out, 6)
    assert "is not normalized" in line
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_symlinked_data_file_is_refused(snap, tmp_path):
    entry = biggest(mf.read(snap))
    assert entry.get("shared") is True  # the default layout: readers open the pool file
    outside = _outside_copy(snap, entry, tmp_path)  # identical bytes: only the link is wrong
    stored = stored_file(snap, entry)
    stored.unlink()
    stored.symlink_to(outside)
    # A link planted where the file would be in the folder is reported too, never followed.
    (snap / mf.DATA_DIR).mkdir(exist_ok=True)
    (snap / entry["path"]).symlink_to(outside)
    report = json.loads(run_cli("verify", snap, "--json").stdout)
    assert not report["ok"]
    in_pool = str(stored.relative_to(snap.parent))
    assert any(p.startswith(f"{entry['path']}: {in_pool} is a symbolic link") for p in report["problems"])
    assert any(p.startswith(f"{entry['path']} is a symbolic link") for p in report["problems"])
    assert str(outside) not in json.dumps(report)


def test_symlinked_data_folder_and_dangling_link_are_reported(snap, tmp_path):
    # The shared data files are read from the repository's pool: a linked pool folder is
    # never followed.  A linked data folder (empty here: every file is shared) is reported.
    shared = snap.parent / pool.POOL
    shutil.move(shared, tmp_path / "elsewhere-pool")
    shared.symlink_to(tmp_path / "elsewhere-pool")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (snap / "data").symlink_to(moved)
    (snap / "schema" / "ghost").symlink_to(tmp_path / "does-not-exist")
    out = run_cli("verify", snap, "--json")
    assert out.returncode == 6
    problems = json.loads(out.stdout)["problems"]
    assert (
        "data is a symbolic link (a snapshot holds no links; dangling or not, it is not the snapshot's own)" in problems
    )
    assert any(p.startswith("schema/ghost is a symbolic link") for p in problems)
    # every data file is refused (reached through the linked pool folder), none is read
    data_files = [f["path"] for t in mf.read(snap)["tables"] for f in t["files"]]
    assert data_files and all(
        f"{f}: {pool.POOL} is a symbolic link; snapshot files must be plain files inside the snapshot" in problems
        for f in data_files
    )


def test_a_linked_manifest_is_not_read(snap, tmp_path):
    real = tmp_path / "real-manifest.json"
    shutil.move(snap / mf.MANIFEST, real)
    (snap / mf.MANIFEST).symlink_to(real)
    out = run_cli("verify", snap, "--json")
    assert out.returncode == 6 and json.loads(out.stdout)["problems"] == ["manifest.json is a symbolic link"]


def test_checksum_docs_say_what_they_cannot_detect():
    for doc in (mf.digest.__doc__, verify.__doc__, mf.__doc__):
        assert "reseal" in doc and "not" in doc


# -- 9. permissions ------------------------------------------------------------------------------


def test_an_unreadable_snapshot_fails_each_command_in_one_line_and_not_the_directory(dir2, make_db):
    d, a, b = dir2
    b.chmod(0)
    try:
        out = run_cli_limited("list", d, "--json")
        assert out.returncode == 0, out.stderr
        listed = {s["id"]: s for s in json.loads(out.stdout)["snapshots"]}
        assert listed[a.name]["error"] is None and listed[a.name]["rows"] > 0
        assert "Permission denied" in listed[b.name]["error"]
        text = run_cli_limited("list", d)
        assert text.returncode == 0 and f"unreadable: {b.name}" in text.stdout and "UNREADABLE" in text.stdout

        assert "cannot read" in one_line_error(run_cli_limited("verify", b), 7)
        assert "cannot read" in one_line_error(run_cli_limited("verify", d), 7)  # latest is B: never skipped
        one_line_error(run_cli_limited("restore", b, "--dsn", make_db("faults_perm")), 7)
        one_line_error(run_cli_limited("diff", a, b), 7)
        one_line_error(run_cli_limited("sql", b, "select 1"), 7)
        one_line_error(run_cli_limited("pin", b), 7)

        out = run_cli_limited("prune", d, "--keep-last", "1", "--json")
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr and f"warning: {b.name} cannot be read" in out.stderr
        res = json.loads(out.stdout)
        assert b.name in res["kept"] and a.name in res["kept"] and res["removed"] == []
        assert a.exists() and b.exists()
    finally:
        b.chmod(0o700)
    assert verify(a).ok and verify(b).ok


def test_an_unreadable_data_file_is_exit_7_not_damage(pristine, changed, tmp_path):
    # B's unreadable file must be its own: a file B shares with A would make A unreadable too.
    d = tmp_path / "backups"
    a = clone(pristine, d, datetime(2025, 11, 1, 10, tzinfo=UTC))
    b = clone(changed, d, datetime(2025, 11, 2, 10, tzinfo=UTC))
    entry = biggest(mf.read(b))
    assert pool.blob_name(entry["sha256"]) not in pool.referenced(mf.read(a))
    path = stored_file(b, entry)
    path.chmod(0)
    try:
        line = one_line_error(run_cli_limited("verify", b), 7)
        assert Path(entry["path"]).name in line and "Permission denied" in line
        # prune verifies the newest (B): not known intact, so A is kept as the newest intact one
        out = run_cli_limited("prune", d, "--keep-last", "1", "--json")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        res = json.loads(out.stdout)
        assert res["removed"] == [] and {a.name, b.name} <= set(res["kept"])
        decisions = {x["id"]: x for x in res["decisions"]}
        assert decisions[b.name]["intact"] is False and "newest intact snapshot" in decisions[a.name]["reasons"]
    finally:
        path.chmod(0o600)


def test_an_unreadable_directory_is_exit_7(dir2):
    d, _, _ = dir2
    d.chmod(0)
    try:
        for args in (("list", d), ("prune", d, "--keep-last", "1"), ("verify", d)):
            assert "cannot read" in one_line_error(run_cli_limited(*args), 7)
    finally:
        d.chmod(0o700)


def test_an_unwritable_directory_is_a_storage_error_not_locked(dir2, pg_server):
    d, a, _ = dir2
    d.chmod(0o500)
    try:
        line = one_line_error(run_cli_limited("prune", d, "--keep-last", "1"), 8)
        assert "cannot create the lock" in line and "Permission denied" in line and "locked" not in line
        assert "Permission denied" in one_line_error(run_cli_limited("pin", a), 8)
        assert run_cli_limited("list", d).returncode == 0  # reading still works
    finally:
        d.chmod(0o700)
    assert not (d / ".lock").exists()


def test_a_full_disk_while_writing_the_lock_is_a_storage_error(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="cannot write the lock .*No space left on device"):
        DirLock(tmp_path, "backup").acquire()
    monkeypatch.undo()
    assert not (tmp_path / ".lock").exists()  # no empty lock left to block the next run


def test_a_file_where_the_directory_should_be(tmp_path):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    assert "is not a directory" in one_line_error(run_cli("list", f), 7)
    assert "is not a directory" in one_line_error(run_cli("prune", f, "--keep-last", "1"), 7)
    assert "no snapshot at" in one_line_error(run_cli("verify", f), 7)


# -- 10. malformed manifests ---------------------------------------------------------------------


def _nested(m):
    return "[" * 100_000 + "]" * 100_000


def _path_number(m):
    biggest(m)["path"] = 12345


def _rows_string(m):
    next(t for t in m["tables"] if t["rows"])["rows"] = "20000"


def _missing_tables(m):
    del m["tables"]


def _missing_sha(m):
    del biggest(m)["sha256"]


def _table_not_object(m):
    m["tables"][0] = "public.orders"


MALFORMED = {
    "nested": (_nested, "nested too deeply"),
    "path-number": (_path_number, "is a int, not a path"),
    "rows-string": (_rows_string, "rows is '20000', not a count"),
    "missing-tables": (_missing_tables, "tables is missing"),
    "missing-sha256": (_missing_sha, "sha256 is None"),
    "table-string": (_table_not_object, "table #0 is a str"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest_is_exit_6_everywhere_and_the_rest_goes_on(dir2, case):
    d, a, b = dir2
    change, expected = MALFORMED[case]
    if case == "nested":
        write_manifest(b, _nested(None))
    else:
        reseal(b, change)

    out = run_cli("list", d, "--json")
    assert out.returncode == 0, out.stderr
    listed = {s["id"]: s for s in json.loads(out.stdout)["snapshots"]}
    assert expected in listed[b.name]["error"] and listed[a.name]["error"] is None

    out = run_cli("verify", b, "--json")
    assert out.returncode == 6 and any(expected in p for p in json.loads(out.stdout)["problems"])
    assert expected in one_line_error(run_cli("diff", a, b), 6)
    assert expected in one_line_error(run_cli("sql", b, "select 1"), 6)
    one_line_error(run_cli("restore", b, "--dsn", "postgresql://nobody@127.0.0.1:1/x"), 6)

    c = clone(a, d, datetime(2025, 10, 1, tzinfo=UTC))  # older than A: the policy removes it
    out = run_cli("prune", d, "--keep-last", "1", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["removed"] == [c.name] and not c.exists()
    assert b.name in res["kept"] and a.name in res["kept"] and b.exists()
    assert f"warning: {b.name} cannot be read" in out.stderr and expected in out.stderr


# -- 12. a snapshot folder that is a symbolic link ------------------------------------------------


def test_prune_neither_follows_nor_half_deletes_a_linked_snapshot(dir2, pristine, tmp_path):
    d, a, b = dir2
    elsewhere = clone(pristine, tmp_path / "elsewhere", datetime(2025, 10, 1, tzinfo=UTC))
    link = d / elsewhere.name
    link.symlink_to(elsewhere, target_is_directory=True)
    for _ in range(2):
        out = run_cli("prune", d, "--keep-last", "1", "--json")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        res = json.loads(out.stdout)
        assert link.name not in res["removed"] and link.name in res["kept"]
        assert "symbolic link" in out.stderr
        assert link.is_symlink() and verify(elsewhere).ok
        assert not [p for p in d.iterdir() if p.name.startswith(".trash-")]
    listed = json.loads(run_cli("list", d, "--json").stdout)["snapshots"]
    assert "symbolic link" in next(s["error"] for s in listed if s["id"] == link.name)


def test_a_linked_trash_folder_is_unlinked_not_followed(dir2, pristine, tmp_path):
    d, _, _ = dir2
    precious = clone(pristine, tmp_path / "precious", datetime(2025, 10, 1, tzinfo=UTC))
    trash = d / ".trash-x-0000"
    trash.symlink_to(precious, target_is_directory=True)
    out = run_cli("prune", d, "--keep-last", "5", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stale_removed"] == [trash.name]
    assert not os.path.lexists(trash) and verify(precious).ok
    again = json.loads(run_cli("prune", d, "--keep-last", "5", "--json").stdout)
    assert again["stale_removed"] == []


def test_prune_reports_only_what_it_really_removed(dir2):
    d, _, _ = dir2
    stuck = d / ".trash-y-0000"
    (stuck / "inner").mkdir(parents=True)
    (stuck / "inner" / "f").write_text("x")
    (stuck / "inner").chmod(0o500)  # its file cannot be unlinked by a normal user
    try:
        line = one_line_error(run_cli_limited("prune", d, "--keep-last", "5"), 8)
        assert "could not remove stale folder .trash-y-0000" in line
        assert stuck.exists()
    finally:
        (stuck / "inner").chmod(0o700)


# -- 13. check --to a file -----------------------------------------------------------------------


def test_check_to_a_file_is_not_ok(make_db, tmp_path):
    dsn = make_db("faults_check")
    f = tmp_path / "a-file"
    f.write_text("x")
    for to in (f, f / "sub"):
        out = run_cli("check", "--dsn", dsn, "--to", to, "--json")
        disk = next(i for i in json.loads(out.stdout)["checks"] if i["check"] == "disk space")
        assert out.returncode == 5 and disk["status"] == "fail" and "is not a folder" in disk["detail"], disk


# -- smaller ones --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("backup", "--to", "X", "--jobs", "100000"),
        ("restore", "X", "--jobs", "100000"),
        ("restore", "X", "--jobs", "0"),
        ("backup", "--to", "X", "-j", "-3"),
    ],
)
def test_absurd_jobs_are_a_config_error(tmp_path, args):
    args = [str(tmp_path / "x") if a == "X" else a for a in args]
    line = one_line_error(run_cli(*args, "--dsn", "postgresql://u@127.0.0.1:1/x"), 2)
    assert "out of range: use 1 to 64" in line
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        (("--keep-within", ""), "--keep-within: empty duration"),
        (("--keep-within", "7 days"), "--keep-within: cannot read"),
        (("--stale-after-hours", "-1"), "not -1.0"),
        (("--stale-after-hours", "nan"), "not nan"),
        (("--stale-after-hours", "inf"), "not inf"),
    ],
)
def test_bad_prune_arguments_are_config_errors(dir2, flags, expected):
    d, a, b = dir2
    assert expected in one_line_error(run_cli("prune", d, *flags), 2)
    assert a.exists() and b.exists()


def test_a_fresh_garbage_lock_says_how_to_remove_it_and_an_old_one_is_replaced(dir2):
    d, a, b = dir2
    lock = d / ".lock"
    lock.write_text("")
    line = one_line_error(run_cli("prune", d, "--keep-last", "5"), 10)
    assert f"rm {lock}" in line and "wait for it" not in line
    old = time.time() - 120
    os.utime(lock, (old, old))
    out = run_cli("prune", d, "--keep-last", "5")
    assert out.returncode == 0, out.stderr
    # Its age as the command saw it: 120 s, or a second or two more on a busy machine.
    said = re.search(r"replaced an unreadable lock file \(empty, (\d+) s old\)", out.stderr)
    assert said is not None and int(said[1]) >= 120, out.stderr
    assert not lock.exists()


def test_html_report_is_private_under_umask_000(dir2, tmp_path):
    _, a, b = dir2
    html = tmp_path / "report.html"
    out = run_cli_limited("diff", a, b, "--html", html, umask=0)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(html.stat().st_mode) == 0o600
    html.chmod(0o644)  # an existing, too open file is tightened too
    run_cli_limited("diff", a, b, "--html", html, umask=0)
    assert stat.S_IMODE(html.stat().st_mode) == 0o600
