"""The operations a notebook runs, and the databases and snapshots they run on.

Each operation (preflight, backup, verify, prune, restore) takes the *name* of
the environment variable that holds a DSN (``dsn_env``), never a DSN, so no
secret enters a notebook's parameters, variables or outputs; ``""`` means the
CLI's lookup, then the embedded demo database (restores: a scratch database on
the demo server); a value that is not a variable's name (the DSN itself, often) is
refused in one line that shows nothing of it.  Those that read rows (verify, drill,
restore, diff) take ``identity`` for encrypted snapshots: an age identity file's path,
``""`` meaning ``$BACKUPKIT_IDENTITY`` when set (``resolve_identity``, as the command line
resolves ``--identity``).  Given a ``RunRecord`` an operation runs as one of its steps
and adds what it did to the run's summary.  Backups, restores and diffs show
their progress (tqdm: a widget in a notebook, by bytes where the library counts
them).  Also here: picking snapshots by id, path or ``latest~N``, and taking
demo snapshots so the defaults have something to show, saying where and why.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..capture.job import backup as _backup
from ..capture.preflight import check as _check
from ..capture.result import BackupResult
from ..errors import BackupkitError, ConfigError, SnapshotDamaged, SnapshotNotFound, SourceError
from ..pg.dsn import DSN_ENV_VARS, resolve_dsn
from ..recovery.job import RestoreResult
from ..recovery.job import restore as _restore
from ..retention.policy import Policy
from ..retention.prune import PruneResult
from ..retention.prune import prune as _prune
from ..snapshot import manifest as mf
from ..snapshot.encryption import IdentityArg, identity_path, recipients_from, recipients_of
from ..snapshot.signing import public_key_path, sign_key_path
from ..snapshot.verify import verify as _verify
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from ..storage.repository import list_snapshots, resolve
from .frames import Table
from .runs import RunRecord, _maybe_step, _now, env_name, misplaced_secret

#: Database on the embedded demo server that restores go to when no target is named.
RESTORE_SCRATCH_DB = "restore_target"
#: Label of the snapshots ``ensure_demo_snapshots`` takes.
DEMO_LABEL = "demo"


# == databases and snapshots ==================================================================


def _dsn(dsn_env: str) -> str:
    """The DSN a notebook means (see ``demo.notebook_dsn``); never display it."""
    from ..demo.run import notebook_dsn

    return notebook_dsn(env_name("dsn_env", dsn_env) or None)


def resolve_identity(identity: IdentityArg | None) -> IdentityArg | None:
    """The identity to read encrypted snapshots with, as the command line resolves ``--identity``
    (``encryption.identity_path``): a file's path as given, ``""`` or None: ``$BACKUPKIT_IDENTITY``
    when set, else None; pyrage identities unchanged.  Key material given where the path belongs
    is refused without being shown."""
    if identity is None or isinstance(identity, (str, os.PathLike)):
        refused = misplaced_secret("identity", str(identity or ""))
        if refused is not None:
            raise refused
        return identity_path(identity)
    return identity


def _restore_target(target_dsn_env: str) -> str:
    """The restore target: ``$target_dsn_env``, else an empty scratch database on the demo server."""
    if env_name("target_dsn_env", target_dsn_env):
        try:
            return resolve_dsn(env_var=target_dsn_env)
        except ConfigError:
            raise ConfigError(
                f"${target_dsn_env} is not set",
                hint=f"export {target_dsn_env}=postgresql://... or leave target_dsn_env "
                "empty to restore into a scratch database on the embedded demo server",
            ) from None
    import psycopg

    from ..demo.run import demo_server

    server = demo_server()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (RESTORE_SCRATCH_DB,)).fetchone()
    return server.dsn(RESTORE_SCRATCH_DB) if exists else server.createdb(RESTORE_SCRATCH_DB)


def _drill_server(dsn_env: str) -> str | None:
    """The DSN of the server a drill makes its throwaway database on: ``$dsn_env``; None
    (a temporary embedded server) when ``dsn_env`` is empty."""
    if not env_name("dsn_env", dsn_env):
        return None
    try:
        return resolve_dsn(env_var=dsn_env)
    except ConfigError:
        raise ConfigError(
            f"${dsn_env} is not set, or is empty",
            hint=f"export {dsn_env}=postgresql://... (a role with CREATEDB) or leave dsn_env empty "
            "to drill on a temporary embedded server",
        ) from None


def is_demo_source(source: Mapping[str, Any] | None) -> bool:
    """True when a manifest's ``source`` is the embedded demo database."""
    from ..demo.run import DEMO_DB

    if not source:
        return False
    return source.get("database") == DEMO_DB and source.get("host") in ("127.0.0.1", "localhost")


def demo_snapshots_needed(
    sources: Sequence[Mapping[str, Any] | None], n: int, dsn_env: str, env: Mapping[str, str]
) -> int:
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


def demo_snapshots_reason(
    sources: Sequence[Mapping[str, Any] | None], n: int, dsn_env: str, env: Mapping[str, str]
) -> str:
    """Why ``demo_snapshots_needed`` says what it says, as the end of a sentence."""
    if len(sources) >= n:
        return "enough for this notebook"
    named = dsn_env or next((v for v in DSN_ENV_VARS if env.get(v)), "")
    if named:
        return f"fewer than the {n} this notebook needs, but a database is named (${named}): no demo snapshots taken"
    if not all(is_demo_source(s) for s in sources):
        return (
            f"fewer than the {n} this notebook needs, but they are another database's: "
            "demo snapshots never mix into a real backup directory"
        )
    return (
        f"fewer than the {n} this notebook needs, and no database is named (dsn_env empty, no "
        + "/".join(f"${v}" for v in DSN_ENV_VARS)
        + ")"
    )


class DemoSnapshots(list):
    """The ids ``ensure_demo_snapshots`` took (a list, usually empty), shown as what happened and why."""

    def __init__(self, taken: Sequence[str], folder: Path, found: int, reason: str):
        super().__init__(taken)
        self.folder, self.found, self.reason = folder, found, reason

    def _where(self) -> str:
        absolute = self.folder.resolve()
        return f"{self.folder} ({absolute})" if str(absolute) != str(self.folder) else str(self.folder)

    def __repr__(self) -> str:
        s = "" if self.found == 1 else "s"
        line = f"{self._where()}: {self.found} snapshot{s}, {self.reason}."
        if not self:
            return line
        return (
            f"{line}\nTook {len(self)} demo snapshot{'' if len(self) == 1 else 's'} of the embedded demo database "
            f"into {self.folder.resolve()}: {', '.join(self)}.\n"
            "To see the snapshots of `backupkit demo` instead, run it from the repository root "
            "(it writes backups/ there); to see your own, set backup_dir."
        )

    def _repr_html_(self) -> str:
        lines = [html.escape(line) for line in repr(self).splitlines()]
        style = "border-left:4px solid #e0a100;padding:0.3em 0.8em" if self else "color:#888"
        return f'<div style="{style};overflow-wrap:anywhere;max-width:100%">' + "<br>".join(lines) + "</div>"


def _sources(backup_dir: Path) -> list[dict | None]:
    if not backup_dir.is_dir():
        return []
    out = []
    for s in list_snapshots(backup_dir)[0]:
        try:
            out.append(mf.read(s.location).get("source"))
        except BackupkitError:
            out.append(None)
    return out


def ensure_demo_snapshots(backup_dir: Path | str = "backups", n: int = 2, dsn_env: str = "") -> DemoSnapshots:
    """Take demo snapshots until ``backup_dir`` has ``n`` (defaults only; see ``demo_snapshots_needed``).

    Between two snapshots one "day of traffic" changes the demo database, so a
    comparison has something to show.  Returns the ids taken (usually none), a
    list that shows the folder (and its absolute path), how many snapshots it
    has, and, when it took some, where and why.
    """
    backup_dir = Path(backup_dir)
    env_name("dsn_env", dsn_env)
    sources = _sources(backup_dir)
    missing = demo_snapshots_needed(sources, n, dsn_env, os.environ)
    reason = demo_snapshots_reason(sources, n, dsn_env, os.environ)
    if not missing:
        return DemoSnapshots([], backup_dir, len(sources), reason)
    from ..demo.data import mutate_demo
    from ..demo.run import demo_dsn

    dsn = demo_dsn()
    taken = []
    for i in range(missing):
        if sources or i:
            mutate_demo(dsn)
        taken.append(_backup(dsn, backup_dir, label=DEMO_LABEL, progress=True).id)
    return DemoSnapshots(taken, backup_dir, len(sources), reason)


def pick_snapshot(backup_dir: Path | str = "backups", snapshot: str = "") -> Path | SnapshotLocation:
    """A snapshot: ``snapshot`` as a path, an id or ``latest~N`` in ``backup_dir``; "" = newest.

    A snapshot on this machine is its folder; one elsewhere (``s3://…``) its location.
    """
    if snapshot and Path(snapshot).is_dir():
        path = Path(snapshot)
        mf.read(path)  # a clear SnapshotNotFound / SnapshotDamaged now rather than later
        return path
    # A snapshot named whole (s3://bucket/prefix/<id>), or by its id / latest~N in backup_dir.
    location = resolve(snapshot) if "://" in snapshot else resolve(backup_dir, snapshot or "latest")
    mf.read(location)
    return _shown(location)


def _shown(location: SnapshotLocation) -> Path | SnapshotLocation:
    return location.path if isinstance(location.storage, LocalStorage) else location


class Pair(NamedTuple):
    """The two snapshots a report compares."""

    old: Path | SnapshotLocation
    new: Path | SnapshotLocation


def pick_pair(backup_dir: Path | str = "backups", old: str = "", new: str = "") -> Pair:
    """Snapshots to compare: ``new`` defaults to the newest, ``old`` to the one before ``new``."""
    new_path = pick_snapshot(backup_dir, new)
    if old:
        return Pair(pick_snapshot(backup_dir, old), new_path)
    complete = [s for s in list_snapshots(backup_dir)[0] if s.error is None]
    ids = [s.id for s in complete]
    after = ids.index(new_path.name) + 1 if new_path.name in ids else len(ids)
    if after >= len(ids):
        raise SnapshotNotFound(
            f"{backup_dir} has no snapshot older than {new_path.name} to compare with",
            hint="take another backup (notebooks/backup.ipynb) or name `old` explicitly",
        )
    return Pair(_shown(complete[after].location), new_path)


# == operations (each a step of a run) ========================================================


def failed_checks(items: list[dict]) -> list[str]:
    """``check: detail`` of every preflight check that failed."""
    return [f"{i['check']}: {i['detail']}" for i in items if i["status"] == "fail"]


def preflight(
    backup_dir: Path | str = "backups",
    dsn_env: str = "",
    schemas: list[str] | None = None,
    *,
    tables: Sequence[str] = (),
    exclude: Sequence[str] = (),
    run: RunRecord | None = None,
) -> Table:
    """Run ``backupkit check`` (on the tables the backup chooses); the table of checks, or
    ``SourceError`` naming every failed one."""
    with _maybe_step(run, "preflight"):
        report = _check(_dsn(dsn_env), schemas=schemas, to=backup_dir, tables=tables, exclude=exclude)
        failed = failed_checks(report.items)
        if failed:
            raise SourceError(
                "preflight failed: " + "; ".join(failed),
                hint="fix what the checks name (`backupkit check` shows the same list)",
            )
    return Table(report.items, columns=["check", "status", "detail"])


def backup(
    backup_dir: Path | str = "backups",
    dsn_env: str = "",
    *,
    schemas: list[str] | None = None,
    jobs: int = 1,
    label: str = "",
    tables: Sequence[str] = (),
    exclude: Sequence[str] = (),
    storage_buckets: Sequence[str] = (),
    run: RunRecord | None = None,
) -> BackupResult:
    """Back up the database ``$dsn_env`` names into a new snapshot under ``backup_dir``, with
    the files of ``storage_buckets`` (``["*"]``: every bucket; endpoint from ``BACKUPKIT_STORAGE_*``).

    Encrypted to the keys in ``$BACKUPKIT_RECIPIENTS`` and signed with ``$BACKUPKIT_SIGN_KEY``
    when set, as ``backupkit backup`` is: the scheduled notebook runs on the same host, with the
    same environment, as the command it stands in for."""
    every = list(storage_buckets) == ["*"]
    with _maybe_step(run, "backup"):
        result = _backup(
            _dsn(dsn_env),
            backup_dir,
            schemas=schemas,
            tables=list(tables),
            exclude=list(exclude),
            jobs=jobs,
            label=label or None,
            progress=True,
            storage_buckets=() if every else list(storage_buckets),
            storage_all_buckets=every,
            recipients=recipients_from(None),
            sign_key=sign_key_path(None),
        )
    if run is not None:
        run.set_snapshot(result.id, result.location)
        run.summary.update(
            encrypted=recipients_of(result.manifest) is not None,
            signed_by=result.manifest.get("signed_by"),
            tables=len(result.manifest["tables"]),
            rows=result.rows,
            bytes=result.bytes,
            new_bytes=result.new_bytes,
            storage_files=sum(len(b["files"]) for b in (result.manifest.get("storage") or {}).get("buckets", [])),
            storage_mismatches=len((result.manifest.get("storage") or {}).get("mismatches", [])),
            warnings=result.warnings,
        )
        run.write()
    return result


def verify(
    snapshot: mf.SnapshotArg, *, deep: bool = True, identity: IdentityArg | None = "", run: RunRecord | None = None
) -> Table:
    """Verify a snapshot (``deep``: also recount rows, which an encrypted snapshot needs ``identity``
    for: ``resolve_identity``); one row, or ``SnapshotDamaged`` naming the problems.

    An encrypted snapshot with no identity at hand is checked by its hashes only, its row
    shows that rows were not recounted: a backup host holds the public key alone, by design.
    With ``$BACKUPKIT_PUBLIC_KEY`` set the signature is checked too, as ``backupkit verify`` does."""
    with _maybe_step(run, "verify"):
        key = resolve_identity(identity)
        if deep and key is None and recipients_of(mf.read(snapshot)) is not None:
            deep = False
        report = _verify(snapshot, deep=deep, identity=key, public_key=public_key_path(None))
        snapshot_id = locate(snapshot).id  # a folder's name, or the id of one on S3
        if not report.ok:
            raise SnapshotDamaged(
                f"snapshot {snapshot_id} is damaged: " + "; ".join(report.problems[:5]),
                report.problems,
                hint="restore from another snapshot and check the storage",
            )
    if run is not None:
        run.summary.update(rows_recounted=report.deep, signature=report.signature)
        run.write()
    return Table(
        [
            {
                "snapshot": snapshot_id,
                "intact": report.ok,
                "files": report.files,
                "MB": round(report.bytes / 1e6, 2),
                "rows recounted": report.deep,
                "encrypted": report.encrypted_to is not None,
                "signature": report.signature,
            }
        ]
    )


def make_policy(
    keep_last: int | None = None,
    keep_hourly: int | None = None,
    keep_daily: int | None = None,
    keep_weekly: int | None = None,
    keep_monthly: int | None = None,
    keep_yearly: int | None = None,
    keep_within: str | None = None,
    max_age_days: float | None = None,
    min_keep: int = 1,
    tz: str = "UTC",
) -> Policy:
    """A retention ``Policy`` from notebook parameters (None or "" = rule off; no rule = keep 30 days)."""
    given = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within or None,
        "max_age_days": max_age_days,
        "min_keep": min_keep,
        "tz": tz,
    }
    return Policy.from_dict({k: v for k, v in given.items() if v is not None})


def prune(backup_dir: Path | str, policy: Policy, *, dry_run: bool = True, run: RunRecord | None = None) -> Table:
    """Apply ``policy`` to ``backup_dir`` (nothing is removed with ``dry_run``); every decision and why."""
    with _maybe_step(run, "prune"):
        result = _prune(backup_dir, policy, now=_now(), dry_run=dry_run)
    if run is not None:
        run.summary.update(
            prune_dry_run=dry_run,
            kept=result.kept,
            removed=[] if dry_run else result.removed,
            would_remove=result.removed if dry_run else [],
            prune_warnings=result.warnings,
        )
        run.write()
    return prune_table(result)


def drill(
    backup_dir: Path | str,
    snapshot: str = "latest",
    *,
    dsn_env: str = "",
    identity: IdentityArg | None = "",
    run: RunRecord | None = None,
) -> Table:
    """Restore ``snapshot`` of ``backup_dir`` into a throwaway database and compare (``backupkit drill``);
    one row, or ``DrillFailed`` naming every difference.  ``dsn_env``: the NAME of a variable
    holding a server's DSN to make the throwaway database on (empty: a temporary embedded server);
    ``identity``: the age identity file an encrypted snapshot needs (``resolve_identity``)."""
    from ..drills.job import drill as _drill
    from ..storage.repository import resolve

    location = resolve(str(backup_dir), snapshot or "latest")
    with _maybe_step(run, "drill"):
        result = _drill(location, dsn=_drill_server(dsn_env), identity=resolve_identity(identity), progress=True)
    if run is not None:
        run.set_snapshot(location.id, location)
        run.summary.update(drill_ok=result.ok, drill_seconds=result.record.seconds, drill_rows=result.record.rows)
        run.write()
    r = result.record
    return Table([{"snapshot": r.snapshot, "passed": r.ok, "tables": r.tables, "rows": r.rows, "seconds": r.seconds}])


def status_table(backup_dir: Path | str, *, max_age: str = "26h", runs_dir: str | None = None) -> Table:
    """The repository's state as ``backupkit status`` gives it: one row per fact, and the reasons."""
    from ..monitor.status import status
    from ..retention.policy import parse_duration

    st = status(str(backup_dir), max_age=parse_duration(max_age), runs_dir=runs_dir)
    drill = st.last_drill
    drilled = f"{drill['snapshot']}: {'passed' if drill['ok'] else 'FAILED'}" if drill else "none"
    rows = [
        {"what": "state", "value": f"{st.state} (exit {st.exit_code})"},
        {"what": "newest snapshot", "value": f"{st.newest} ({st.newest_age_hours} h old)" if st.newest else "none"},
        {"what": "last drill", "value": drilled},
        {"what": "last run", "value": f"{st.last_run['job']}: {st.last_run['status']}" if st.last_run else "none"},
        *({"what": "problem", "value": r} for r in st.reasons),
    ]
    return Table(rows, columns=["what", "value"])


def prune_table(result: PruneResult) -> Table:
    """Prune decisions: each snapshot, keep or remove, and every reason."""
    gone = "would remove" if result.dry_run else "removed"
    rows = [
        {
            "snapshot": d["id"],
            "created_at": d["created_at"],
            "action": "keep" if d["action"] == "keep" else gone,
            "reasons": "; ".join(d["reasons"]),
            "intact": d["intact"],
        }
        for d in result.decisions
    ]
    rows += [{"snapshot": name, "action": gone, "reasons": "unfinished or interrupted folder"} for name in result.stale]
    rows += [{"action": "warning", "reasons": w} for w in result.warnings]
    return Table(rows, columns=["snapshot", "created_at", "action", "reasons", "intact"])


def restore(
    snapshot: mf.SnapshotArg,
    target_dsn_env: str = "",
    *,
    tables: Sequence[str] = (),
    with_dependencies: bool = False,
    clean: bool = False,
    create_roles: bool = False,
    jobs: int = 1,
    dry_run: bool = True,
    identity: IdentityArg | None = "",
    cron_jobs: str = "as-they-were",
    run: RunRecord | None = None,
) -> RestoreResult:
    """Restore ``snapshot`` into ``$target_dsn_env`` ("" = the demo server's scratch database).

    With ``dry_run`` nothing changes and the result holds the plan; ``create_roles``
    creates the roles the snapshot names that the target lacks, as NOLOGIN roles;
    ``cron_jobs`` is ``backupkit.restore``'s (a staging copy: ``"paused"``).
    An encrypted snapshot needs ``identity`` (``resolve_identity``).
    """
    with _maybe_step(run, "restore"):
        key = resolve_identity(identity)
        result = _restore(
            snapshot,
            _restore_target(target_dsn_env),
            identity=key,
            tables=list(tables),
            with_dependencies=with_dependencies,
            clean=clean,
            create_roles=create_roles,
            jobs=jobs,
            dry_run=dry_run,
            cron_jobs=cron_jobs,
            progress=True,
        )
    if run is not None:
        run.set_snapshot(locate(snapshot).id, snapshot)
        run.summary.update(
            dry_run=dry_run, tables=len(result.plan.tables), rows_loaded=result.rows, restore_warnings=result.warnings
        )
        run.write()
    return result


def diff(old: Path | str, new: Path | str, *, sample: int = 5, identity: IdentityArg | None = "") -> dict:
    """``backupkit.diff_snapshots`` of two snapshots, with its progress bar (a widget in the notebook);
    encrypted ones need ``identity`` (``resolve_identity``)."""
    from ..lens.diff import diff_snapshots

    return diff_snapshots(old, new, sample=sample, identity=resolve_identity(identity), progress=True)
