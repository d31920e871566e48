"""A scheduled run that was killed must not say ``running`` for ever.

What the operator saw: systemd stopped the nightly backup (``TimeoutStartSec``; Airflow's
task timeout and the OOM killer do the same) while papermill ran the notebook.  The kernel
died without marking its run record failed, so ``RUNS_DIR/<run id>.json`` kept
``"status": "running"``, and ``backupkit status --runs`` went on saying OK (exit 0): the
monitor never learned that the job had died.

A record whose run cannot still be going is reported as failed (exit 16) with a line
saying it was interrupted: on the host that ran it, its kernel (or the papermill that
launched it) is gone; from another host, which cannot look, once it is older than
``monitor.RUN_LIMIT``.  Records written before the run recorded its processes stay readable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from helpers import load_small

from backupkit.capture.job import backup
from backupkit.monitor import status as monitor
from backupkit.monitor.status import last_run, status
from backupkit.notebook.runs import RunRecord, new_run_id

BOUND = 120.0  # seconds: a generous bound on waiting for a process to start or end, never an assertion


def notebook(folder: Path) -> Path:
    """A scheduled notebook as backup.ipynb starts: a run record, then a step that takes long."""
    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell("from backupkit import notebook as nb"),
        nbformat.v4.new_code_cell('run = nb.start_run("backup", runs_dir="runs")'),
        nbformat.v4.new_code_cell('import time\nwith run.step("backup"):\n    time.sleep(3600)'),
        nbformat.v4.new_code_cell("run.finish()"),
    ]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "slow.ipynb"
    nbformat.write(book, path)
    return path


def wait_for(what: str, check) -> object:
    """Poll ``check()`` until it returns something true, for at most ``BOUND`` seconds."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"waited {BOUND:.0f} s for {what}")


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie no one reaps has ended too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


@pytest.fixture
def repo(make_db, tmp_path) -> Path:
    """A repository whose newest snapshot was just taken: ``status`` says ok."""
    dsn = make_db("stale")
    load_small(dsn)
    return backup(dsn, tmp_path / "repo", progress=False).path.parent


def status_cli(repo: Path, runs: Path) -> tuple[int, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "backupkit", "status", str(repo), "--runs", str(runs), "--json"],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


@pytest.mark.parametrize("killed", ["papermill", "kernel"])
def test_a_run_killed_mid_step_is_reported_failed_not_running(repo, tmp_path, killed):
    work = tmp_path / "work"
    work.mkdir()
    runs = work / "runs"
    papermill = subprocess.Popen(
        [sys.executable, "-m", "papermill", str(notebook(work)), str(work / "out.ipynb")]
        + ["-k", "python3", "--cwd", str(work), "--no-progress-bar"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (record,) = wait_for("the run record", lambda: records(runs) if runs.is_dir() else None)
        # The run is going: not a failure, whatever reads its record.
        assert papermill.poll() is None, papermill.stderr.read() if papermill.stderr else ""
        assert record["status"] == "running" and record["pid"] != papermill.pid
        assert record["launcher"]["pid"] == papermill.pid  # the kernel's papermill, recorded too
        assert status(repo, runs_dir=runs).state == "ok"
        assert last_run(runs)["status"] == "running"

        # systemd's stop (or Airflow's timeout): SIGTERM to papermill; an OOM kill: the kernel.
        os.kill(papermill.pid if killed == "papermill" else record["pid"], signal.SIGTERM)
        papermill.wait(timeout=BOUND)
        wait_for("the kernel to end", lambda: gone(record["pid"]))
    finally:
        if papermill.poll() is None:
            papermill.kill()
            papermill.wait(timeout=BOUND)

    assert papermill.returncode != 0
    (left,) = records(runs)
    assert left["status"] == "running"  # nothing could mark it: the fault is in what reads it

    st = status(repo, runs_dir=runs)
    assert (st.state, st.exit_code) == ("run_failed", 16)
    assert st.last_run is not None and st.last_run["status"] == "failed"
    (reason,) = st.reasons
    assert reason.startswith(f"the last run (backup, {record['run_id']}) failed: interrupted")
    assert f"pid {record['pid']}" in reason and "gone" in reason
    assert last_run(runs)["status"] == "failed"

    code, data = status_cli(repo, runs)
    assert code == 16 and data["state"] == "run_failed" and data["last_run"]["status"] == "failed"
    assert "interrupted" in data["last_run"]["exit_reason"]
    text = subprocess.run(
        [sys.executable, "-m", "backupkit", "status", str(repo), "--runs", str(runs)],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert text.returncode == 16 and "last run: backup failed" in text.stdout and "interrupted" in text.stdout


# -- the decision, given what was read --------------------------------------------------------


def record(started: datetime, **fields) -> dict:
    run_id = new_run_id("backup", started)
    data = RunRecord(job="backup", run_id=run_id, path=Path(f"{run_id}.json"), started_at=started).to_dict()
    data.update(fields)
    return data


NOW = datetime(2025, 3, 1, 2, 30, tzinfo=UTC)
BOOT = "6f1c1a51-1111-4222-8333-944445555666"


def test_a_run_on_another_host_is_interrupted_only_past_the_run_limit():
    here = monitor.Here(host="other-host", boot_id=BOOT, processes={})
    rec = record(NOW - timedelta(hours=3), host="db1", pid=4242, process="aaaa:1")
    assert monitor.interruption(rec, NOW, here) is None  # db1 cannot be looked at: a 3 h run may be going
    old = record(NOW - monitor.RUN_LIMIT - timedelta(minutes=1), host="db1", pid=4242, process="aaaa:1")
    why = monitor.interruption(old, NOW, here)
    assert why is not None and why.startswith("interrupted") and "db1" in why and "24 h" in why
    assert monitor.interruption(old, NOW, here, limit=timedelta(hours=48)) is None


def test_on_its_own_host_a_run_lives_exactly_as_long_as_its_processes():
    started = NOW - timedelta(days=3)  # long, but its kernel is verified alive: still going
    rec = record(started, host="db1", pid=100, process=f"{BOOT}:500", launcher={"pid": 90, "process": f"{BOOT}:400"})
    alive = {100: (f"{BOOT}:500", None), 90: (f"{BOOT}:400", None)}
    assert monitor.interruption(rec, NOW, monitor.Here("db1", BOOT, alive)) is None
    why = monitor.interruption(rec, NOW, monitor.Here("db1", BOOT, {**alive, 100: None}))
    assert why is not None and "pid 100" in why and "gone" in why
    why = monitor.interruption(
        rec, NOW, monitor.Here("db1", BOOT, {**alive, 90: None})
    )  # papermill killed, kernel stuck
    assert why is not None and "pid 90" in why and "gone" in why
    why = monitor.interruption(rec, NOW, monitor.Here("db1", BOOT, {**alive, 100: (f"{BOOT}:999", None)}))  # pid reused
    assert why is not None and "pid 100" in why
    machine = {"pid_namespace": "pid:[4026531836]", "machine": "d1" * 16}
    rec = {**rec, **machine}
    restarted = monitor.Here("db1", "another-boot", {}, **machine, booted_at=NOW - timedelta(hours=1))
    why = monitor.interruption(rec, NOW, restarted)
    assert why is not None and "restarted" in why


def test_a_run_in_another_container_or_on_a_clone_of_the_same_host_name_is_not_looked_at():
    """Containers of one compose file share a host name, each in a pid namespace of its own, and
    machines cloned from one image share one too: the reader cannot see the run's processes, so
    it goes by the run limit, as for another host."""
    started = NOW - timedelta(hours=3)
    place = {"pid_namespace": "pid:[4026531836]", "machine": "d1" * 16}
    rec = record(started, host="db1", pid=100, process=f"{BOOT}:500", **place)
    nothing_here = {100: None}  # no such pid where the reader runs
    container = monitor.Here("db1", BOOT, nothing_here, pid_namespace="pid:[4026532999]", machine="d1" * 16)
    assert monitor.interruption(rec, NOW, container) is None
    clone = monitor.Here("db1", "another-boot", nothing_here, **place, booted_at=NOW - timedelta(hours=1))
    assert monitor.interruption({**rec, "machine": "c0" * 16}, NOW, clone) is None
    # Another machine id is another machine, even where the namespace or boot cannot be read.
    unreadable = monitor.Here("db1", None, nothing_here, machine="c0" * 16)
    assert monitor.interruption(rec, NOW, unreadable) is None
    # Past the run limit it is taken for dead, as from any place that cannot look.
    old = {**rec, "started_at": (NOW - monitor.RUN_LIMIT - timedelta(minutes=1)).isoformat()}
    why = monitor.interruption(old, NOW, container)
    assert why is not None and "cannot be checked from here" in why


def test_records_written_before_processes_were_recorded_stay_readable():
    started = NOW - timedelta(hours=1)
    old = record(started, host="db1", pid=100)
    for key in ("process", "launcher"):
        old.pop(key, None)
    assert (
        monitor.interruption(old, NOW, monitor.Here("db1", BOOT, {100: (None, started - timedelta(seconds=2))})) is None
    )
    assert "gone" in (monitor.interruption(old, NOW, monitor.Here("db1", BOOT, {100: None})) or "")
    # The pid now belongs to a process started after the run: not the run's kernel.
    reused = monitor.Here("db1", BOOT, {100: (None, started + timedelta(hours=1))})
    assert "pid 100" in (monitor.interruption(old, NOW, reused) or "")
    # Nothing but a status and a start time (another writer, an older backupkit): the age limit.
    bare = {"job": "backup", "run_id": "r", "status": "running", "started_at": started.isoformat()}
    assert monitor.interruption(bare, NOW, monitor.Here("db1", BOOT, {})) is None
    assert monitor.interruption(bare, NOW + monitor.RUN_LIMIT, monitor.Here("db1", BOOT, {})) is not None
    assert (
        monitor.interruption({**bare, "status": "succeeded"}, NOW + monitor.RUN_LIMIT, monitor.Here("db1", BOOT, {}))
        is None
    )


def test_this_process_is_seen_alive_and_its_record_names_it():
    rec = RunRecord(job="backup", run_id="r", path=Path("r.json"), started_at=datetime.now(UTC)).to_dict()
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid()
    if sys.platform.startswith("linux"):
        assert rec["process"].split(":")[0] == monitor.look_here(rec).boot_id
    assert monitor.interruption(rec, datetime.now(UTC), monitor.look_here(rec)) is None


def test_the_run_limit_for_another_hosts_runs_is_a_status_option(repo, tmp_path):
    """A job that runs on db1 and a monitor on another host sharing its runs_dir: a run killed
    outright on db1 was reported failed only after 24 h, a limit only the library could
    change.  ``--run-limit`` says how long a job of this schedule may take."""
    runs = tmp_path / "runs"
    runs.mkdir()
    started = datetime.now(UTC) - timedelta(hours=3)
    rec = record(started, host="db1-" + os.urandom(4).hex(), pid=4242, process="aaaa:1")
    (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec))

    assert status_cli(repo, runs)[0] == 0  # 3 h may still be a running backup

    def with_limit(limit: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "backupkit", "status", str(repo), "--runs", str(runs), "--run-limit", limit],
            capture_output=True,
            text=True,
            timeout=BOUND,
        )

    short = with_limit("2h")
    assert short.returncode == 16, short.stderr
    assert "interrupted" in short.stdout and "2 h" in short.stdout
    assert with_limit("4h").returncode == 0
    bad = with_limit("soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error: `--run-limit`: cannot read")
