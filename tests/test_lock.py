"""The directory lock, with real processes as holders (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupkit.errors import LockError, StorageError
from backupkit.storage.lock import DirLock, read_lock

REPO = Path(__file__).resolve().parents[1]

# Takes the lock, says so, then holds it until stdin closes (release) or it is killed (no release).
HOLDER = """
import sys
from pathlib import Path
from backupkit.storage.lock import DirLock
with DirLock(Path(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def hold_in_child(spawn, directory: Path, purpose: str = "backup") -> subprocess.Popen:
    child = spawn(HOLDER, str(directory), purpose)
    assert child.stdout.readline().strip() == "locked"
    return child


def write_lock(directory: Path, **info) -> None:
    (directory / ".lock").write_text(json.dumps(info))


def test_second_lock_while_held_is_refused_naming_the_holder(tmp_path):
    with DirLock(tmp_path, "backup"), pytest.raises(LockError) as exc:
        DirLock(tmp_path, "prune").acquire()
    message = str(exc.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "backup, started " in message
    assert f"remove {tmp_path / '.lock'} if you are sure no backupkit runs" in message
    assert read_lock(tmp_path) is None


def test_lock_file_is_private_json(tmp_path):
    with DirLock(tmp_path, "prune") as lock:
        path = tmp_path / ".lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = read_lock(tmp_path)
        assert info == lock.info
        recorded = {"host", "pid_namespace", "pid", "purpose", "started_at", "process", "token"}
        machine_id = Path("/etc/machine-id")
        assert set(info) == (recorded | {"machine"} if machine_id.exists() else recorded)
        assert info["pid_namespace"] == os.readlink("/proc/self/ns/pid")
        if machine_id.exists():  # a digest of it, never the id itself (machine-id(5): keep it private)
            assert len(info["machine"]) == 32 and machine_id.read_text().strip() not in json.dumps(info)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert info["process"].startswith(boot + ":")  # this boot, and when the process started in it
        assert (info["host"], info["pid"], info["purpose"]) == (socket.gethostname(), os.getpid(), "prune")
        assert datetime.fromisoformat(info["started_at"]).utcoffset() == timedelta(0)
        assert lock.took_over is None
    assert not path.exists()


def test_lock_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(
        tmp_path, host=socket.gethostname(), pid=dead.pid, purpose="backup", started_at="2025-11-26T12:00:00+00:00"
    )
    with DirLock(tmp_path, "prune") as lock:
        assert lock.took_over is not None
        assert lock.took_over.startswith(f"took over a stale lock left by pid {dead.pid} on host ")
        assert "started 2025-11-26T12:00:00+00:00" in lock.took_over
        assert read_lock(tmp_path)["pid"] == os.getpid()
    assert read_lock(tmp_path) is None


def test_lock_held_by_a_live_child_is_refused(tmp_path, spawn):
    child = hold_in_child(spawn, tmp_path)
    with pytest.raises(LockError, match=f"pid {child.pid} on host"):
        DirLock(tmp_path, "prune").acquire()
    assert read_lock(tmp_path)["pid"] == child.pid
    # A clean exit releases it.
    child.stdin.close()
    assert child.wait() == 0
    assert read_lock(tmp_path) is None
    with DirLock(tmp_path, "prune") as lock:
        assert lock.took_over is None


def test_lock_of_a_killed_child_is_taken_over(tmp_path, spawn):
    child = hold_in_child(spawn, tmp_path)
    child.kill()
    child.wait()
    assert read_lock(tmp_path)["pid"] == child.pid  # SIGKILL left it behind
    with DirLock(tmp_path, "backup") as lock:
        assert f"pid {child.pid}" in lock.took_over
        assert "no longer runs" in lock.took_over


def test_release_leaves_someone_elses_lock_alone(tmp_path, spawn):
    lock = DirLock(tmp_path, "backup")
    lock.acquire()
    (tmp_path / ".lock").unlink()  # a user removed it by hand, and then...
    child = hold_in_child(spawn, tmp_path, "prune")  # ...another run took the directory
    assert lock.release() is False
    assert read_lock(tmp_path)["pid"] == child.pid
    assert read_lock(tmp_path)["purpose"] == "prune"


def test_pid_reused_by_a_newer_process_counts_as_dead(tmp_path, spawn):
    # Linux (backupkit's platform): /proc tells when a process started.
    unrelated = spawn("import sys; sys.stdin.read()")
    write_lock(
        tmp_path, host=socket.gethostname(), pid=unrelated.pid, purpose="backup", started_at="2001-01-01T00:00:00+00:00"
    )
    with DirLock(tmp_path, "prune") as lock:
        assert f"pid {unrelated.pid}" in lock.took_over
    assert unrelated.poll() is None  # taking over never touches the process


def test_a_live_holder_is_known_by_its_start_since_boot_whatever_the_clock_says(tmp_path, spawn):
    """The wall clock set forward after a lock was taken (NTP's first sync, a VM resumed) made the
    holder look like a newer process that reused its pid, and a prune on the same host took its
    lock over mid-backup.  The holder's boot id and start time since boot do not move."""
    from backupkit.storage.lock import process_identity

    holder = spawn("import sys; sys.stdin.read()")

    def lock_recording(process: str) -> None:
        # started_at: as the clock now sees the moment the lock was taken, long before
        write_lock(
            tmp_path,
            host=socket.gethostname(),
            pid=holder.pid,
            purpose="backup",
            started_at="2001-01-01T00:00:00+00:00",
            process=process,
        )

    lock_recording(process_identity(holder.pid))
    with pytest.raises(LockError, match=f"locked by pid {holder.pid}"):
        DirLock(tmp_path, "prune").acquire()
    # The same pid, recorded with another start: a process that reused it, not the holder.
    boot, ticks = process_identity(holder.pid).rsplit(":", 1)
    lock_recording(f"{boot}:{int(ticks) - 1}")
    with DirLock(tmp_path, "prune") as lock:
        assert "no longer runs" in lock.took_over
    assert holder.poll() is None


def _here_but(**changes) -> dict:
    """A lock as a holder would write it on this host name, changed as ``changes`` say."""
    from backupkit.runtime.place import Place
    from backupkit.storage.lock import process_identity

    holder = subprocess.Popen([sys.executable, "-c", "pass"])
    holder.wait()  # a pid that runs nowhere in this namespace
    info = {
        **Place.here().record(),
        "pid": holder.pid,
        "purpose": "backup",
        "started_at": datetime.now(UTC).isoformat(),
        "process": process_identity(os.getpid()),
        "token": "0ddba11",
    }
    return {**info, **changes}


def test_a_holder_in_another_container_of_the_same_host_name_is_not_taken_for_dead(tmp_path):
    """Containers of one compose file share their configured host name, each in a pid namespace
    of its own: a prune run beside the scheduled backup's container found no process with the
    backup's pid in its own namespace, took the lock over and could delete under the backup."""
    write_lock(tmp_path, **_here_but(pid_namespace="pid:[4026532999]"))
    with pytest.raises(LockError, match="locked by pid .* on host " + socket.gethostname()):
        DirLock(tmp_path, "prune").acquire()
    # Like any holder out of sight: stale once it has shown no sign of life for stale_after.
    write_lock(tmp_path, **_here_but(pid_namespace="pid:[4026532999]", started_at="2025-11-26T12:00:00+00:00"))
    with DirLock(tmp_path, "prune") as lock:
        assert "another container, or another machine of the same name" in lock.took_over


def test_a_holder_on_a_clone_of_this_machine_is_not_taken_for_dead(tmp_path):
    """Machines cloned from one image share a host name, and a pid namespace of the same
    number: another boot id there is another machine, not this one restarted, unless this
    machine's own id says the lock is its own from before it booted."""
    from backupkit.runtime.place import Place

    here = Place.here()
    clone = _here_but(process="0f0f0f0f-0000-4000-8000-000000000000:12345", machine="c" * 32)
    write_lock(tmp_path, **clone)
    with pytest.raises(LockError, match="locked by pid"):
        DirLock(tmp_path, "prune").acquire()
    if here.machine is None or here.booted_at is None:
        return  # this machine cannot tell its own restarts: the lock waits for stale_after
    before_boot = (here.booted_at - timedelta(minutes=5)).isoformat()
    mine = {**clone, "machine": here.machine, "started_at": before_boot, "token": "c10e"}
    # A clone that shares this machine's id (a template not prepared for cloning) is told
    # apart by its signs of life: one made since this machine booted.
    write_lock(tmp_path, **mine)
    beat = tmp_path / ".lock.alive-c10e-00000007"
    beat.write_bytes(b"")
    with pytest.raises(LockError, match="locked by pid"):
        DirLock(tmp_path, "prune").acquire()
    long_before = (here.booted_at - timedelta(hours=1)).timestamp()
    os.utime(beat, (long_before, long_before))  # its last, an hour before this machine booted
    with DirLock(tmp_path, "prune") as lock:
        assert "its machine restarted since" in lock.took_over


def test_a_holder_that_showed_life_just_before_this_machine_booted_gets_time_to_show_more(tmp_path, monkeypatch):
    """A sign of life a minute before this machine booted: a crash just then, or a clone sharing
    this machine's id that beats every few minutes.  Right after the boot it cannot be told, so
    the lock is kept until a beat would have come; then it is taken over."""
    from backupkit.runtime.place import Place
    from backupkit.storage import lock as lock_module

    booted = datetime.now(UTC) - timedelta(minutes=1)
    here = Place.here()
    monkeypatch.setattr(Place, "here", classmethod(lambda cls: replace(here, booted_at=booted, machine="m" * 32)))
    started = (booted - timedelta(hours=2)).isoformat()
    write_lock(
        tmp_path,
        **_here_but(
            process="0f0f0f0f-0000-4000-8000-000000000000:1", machine="m" * 32, started_at=started, token="be47"
        ),
    )
    beat = tmp_path / ".lock.alive-be47-00000020"
    beat.write_bytes(b"")
    just_before = (booted - timedelta(minutes=1)).timestamp()
    os.utime(beat, (just_before, just_before))
    with pytest.raises(LockError, match="locked by pid"):
        DirLock(tmp_path, "prune").acquire()
    monkeypatch.setattr(lock_module, "HEARTBEAT_EVERY", 10.0)  # the window a beat would have come in is over
    with DirLock(tmp_path, "prune") as lock:
        assert "its machine restarted since" in lock.took_over


def test_the_holder_shows_it_is_alive_and_leaves_no_sign_behind(tmp_path, monkeypatch):
    from backupkit.storage import lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_EVERY", 0.05)
    with DirLock(tmp_path, "backup") as lock:
        prefix = f".lock.alive-{lock.info['token']}-"
        assert (tmp_path / f"{prefix}00000000").exists()  # at once, not only after the first interval
        deadline = time.monotonic() + 30
        while not (tmp_path / f"{prefix}00000002").exists():
            assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
            time.sleep(0.01)
        assert len(list(tmp_path.glob(".lock.alive-*"))) <= 2  # each new one replaces the one before
    assert not list(tmp_path.glob(".lock.alive-*")) and not (tmp_path / ".lock").exists()


def test_another_hosts_long_run_is_not_stale_while_it_shows_signs_of_life(tmp_path):
    """A backup of a very large database holds the lock longer than stale_after (6 h): while its
    host keeps making signs of life, a prune elsewhere waits; once they stop, it takes over."""
    seven_hours_ago = (datetime.now(UTC) - timedelta(hours=7)).isoformat()
    write_lock(tmp_path, **{**STALE, "started_at": seven_hours_ago, "token": "feedc0de"})
    alive = tmp_path / ".lock.alive-feedc0de-00000083"
    alive.write_bytes(b"")  # made just now
    with pytest.raises(LockError, match="locked by pid 4242 on host another-host.invalid"):
        DirLock(tmp_path, "prune").acquire()
    old = time.time() - 6.5 * 3600
    os.utime(alive, (old, old))  # its last sign of life, six and a half hours ago
    with DirLock(tmp_path, "prune") as lock:
        assert "with no sign of life since" in lock.took_over
        assert not alive.exists()  # the stale holder's signs go with its lock


def test_other_hosts_lock_is_respected_until_stale(tmp_path):
    write_lock(
        tmp_path, host="another-host.invalid", pid=4242, purpose="backup", started_at="2025-11-26T12:00:00+00:00"
    )
    with pytest.raises(LockError, match="pid 4242 on host another-host.invalid"):
        DirLock(tmp_path, "prune", stale_after=timedelta(days=365 * 1000)).acquire()
    with DirLock(tmp_path, "prune") as lock:  # default: stale after 6 hours
        assert "another-host.invalid" in lock.took_over
        assert "older than 6:00:00" in lock.took_over


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '{"host": "h", "pid": "12", "started_at": "x"}',
        '{"host": "h", "pid": 12, "started_at": "2025-11-26T12:00:00"}',
    ],
)
def test_unreadable_lock_is_refused_and_kept(tmp_path, content):
    (tmp_path / ".lock").write_text(content)
    with pytest.raises(LockError, match="not a readable backupkit lock"):
        DirLock(tmp_path, "backup").acquire()
    assert (tmp_path / ".lock").read_text() == content


def test_missing_directory(tmp_path):
    # A folder problem is storage (exit 8), never "locked" (exit 10), which would say to wait.
    with pytest.raises(StorageError, match="cannot lock"):
        DirLock(tmp_path / "nope", "backup").acquire()


def test_one_dirlock_cannot_be_acquired_twice(tmp_path):
    with DirLock(tmp_path, "backup") as lock, pytest.raises(LockError, match="already held"):
        lock.acquire()


def test_read_lock_of_an_unlocked_directory(tmp_path):
    assert read_lock(tmp_path) is None


def test_a_backup_whose_lock_cannot_be_removed_still_returns_its_snapshot(make_db, tmp_path, caplog, monkeypatch):
    """The lock goes last, after the snapshot is published: a lock that cannot be removed then
    (here a folder put in its place; on S3 a failed request) is a warning, not a failed backup."""
    import psycopg

    import backupkit
    import backupkit.capture.job as job

    dsn = make_db("lockrel")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
    lock = tmp_path / ".lock"
    real_publish = job.publish

    def publish_then_replace_the_lock(*args, **kwargs):
        published = real_publish(*args, **kwargs)
        lock.unlink()
        lock.mkdir()
        return published

    monkeypatch.setattr(job, "publish", publish_then_replace_the_lock)
    res = backupkit.backup(dsn, tmp_path, progress=False)

    assert backupkit.verify(res.path).ok and res.manifest["tables"][0]["rows"] == 10
    assert f"could not remove the lock {lock}" in caplog.text
    lock.rmdir()


STALE = {"host": "another-host.invalid", "pid": 4242, "purpose": "backup", "started_at": "2025-11-26T12:00:00+00:00"}


@pytest.fixture(params=["local", "s3"])
def repository(request, tmp_path):
    """A repository on disk, or on the suite's S3 server (where nothing serialises two takers)."""
    from backupkit.storage.location import open_storage

    if request.param == "local":
        return open_storage(tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/repo", create=True)


def _write_stale(storage) -> None:
    storage.write(".lock", json.dumps(STALE).encode())


def test_two_processes_that_read_one_stale_lock_never_both_hold_the_lock(repository):
    """B read the stale lock, then A took it over: B's takeover must not remove A's new lock
    (it would, then write its own, and both would run: a prune beside a backup)."""
    _write_stale(repository)
    late = DirLock(repository, "prune")
    seen_by_late = read_lock(repository)  # read before the other takes over

    with DirLock(repository, "backup") as first:
        assert "another-host.invalid" in first.took_over
        with pytest.raises(LockError):
            late._take_over(seen_by_late, datetime.now(UTC))  # the moment B goes on
        assert read_lock(repository)["pid"] == os.getpid() and read_lock(repository)["purpose"] == "backup"
    assert read_lock(repository) is None
    assert [e.name for e in repository.list() if e.name.startswith(".lock")] == []  # no claim left


def test_a_claim_in_progress_keeps_others_off_the_stale_lock_until_it_is_abandoned(tmp_path):
    from backupkit.storage.location import open_storage

    storage = open_storage(tmp_path)
    _write_stale(storage)
    claim = f".lock.takeover-{hashlib.sha256(json.dumps(STALE, sort_keys=True).encode()).hexdigest()[:32]}"
    (tmp_path / claim).write_bytes(b"")  # another process is taking it over right now

    with pytest.raises(LockError):
        DirLock(tmp_path, "prune").acquire()
    assert read_lock(tmp_path) == STALE

    old = time.time() - 3600  # that process died in the middle: its claim is abandoned
    os.utime(tmp_path / claim, (old, old))
    with DirLock(tmp_path, "prune") as lock:
        assert "another-host.invalid" in lock.took_over
    assert not (tmp_path / claim).exists() and read_lock(tmp_path) is None


def test_a_backup_whose_lock_was_taken_over_publishes_nothing(make_db, tmp_path, monkeypatch):
    """A backup whose host showed no sign of life for ``stale_after`` had its lock taken over by a
    prune from another host, which removed the old snapshot and the shared data file this backup
    had found in the pool and reused.  Publishing it would list a snapshot that does not restore:
    the backup fails instead, naming the takeover, and leaves nothing that looks like a snapshot."""
    import psycopg

    import backupkit
    import backupkit.capture.job as job
    from backupkit.retention.policy import Policy
    from backupkit.storage.repository import list_snapshots

    dsn = make_db("takeover")

    def load(tag: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
            conn.execute("TRUNCATE t")
            conn.execute("INSERT INTO t SELECT i, %s || i FROM generate_series(1, 2000) i", [tag])

    load("v1-")
    first = backupkit.backup(dsn, tmp_path, progress=False)
    load("v2-")
    second = backupkit.backup(dsn, tmp_path, progress=False)
    load("v1-")  # the third backup finds the first one's data file in the pool
    real_verify = job.verify

    def verify_then_lose_the_lock(*args, **kwargs):
        report = real_verify(*args, **kwargs)
        held = json.loads((tmp_path / ".lock").read_text())
        old = (datetime.now(UTC) - timedelta(hours=7)).isoformat()
        (tmp_path / ".lock").write_text(json.dumps({**held, "host": "backup-host.invalid", "started_at": old}))
        for alive in tmp_path.glob(".lock.alive-*"):  # and its signs of life stopped (its host was suspended)
            os.utime(alive, (time.time() - 7 * 3600,) * 2)
        pruned = backupkit.prune(tmp_path, Policy(keep_last=1), now=datetime.now(UTC))
        assert pruned.removed == [first.location.id] and pruned.shared_removed
        return report

    monkeypatch.setattr(job, "verify", verify_then_lose_the_lock)
    with pytest.raises(LockError, match="was taken over while this backup ran.*nothing was published"):
        backupkit.backup(dsn, tmp_path, progress=False)

    snapshots, unfinished = list_snapshots(tmp_path)
    assert [s.id for s in snapshots] == [second.location.id]
    assert not [u for u in unfinished if u.kind != "trash"]
    assert backupkit.verify(second.location).ok
