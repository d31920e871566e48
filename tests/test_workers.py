"""When a backup's worker processes are forked, and when spawned (``capture.workers``)."""

import subprocess
import sys

import pytest

PROBE = r"""
import threading, time
from backupkit.capture import workers
print(workers.can_fork())
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
print(workers.can_fork())
stop.set()
t.join()
for _ in range(200):  # the system thread ends a moment after join() returns
    if workers.can_fork():
        break
    time.sleep(0.01)
print(workers.can_fork())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_fork_only_while_no_other_thread_runs():
    """A process running only its main thread (the CLI, a cron job) forks its workers; one
    with another thread (a Jupyter kernel) spawns them, and forks again once it is alone."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]


WORKER_PIDS = r"""
import os, sys, time
from pathlib import Path
from backupkit.capture import workers

def children():
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "stat").exists()
            and int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()]

assert workers.can_fork() and not children()
with workers.Workers.forked(2, os.getpid, ()) as w:
    deadline = time.monotonic() + 10
    while len(children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = len(children())  # before any task of ours: both started at once
    pids = set(w.pool().submit(os.getppid).result() for _ in range(4))
    print(w.method, started, pids == {os.getpid()})
"""


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_forked_workers_start_with_the_backup_and_are_its_children():
    out = subprocess.run([sys.executable, "-c", WORKER_PIDS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fork", "2", "True"]
