"""prune, pin and unpin on real snapshot folders, through the CLI as a user runs them.

One real snapshot is taken of a small database (once per module); each test
builds its backup directory by cloning that folder under new ids and
``created_at`` times (manifest rewritten and re-sealed), so every snapshot
verifies exactly like one written by ``backupkit backup``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import copy_snapshot_folder, load_small, run_cli, snapshot_dirs, stored_file

import backupkit
from backupkit.errors import RetentionError
from backupkit.retention.policy import Policy
from backupkit.retention.prune import prune
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.verify import verify
from backupkit.storage.repository import new_id

REPO = Path(__file__).resolve().parents[1]
UTC = UTC
NOW = datetime(2025, 11, 26, 12, 0, tzinfo=UTC)  # a Wednesday, ISO week 2025-W48
NEWEST = "newest intact snapshot"
NONE = ["matched no keep rule"]


@pytest.fixture(scope="module")
def source(pg_server, tmp_path_factory) -> Path:
    """One real snapshot of the small database, shared by the module's tests."""
    dsn = pg_server.createdb("prune")
    try:
        load_small(dsn)
        path = backupkit.backup(dsn, tmp_path_factory.mktemp("source"), label="src").path
    finally:
        pg_server.dropdb(dsn)
    assert verify(path).ok
    return path


def clone(source: Path, directory: Path, created_at: datetime, label: str | None = None) -> str:
    """Copy ``source`` into ``directory`` as a snapshot taken at ``created_at``; returns its id."""
    sid = new_id(created_at, label)
    dest = directory / sid
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy_snapshot_folder(source, dest)
    m = mf.read(dest)
    m.update(
        id=sid,
        label=label,
        created_at=created_at.isoformat(),
        finished_at=(created_at + timedelta(seconds=5)).isoformat(),
    )
    rewrite_manifest(dest, m)
    for p in [dest, *dest.rglob("*"), *(directory / ".shared").rglob("*")]:
        os.chmod(p, 0o700 if p.is_dir() else 0o600)
    return sid


def rewrite_manifest(snapshot: Path, m: dict) -> None:
    """Replace a snapshot's manifest with ``m``, sealed (as a backup writes it)."""
    (snapshot / mf.MANIFEST).unlink()
    fd = os.open(snapshot / mf.MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(mf.seal(m), indent=2, ensure_ascii=False))


def build(source: Path, directory: Path, *stamps: datetime) -> list[str]:
    """Clone one snapshot per time stamp; ids come back in the order given."""
    ids = [clone(source, directory, t, label=f"s{i}") for i, t in enumerate(stamps)]
    assert sorted(p.name for p in snapshot_dirs(directory)) == sorted(ids)
    return ids


def at(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def prune_json(directory: Path, *flags: str) -> dict:
    out = run_cli("prune", directory, *flags, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def listed(directory: Path) -> dict:
    out = run_cli("list", directory, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def names(directory: Path) -> set[str]:
    """What is in a repository folder besides its pool of shared files (checked on its own)."""
    return {p.name for p in directory.iterdir()} - {".shared"}


def flip_a_byte(snapshot: Path) -> str:
    """Damage one data file in place (same size, one byte changed); returns its path."""
    m = mf.read(snapshot)
    entry = max((f for t in m["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    if entry.get("shared"):  # the clones share their files: this one gets its own copy to damage
        path = snapshot / entry["path"]
        path.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(stored_file(snapshot, entry), path)
        del entry["shared"]
        rewrite_manifest(snapshot, m)
    path = snapshot / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return entry["path"]


# The GFS timeline used by several tests (UTC).  With --keep-daily 3 --keep-weekly 2:
# days 11-26 (s0), 11-25 (s2), 11-24 (s3); weeks W48 (s0), W47 (s4).
GFS = [
    at("2025-11-26 10:00"),  # s0 Wed W48
    at("2025-11-26 03:00"),  # s1 same day as s0
    at("2025-11-25 10:00"),  # s2 Tue
    at("2025-11-24 10:00"),  # s3 Mon W48
    at("2025-11-23 10:00"),  # s4 Sun W47
    at("2025-11-20 10:00"),  # s5 Thu W47
    at("2025-11-12 10:00"),  # s6 W46
    at("2025-11-05 10:00"),
]  # s7 W45
GFS_FLAGS = ("--keep-daily", "3", "--keep-weekly", "2", "--tz", "UTC")


def gfs_expectation(ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    s = ids
    return {
        s[0]: ("keep", ["daily 2025-11-26", "weekly 2025-W48", NEWEST]),
        s[1]: ("remove", NONE),
        s[2]: ("keep", ["daily 2025-11-25"]),
        s[3]: ("keep", ["daily 2025-11-24"]),
        s[4]: ("keep", ["weekly 2025-W47"]),
        s[5]: ("remove", NONE),
        s[6]: ("remove", NONE),
        s[7]: ("remove", NONE),
    }


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# -- dry run ------------------------------------------------------------------------


def test_clones_are_real_private_snapshots(source, tmp_path):
    sid = clone(source, tmp_path, at("2025-11-26 10:00"), "x")
    snap = tmp_path / sid
    assert verify(snap).ok
    m = mf.read(snap)
    assert (m["id"], m["label"], m["created_at"]) == (sid, "x", "2025-11-26T10:00:00+00:00")
    assert m["tables"] == mf.read(source)["tables"]
    for p in [snap, *snap.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


def test_dry_run_deletes_nothing_and_explains_every_decision(source, tmp_path):
    ids = build(source, tmp_path, *GFS)
    before = tree(tmp_path)
    data = prune_json(tmp_path, *GFS_FLAGS, "--dry-run")
    assert tree(tmp_path) == before and names(tmp_path) == set(ids)  # nothing deleted, no lock left

    assert data["dry_run"] is True
    expected = gfs_expectation(ids)
    assert [d["id"] for d in data["decisions"]] == ids  # newest first
    assert {d["id"]: (d["action"], d["reasons"]) for d in data["decisions"]} == expected
    assert data["decisions"][0]["created_at"] == "2025-11-26T10:00:00+00:00"
    assert data["decisions"][0]["intact"] is True
    assert sorted(data["kept"]) == sorted(i for i, (a, _) in expected.items() if a == "keep")
    assert sorted(data["removed"]) == sorted(i for i, (a, _) in expected.items() if a == "remove")
    assert data["stale_removed"] == [] and data["warnings"] == []

    out = run_cli("prune", tmp_path, *GFS_FLAGS, "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ACTION", "ID", "REASONS"]
    rows = {line.split()[1]: line for line in lines[1:9]}
    assert set(rows) == set(ids)
    for sid, (action, reasons) in expected.items():
        assert rows[sid].split()[0] == action
        assert rows[sid].rstrip().endswith("; ".join(reasons)), rows[sid]
    assert lines[-1] == "would remove 4 snapshot(s), kept 4 (dry run)"
    assert tree(tmp_path) == before and names(tmp_path) == set(ids)


# -- GFS ----------------------------------------------------------------------------


def test_gfs_removes_exactly_the_unkept_and_the_rest_verify(source, tmp_path):
    ids = build(source, tmp_path, *GFS)
    expected = gfs_expectation(ids)
    kept = [i for i in ids if expected[i][0] == "keep"]
    data = prune_json(tmp_path, *GFS_FLAGS)
    assert data["dry_run"] is False
    assert data["removed"] == [ids[1], ids[5], ids[6], ids[7]]
    assert {d["id"]: (d["action"], d["reasons"]) for d in data["decisions"]} == expected
    assert names(tmp_path) == set(kept)  # no trash, no lock left behind

    listing = listed(tmp_path)
    assert [s["id"] for s in listing["snapshots"]] == kept
    assert listing["unfinished"] == []
    for sid in kept:
        out = run_cli("verify", tmp_path / sid)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{sid}: intact" in out.stdout

    # Running it again is a no-op: the survivors are exactly what the policy keeps.
    again = prune_json(tmp_path, *GFS_FLAGS)
    assert again["removed"] == [] and sorted(again["kept"]) == sorted(kept)


# -- default policy -------------------------------------------------------------------


def test_default_policy_keeps_thirty_days(source, tmp_path):
    ids = build(
        source,
        tmp_path,
        NOW - timedelta(days=1),
        NOW - timedelta(days=10),
        NOW - timedelta(days=29, hours=23),
        NOW - timedelta(days=30),
        NOW - timedelta(days=31),
        NOW - timedelta(days=90),
    )
    res = prune(tmp_path, Policy(), now=NOW)
    reasons = {d["id"]: d["reasons"] for d in res.decisions}
    assert reasons == {
        ids[0]: ["younger than 30 days", NEWEST],
        ids[1]: ["younger than 30 days"],
        ids[2]: ["younger than 30 days"],
        ids[3]: NONE,
        ids[4]: NONE,
        ids[5]: NONE,
    }
    assert res.kept == ids[:3] and res.removed == ids[3:]
    assert names(tmp_path) == set(ids[:3])


def test_default_policy_through_the_cli_uses_the_real_clock(source, tmp_path):
    now = datetime.now(UTC)
    ids = build(source, tmp_path, now - timedelta(days=2), now - timedelta(days=45))
    data = prune_json(tmp_path)
    assert {d["id"]: d["reasons"] for d in data["decisions"]} == {
        ids[0]: ["younger than 30 days", NEWEST],
        ids[1]: NONE,
    }
    assert [p.name for p in snapshot_dirs(tmp_path)] == [ids[0]]


# -- pins -----------------------------------------------------------------------------


def test_pinned_snapshots_survive_until_unpinned(source, tmp_path):
    ids = build(
        source, tmp_path, at("2025-11-26 10:00"), at("2025-11-25 10:00"), at("2025-11-24 10:00"), at("2025-11-23 10:00")
    )
    for sid in ids[2:]:
        out = run_cli("pin", tmp_path / sid)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"pinned {sid}"
    assert {s["id"]: s["pinned"] for s in listed(tmp_path)["snapshots"]} == {
        ids[0]: False,
        ids[1]: False,
        ids[2]: True,
        ids[3]: True,
    }

    data = prune_json(tmp_path, "--keep-last", "1")
    assert {d["id"]: (d["action"], d["reasons"]) for d in data["decisions"]} == {
        ids[0]: ("keep", ["last 1/1", NEWEST]),
        ids[1]: ("remove", NONE),
        ids[2]: ("keep", ["pinned"]),
        ids[3]: ("keep", ["pinned"]),
    }
    assert [p.name for p in snapshot_dirs(tmp_path)] == sorted([ids[0], ids[2], ids[3]])
    assert sorted(p.name for p in (tmp_path / ".pins").iterdir()) == sorted(ids[2:])
    assert all(verify(tmp_path / sid).ok for sid in (ids[0], ids[2], ids[3]))

    for sid in ids[2:]:
        out = run_cli("unpin", tmp_path / sid)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"unpinned {sid}"
    data = prune_json(tmp_path, "--keep-last", "1")
    assert data["removed"] == ids[2:]
    assert [p.name for p in snapshot_dirs(tmp_path)] == [ids[0]]
    assert list((tmp_path / ".pins").iterdir()) == []


# -- safety floors ----------------------------------------------------------------------


def test_newest_intact_snapshot_is_kept_when_the_newest_is_damaged(source, tmp_path):
    ids = build(
        source, tmp_path, at("2025-11-26 10:00"), at("2025-11-25 10:00"), at("2025-11-24 10:00"), at("2025-11-23 10:00")
    )
    damaged = flip_a_byte(tmp_path / ids[0])
    out = run_cli("verify", tmp_path / ids[0])
    assert out.returncode == 6 and f"{damaged}: checksum mismatch" in out.stdout

    data = prune_json(tmp_path, "--keep-last", "1")
    decisions = {d["id"]: d for d in data["decisions"]}
    assert {i: (d["action"], d["reasons"]) for i, d in decisions.items()} == {
        ids[0]: ("keep", ["last 1/1"]),
        ids[1]: ("keep", [NEWEST]),
        ids[2]: ("remove", NONE),
        ids[3]: ("remove", NONE),
    }
    assert decisions[ids[0]]["intact"] is False and decisions[ids[1]]["intact"] is True
    assert [p.name for p in snapshot_dirs(tmp_path)] == sorted(ids[:2])
    assert verify(tmp_path / ids[1]).ok

    text = run_cli("prune", tmp_path, "--keep-last", "1", "--dry-run").stdout
    assert any(line.split()[:2] == ["keep", ids[1]] and line.rstrip().endswith(NEWEST) for line in text.splitlines()), (
        text
    )


def test_future_dated_intact_snapshot_does_not_hide_a_damaged_newest(source, tmp_path):
    """A snapshot dated after ``now`` (clock skew) takes no part in the floors, so it being intact
    must not let prune assume the damaged newest real one is intact and drop the one that is."""
    future = clone(source, tmp_path, NOW + timedelta(days=1), "future")
    ids = [clone(source, tmp_path, NOW - timedelta(days=d), f"s{d}") for d in (1, 2, 3)]
    flip_a_byte(tmp_path / ids[0])
    res = prune(tmp_path, Policy(keep_last=1), now=NOW)
    decisions = {d["id"]: (d["action"], d["reasons"], d["intact"]) for d in res.decisions}
    assert decisions == {
        future: ("keep", ["in the future (clock skew?)"], True),
        ids[0]: ("keep", ["last 1/1"], False),
        ids[1]: ("keep", [NEWEST], True),
        ids[2]: ("remove", NONE, None),
    }
    assert [p.name for p in snapshot_dirs(tmp_path)] == sorted([future, ids[0], ids[1]])
    assert verify(tmp_path / ids[1]).ok


def test_prune_needs_an_aware_now(source, tmp_path):
    ids = build(source, tmp_path, NOW - timedelta(days=1))
    with pytest.raises(RetentionError, match="no time zone"):
        prune(tmp_path, Policy(), now=NOW.replace(tzinfo=None))
    assert names(tmp_path) == set(ids)  # untouched, and no lock left


def test_min_keep_floor(source, tmp_path):
    ids = build(source, tmp_path, *[at(f"2025-11-{26 - i} 10:00") for i in range(5)])
    data = prune_json(tmp_path, "--keep-last", "1", "--min-keep", "3")
    assert {d["id"]: (d["action"], d["reasons"]) for d in data["decisions"]} == {
        ids[0]: ("keep", ["last 1/1", NEWEST]),
        ids[1]: ("keep", ["min_keep floor (3)"]),
        ids[2]: ("keep", ["min_keep floor (3)"]),
        ids[3]: ("remove", NONE),
        ids[4]: ("remove", NONE),
    }
    assert [s["id"] for s in listed(tmp_path)["snapshots"]] == ids[:3]

    # The floor holds even when every rule would let everything go but the newest.
    data = prune_json(tmp_path, "--keep-last", "1", "--min-keep", "3")
    assert data["removed"] == [] and len(data["kept"]) == 3


# -- stale temporary folders --------------------------------------------------------------


def test_stale_temporary_folders_are_cleaned_and_reported_apart(source, tmp_path):
    ids = build(source, tmp_path, at("2025-11-26 10:00"), at("2025-11-25 10:00"))
    old_tmp = tmp_path / ".tmp-20251120T000000.000Z-0badc0de"
    fresh_tmp = tmp_path / ".tmp-20251126T115959.000Z-f00dfeed"
    trash = tmp_path / f".trash-{ids[1]}-deadbeef"
    for d in (old_tmp, fresh_tmp):
        (d / "data").mkdir(parents=True, mode=0o700)
        (d / "data" / "part.zst").write_bytes(b"half a table")
    shutil.copytree(tmp_path / ids[1], trash)
    hours = 3600
    os.utime(old_tmp, (time.time() - 7 * hours, time.time() - 7 * hours))
    os.utime(fresh_tmp, (time.time() - 5 * hours, time.time() - 5 * hours))
    policy = ("--keep-last", "-1", "--stale-after-hours", "6")

    dry = run_cli("prune", tmp_path, *policy, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove stale temporary folder {old_tmp.name}" in dry.stdout
    assert f"would remove stale temporary folder {trash.name}" in dry.stdout
    assert fresh_tmp.name not in dry.stdout
    assert old_tmp.is_dir() and trash.is_dir() and fresh_tmp.is_dir()

    out = run_cli("prune", tmp_path, *policy)
    assert out.returncode == 0, out.stderr
    assert f"removed stale temporary folder {old_tmp.name}" in out.stdout
    assert f"removed stale temporary folder {trash.name}" in out.stdout
    assert fresh_tmp.name not in out.stdout
    assert out.stdout.splitlines()[-1] == "removed 0 snapshot(s), kept 2"
    assert names(tmp_path) == {*ids, fresh_tmp.name}
    assert (fresh_tmp / "data" / "part.zst").read_bytes() == b"half a table"

    # With --json the stale folders are their own list, never among the snapshots.
    os.utime(fresh_tmp, (time.time() - 7 * hours, time.time() - 7 * hours))
    data = prune_json(tmp_path, *policy)
    assert data["stale_removed"] == [fresh_tmp.name]
    assert data["removed"] == [] and sorted(data["kept"]) == sorted(ids)
    assert fresh_tmp.name not in [d["id"] for d in data["decisions"]]
    assert names(tmp_path) == set(ids)


# -- the lock -------------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from backupkit.storage.lock import DirLock
with DirLock(Path(sys.argv[1]), "backup"):
    print("locked", flush=True)
    time.sleep(3600)
"""


def test_prune_refuses_while_a_backup_holds_the_lock_then_takes_over_a_stale_one(source, tmp_path, spawn):
    ids = build(source, tmp_path, at("2025-11-26 10:00"), at("2025-11-25 10:00"), at("2025-11-24 10:00"))
    holder = spawn(HOLDER, str(tmp_path))
    assert holder.stdout.readline().strip() == "locked"

    out = run_cli("prune", tmp_path, "--keep-last", "1")
    assert out.returncode == 10, out.stdout + out.stderr
    assert f"is locked by pid {holder.pid} on host {socket.gethostname()} (backup, started " in out.stderr
    assert "Traceback" not in out.stderr
    assert [p.name for p in snapshot_dirs(tmp_path)] == sorted(ids)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid

    holder.send_signal(signal.SIGKILL)  # dies without releasing: a stale lock
    assert holder.wait() == -signal.SIGKILL
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid

    out = run_cli("prune", tmp_path, "--keep-last", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"warning: took over a stale lock left by pid {holder.pid} on host " in out.stderr
    assert "that process no longer runs" in out.stderr
    assert out.stdout.splitlines()[-1] == "removed 2 snapshot(s), kept 1"
    assert names(tmp_path) == {ids[0]}  # the lock is released, too


PRUNE_HOLDER = HOLDER.replace('"backup"', '"prune"')


def test_a_pin_waits_for_no_prune_a_running_prune_refuses_it_and_keeps_nothing_half_done(source, tmp_path, spawn):
    """A prune reads the pins once and decides later: a pin set in between would be
    ignored and its marker deleted with the snapshot, so a pin is refused while the
    repository is locked, and the user is told so."""
    [sid] = build(source, tmp_path, at("2025-11-26 10:00"))
    holder = spawn(PRUNE_HOLDER, str(tmp_path))
    assert holder.stdout.readline().strip() == "locked"

    out = run_cli("pin", tmp_path / sid)

    assert out.returncode == 10, out.stdout + out.stderr
    assert f"is locked by pid {holder.pid} on host {socket.gethostname()} (prune, started " in out.stderr
    assert not (tmp_path / ".pins" / sid).exists()

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    out = run_cli("pin", tmp_path / sid)
    assert out.returncode == 0 and out.stdout.strip() == f"pinned {sid}", out.stderr
    assert (tmp_path / ".pins" / sid).exists() and not (tmp_path / ".lock").exists()


# -- interruption ------------------------------------------------------------------------------

KILLED_PRUNE = """
import os, signal, sys
from datetime import datetime, timezone
from backupkit.retention.prune import prune
from backupkit.retention.policy import Policy
prune(sys.argv[1], Policy(keep_last=2), now=datetime.now(timezone.utc),
      _after_rename=lambda p: os.kill(os.getpid(), signal.SIGKILL))
print("not reached", flush=True)
"""


def test_prune_killed_after_a_rename_leaves_only_complete_snapshots(source, tmp_path):
    ids = build(
        source, tmp_path, at("2025-11-26 10:00"), at("2025-11-25 10:00"), at("2025-11-24 10:00"), at("2025-11-23 10:00")
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_PRUNE, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, stderr
    assert "not reached" not in stdout
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == child.pid  # died holding the lock

    # The first snapshot to go (ids[2]) was renamed away whole; nothing else was touched.
    trash = [n for n in names(tmp_path) if n.startswith(".trash-")]
    assert len(trash) == 1 and trash[0].startswith(f".trash-{ids[2]}-")
    remaining = [ids[0], ids[1], ids[3]]
    listing = listed(tmp_path)
    assert [s["id"] for s in listing["snapshots"]] == remaining
    assert all(s["error"] is None and s["created_at"] for s in listing["snapshots"])
    assert [(Path(u["path"]).name, u["kind"]) for u in listing["unfinished"]] == [(trash[0], "trash")]

    text = run_cli("list", tmp_path).stdout.splitlines()
    table = [line for line in text if not line.startswith(("incomplete:", "total:"))]
    assert [line.split()[0] for line in table[1:]] == remaining
    assert any(
        line.startswith(f"incomplete: {trash[0]}  interrupted delete") and "not a snapshot" in line for line in text
    ), text
    for sid in remaining:
        out = run_cli("verify", tmp_path / sid)
        assert out.returncode == 0, out.stdout + out.stderr

    # The next prune takes over the dead child's lock, finishes the job and empties the trash.
    out = run_cli("prune", tmp_path, "--keep-last", "2", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"warning: took over a stale lock left by pid {child.pid} on host " in out.stderr
    data = json.loads(out.stdout)
    assert data["removed"] == [ids[3]]
    assert data["stale_removed"] == [trash[0]]
    assert names(tmp_path) == set(ids[:2])
    assert listed(tmp_path)["unfinished"] == []
