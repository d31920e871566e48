"""Run records: one JSON file per notebook run, kept current and redacted.

``start_run()`` creates a ``RunRecord`` and writes ``RUNS_DIR/<run_id>.json``
(status running); the record follows the run's steps and their durations, the
snapshot it made or used and the outcome, with every password redacted.  An
IPython ``post_run_cell`` hook marks the active run failed when any cell raises,
so a scheduled run that dies still leaves ``status: failed`` and the reason.
``_maybe_step`` lets the operations time themselves as steps when given a run.
With a monitor URL (``notify_env``, else ``$BACKUPKIT_NOTIFY``: ``monitor.notify``) a run
pings it when it starts, succeeds and fails, as ``--notify`` does for the command line; the
URL stays in the environment, never in the notebook or its record.

A ``BackupkitError`` raised in a cell shows as what the ``backupkit`` command
prints, not as a traceback: ``install_error_display()`` (run when
``backupkit.notebook`` is imported in a kernel) makes IPython show it as an
``error: …`` / ``hint: …`` block (plain text and HTML), then as the cell's
error output holding those same lines, so papermill still fails the run (and
exits non-zero) and its message is the one-line error.  ``%xmode Verbose``
brings the full traceback back.  Other exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import BackupkitError, ConfigError
from ..monitor.notify import Notifier
from ..pg.dsn import DSN_ENV_VARS, redact
from ..runtime.place import Place
from ..snapshot.signing import is_key_material
from ..storage.lock import process_identity


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


#: What the name of an environment variable may be (as a shell's ``export`` takes it).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Per ``*_env`` parameter: a variable it might name, what that variable holds, and its form.
_ENV_EXAMPLES = {
    "dsn_env": ("BACKUPKIT_DSN", "a DSN", "postgresql://..."),
    "target_dsn_env": ("TARGET_DSN", "a DSN", "postgresql://..."),
    "notify_env": ("BACKUPKIT_NOTIFY", "a monitor URL", "https://hc-ping.com/<uuid>"),
}


def is_env_name(value: object) -> bool:
    """True when ``value`` is text that can name an environment variable (``[A-Za-z_][A-Za-z0-9_]*``)."""
    return isinstance(value, str) and _ENV_NAME.fullmatch(value) is not None


def env_name_error(parameter: str) -> ConfigError:
    """The error for a ``*_env`` parameter given something other than a variable's name; it
    shows nothing of the value, which is often the DSN or URL itself (a password, a ping URL)."""
    example, holds, form = _ENV_EXAMPLES.get(
        parameter, ("MY_VARIABLE", "a DSN" if "dsn" in parameter else "a secret", "...")
    )
    return ConfigError(
        f"{parameter} takes the NAME of an environment variable (e.g. {example}), not {holds}: "
        "nothing of the value is shown",
        hint=f"put {holds.replace('a ', 'the ', 1)} in the kernel's environment (export {example}={form}) "
        f"and pass its name: -r {parameter} {example}",
    )


def env_name(parameter: str, value: str) -> str:
    """``value`` when it is empty or an environment variable's name; else ``env_name_error``."""
    if value == "" or is_env_name(value):
        return value
    raise env_name_error(parameter)


def misplaced_secret(parameter: str, value: object) -> ConfigError | None:
    """The error for a parameter holding what looks like a secret where a name or path belongs:
    a ``*_env`` parameter that is not an environment variable's name (often the DSN or URL
    itself), an ``identity`` that is key material rather than a file's path.  None when fine.
    Neither error shows anything of the value."""
    if parameter.endswith("_env"):
        return None if value == "" or is_env_name(value) else env_name_error(parameter)
    if parameter == "identity" and isinstance(value, str) and is_key_material(value):
        return ConfigError(
            "identity takes the PATH of an age identity file (e.g. ~/backupkit-identity.txt), not the key "
            "itself: nothing of the value is shown",
            hint="save the key in a file only you can read (chmod 600) and pass its path: -r identity FILE; "
            "empty: $BACKUPKIT_IDENTITY",
        )
    return None


#: What an unset shell variable does to a parameter (``-r backup_dir "$DIR"``), for hints.
EMPTY_HINT = "an unset shell variable gives an empty value: check the variable, or write the value out"


def place_problem(parameter: str, value: object, *, optional: bool = False) -> ConfigError | None:
    """The error for a parameter naming a place a run reads or writes (``backup_dir``,
    ``runs_dir``, ``html_report``) that names none: not text, empty (an unset shell variable;
    ``optional``: empty means "none" and is fine), or a snapshot's folder or a folder inside one,
    where writing would damage the snapshot (``backupkit verify``: unexpected files).
    None when fine."""
    if not isinstance(value, (str, os.PathLike)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        shown = redact(repr(value)) if isinstance(value, (int, float, bool, list, dict)) else type(value).__name__
        return ConfigError(
            f"parameter {parameter!r} must be text (a path), not {shown}",
            # papermill -p reads 2024 as a number: -r keeps it the folder name it was meant to be.
            hint=f"pass text with -r: -r {parameter} {value if number else 'PATH'}",
        )
    text = os.fspath(value)
    if not text.strip():
        return None if optional and text == "" else ConfigError(f"parameter {parameter!r} is empty", hint=EMPTY_HINT)
    from ..cli.places import holding_snapshot

    found = holding_snapshot(text)
    if found is None:
        return None
    snapshot, exactly = found
    where = "is a snapshot" if exactly else f"is inside snapshot {snapshot}"
    if parameter == "backup_dir":
        hint = f"give the directory that holds the snapshots: {os.path.dirname(snapshot.rstrip('/')) or '.'}"
    else:
        hint = "give a place outside the snapshots' folders"
    return ConfigError(f"parameter {parameter!r} {redact(text)} {where}: writing there would damage it", hint=hint)


def _secrets_for(params: Mapping[str, Any]) -> list[str]:
    """DSNs this run may have seen: the variables named by ``*dsn_env`` parameters and the CLI's."""
    names = [v for k, v in params.items() if k.endswith("dsn_env") and is_env_name(v)]
    return [os.environ[n] for n in [*names, *DSN_ENV_VARS] if os.environ.get(n)]


def running_processes() -> dict[str, Any]:
    """What tells a reader whether this run can still be going (``monitor.status.interruption``):
    ``process``, this process's identity (``<boot id>:<start time>``, ``storage.lock``'s
    ``process_identity``; Linux), where it runs (``pid_namespace``, ``machine``: see
    ``runtime.place``), and in a Jupyter kernel ``launcher``, the pid and identity of the
    process that started the kernel (papermill, the Jupyter server), which the kernel outlives
    by a moment when it is killed.  Empty where /proc cannot tell."""
    found: dict[str, Any] = {k: v for k, v in Place.here().record().items() if k != "host"}
    identity = process_identity(os.getpid())
    if identity is not None:
        found["process"] = identity
    parent = os.getppid()
    if str(parent) == os.environ.get("JPY_PARENT_PID") and parent > 1:  # jupyter_client started this kernel
        found["launcher"] = {"pid": parent, "process": process_identity(parent)}
    return found


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
    #: Told of the run's start, success and failure (``monitor.notify``); its URL is a secret.
    notifier: Notifier | None = dataclasses.field(default=None, repr=False)
    #: ``running_processes()`` when the record was made: what a reader checks while it says running.
    processes: dict = dataclasses.field(default_factory=running_processes, repr=False)

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
            "parameters": {k: "(not shown)" if misplaced_secret(k, v) else v for k, v in self.params.items()},
            "summary": self.summary,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **self.processes,
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

    def set_snapshot(self, snapshot_id: str, path: object) -> None:
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
        if self.notifier is not None:
            self.notifier.failure(self.exit_reason, self._snapshot_id())

    def finish(self, **summary: Any) -> dict:
        """Mark the run succeeded with a summary; returns the run.json content."""
        succeeded = self.status == "running"
        if succeeded:
            self.status = "succeeded"
            self.finished_at = _now()
            self.exit_reason = "completed"
        self.summary.update(summary)
        self.write()
        _deactivate(self)
        if succeeded and self.notifier is not None and self.finished_at is not None:
            self.notifier.success(self._snapshot_id(), (self.finished_at - self.started_at).total_seconds())
        return self.to_dict()

    def _snapshot_id(self) -> str | None:
        return self.snapshot["id"] if self.snapshot else None


_ACTIVE: RunRecord | None = None
#: The run started last in this kernel (still named in an error's output once it has failed).
_LAST: RunRecord | None = None


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
    job: str,
    params: Mapping[str, Any] | None = None,
    runs_dir: Path | str = "runs",
    *,
    notify_env: str = "",
    shell=None,
) -> RunRecord:
    """Start a run record: write ``runs_dir/<run_id>.json`` (status running) and, in IPython,
    register the hook that marks it failed when a later cell raises.

    ``notify_env`` names the environment variable holding a monitor URL (``--notify``'s
    forms); empty: ``$BACKUPKIT_NOTIFY``, and no monitor when that is unset.  The monitor
    is pinged now, and when the run succeeds or fails."""
    global _ACTIVE, _LAST
    refused = place_problem("runs_dir", runs_dir)
    if refused is not None:
        raise refused
    notifier = _notifier(job, notify_env)
    now = _now()
    run_id = new_run_id(job, now)
    run = RunRecord(
        job=job, run_id=run_id, path=Path(runs_dir) / f"{run_id}.json", started_at=now, params=dict(params or {})
    )
    try:
        run.write()
    except OSError as exc:
        # Without a record no monitor reading runs_dir learns of this run: fail it here, in one line.
        raise ConfigError(
            f"cannot write the run record in runs_dir {redact(os.fspath(runs_dir))}: {exc.strerror or exc}",
            hint="give runs_dir a folder this user may write (papermill: -r runs_dir /var/backups/runs)",
        ) from None
    shell = shell or _shell()
    if shell is not None and _post_run_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _post_run_cell)
    if _ACTIVE is not None and _ACTIVE.status == "running":
        _ACTIVE.fail("superseded: another run was started in the same kernel")
    _ACTIVE = _LAST = run
    install_error_display(shell)
    if notifier is not None:
        run.notifier = notifier
        notifier.start()
    return run


def _notifier(job: str, notify_env: str) -> Notifier | None:
    """The monitor of a run: the URL in variable ``notify_env``, else ``$BACKUPKIT_NOTIFY``."""
    if not env_name("notify_env", notify_env):
        return Notifier.from_option(None, job)
    url = os.environ.get(notify_env)
    if not url:
        raise ConfigError(
            f"`notify_env`: the environment variable {notify_env} is not set",
            hint=f"export {notify_env}=https://hc-ping.com/<uuid> for the kernel, or leave notify_env empty",
        )
    return Notifier.from_option(url, job)


@contextlib.contextmanager
def _maybe_step(run: RunRecord | None, name: str) -> Iterator[None]:
    if run is None:
        yield
    else:
        with run.step(name):
            yield


# == errors as the command shows them =========================================================


def error_lines(exc: BaseException, dsns: list[str] | None = None) -> list[str]:
    """``error: <message, on one line>`` and, when the error has a hint, ``hint: <hint>``; redacted."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    lines = [f"error: {message}"]
    hint = getattr(exc, "hint", None)
    if hint:
        lines.append("hint: " + " ".join(str(hint).split()))
    return [_redacted(line, dsns or []) for line in lines]


@dataclasses.dataclass
class ErrorNote:
    """What a cell shows for a ``BackupkitError``: the error and hint lines, and the run it failed."""

    lines: list[str]
    run_record: str = ""

    def __repr__(self) -> str:
        return "\n".join([*self.lines, *([f"run record: {self.run_record} (failed)"] if self.run_record else [])])

    def _repr_html_(self) -> str:
        wrap = "white-space:pre-wrap;overflow-wrap:anywhere"
        parts = [
            f'<div style="{wrap};color:#c62828;font-weight:bold">{html.escape(self.lines[0])}</div>',
            *(f'<div style="{wrap}">{html.escape(line)}</div>' for line in self.lines[1:]),
        ]
        if self.run_record:
            parts.append(f'<div style="{wrap};color:#888">run record: {html.escape(self.run_record)} (failed)</div>')
        return (
            '<div class="bk-error" style="border-left:4px solid #c62828;padding:0.3em 0.8em;'
            'margin:0.3em 0;max-width:100%">' + "".join(parts) + "</div>"
        )


def _show_error(shell, etype, value, tb, tb_offset=None) -> None:
    """IPython custom exception handler for ``BackupkitError``: the error and hint, no traceback.

    Fails the active run (as the ``post_run_cell`` hook would), displays an
    ``ErrorNote``, then has IPython show the error with those lines as its
    traceback: the cell still raised, so papermill fails the run.
    """
    if _ACTIVE is not None:
        _ACTIVE.fail(value)
    if str(getattr(getattr(shell, "InteractiveTB", None), "mode", "")).lower() == "verbose":
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)  # %xmode Verbose: the whole story
        return
    run = _LAST
    lines = error_lines(value, _secrets_for(run.params) if run is not None else _secrets_for({}))
    failed_here = run is not None and run.status == "failed" and run.exit_reason == one_line(value)
    record = str(run.path) if run is not None and failed_here else ""
    from IPython.display import display

    display(ErrorNote(lines, record))
    shown = _as_shown(etype, lines)
    shell.showtraceback((type(shown), shown, tb), tb_offset=tb_offset)


def _as_shown(etype: type[BaseException], lines: list[str]) -> BackupkitError:
    """An exception of ``etype``'s name whose text is the redacted error line: the output an
    executed notebook keeps holds the error's ``str`` (its ``evalue``), and that must be the
    redacted text the cell showed, not the raw message."""
    # _render_traceback_: IPython's hook for an exception's own traceback (the same lines).
    named = type(
        etype.__name__,
        (BackupkitError,),
        {"__module__": etype.__module__, "_render_traceback_": lambda self: list(lines)},
    )
    return named(lines[0].removeprefix("error: "))


def install_error_display(shell=None) -> bool:
    """Show ``BackupkitError`` in this IPython shell as ``error:``/``hint:`` lines (see ``_show_error``).

    Leaves a shell that has a custom exception handler of its own alone; returns whether ours is in place.
    """
    shell = shell or _shell()
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    current = getattr(shell, "custom_exceptions", ())
    if current and current != (BackupkitError,):
        return False
    shell.set_custom_exc((BackupkitError,), _show_error)
    return True
