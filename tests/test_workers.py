"""When a backup's worker processes are forked, and when spawned (``capture.workers``)."""

import subprocess
import sys

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


def test_fork_only_while_no_other_thread_runs():
    """A process running only its main thread (the CLI, a cron job) forks its workers; one
    with another thread (a Jupyter kernel) spawns them, and forks again once it is alone.
    Elsewhere than on Linux workers are always spawned."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    linux = sys.platform == "linux"
    assert out.stdout.split() == [str(linux), "False", str(linux)]


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


def test_forked_workers_start_at_once_and_are_this_process_s_children():
    """Forked workers (Linux: the project's platform, where /proc shows the children)."""
    out = subprocess.run([sys.executable, "-c", WORKER_PIDS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fork", "2", "True"]
