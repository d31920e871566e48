"""One function per ``backupkit`` command: take the parsed arguments, make one library call, print."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..errors import (
    ConfigError,
    RetentionError,
    SnapshotDamaged,
    SnapshotError,
    SourceError,
)
from ..terminal import paint
from .codes import EXIT_DIFFERENT


def _print_table(rows: list[dict[str, Any]], columns: list[str], *, status: str | None = None) -> None:
    """Rows as aligned columns; the ``status`` column's words in colour on a terminal."""
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        cells = [str(r.get(c, "")).ljust(widths[c]) for c in columns]
        cells = [
            paint(cell, str(r.get(c, "")), stream=sys.stdout) if c == status else cell
            for c, cell in zip(columns, cells, strict=True)
        ]
        print("  ".join(cells).rstrip())


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# -- commands -----------------------------------------------------------------------


def _endpoint(a: argparse.Namespace) -> Any:
    """The Storage endpoint the options and environment describe, when buckets are asked for."""
    if not (a.storage_buckets or a.storage_all_buckets):
        return None
    from ..buckets.endpoint import Endpoint

    return Endpoint.from_env(a.storage_endpoint, a.storage_key_id, a.storage_region)


def cmd_backup(a: argparse.Namespace) -> int:
    """``backupkit backup``: take a snapshot; print its folder last."""
    from ..capture.job import backup
    from ..pg.dsn import resolve_dsn
    from ..runtime.signals import uninterrupted
    from ..snapshot.encryption import recipients_from
    from ..snapshot.signing import sign_key_path

    res = backup(
        resolve_dsn(a.dsn),
        a.to,
        schemas=a.schema or None,
        tables=a.table or [],
        exclude=a.exclude_table or [],
        jobs=a.jobs,
        label=a.label,
        allow_partial=a.allow_partial,
        progress=None if not a.quiet else False,
        lock_wait_timeout=a.lock_wait_timeout,
        timeout=a.timeout,
        sign_key=sign_key_path(a.sign_key),
        recipients=recipients_from(a.recipients),
        object_lock_days=a.object_lock_days,
        object_lock_mode=a.object_lock_mode,
        dedup=a.dedup,
        **({} if a.chunk_bytes is None else {"chunk_bytes": a.chunk_bytes}),  # else the library's default
        storage_buckets=a.storage_buckets or (),
        storage_all_buckets=a.storage_all_buckets,
        storage_endpoint=_endpoint(a),
    )
    a.snapshot_id = res.id  # for --notify
    # Published: a Ctrl-C or SIGTERM now must not turn the job into "interrupted", exit 130.
    with uninterrupted("backup: the snapshot is published; saying where"):
        _print_backup(a, res)
    return 0


def _print_backup(a: argparse.Namespace, res: Any) -> None:
    """The backup's summary line (unless quiet) and, last, where the snapshot is."""
    if not a.quiet:
        signed = f", signed (key {res.manifest['signed_by']})" if res.manifest.get("signed_by") else ""
        to = (res.manifest.get("encryption") or {}).get("recipients")
        encrypted = f", encrypted to {len(to)} key{'s' if len(to) > 1 else ''}" if to else ""
        lock = res.manifest.get("object_lock")
        locked = f", locked ({lock['mode']}) until {lock['retain_until']}" if lock else ""
        buckets = (res.manifest.get("storage") or {}).get("buckets", [])
        files = f", {sum(len(b['files']) for b in buckets)} files of {len(buckets)} bucket(s)" if buckets else ""
        print(
            f"backed up {len(res.manifest['tables'])} tables, {res.rows} rows{files}, "
            f"{_human(res.bytes)} ({_human(res.new_bytes)} new) in {res.seconds:.1f}s{signed}{encrypted}{locked}",
            file=sys.stderr,
        )
    print(res.location)


def cmd_list(a: argparse.Namespace) -> int:
    """``backupkit list``: the snapshots of a repository, and unfinished folders."""
    from ..storage.repository import list_snapshots, usage

    snaps, unfinished = list_snapshots(a.dir)
    if a.json:
        total = usage([s for s in snaps if not s.error])
        listing = {
            "snapshots": [s.to_dict() for s in snaps],
            "unfinished": [u.to_dict() for u in unfinished],
            "logical_bytes": total.logical,
            "stored_bytes": total.stored,
        }
        print(json.dumps(listing, indent=2))
        return 0
    rows = [
        {
            "id": s.id,
            "created_at": s.created_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.created_at else "?",
            "tables": s.tables,
            "rows": s.rows,
            "size": _human(s.bytes),
            "unique": _human(s.unique_bytes),
            "label": s.label or "",
            "flags": " ".join(
                f for f, on in (("pinned", s.pinned), ("partial", s.partial), ("UNREADABLE", s.error)) if on
            ),
        }
        for s in snaps
    ]
    _print_table(rows, ["id", "created_at", "tables", "rows", "size", "unique", "label", "flags"])
    if snaps:
        total = usage([s for s in snaps if not s.error])
        print(
            f"total: {len(snaps)} snapshot(s), {_human(total.logical)} in all, {_human(total.stored)} stored "
            "(files shared between snapshots counted once; unique: what removing one alone frees)"
        )
    for s in snaps:
        if s.error:
            print(f"unreadable: {s.id}: {s.error}")
    for u in unfinished:
        what = {
            "tmp": "unfinished backup (in progress, or left by a crash)",
            "incomplete": "unfinished upload or publish (no manifest.json)",
        }.get(u.kind, "interrupted delete")
        print(f"incomplete: {u.name}  {what}, {u.age_seconds / 60:.0f} min old — not a snapshot")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    """``backupkit verify``: re-hash a snapshot (``--deep``: recount rows); exit 6 when damaged."""
    from ..snapshot.encryption import identity_path
    from ..snapshot.signing import public_key_path
    from ..snapshot.verify import damage_hint, verify
    from ..storage.repository import resolve

    report = verify(
        resolve(a.snapshot),
        deep=a.deep,
        public_key=public_key_path(a.public_key),
        # $BACKUPKIT_IDENTITY is for decrypting (--deep); a hash check of a snapshot encrypted
        # to an older key must not fail on it.  Given with --identity, it is checked.
        identity=identity_path(a.identity) if a.deep or a.identity else None,
    )
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            print(f"{paint('PROBLEM', stream=sys.stdout)}: {p}")
        state = (
            paint("intact", stream=sys.stdout)
            if report.ok
            else f"{paint('DAMAGED', stream=sys.stdout)} ({len(report.problems)} problems)"
        )
        print(
            f"{report.snapshot.name}: {state} — {report.files} files, {_human(report.bytes)}"
            + (", rows recounted" if a.deep else "")
        )
        if report.storage_mismatches:
            from ..buckets.reconcile import describe

            print(f"storage: {len(report.storage_mismatches)} mismatch(es) of rows and files at backup time:")
            for m in report.storage_mismatches:
                print(f"  {describe(m)}")
        print(
            {
                "valid": f"signed: {paint('yes', stream=sys.stdout)} (key {report.key_id})",
                "invalid": f"signed: {paint('NO', stream=sys.stdout)} (bad signature)",
                "missing": f"signed: {paint('NO', stream=sys.stdout)} (no signature)",
                "unchecked": "signed: not checked (signature present; pass --public-key to check it)",
                "absent": "signed: no",
            }[report.signature]
        )
        if report.encrypted_to:
            print(f"encrypted: yes (age, to {', '.join(report.encrypted_to)})")
        if not report.ok:
            print(f"hint: {damage_hint(report)}", file=sys.stderr)
    return 0 if report.ok else SnapshotDamaged.exit_code


def cmd_keygen(a: argparse.Namespace) -> int:
    """``backupkit keygen``: make a signing key pair or an age identity; print the public half."""
    import os
    from pathlib import Path

    from ..snapshot import encryption, signing

    if (a.private_key is None) != (a.public_key is None) or (a.private_key is None and a.age_identity is None):
        raise ConfigError(
            "keygen writes a signing key pair (give both --private-key and --public-key), "
            "an encryption identity (--age-identity), or both"
        )
    # Every file is checked before any is written: a pair written and then a refusal of the
    # identity's file left half of what was asked.
    files = [Path(p).absolute() for p in (a.private_key, a.public_key, a.age_identity) if p is not None]
    if len(set(files)) != len(files):
        raise ConfigError("--private-key, --public-key and --age-identity must be different files")
    for path in files:
        if os.path.lexists(path):
            raise ConfigError(
                f"{path} already exists; backupkit never overwrites a key; nothing was written",
                hint="choose another file name, or remove the old key if nothing needs it",
            )
    if a.private_key is not None:
        kid = signing.keygen(a.private_key, a.public_key)
        print(
            f"wrote Ed25519 key {kid}: private key {a.private_key} (0600; keep it away from the backups), "
            f"public key {a.public_key}"
        )
    if a.age_identity is not None:
        recipient = encryption.keygen(a.age_identity)
        print(
            f"wrote age identity {a.age_identity} (0600; keep it away from the backups: it decrypts them); "
            "back up to its public key with --recipient:",
            file=sys.stderr,
        )
        print(recipient)
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    """``backupkit check``: whether the source allows a backup, check by check; exit 5 when not."""
    from ..capture.preflight import check
    from ..pg.dsn import resolve_dsn
    from .parser import build_parser, commands_of
    from .run import in_flags_of

    report = check(
        resolve_dsn(a.dsn),
        schemas=a.schema or None,
        to=a.to,
        lock_wait_timeout=a.lock_wait_timeout,
        tables=a.table or (),
        exclude=a.exclude_table or (),
    )
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        # The checks are about a backup: parameters they name are shown as backup's flags.
        words = in_flags_of(commands_of(build_parser())["backup"])
        for i in report.items:
            status = paint(i["status"].upper().ljust(5), i["status"], stream=sys.stdout)
            print(f"{status} {i['check']}: {words(i['detail'])}")
    return 0 if report.ok else SourceError.exit_code


def cmd_restore(a: argparse.Namespace) -> int:
    """``backupkit restore``: a snapshot into a database, and/or its Storage bucket files."""
    from ..pg.dsn import resolve_dsn
    from ..recovery.job import restore
    from ..snapshot.encryption import identity_path
    from ..snapshot.signing import public_key_path
    from ..storage.repository import resolve

    snapshot = resolve(a.snapshot)
    if a.files_only and not (a.storage_buckets or a.storage_all_buckets):
        raise ConfigError("`files_only` needs --storage-bucket NAME or --storage-all-buckets")
    endpoint = _endpoint(a)  # before anything is restored: missing Storage settings change nothing
    if endpoint is not None:  # and files the snapshot cannot give: not after the database is restored
        from ..buckets.restore import check_request

        # A files-only restore asks the endpoint itself, with nothing restored before.
        probe = None if a.files_only else endpoint
        check_request(snapshot, None if a.storage_all_buckets else a.storage_buckets, a.storage_prefix or (), probe)
    if a.files_only:
        files = _restore_files(a, snapshot, endpoint, resolve_dsn(a.dsn) if a.dsn else None)
        if a.json:
            print(json.dumps({"files": files.to_dict()}, indent=2))
        else:
            _print_files(files)
        return 0
    res = restore(
        snapshot,
        resolve_dsn(a.dsn),
        tables=a.table or [],
        schemas=a.schema or [],
        with_dependencies=a.with_dependencies,
        schema_only=a.schema_only,
        data_only=a.data_only,
        clean=a.clean,
        jobs=a.jobs,
        owner=a.owner,
        create_roles=a.create_roles,
        cron_jobs=a.cron_jobs,
        dry_run=a.dry_run,
        lock_wait_timeout=a.lock_wait_timeout,
        timeout=a.timeout,
        public_key=public_key_path(a.public_key),
        identity=identity_path(a.identity),
        progress=None if not a.quiet else False,
    )
    if a.json:
        document = res.to_dict()
        try:
            if endpoint is not None:
                document["files"] = _restore_files(a, snapshot, endpoint, resolve_dsn(a.dsn)).to_dict()
        finally:  # the database part is done: it is reported even when the files fail
            print(json.dumps(document, indent=2))
        return 0
    if a.dry_run:
        print("dry run — would:")
        for step in res.plan.describe():
            print(f"  - {step}")
    else:
        print(f"restored {len(res.plan.tables)} tables, {res.rows} rows in {res.seconds:.1f}s")
    # What the restore made or left out beyond the snapshot's own objects, in words.
    for note in res.plan.notes:
        print(f"  note: {note}")
    if endpoint is not None:
        sys.stdout.flush()  # said before the files are, which may fail
        _print_files(_restore_files(a, snapshot, endpoint, resolve_dsn(a.dsn)))
    return 0


def _restore_files(a: argparse.Namespace, snapshot: Any, endpoint: Any, dsn: str | None) -> Any:
    from ..buckets.restore import restore_files

    return restore_files(
        snapshot,
        endpoint,
        buckets=None if a.storage_all_buckets else a.storage_buckets,
        prefixes=a.storage_prefix or (),
        overwrite=a.storage_overwrite,
        dsn=dsn,
        progress=None if not a.quiet else False,
        dry_run=a.dry_run,
    )


def _print_files(done: Any) -> None:
    """The files part of a restore, in words (``buckets.restore.FilesRestored``)."""
    would = "would be " if done.dry_run else ""
    print(
        f"files{' (dry run)' if done.dry_run else ''}: {len(done.uploaded)} {would}uploaded ({_human(done.bytes)}), "
        f"{len(done.same)} already there, {len(done.kept_newer)} newer kept"
        + (f"; {would}created bucket(s) {', '.join(done.created_buckets)}" if done.created_buckets else "")
    )
    for name in done.kept_newer:
        print(f"  kept (changed after the snapshot; --storage-overwrite replaces it): {name}")


def cmd_pin(a: argparse.Namespace, pinned: bool = True) -> int:
    """``backupkit pin`` / ``unpin``: keep a snapshot from every prune, or no longer."""
    from ..storage.repository import resolve, set_pin

    path = resolve(a.snapshot)
    set_pin(path, pinned)
    print(f"{'pinned' if pinned else 'unpinned'} {path.name}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    """``backupkit prune``: apply a retention policy, printing each snapshot's decision and reasons."""
    from ..retention.policy import Policy, parse_duration
    from ..retention.prune import prune

    keep_within = None
    if a.keep_within is not None:  # "" is a mistake, not "no rule" (that would be the default policy)
        try:
            keep_within = parse_duration(a.keep_within)
        except RetentionError as exc:
            raise ConfigError(f"--keep-within: {exc}", hint="e.g. --keep-within 30d or 1y2m") from None
    policy = Policy(
        keep_last=a.keep_last,
        keep_hourly=a.keep_hourly,
        keep_daily=a.keep_daily,
        keep_weekly=a.keep_weekly,
        keep_monthly=a.keep_monthly,
        keep_yearly=a.keep_yearly,
        keep_within=keep_within,
        max_age_days=a.max_age_days,
        min_keep=a.min_keep,
        tz=_zone(a.tz),
    )
    res = prune(a.dir, policy, now=datetime.now(UTC), dry_run=a.dry_run, stale_after_hours=a.stale_after_hours)
    # prune logs each warning as it happens (a scheduled run's log keeps it): not twice.
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    _print_table(
        [{"action": d["action"], "id": d["id"], "reasons": "; ".join(d["reasons"])} for d in res.decisions],
        ["action", "id", "reasons"],
        status="action",
    )
    for s in res.stale:
        print(f"{'would remove' if a.dry_run else 'removed'} stale temporary folder {s}")
    if res.shared_removed:
        print(
            f"{'would free' if a.dry_run else 'freed'} {_human(res.shared_bytes)} in {len(res.shared_removed)} "
            "shared file(s) no kept snapshot uses"
        )
    verb = "would remove" if a.dry_run else "removed"
    print(f"{verb} {len(res.removed)} snapshot(s), kept {len(res.kept)}" + (" (dry run)" if a.dry_run else ""))
    return 0


def _zone(tz: str) -> str:
    """``--tz``; empty (an unset "$TZ") is a mistake, not UTC: the periods would shift unseen."""
    if not tz.strip():
        raise ConfigError("--tz is empty", hint="give an IANA zone such as Europe/Berlin, or leave --tz out for UTC")
    return tz


def cmd_diff(a: argparse.Namespace) -> int:
    """``backupkit diff``: what changed between two snapshots (``--exit-code``: 12 when anything did)."""
    from ..lens.diff import diff_snapshots
    from ..lens.integrity import integrity
    from ..lens.report import render_html, render_json, save_html, schema_text
    from ..snapshot.encryption import identity_path
    from ..storage.repository import resolve

    old, new = resolve(a.old), resolve(a.new)
    identity = identity_path(a.identity)
    with _queries_interruptible():
        d = diff_snapshots(old, new, identity=identity)
        reports = (integrity(old, identity=identity), integrity(new, identity=identity)) if a.html else None
    code = EXIT_DIFFERENT if a.exit_code and not d["same"] else 0
    if reports is not None:
        save_html(a.html, render_html(d, *reports))
        print(f"wrote {a.html}", file=sys.stderr)
    if a.json:
        print(render_json(d))
        return code
    _print_table(
        [
            {
                "table": f"{t['schema']}.{t['name']}",
                "rows_old": t["rows_old"],
                "rows_new": t["rows_new"],
                "inserted": t["inserted"],
                "deleted": t["deleted"],
                "updated": "-" if t["updated"] is None else t["updated"],
                "schema": "changed" if (t.get("schema_changes") or {}).get("changed") else "",
            }
            for t in d["tables"]
        ],
        ["table", "rows_old", "rows_new", "inserted", "deleted", "updated", "schema"],
    )
    for key in ("tables_added", "tables_removed"):
        if d.get(key):
            names = ", ".join(f"{t['schema']}.{t['name']}" for t in d[key])
            print(f"{key.replace('_', ' ')}: {names}")
    for t in d["tables"]:
        changes = {k: v for k, v in (t.get("schema_changes") or {}).items() if v and k != "changed"}
        for what, detail in changes.items():
            print(f"{t['schema']}.{t['name']}: {what.replace('_', ' ')}: {json.dumps(detail, default=str)}")
    for line in schema_text(d):
        print(line)
    for bucket, change in d["storage_files"].items():
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in change.items() if keys)
        print(f"bucket {bucket}: files {counts}")
        for kind, keys in change.items():
            for key in keys[:10]:
                print(f"  {kind}: {key}")
            if len(keys) > 10:
                print(f"  … and {len(keys) - 10} more {kind}")
    return code


@contextlib.contextmanager
def _queries_interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop a running DuckDB query at once: DuckDB does not return to
    Python while it runs, so the signal took effect only when the query ended (``timeout``,
    systemd's stop and Ctrl-C waited on a big snapshot's query for as long as it took)."""
    import threading

    from ..lens.duck import interrupt_queries
    from ..runtime.signals import interrupting

    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        interrupt_queries()

    try:
        with interrupting(stop):
            yield
    except Exception:
        # An interrupted query fails as InterruptException, or, caught while DuckDB fetches
        # the rows, as a RuntimeError('Query interrupted'): after a signal, either is the stop.
        if stopped.is_set():
            raise KeyboardInterrupt from None
        raise


def cmd_sql(a: argparse.Namespace) -> int:
    """``backupkit sql``: a read-only SQL query over a snapshot's tables, with DuckDB."""
    import duckdb

    from ..lens.duck import open_snapshot
    from ..snapshot.encryption import identity_path
    from ..storage.repository import resolve

    if a.query is not None and not a.query.strip():
        # An unset "$QUERY" must not turn a scheduled job into a prompt waiting for input.
        raise ConfigError("the query is empty", hint="give the SQL to run, or leave it out for an interactive prompt")
    identity = identity_path(a.identity)
    con = open_snapshot(resolve(a.snapshot), external_access=a.external_access, identity=identity)
    try:  # closing removes an encrypted snapshot's decrypted copy
        if a.query:
            try:
                with _queries_interruptible():
                    rel = con.sql(a.query)
                    if rel is not None:  # rows are read here: a failure here is the query's too
                        rel.show(max_rows=a.max_rows)
            except duckdb.Error as exc:
                # DuckDB's "Did you mean ...?" and LINE/caret parts come on lines of their own.
                raise ConfigError(
                    f"DuckDB could not run the query: {' '.join(str(exc).split())}",
                    hint="tables are views like public.orders; `select * from backupkit.tables` lists them",
                ) from None
            return 0
        print("DuckDB over the snapshot; tables are views like public.orders. End with Ctrl-D.")
        buf = ""
        while True:
            try:
                line = input("sql> " if not buf else "...> ")
            except EOFError:
                print()
                return 0
            buf += line + "\n"
            if buf.strip().endswith(";"):
                try:
                    with _queries_interruptible():
                        rel = con.sql(buf)
                        if rel is not None:
                            rel.show(max_rows=a.max_rows)
                except Exception as exc:
                    print(f"error: {exc}")
                buf = ""
    finally:
        con.close()


def cmd_copy(a: argparse.Namespace) -> int:
    """``backupkit copy``: replicate snapshots into another repository; exit 7 when one was unreadable or damaged."""
    from ..storage.replicate import copy_snapshots

    res = copy_snapshots(a.source, a.target, a.snapshots)
    # Snapshots left behind are a failure of the copy's purpose, though the others went.
    code = SnapshotError.exit_code if res.unreadable else 0
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
        return code
    for sid in res.copied:
        print(f"copied {sid} (verified in {a.target})")
    for sid in res.present:
        print(f"{sid}: already in {a.target}")
    print(f"copied {len(res.copied)} snapshot(s); {len(res.present)} already there")
    for sid, why in res.unreadable.items():
        print(f"error: {sid} was not copied: {why}", file=sys.stderr)
    if res.unreadable:
        print(f"hint: run `backupkit verify {a.source}/ID` to see what is wrong with each", file=sys.stderr)
    return code


def cmd_demo(a: argparse.Namespace) -> int:
    """``backupkit demo``: the demo end to end, or where its files are, or remove them."""
    from ..demo.run import remove_demo, run_demo, where

    if a.where:
        print(where())
        return 0
    if a.remove:
        print(remove_demo())
        return 0
    res = run_demo(a.to, scale=a.scale, keep_server=False)
    for line in res.lines:
        print(line)
    return 0


def cmd_drill(a: argparse.Namespace) -> int:
    """``backupkit drill``: restore a snapshot into a throwaway database and compare; exit 14 on a difference."""
    from ..drills.job import drill
    from ..snapshot.encryption import identity_path
    from ..storage.repository import resolve

    res = drill(
        resolve(a.repository, a.snapshot),
        dsn=a.dsn or None,  # a throwaway database is made through it; none: an embedded server
        identity=identity_path(a.identity),
        progress=None if not a.quiet else False,
    )
    a.snapshot_id = res.record.snapshot  # for --notify
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        r = res.record
        print(
            f"drill of {r.snapshot}: {paint('passed', stream=sys.stdout)} — {r.tables} tables, {r.rows} rows "
            f"restored and compared in {r.seconds:.1f}s (recorded as {res.recorded_as})"
        )
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    """``backupkit status``: whether a repository's backups are fresh and its last drill passed."""
    from ..monitor.status import status
    from ..retention.policy import parse_duration

    limits = {}
    for name, value in (("max_age", a.max_age), ("run_limit", a.run_limit)):
        try:
            limits[name] = parse_duration(value)
        except RetentionError as exc:
            raise ConfigError(f"`{name}`: {exc}", hint=f"e.g. --{name.replace('_', '-')} 26h or 2d") from None
    st = status(a.repository, max_age=limits["max_age"], runs_dir=a.runs, run_limit=limits["run_limit"])
    if a.json:
        print(json.dumps(st.to_dict(), indent=2, default=str))
        return st.exit_code
    age = f"{st.newest_age_hours:.1f} h old" if st.newest_age_hours is not None else "none"
    drill = st.last_drill
    print(f"{st.repository}: {st.state.upper().replace('_', ' ')} (exit {st.exit_code})")
    stored = _human(st.stored_bytes)
    print(f"  newest snapshot: {st.newest or 'none'} ({age}); {st.snapshots} snapshot(s), {stored} stored")
    outcome = "passed" if drill and drill["ok"] else "FAILED"
    print("  last drill: " + (f"{drill['snapshot']} {outcome} at {drill['started_at']}" if drill else "none"))
    if st.last_run:
        print(f"  last run: {st.last_run['job']} {st.last_run['status']} at {st.last_run['started_at']}")
    for reason in st.reasons:
        print(f"  - {reason}")
    return st.exit_code
