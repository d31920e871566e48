"""Child processes that end with the process that started them.

A worker process or a pg_dump left running after backupkit ends would keep its
session, its snapshot and its locks.  On Linux the kernel kills such a child
(``PR_SET_PDEATHSIG``); elsewhere ``KeepAlive`` in a worker notices the new parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_prctl: Any = None  # resolved before any fork: a preexec_fn must not load libraries


def _load_prctl() -> Any:
    global _prctl
    if _prctl is None:
        _prctl = False
        if sys.platform.startswith("linux"):
            try:
                _prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
    return _prctl or None


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux), and end it now
    if the parent already has (it may have died before the request was made)."""
    prctl = _prctl if _prctl is not None else _load_prctl()
    if prctl:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def dies_with_us() -> Callable[[], None]:
    """A ``preexec_fn`` for child tools (pg_dump): they end with this process, and so do
    their sessions and the locks they hold.  (PR_SET_PDEATHSIG fires when the thread that
    started the child ends; backupkit starts them from the thread running the backup.)"""
    _load_prctl()
    parent = os.getpid()
    return lambda: die_with_parent(parent)
