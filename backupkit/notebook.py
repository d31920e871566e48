"""What the notebooks call: one function per cell, each returning something worth showing.

The notebooks in ``notebooks/`` (backup, restore, prune, report, explore) hold
no logic of their own: every cell makes one call into this module (or the
public API) and shows the result.  This module provides

* **strict parameters** — ``check_parameters()`` fails the run when papermill
  injected a parameter the notebook does not declare (papermill itself only
  logs a warning) or gave a declared one a value of the wrong type;
* **a run record** — ``start_run()`` writes ``RUNS_DIR/<run_id>.json`` and keeps
  it current (steps and their durations, the snapshot, the outcome); an IPython
  ``post_run_cell`` hook marks the run failed when any cell raises, so a
  scheduled run that dies still leaves ``status: failed`` and the reason;
* **operations** taking the *name* of the environment variable that holds a
  DSN (``dsn_env``), never a DSN, so no secret enters a notebook's parameters,
  variables or outputs; ``""`` means the CLI's lookup, then the embedded demo
  database (restores: a scratch database on the demo server);
* **display helpers** turning results into pandas DataFrames and matplotlib
  figures, and ``explorer()``, the snapshot/table/SQL widget.

Decisions (which cells hold the parameters, which are unknown, whether demo
snapshots are needed, what a table shows) are pure functions; the I/O wraps them.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import html
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

# In a kernel, importing pyplot (with the inline backend ipykernel selects) registers the
# display of figures, so a chart function's returned figure shows as the cell's result.
import matplotlib.pyplot as plt
import pandas as pd

from . import __version__, manifest as mf
from .backup import BackupResult, backup as _backup
from .dsn import DSN_ENV_VARS, redact, resolve_dsn
from .errors import BackupkitError, ConfigError, SnapshotDamaged, SnapshotNotFound, SourceError
from .preflight import check as _check
from .prune import PruneResult, prune as _prune
from .restore import RestoreResult, restore as _restore
from .retention import Policy
from .store import list_snapshots, resolve
from .verify import verify as _verify

#: First line of the cell papermill injects (its Python translator writes ``# Parameters``).
INJECTED_MARKER = "# Parameters"
#: Database on the embedded demo server that restores go to when no target is named.
RESTORE_SCRATCH_DB = "restore_target"
#: Label of the snapshots ``ensure_demo_snapshots`` takes.
DEMO_LABEL = "demo"
#: Rows a query result or preview shows at most.
MAX_ROWS = 200


# == parameters ===============================================================================

def _literal_assignments(source: str) -> dict[str, Any] | None:
    """``{name: value}`` when ``source`` only assigns literals to plain names, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            names, node = [t.id for t in stmt.targets], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names, node = [stmt.target.id], stmt.value
        else:
            return None
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        for name in names:
            values[name] = value
    return values or None


def is_injected(source: str) -> bool:
    """True for the cell papermill injects after the ``parameters`` cell."""
    return source.lstrip("\n").split("\n", 1)[0].strip() == INJECTED_MARKER


def locate_parameters(history: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(declared defaults, injected values) from the sources of the cells run so far, oldest first.

    The newest cell that only assigns literals is the parameters cell, unless it
    is papermill's injected cell; then the parameters cell is the newest such
    cell before it.  Raises ``ConfigError`` when no parameters cell was run.
    """
    found = [(src, vals) for src in history if (vals := _literal_assignments(src)) is not None]
    injected: dict[str, Any] = {}
    if found and is_injected(found[-1][0]):
        injected = found.pop()[1]
        while found and is_injected(found[-1][0]):
            found.pop()
    if not found:
        raise ConfigError("no parameters cell has run in this kernel",
                          hint="run the notebook from the top: the first cell declares the parameters")
    return found[-1][1], injected


def _type_name(value: Any) -> str:
    return {bool: "True/False", int: "a whole number", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        kinds = {type(x) for x in default}
        return isinstance(value, list) and (len(kinds) != 1 or all(isinstance(x, next(iter(kinds))) for x in value))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def parameter_problems(declared: Mapping[str, Any], injected: Iterable[str],
                       values: Mapping[str, Any]) -> list[str]:
    """Why these parameters do not describe a run: unknown names and values of the wrong type."""
    problems = []
    unknown = [n for n in injected if n not in declared]
    for name in unknown:
        close = difflib.get_close_matches(name, list(declared), n=1)
        problems.append(f"unknown parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if unknown:
        problems.append("this notebook's parameters are: " + ", ".join(declared))
    for name, default in declared.items():
        if name in values and not _type_ok(default, values[name]):
            value = values[name]
            hint = " (papermill -p reads numbers and True/False; pass text with -r NAME VALUE)" \
                if isinstance(default, str) else ""
            problems.append(f"parameter {name!r} must be {_type_name(default)} like its default "
                            f"{default!r}, not {_type_name(value)} {value!r}{hint}")
    return problems


def namespace_parameters(user_ns: Mapping[str, Any], hidden: Iterable[str] = ()) -> dict[str, Any]:
    """The plain data a notebook's own cells assigned, in assignment order (no modules,
    functions, classes, run records or ``_`` names)."""
    import types

    hidden = set(hidden)
    return {k: v for k, v in user_ns.items()
            if k not in hidden and not k.startswith("_") and not callable(v)
            and not isinstance(v, (types.ModuleType, RunRecord))}


def check_parameters(run: RunRecord | None = None, *, shell=None) -> dict[str, Any]:
    """Fail unless every parameter papermill injected is declared and well typed; return them all.

    Call it in a cell after the ``parameters`` cell.  Returns ``{name: value}``
    for the declared parameters (as the notebook now sees them) and records
    them in ``run``.  Raises ``ConfigError`` naming unknown parameters and the
    allowed ones (papermill itself only warns about them).

    The parameters and papermill's injected cell are found in the kernel's
    input history, which papermill (nbclient) always keeps.  An executor that
    runs cells without history (nbval: ``store_history=False``) injects no
    parameters either; then the parameters are read from the namespace.
    """
    shell = shell or _shell()
    if shell is None:
        raise ConfigError("check_parameters runs inside a notebook kernel (IPython)")
    with _maybe_step(run, "parameters"):
        history = list(shell.history_manager.input_hist_raw)[:-1]  # the last entry is this cell
        if any(_literal_assignments(src) is not None for src in history):
            declared, injected = locate_parameters(history)
        else:
            declared = namespace_parameters(shell.user_ns, getattr(shell, "user_ns_hidden", ()))
            injected = {}
        values = {name: shell.user_ns.get(name, default) for name, default in declared.items()}
        problems = parameter_problems(declared, list(injected), values)
        if run is not None:
            run.params = values if not problems else {**values, **injected}
        if problems:
            raise ConfigError("; ".join(problems),
                              hint="fix the papermill -p/-r/-f parameters (names and types as declared)")
    return values


# == run record ===============================================================================

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if t else None


def new_run_id(job: str, now: datetime) -> str:
    """``<job>-<UTC time to the millisecond>-<4 hex>``: sortable, unique, safe as a file name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job) or "run"
    return f"{safe}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


def one_line(exc: BaseException) -> str:
    """``ErrorClass: first line of the message`` — what a run record calls the exit reason."""
    text = next((l.strip() for l in str(exc).splitlines() if l.strip()), "")
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
            "job": self.job, "run_id": self.run_id, "status": self.status,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "seconds": round(seconds, 3) if seconds is not None else None,
            "steps": self.steps, "snapshot": self.snapshot, "exit_reason": self.exit_reason,
            "hint": self.hint, "failed_step": self.failed_step, "parameters": self.params,
            "summary": self.summary, "host": socket.gethostname(), "pid": os.getpid(),
            "backupkit_version": __version__,
        }
        return _redacted(data, _secrets_for(self.params))

    def write(self) -> Path:
        """Write run.json atomically (temporary file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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


def start_run(job: str, params: Mapping[str, Any] | None = None, runs_dir: Path | str = "runs", *,
              shell=None) -> RunRecord:
    """Start a run record: write ``runs_dir/<run_id>.json`` (status running) and, in IPython,
    register the hook that marks it failed when a later cell raises."""
    global _ACTIVE
    now = _now()
    run_id = new_run_id(job, now)
    run = RunRecord(job=job, run_id=run_id, path=Path(runs_dir) / f"{run_id}.json", started_at=now,
                    params=dict(params or {}))
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


# == databases and snapshots ==================================================================

def _dsn(dsn_env: str) -> str:
    """The DSN a notebook means (see ``demo.notebook_dsn``); never display it."""
    from .demo import notebook_dsn

    return notebook_dsn(dsn_env or None)


def _restore_target(target_dsn_env: str) -> str:
    """The restore target: ``$target_dsn_env``, else an empty scratch database on the demo server."""
    if target_dsn_env:
        try:
            return resolve_dsn(env_var=target_dsn_env)
        except ConfigError:
            raise ConfigError(f"${target_dsn_env} is not set",
                              hint=f"export {target_dsn_env}=postgresql://... or leave target_dsn_env "
                                   "empty to restore into a scratch database on the embedded demo server"
                              ) from None
    import psycopg

    from .demo import demo_server

    server = demo_server()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (RESTORE_SCRATCH_DB,)).fetchone()
    return server.dsn(RESTORE_SCRATCH_DB) if exists else server.createdb(RESTORE_SCRATCH_DB)


def is_demo_source(source: Mapping[str, Any] | None) -> bool:
    """True when a manifest's ``source`` is the embedded demo database."""
    from .demo import DEMO_DB

    return bool(source) and source.get("database") == DEMO_DB and source.get("host") in ("127.0.0.1", "localhost")


def demo_snapshots_needed(sources: list[Mapping[str, Any] | None], n: int, dsn_env: str,
                          env: Mapping[str, str]) -> int:
    """How many demo snapshots to take so a notebook's defaults have ``n`` to work with.

    None unless the notebook's database is the demo one (``dsn_env`` empty and no
    CLI DSN variable set) and every snapshot already there came from the demo
    database too: demo snapshots never mix into a real backup directory.
    """
    if dsn_env or any(env.get(v) for v in DSN_ENV_VARS) or len(sources) >= n:
        return 0
    if not all(is_demo_source(s) for s in sources):
        return 0
    return n - len(sources)


def _sources(backup_dir: Path) -> list[dict | None]:
    if not backup_dir.is_dir():
        return []
    out = []
    for s in list_snapshots(backup_dir)[0]:
        try:
            out.append(mf.read(s.path).get("source"))
        except BackupkitError:
            out.append(None)
    return out


def ensure_demo_snapshots(backup_dir: Path | str = "backups", n: int = 2, dsn_env: str = "") -> list[str]:
    """Take demo snapshots until ``backup_dir`` has ``n`` (defaults only; see ``demo_snapshots_needed``).

    Between two snapshots one "day of traffic" changes the demo database, so a
    comparison has something to show.  Returns the ids taken (usually none).
    """
    backup_dir = Path(backup_dir)
    sources = _sources(backup_dir)
    missing = demo_snapshots_needed(sources, n, dsn_env, os.environ)
    if not missing:
        return []
    from .demo import demo_dsn
    from .demo_data import mutate_demo

    dsn = demo_dsn()
    taken = []
    for i in range(missing):
        if sources or i:
            mutate_demo(dsn)
        taken.append(_backup(dsn, backup_dir, label=DEMO_LABEL, progress=False).id)
    return taken


def pick_snapshot(backup_dir: Path | str = "backups", snapshot: str = "") -> Path:
    """A snapshot folder: ``snapshot`` as a path, an id or ``latest~N`` in ``backup_dir``; "" = newest."""
    if snapshot and Path(snapshot).is_dir():
        path = Path(snapshot)
    else:
        path = resolve(backup_dir, snapshot or "latest")
    mf.read(path)  # a clear SnapshotNotFound / SnapshotDamaged now rather than later
    return path


class Pair(NamedTuple):
    """The two snapshots a report compares."""

    old: Path
    new: Path


def pick_pair(backup_dir: Path | str = "backups", old: str = "", new: str = "") -> Pair:
    """Snapshots to compare: ``new`` defaults to the newest, ``old`` to the one before ``new``."""
    new_path = pick_snapshot(backup_dir, new)
    if old:
        return Pair(pick_snapshot(backup_dir, old), new_path)
    complete = [s for s in list_snapshots(backup_dir)[0] if s.error is None]
    ids = [s.id for s in complete]
    after = ids.index(new_path.name) + 1 if new_path.name in ids else len(ids)
    if after >= len(ids):
        raise SnapshotNotFound(f"{backup_dir} has no snapshot older than {new_path.name} to compare with",
                               hint="take another backup (notebooks/backup.ipynb) or name `old` explicitly")
    return Pair(complete[after].path, new_path)


# == operations (each a step of a run) ========================================================

def failed_checks(items: list[dict]) -> list[str]:
    """``check: detail`` of every preflight check that failed."""
    return [f"{i['check']}: {i['detail']}" for i in items if i["status"] == "fail"]


def preflight(backup_dir: Path | str = "backups", dsn_env: str = "", schemas: list[str] | None = None, *,
              run: RunRecord | None = None) -> pd.DataFrame:
    """Run ``backupkit check``; the table of checks, or ``SourceError`` naming every failed one."""
    with _maybe_step(run, "preflight"):
        report = _check(_dsn(dsn_env), schemas=schemas, to=backup_dir)
        failed = failed_checks(report.items)
        if failed:
            raise SourceError("preflight failed: " + "; ".join(failed),
                              hint="fix what the checks name (`backupkit check` shows the same list)")
    return pd.DataFrame(report.items, columns=["check", "status", "detail"])


def backup(backup_dir: Path | str = "backups", dsn_env: str = "", *, schemas: list[str] | None = None,
           jobs: int = 1, label: str = "", tables: list[str] = (), exclude: list[str] = (),
           run: RunRecord | None = None) -> BackupResult:
    """Back up the database ``$dsn_env`` names into a new snapshot under ``backup_dir``."""
    with _maybe_step(run, "backup"):
        result = _backup(_dsn(dsn_env), backup_dir, schemas=schemas, tables=list(tables), exclude=list(exclude),
                         jobs=jobs, label=label or None, progress=False)
    if run is not None:
        run.set_snapshot(result.id, result.path)
        run.summary.update(tables=len(result.manifest["tables"]), rows=result.rows, bytes=result.bytes,
                           warnings=result.warnings)
        run.write()
    return result


def verify(snapshot: Path | str, *, deep: bool = True, run: RunRecord | None = None) -> pd.DataFrame:
    """Verify a snapshot (``deep``: also recount rows); one row, or ``SnapshotDamaged`` naming the problems."""
    with _maybe_step(run, "verify"):
        report = _verify(snapshot, deep=deep)
        if not report.ok:
            raise SnapshotDamaged(f"snapshot {Path(snapshot).name} is damaged: " + "; ".join(report.problems[:5]),
                                  report.problems, hint="restore from another snapshot and check the storage")
    return pd.DataFrame([{"snapshot": Path(snapshot).name, "intact": report.ok, "files": report.files,
                          "MB": round(report.bytes / 1e6, 2), "rows recounted": report.deep}])


def make_policy(keep_last: int | None = None, keep_hourly: int | None = None, keep_daily: int | None = None,
                keep_weekly: int | None = None, keep_monthly: int | None = None, keep_yearly: int | None = None,
                keep_within: str | None = None, max_age_days: float | None = None, min_keep: int = 1,
                tz: str = "UTC") -> Policy:
    """A retention ``Policy`` from notebook parameters (None or "" = rule off; no rule = keep 30 days)."""
    given = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
             "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_yearly": keep_yearly,
             "keep_within": keep_within or None, "max_age_days": max_age_days, "min_keep": min_keep, "tz": tz}
    return Policy.from_dict({k: v for k, v in given.items() if v is not None})


def prune(backup_dir: Path | str, policy: Policy, *, dry_run: bool = True,
          run: RunRecord | None = None) -> pd.DataFrame:
    """Apply ``policy`` to ``backup_dir`` (nothing is removed with ``dry_run``); every decision and why."""
    with _maybe_step(run, "prune"):
        result = _prune(backup_dir, policy, now=_now(), dry_run=dry_run)
    if run is not None:
        run.summary.update(prune_dry_run=dry_run, kept=result.kept,
                           removed=[] if dry_run else result.removed,
                           would_remove=result.removed if dry_run else [],
                           prune_warnings=result.warnings)
        run.write()
    return prune_table(result)


def restore(snapshot: Path | str, target_dsn_env: str = "", *, tables: list[str] = (),
            with_dependencies: bool = False, clean: bool = False, jobs: int = 1, dry_run: bool = True,
            run: RunRecord | None = None) -> RestoreResult:
    """Restore ``snapshot`` into ``$target_dsn_env`` ("" = the demo server's scratch database).

    With ``dry_run`` nothing changes and the result holds the plan.
    """
    with _maybe_step(run, "restore"):
        result = _restore(snapshot, _restore_target(target_dsn_env), tables=list(tables),
                          with_dependencies=with_dependencies, clean=clean, jobs=jobs, dry_run=dry_run,
                          progress=False)
    if run is not None:
        run.set_snapshot(Path(snapshot).name, snapshot)
        run.summary.update(dry_run=dry_run, tables=len(result.plan.tables), rows_loaded=result.rows,
                           restore_warnings=result.warnings)
        run.write()
    return result


# == tables ===================================================================================

def _mb(n: int | float) -> float:
    return round(n / 1e6, 3)


def table_stats(manifest: dict) -> pd.DataFrame:
    """One row per table of a manifest: rows, compressed MB, files."""
    rows = [{"table": mf.table_key(t), "rows": t["rows"],
             "MB": _mb(sum(f["bytes"] for f in t["files"])), "files": len(t["files"])}
            for t in manifest["tables"]]
    return pd.DataFrame(rows, columns=["table", "rows", "MB", "files"])


def _manifest_of(source: BackupResult | Path | str) -> dict:
    return source.manifest if isinstance(source, BackupResult) else mf.read(source)


def backup_table(source: BackupResult | Path | str) -> pd.DataFrame:
    """A backup (or any snapshot) per table: rows, compressed MB and files, with a total line."""
    df = table_stats(_manifest_of(source))
    total = pd.DataFrame([{"table": "(total)", "rows": int(df["rows"].sum()), "MB": round(df["MB"].sum(), 3),
                           "files": int(df["files"].sum())}])
    return pd.concat([df, total], ignore_index=True)


def history_rows(snapshots: list, unfinished: list) -> list[dict]:
    """Rows of the snapshot history (newest first), unfinished folders last."""
    rows = [{"snapshot": s.id, "created_at": _iso(s.created_at), "label": s.label or "", "tables": s.tables,
             "rows": s.rows, "MB": _mb(s.bytes), "pinned": s.pinned, "partial": s.partial,
             "status": "unreadable: " + s.error if s.error else "complete"} for s in snapshots]
    rows += [{"snapshot": u.path.name, "status": f"unfinished ({u.kind}, {u.age_seconds / 3600:.1f} h old)"}
             for u in unfinished]
    return rows


def history_table(backup_dir: Path | str = "backups") -> pd.DataFrame:
    """Every snapshot in ``backup_dir``, newest first (``backupkit list`` as a table)."""
    columns = ["snapshot", "created_at", "label", "tables", "rows", "MB", "pinned", "partial", "status"]
    return pd.DataFrame(history_rows(*list_snapshots(backup_dir)), columns=columns)


def prune_table(result: PruneResult) -> pd.DataFrame:
    """Prune decisions: each snapshot, keep or remove, and every reason."""
    gone = "would remove" if result.dry_run else "removed"
    rows = [{"snapshot": d["id"], "created_at": d["created_at"],
             "action": "keep" if d["action"] == "keep" else gone,
             "reasons": "; ".join(d["reasons"]), "intact": d["intact"]} for d in result.decisions]
    rows += [{"snapshot": name, "action": gone, "reasons": "unfinished or interrupted folder"}
             for name in result.stale]
    rows += [{"action": "warning", "reasons": w} for w in result.warnings]
    return pd.DataFrame(rows, columns=["snapshot", "created_at", "action", "reasons", "intact"])


def restore_steps(result: RestoreResult) -> pd.DataFrame:
    """The restore's steps, planned (dry run) or done."""
    state = "planned" if result.dry_run else "done"
    rows = [{"step": s, "state": state} for s in result.plan.describe()]
    rows += [{"step": w, "state": "warning"} for w in result.warnings]
    return pd.DataFrame(rows, columns=["step", "state"])


def restore_table(result: RestoreResult) -> pd.DataFrame:
    """The restore's tables: rows, whether the target already had them, and what happens to them."""
    plan = result.plan
    existing = set(plan.existing)
    rows = []
    for t in plan.tables:
        key = mf.table_key(t)
        if key in existing:
            action = ("empty, then load" if not plan.schema else "drop, create, load") if plan.drop_first \
                else "exists (refused)"
        else:
            action = "create" + (", load" if plan.data else "") if plan.schema else "load"
        rows.append({"table": key, "rows": t["rows"], "in target before": key in existing, "action": action})
    return pd.DataFrame(rows, columns=["table", "rows", "in target before", "action"])


def diff_overview(diff: dict) -> pd.DataFrame:
    """Tables added and removed between two snapshots (empty when the set of tables is the same)."""
    rows = [{"table": f"{t['schema']}.{t['name']}", "change": "added", "rows": t["rows"]}
            for t in diff["tables_added"]]
    rows += [{"table": f"{t['schema']}.{t['name']}", "change": "removed", "rows": t["rows"]}
             for t in diff["tables_removed"]]
    return pd.DataFrame(rows, columns=["table", "change", "rows"])


def diff_table(diff: dict) -> pd.DataFrame:
    """Per table in both snapshots: row counts, delta, inserted / deleted / updated rows."""
    rows = [{"table": f"{t['schema']}.{t['name']}", "rows_old": t["rows_old"], "rows_new": t["rows_new"],
             "delta": t["rows_new"] - t["rows_old"], "inserted": t["inserted"], "deleted": t["deleted"],
             "updated": t["updated"], "compared by": t.get("method")} for t in diff["tables"]]
    columns = ["table", "rows_old", "rows_new", "delta", "inserted", "deleted", "updated", "compared by"]
    return pd.DataFrame(rows, columns=columns).astype({"updated": "Int64"})


def schema_change_rows(diff: dict) -> list[dict]:
    """One row per schema change the manifests show (columns, types, keys, indexes)."""
    rows = []
    for t in diff["tables"]:
        c = t.get("schema_changes") or {}
        if not c.get("changed"):
            continue
        name = f"{t['schema']}.{t['name']}"
        rows += [{"table": name, "change": "column added", "detail": x} for x in c.get("columns_added", [])]
        rows += [{"table": name, "change": "column dropped", "detail": x} for x in c.get("columns_dropped", [])]
        rows += [{"table": name, "change": "column type", "detail": f"{x['column']}: {x['old']} → {x['new']}"}
                 for x in c.get("columns_retyped", [])]
        if c.get("primary_key"):
            rows.append({"table": name, "change": "primary key",
                         "detail": f"{c['primary_key']['old']} → {c['primary_key']['new']}"})
        rows += [{"table": name, "change": "foreign key added", "detail": f.get("name")}
                 for f in c.get("foreign_keys_added", [])]
        rows += [{"table": name, "change": "foreign key removed", "detail": f.get("name")}
                 for f in c.get("foreign_keys_removed", [])]
        rows += [{"table": name, "change": "index added", "detail": x} for x in c.get("indexes_added", [])]
        rows += [{"table": name, "change": "index removed", "detail": x} for x in c.get("indexes_removed", [])]
    if diff.get("schema_sql_changed"):
        files = [p for p, changed in diff.get("schema_sql_files", {}).items() if changed]
        rows.append({"table": "(schema SQL)", "change": "differs", "detail": ", ".join(files)})
    return rows


def schema_changes_table(diff: dict) -> pd.DataFrame:
    """Schema changes between two snapshots (empty when there are none)."""
    return pd.DataFrame(schema_change_rows(diff), columns=["table", "change", "detail"])


def sample_updates_table(diff: dict) -> pd.DataFrame:
    """A few updated rows per table: key, column, old and new value (PostgreSQL's text)."""
    rows = []
    for t in diff["tables"]:
        for s in t.get("sample_updates") or []:
            key = ", ".join(f"{k}={v}" for k, v in s["key"].items())
            rows += [{"table": f"{t['schema']}.{t['name']}", "key": key, "column": col, "old": old, "new": new}
                     for col, (old, new) in s["changes"].items()]
    return pd.DataFrame(rows, columns=["table", "key", "column", "old", "new"])


def integrity_rows(name: str, report: dict) -> list[dict]:
    """Rows for one snapshot's integrity report: the checksum check, then every data check."""
    sums = report["checksums"]
    rows = [{"snapshot": name, "check": "checksums", "table": "", "ok": sums["ok"],
             "detail": "; ".join(sums["problems"][:5]) or f"{sums['files']} files intact"}]
    rows += [{"snapshot": name, "check": c["check"], "table": c["table"], "ok": c["ok"], "detail": c["detail"]}
             for c in report["checks"]]
    return rows


def check_integrity(*snapshots: Path | str) -> dict[str, dict]:
    """``backupkit.integrity`` of each snapshot (checksums; primary keys, foreign keys and
    sequences checked in DuckDB), keyed by snapshot id."""
    from .diff import integrity

    return {Path(s).name: integrity(s) for s in snapshots}


def integrity_table(reports: Mapping[str, dict]) -> pd.DataFrame:
    """The checks of ``check_integrity``'s reports, one row each; ``ok`` False marks a problem."""
    rows = []
    for name, report in reports.items():
        rows += integrity_rows(name, report)
    return pd.DataFrame(rows, columns=["snapshot", "check", "table", "ok", "detail"])


def save_html_report(diff: dict, reports: Mapping[str, dict] | None = None,
                     path: Path | str = "") -> Path | None:
    """Write the diff (and integrity reports) as one self-contained HTML page; "" writes nothing."""
    if not path:
        return None
    from .report import render_html

    reports = reports or {}
    page = render_html(diff, reports.get(diff["old"]["id"]), reports.get(diff["new"]["id"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def snapshot_tables(snapshot: Path | str) -> pd.DataFrame:
    """The tables of a snapshot (DuckDB's ``backupkit.tables`` view)."""
    from .duck import open_snapshot

    con = open_snapshot(snapshot)
    try:
        return con.sql("SELECT schema, name, rows, bytes, files, primary_key, view "
                       "FROM backupkit.tables ORDER BY schema, name").df()
    finally:
        con.close()


def run_query(con, sql: str, limit: int = MAX_ROWS) -> pd.DataFrame:
    """The first ``limit`` rows of ``sql`` on a DuckDB connection (empty frame for statements)."""
    rel = con.sql(sql)
    if rel is None:
        return pd.DataFrame()
    return rel.limit(limit).df()


def query(snapshot: Path | str, sql: str, limit: int = MAX_ROWS) -> pd.DataFrame:
    """Run DuckDB SQL over a snapshot's views (tables named as in PostgreSQL, e.g. public.orders)."""
    from .duck import open_snapshot

    con = open_snapshot(snapshot)
    try:
        return run_query(con, sql, limit)
    finally:
        con.close()


# == charts ===================================================================================

def _figure(ncols: int, height: float):
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, height), squeeze=False, layout="constrained")
    plt.close(fig)  # shown once, as the cell's result, not again by pyplot
    return fig, axes[0]


def table_chart(source: BackupResult | Path | str):
    """Bar charts of rows and compressed size per table of a backup or snapshot."""
    df = table_stats(_manifest_of(source)).sort_values("rows")
    fig, (left, right) = _figure(2, 0.35 * len(df) + 1.5)
    left.barh(df["table"], df["rows"], color="tab:blue")
    left.set_title("rows per table")
    right.barh(df["table"], df["MB"], color="tab:orange")
    right.set_title("compressed MB per table")
    right.tick_params(labelleft=False)
    return fig


def history_frame(backup_dir: Path | str) -> pd.DataFrame:
    """Rows and MB per table per complete snapshot, oldest first (for charts)."""
    rows = []
    for s in reversed(list_snapshots(backup_dir)[0]):
        if s.error:
            continue
        for t in table_stats(mf.read(s.path)).to_dict("records"):
            rows.append({"snapshot": s.id, "created_at": s.created_at, **t})
    return pd.DataFrame(rows, columns=["snapshot", "created_at", "table", "rows", "MB", "files"])


def history_chart(backup_dir: Path | str = "backups"):
    """Row counts per table and total size over every snapshot in ``backup_dir``."""
    df = history_frame(backup_dir)
    fig, (left, right) = _figure(2, 4)
    if df.empty:
        left.set_title("no snapshots yet")
        return fig
    order = list(dict.fromkeys(df["snapshot"]))
    x = range(len(order))
    labels = [s[:15] for s in order]
    for table, g in df.groupby("table"):
        left.plot([order.index(s) for s in g["snapshot"]], g["rows"], marker="o", label=table)
    left.set_title("rows per table")
    left.set_yscale("log")
    left.legend(fontsize="small")
    total = df.groupby("snapshot", sort=False)["MB"].sum().reindex(order)
    right.bar(list(x), total.values, color="tab:orange")
    right.set_title("snapshot size (compressed MB)")
    for ax in (left, right):
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize="small")
    return fig


def change_chart(diff: dict):
    """Inserted, deleted and updated rows per table between two snapshots."""
    df = diff_table(diff).set_index("table")[["inserted", "deleted", "updated"]].astype(float).fillna(0)
    fig, (ax,) = _figure(1, 0.4 * max(len(df), 1) + 1.5)
    if df.empty:
        ax.set_title("no tables in common")
        return fig
    df.plot.barh(ax=ax, color={"inserted": "tab:green", "deleted": "tab:red", "updated": "tab:blue"})
    ax.set_title(f"changes from {diff['old']['id']} to {diff['new']['id']}")
    ax.set_xlabel("rows")
    return fig


# == explorer =================================================================================

def preview_sql(view: str, limit: int = 20) -> str:
    """SQL previewing the first rows of a DuckDB view."""
    return f"SELECT * FROM {view} LIMIT {int(limit)}"


def frame_html(df: pd.DataFrame, limit: int = MAX_ROWS) -> str:
    """HTML of a result table, noting when it was cut at ``limit`` rows."""
    note = f"<p><i>first {limit} rows</i></p>" if len(df) >= limit else ""
    return df.to_html(index=False, max_rows=limit, na_rep="NULL") + note


def error_html(exc: BaseException) -> str:
    """An error as a short red message (no traceback)."""
    return f'<pre style="color:#b00">{html.escape(one_line(exc))}</pre>'


def explorer(backup_dir: Path | str = "backups", snapshot: Path | str = "", table: str = "",
             sql: str = "SELECT schema, name, rows, bytes FROM backupkit.tables ORDER BY rows DESC",
             limit: int = 20):
    """A widget: pick a snapshot and a table, preview its rows, run DuckDB SQL over the views."""
    import ipywidgets as w

    from .duck import open_snapshot

    snaps = [s for s in list_snapshots(backup_dir)[0] if s.error is None]
    if not snaps:
        raise SnapshotNotFound(f"no complete snapshot in {backup_dir}",
                               hint="take one with notebooks/backup.ipynb or `backupkit backup`")
    chosen = str(pick_snapshot(backup_dir, str(snapshot))) if snapshot else str(snaps[0].path)
    options = [(f"{s.id}  ({s.tables} tables, {s.rows} rows)", str(s.path)) for s in snaps]
    if chosen not in [v for _, v in options]:
        options.insert(0, (Path(chosen).name, chosen))

    snap_dd = w.Dropdown(options=options, value=chosen, description="snapshot", layout=w.Layout(width="60%"))
    table_dd = w.Dropdown(description="table", layout=w.Layout(width="35%"))
    preview = w.HTML()
    sql_box = w.Textarea(value=sql, placeholder="SELECT ... FROM public.orders",
                         layout=w.Layout(width="100%", height="6em"))
    button = w.Button(description="Run query", button_style="primary", icon="play")
    result = w.HTML()
    state: dict[str, Any] = {"con": None, "loading": False}

    def show_table(change=None):
        if state["loading"]:
            return
        if not table_dd.value:
            preview.value = "<i>this snapshot has no tables</i>"
            return
        try:
            preview.value = frame_html(run_query(state["con"], preview_sql(table_dd.value, limit), limit), limit)
        except Exception as exc:  # noqa: BLE001 - shown to the user, never raised into the widget loop
            preview.value = error_html(exc)

    def open_selected(change=None):
        if state["con"] is not None:
            state["con"].close()
        state["con"] = open_snapshot(snap_dd.value)
        views = [r[0] for r in state["con"].sql(
            "SELECT view FROM backupkit.tables WHERE view IS NOT NULL ORDER BY schema, name").fetchall()]
        labels = [(v.replace('"', ""), v) for v in views]
        wanted = next((v for lbl, v in labels if lbl == table), None)
        state["loading"] = True  # one preview after the switch, not one per option change
        try:
            table_dd.options = labels
            table_dd.value = wanted or (views[0] if views else None)
        finally:
            state["loading"] = False
        show_table()

    def run_sql(_button=None):
        try:
            result.value = frame_html(run_query(state["con"], sql_box.value), MAX_ROWS)
        except Exception as exc:  # noqa: BLE001
            result.value = error_html(exc)

    open_selected()
    snap_dd.observe(open_selected, "value")
    table_dd.observe(show_table, "value")
    button.on_click(run_sql)
    run_sql()
    box = w.VBox([w.HBox([snap_dd, table_dd]), preview, sql_box, button, result])
    # Reachable for scripts and tests: box.snapshot.value = ..., box.run.click(), box.result.value
    box.snapshot, box.table, box.preview, box.sql, box.run, box.result = (
        snap_dd, table_dd, preview, sql_box, button, result)
    return box


# == embedded demo server =====================================================================

def stop_demo_server(home: Path | str | None = None) -> bool:
    """Stop the persistent demo server under ``home`` (default ``$BACKUPKIT_HOME``) if it runs.

    Kernels stop the server they started when they exit; this is for a kernel
    that was killed instead.  Returns True when a running server was stopped.
    """
    from .embedded import EmbeddedServer, home as default_home

    server = EmbeddedServer(Path(home or default_home()) / "demo-pg" / "data", persistent=True)
    if not server._running():
        return False
    server._pg("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(server.datadir))
    return True
