"""The restore's worker pool: follow-up work jumps the queue, the first failure stops the rest."""

from __future__ import annotations

import threading
import time

import pytest

from backupkit.runtime.taskpool import TaskPool


def test_follow_up_work_runs_before_what_was_queued():
    order, pool = [], TaskPool(1)

    def load(name):
        order.append(name)
        if name == "a":
            pool.submit(lambda: order.append("index a"), first=True)

    for name in "abc":
        pool.submit(lambda name=name: load(name))
    pool.run()
    assert order == ["a", "index a", "b", "c"]


def test_first_failure_is_raised_and_nothing_more_starts():
    started, pool = [], TaskPool(2)
    slow_running, failed = threading.Event(), threading.Event()

    def slow():
        started.append("slow")
        slow_running.set()
        failed.wait(5)  # still running when the other task fails...
        time.sleep(0.2)  # ...and until the pool has taken note of it

    def fail():
        slow_running.wait(5)
        started.append("fail")
        failed.set()
        raise OSError("disk gone")

    pool.submit(slow)
    pool.submit(fail)
    for n in range(20):
        pool.submit(lambda n=n: started.append(n))
    with pytest.raises(OSError, match="disk gone"):
        pool.run()
    # the task running beside the failure finished; none of the queued ones began
    assert started == ["slow", "fail"]


def test_every_task_runs_once_on_several_workers():
    seen, lock, pool = [], threading.Lock(), TaskPool(3)

    def task(n):
        with lock:
            seen.append(n)
        if n < 50:
            pool.submit(lambda: task(n + 100))

    for n in range(100):
        pool.submit(lambda n=n: task(n))
    pool.run()
    assert sorted(seen) == sorted(list(range(100)) + list(range(100, 150)))


def test_on_failure_is_called_once_to_cut_running_tasks_short():
    calls, cut_short = [], threading.Event()
    pool = TaskPool(2, on_failure=lambda: (calls.append(1), cut_short.set()))

    def long_task():
        assert cut_short.wait(5), "the long task was never told to stop"
        raise RuntimeError("cancelled")  # what a cancelled COPY raises, say

    pool.submit(long_task)
    pool.submit(lambda: (_ for _ in ()).throw(OSError("first failure")))
    with pytest.raises(OSError, match="first failure"):
        pool.run()
    assert calls == [1]
