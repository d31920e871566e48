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
import os, sys
from backupkit.capture import workers
assert workers.can_fork()
with workers.Workers.forked(2, os.getpid, ()) as w:
    assert w.started
    pids = set(w.pool().submit(os.getppid).result() for _ in range(4))
    print(w.method, pids == {os.getpid()})
"""


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_forked_workers_start_with_the_backup_and_are_its_children():
    out = subprocess.run([sys.executable, "-c", WORKER_PIDS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fork", "True"]
