"""Run records: one JSON file per notebook run, kept current and redacted.

``start_run()`` creates a ``RunRecord`` and writes ``RUNS_DIR/<run_id>.json``
(status running); the record follows the run's steps and their durations, the
snapshot it made or used and the outcome, with every password redacted.  An
IPython ``post_run_cell`` hook marks the active run failed when any cell raises,
so a scheduled run that dies still leaves ``status: failed`` and the reason.
``_maybe_step`` lets the operations time themselves as steps when given a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..pg.dsn import DSN_ENV_VARS, redact


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if t else None


def new_run_id(job: str, now: datetime) -> str:
    """``<job>-<UTC time to the millisecond>-<4 hex>``: sortable, unique, safe as a file name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job) or "run"
    return f"{safe}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


def one_line(exc: BaseException) -> str:
    """``ErrorClass: first line of the message`` — what a run record calls the exit reason."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _secrets_for(params: Mapping[str, Any]) -> list[str]:
    """DSNs this run may have seen: the variables named by ``*dsn_env`` parameters and the CLI's."""
    names = [v for k, v in params.items() if k.endswith("dsn_env") and isinstance(v, str) and v]
    return [os.environ[n] for n in [*names, *DSN_ENV_VARS] if os.environ.get(n)]


def _redacted(value: Any, dsns: list[str]) -> Any:
    if isinstance(value, str):
        for dsn in dsns:
            value = redact(value, dsn)
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redacted(v, dsns) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, dsns) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _redacted(str(value), dsns)


@dataclasses.dataclass
class RunRecord:
    """One run of a notebook job, mirrored in ``path`` (``run.json`` content) at every change."""

    job: str
    run_id: str
    path: Path
    started_at: datetime
    status: str = "running"
    params: dict = dataclasses.field(default_factory=dict)
    steps: dict = dataclasses.field(default_factory=dict)
    snapshot: dict | None = None
    summary: dict = dataclasses.field(default_factory=dict)
    finished_at: datetime | None = None
    exit_reason: str | None = None
    hint: str | None = None
    failed_step: str | None = None
    _current_step: str | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"RunRecord(job={self.job!r}, run_id={self.run_id!r}, status={self.status!r}, path='{self.path}')"

    def to_dict(self) -> dict:
        """The run.json content, passwords redacted."""
        seconds = (self.finished_at - self.started_at).total_seconds() if self.finished_at else None
        data = {
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "seconds": round(seconds, 3) if seconds is not None else None,
            "steps": self.steps,
            "snapshot": self.snapshot,
            "exit_reason": self.exit_reason,
            "hint": self.hint,
            "failed_step": self.failed_step,
            "parameters": self.params,
            "summary": self.summary,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "backupkit_version": __version__,
        }
        return _redacted(data, _secrets_for(self.params))

    def write(self) -> Path:
        """Write run.json atomically (temporary file, then rename)."""
        folder = self.path.parent
        if not folder.is_dir():
            # 0700 whatever the umask: run records name hosts, snapshots and failures.
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, self.path)
        return self.path

    def set_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's parameters."""
        self.params = dict(params)
        self.write()

    def set_snapshot(self, snapshot_id: str, path: Path | str) -> None:
        """Record the snapshot this run made or used."""
        self.snapshot = {"id": snapshot_id, "path": str(path)}
        self.write()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[RunRecord]:
        """Time a step; its duration lands in ``steps`` whether it succeeds or fails."""
        started = time.monotonic()
        self._current_step = name
        try:
            yield self
        except BaseException as exc:
            self.steps[name] = round(time.monotonic() - started, 3)
            self.fail(exc)
            raise
        finally:
            self._current_step = None
        self.steps[name] = round(time.monotonic() - started, 3)
        self.write()

    def fail(self, exc: BaseException | str) -> None:
        """Mark the run failed with a one-line reason (the first failure wins)."""
        if self.status != "running":
            return
        self.status = "failed"
        self.finished_at = _now()
        self.exit_reason = exc if isinstance(exc, str) else one_line(exc)
        self.hint = getattr(exc, "hint", None)
        self.failed_step = self._current_step
        self.write()
        _deactivate(self)

    def finish(self, **summary: Any) -> dict:
        """Mark the run succeeded with a summary; returns the run.json content."""
        if self.status == "running":
            self.status = "succeeded"
            self.finished_at = _now()
            self.exit_reason = "completed"
        self.summary.update(summary)
        self.write()
        _deactivate(self)
        return self.to_dict()


_ACTIVE: RunRecord | None = None


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebook extras
        return None
    return get_ipython()


def _post_run_cell(result) -> None:
    """IPython hook: a cell that raised fails the active run."""
    error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    if error is not None and _ACTIVE is not None:
        _ACTIVE.fail(error)


def _deactivate(run: RunRecord) -> None:
    global _ACTIVE
    if _ACTIVE is run:
        _ACTIVE = None


def start_run(
    job: str, params: Mapping[str, Any] | None = None, runs_dir: Path | str = "runs", *, shell=None
) -> RunRecord:
    """Start a run record: write ``runs_dir/<run_id>.json`` (status running) and, in IPython,
    register the hook that marks it failed when a later cell raises."""
    global _ACTIVE
    now = _now()
    run_id = new_run_id(job, now)
    run = RunRecord(
        job=job, run_id=run_id, path=Path(runs_dir) / f"{run_id}.json", started_at=now, params=dict(params or {})
    )
    run.write()
    shell = shell or _shell()
    if shell is not None and _post_run_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _post_run_cell)
    if _ACTIVE is not None and _ACTIVE.status == "running":
        _ACTIVE.fail("superseded: another run was started in the same kernel")
    _ACTIVE = run
    return run


@contextlib.contextmanager
def _maybe_step(run: RunRecord | None, name: str) -> Iterator[None]:
    if run is None:
        yield
    else:
        with run.step(name):
            yield
