"""The ``backupkit`` command: parse, make one library call, print.

Each error class carries its exit code (``backupkit.errors``: ``exc.exit_code``); README lists them.
Library messages name parameters as Python callers know them (``lock_wait_timeout``);
``main`` turns those names into the command's flags (``--lock-wait-timeout``) when it
reports the error.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .errors import (
    BackupkitError,
    ConfigError,
    RetentionError,
    SnapshotDamaged,
    SnapshotError,
    SourceError,
    StorageError,
)
from .terminal import paint

#: Exit codes that belong to no error class (those are on the classes: ``BackupkitError.exit_code``).
#: An exception backupkit did not raise on purpose: a bug.
EXIT_UNEXPECTED = 1
#: ``diff --exit-code``: the snapshots differ (like ``git diff --exit-code``); 0 when the same.
EXIT_DIFFERENT = 12
EXIT_INTERRUPTED = 130


def exit_code(exc: BaseException) -> int:
    """The documented exit code for an exception: its class's ``exit_code``, 1 for anything else."""
    return exc.exit_code if isinstance(exc, BackupkitError) else EXIT_UNEXPECTED


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


def cmd_backup(a: argparse.Namespace) -> int:
    from .capture.job import backup
    from .pg.dsn import resolve_dsn
    from .snapshot.encryption import recipients_from
    from .snapshot.signing import sign_key_path

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
    )
    if not a.quiet:
        signed = f", signed (key {res.manifest['signed_by']})" if res.manifest.get("signed_by") else ""
        to = (res.manifest.get("encryption") or {}).get("recipients")
        encrypted = f", encrypted to {len(to)} key{'s' if len(to) > 1 else ''}" if to else ""
        lock = res.manifest.get("object_lock")
        locked = f", locked ({lock['mode']}) until {lock['retain_until']}" if lock else ""
        print(
            f"backed up {len(res.manifest['tables'])} tables, {res.rows} rows, "
            f"{_human(res.bytes)} in {res.seconds:.1f}s{signed}{encrypted}{locked}",
            file=sys.stderr,
        )
    print(res.location)
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from .storage.repository import list_snapshots

    snaps, unfinished = list_snapshots(a.dir)
    if a.json:
        print(
            json.dumps(
                {"snapshots": [s.to_dict() for s in snaps], "unfinished": [u.to_dict() for u in unfinished]}, indent=2
            )
        )
        return 0
    rows = [
        {
            "id": s.id,
            "created_at": s.created_at.strftime("%Y-%m-%d %H:%M:%S UTC") if s.created_at else "?",
            "tables": s.tables,
            "rows": s.rows,
            "size": _human(s.bytes),
            "label": s.label or "",
            "flags": " ".join(
                f for f, on in (("pinned", s.pinned), ("partial", s.partial), ("UNREADABLE", s.error)) if on
            ),
        }
        for s in snaps
    ]
    _print_table(rows, ["id", "created_at", "tables", "rows", "size", "label", "flags"])
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
    from .snapshot.encryption import identity_path
    from .snapshot.signing import public_key_path
    from .snapshot.verify import verify
    from .storage.repository import resolve

    report = verify(
        resolve(a.snapshot),
        deep=a.deep,
        public_key=public_key_path(a.public_key),
        identity=identity_path(a.identity),
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
    return 0 if report.ok else SnapshotDamaged.exit_code


def cmd_keygen(a: argparse.Namespace) -> int:
    from .snapshot import encryption, signing

    if (a.private_key is None) != (a.public_key is None) or (a.private_key is None and a.age_identity is None):
        raise ConfigError(
            "keygen writes a signing key pair (give both --private-key and --public-key), "
            "an encryption identity (--age-identity), or both"
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
    from .capture.preflight import check
    from .pg.dsn import resolve_dsn

    report = check(resolve_dsn(a.dsn), schemas=a.schema or None, to=a.to)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for i in report.items:
            print(f"{paint(i['status'].upper().ljust(5), i['status'], stream=sys.stdout)} {i['check']}: {i['detail']}")
    return 0 if report.ok else SourceError.exit_code


def cmd_restore(a: argparse.Namespace) -> int:
    from .pg.dsn import resolve_dsn
    from .recovery.job import restore
    from .snapshot.encryption import identity_path
    from .snapshot.signing import public_key_path
    from .storage.repository import resolve

    res = restore(
        resolve(a.snapshot),
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
        dry_run=a.dry_run,
        lock_wait_timeout=a.lock_wait_timeout,
        timeout=a.timeout,
        public_key=public_key_path(a.public_key),
        identity=identity_path(a.identity),
        progress=None if not a.quiet else False,
    )
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
    elif a.dry_run:
        print("dry run — would:")
        for step in res.plan.describe():
            print(f"  - {step}")
    else:
        print(f"restored {len(res.plan.tables)} tables, {res.rows} rows in {res.seconds:.1f}s")
    if not a.json:
        # What the restore made or left out beyond the snapshot's own objects, in words.
        for note in res.plan.notes:
            print(f"  note: {note}")
    return 0


def cmd_pin(a: argparse.Namespace, pinned: bool = True) -> int:
    from .storage.repository import resolve, set_pin

    path = resolve(a.snapshot)
    set_pin(path, pinned)
    print(f"{'pinned' if pinned else 'unpinned'} {path.name}")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from .retention.policy import Policy, parse_duration
    from .retention.prune import prune

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
        tz=a.tz or "UTC",
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
    verb = "would remove" if a.dry_run else "removed"
    print(f"{verb} {len(res.removed)} snapshot(s), kept {len(res.kept)}" + (" (dry run)" if a.dry_run else ""))
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    from .lens.diff import diff_snapshots
    from .lens.integrity import integrity
    from .lens.report import render_html, render_json, schema_text
    from .storage.repository import resolve

    old, new = resolve(a.old), resolve(a.new)
    d = diff_snapshots(old, new)
    code = EXIT_DIFFERENT if a.exit_code and not d["same"] else 0
    if a.html:
        _write_private(Path(a.html), render_html(d, integrity(old), integrity(new)))
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
    return code


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 whatever the umask): a report
    shows row values, which are as private as the snapshot's own 0600 files."""
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
            f.write(text)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_sql(a: argparse.Namespace) -> int:
    import duckdb

    from .lens.duck import open_snapshot
    from .storage.repository import resolve

    con = open_snapshot(resolve(a.snapshot), external_access=a.external_access)
    if a.query:
        try:
            rel = con.sql(a.query)
            if rel is not None:  # rows are read here: a failure here is the query's too
                rel.show(max_rows=a.max_rows)
        except duckdb.Error as exc:
            raise ConfigError(
                f"DuckDB could not run the query: {exc}",
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
                rel = con.sql(buf)
                if rel is not None:
                    rel.show(max_rows=a.max_rows)
            except Exception as exc:
                print(f"error: {exc}")
            buf = ""


def cmd_copy(a: argparse.Namespace) -> int:
    from .storage.replicate import copy_snapshots

    res = copy_snapshots(a.source, a.target, a.snapshots)
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    for sid in res.copied:
        print(f"copied {sid} (verified in {a.target})")
    for sid in res.present:
        print(f"{sid}: already in {a.target}")
    print(f"copied {len(res.copied)} snapshot(s); {len(res.present)} already there")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo.run import remove_demo, run_demo, where

    if a.where:
        print(where())
        return 0
    if a.remove:
        remove_demo()  # prints what it removed
        return 0
    res = run_demo(a.to, scale=a.scale, keep_server=False)
    for line in res.lines:
        print(line)
    return 0


# -- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs test)."""
    p = argparse.ArgumentParser(
        prog="backupkit",
        description="Checkable, exactly-restorable backups of Supabase / PostgreSQL databases. See README.md.",
    )
    p.add_argument("--version", action="version", version=f"backupkit {__version__}")
    verbose_help = "log each step to stderr (connections, locks, files, timings); before or after COMMAND"
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # Every command takes -v too, after its name: SUPPRESS keeps a -v given before the name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]
    dsn_help = "PostgreSQL DSN (default: $BACKUPKIT_DSN, $DATABASE_URL, $SUPABASE_DB_URL)"

    b = sub.add_parser("backup", help="take a snapshot of a database")
    b.add_argument("--dsn", help=dsn_help)
    b.add_argument("--to", required=True, metavar="REPO", help="backup directory (or file:// URL)")
    b.add_argument("--schema", action="append", help="schema to include (repeatable; default public)")
    b.add_argument("--table", action="append", help="only this schema.table (repeatable)")
    b.add_argument("--exclude-table", action="append", help="leave out schema.table (repeatable)")
    b.add_argument("--jobs", "-j", type=int, default=1, help="parallel COPY connections (default 1)")
    b.add_argument("--label", help="label appended to the snapshot id")
    b.add_argument(
        "--allow-partial", action="store_true", help="back up only the rows RLS lets this role see (marked partial)"
    )
    b.add_argument(
        "--lock-wait-timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="give up when a table stays locked (e.g. by a migration) this long (default 60; 0 waits forever)",
    )
    b.add_argument(
        "--timeout",
        type=float,
        default=1800,
        metavar="SECONDS",
        help="give up when the whole backup takes longer (default 1800; 0: no limit)",
    )
    b.add_argument(
        "--sign-key",
        type=Path,
        metavar="FILE",
        help="sign the manifest with this Ed25519 private key (PEM, mode 0600; from "
        "`backupkit keygen`) into manifest.json.sig (default: $BACKUPKIT_SIGN_KEY)",
    )
    b.add_argument(
        "--recipient",
        dest="recipients",
        action="append",
        metavar="AGE1KEY",
        help="encrypt every file but the manifest to this age public key (age1…, from `backupkit keygen "
        "--age-identity`; repeatable): only its identity can restore the snapshot "
        "(default: $BACKUPKIT_RECIPIENTS, keys separated by spaces or commas)",
    )
    b.add_argument(
        "--object-lock-days",
        type=float,
        metavar="DAYS",
        help="s3:// only, in a bucket created with Object Lock: every object of the snapshot is locked "
        "(S3 Object Lock retention) for DAYS from the backup's start; prune keeps it until then",
    )
    b.add_argument(
        "--object-lock-mode",
        type=str.upper,
        choices=["GOVERNANCE", "COMPLIANCE"],
        help="GOVERNANCE (default: users allowed to bypass it may still delete) or COMPLIANCE "
        "(nobody may, not even the account's root, until the date)",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_backup)

    ls = sub.add_parser("list", help="list snapshots in a backup directory")
    ls.add_argument("dir", metavar="REPO", help="backup directory")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    v = sub.add_parser("verify", help="check a snapshot against its manifest")
    v.add_argument("snapshot", help="snapshot folder (or DIR to verify the newest)")
    v.add_argument("--deep", action="store_true", help="also decompress and recount rows")
    v.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="require a good signature by this Ed25519 public key (PEM) "
        "(default: $BACKUPKIT_PUBLIC_KEY; without one a signature is not checked)",
    )
    v.add_argument(
        "--identity",
        type=Path,
        metavar="FILE",
        help="age identity file (mode 0600) to decrypt an encrypted snapshot with; only --deep needs it "
        "(default: $BACKUPKIT_IDENTITY)",
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    k = sub.add_parser(
        "keygen", help="create an Ed25519 key pair to sign snapshots with, or an age identity to encrypt them to"
    )
    k.add_argument(
        "--private-key",
        type=Path,
        metavar="FILE",
        help="where to write the signing private key (PEM, mode 0600; never overwritten)",
    )
    k.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="where to write the signing public key (PEM, for verify --public-key)",
    )
    k.add_argument(
        "--age-identity",
        type=Path,
        metavar="FILE",
        help="where to write a new age identity (mode 0600; never overwritten; for restore --identity); "
        "its public key, for backup --recipient, is printed",
    )
    k.set_defaults(func=cmd_keygen)

    c = sub.add_parser("check", help="preflight: can this database be backed up completely?")
    c.add_argument("--dsn", help=dsn_help)
    c.add_argument("--schema", action="append")
    c.add_argument("--to", metavar="REPO", help="backup directory (free space) or s3:// URL (reachable)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("restore", help="restore a snapshot into a database")
    r.add_argument("snapshot", help="snapshot folder (or DIR for the newest)")
    r.add_argument("--dsn", help="target DSN (default: $BACKUPKIT_DSN, $DATABASE_URL, $SUPABASE_DB_URL)")
    r.add_argument("--table", action="append", help="only this schema.table (repeatable)")
    r.add_argument("--schema", action="append", help="only tables of this schema (repeatable)")
    r.add_argument(
        "--with-dependencies", action="store_true", help="also restore tables the chosen ones reference by foreign key"
    )
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--schema-only", action="store_true")
    mode.add_argument("--data-only", action="store_true")
    r.add_argument("--clean", action="store_true", help="drop (or with --data-only, empty) existing tables first")
    r.add_argument("--jobs", "-j", type=int, default=1, help="parallel loads; 1 (default) restores in one transaction")
    own = r.add_mutually_exclusive_group()
    own.add_argument(
        "--no-owner", dest="owner", action="store_false", help="objects owned by the connecting role (default)"
    )
    own.add_argument("--owner", dest="owner", action="store_true", help="restore original ownership")
    r.add_argument(
        "--create-roles",
        action="store_true",
        help="create roles named by policies/grants that the target lacks (NOLOGIN)",
    )
    r.add_argument("--dry-run", action="store_true", help="show what would be done")
    r.add_argument("--json", action="store_true")
    r.add_argument(
        "--lock-wait-timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="give up (rolled back) when a lock is not granted within this time, so a restore "
        "into a live database never holds up its queries long (default 60; 0 waits forever)",
    )
    r.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="give up (rolled back or undone) when the restore takes longer (default 0: no limit)",
    )
    r.add_argument(
        "--public-key",
        metavar="FILE",
        help="restore only a snapshot signed by this key (default $BACKUPKIT_PUBLIC_KEY)",
    )
    r.add_argument(
        "--identity",
        type=Path,
        metavar="FILE",
        help="age identity file (mode 0600) of a recipient of an encrypted snapshot (default: $BACKUPKIT_IDENTITY)",
    )
    r.add_argument("--quiet", "-q", action="store_true")
    r.set_defaults(func=cmd_restore, owner=False)

    for name, pinned in (("pin", True), ("unpin", False)):
        what = "prune never removes it" if pinned else "let prune decide"
        pp = sub.add_parser(name, help=f"{name} a snapshot ({what})")
        pp.add_argument("snapshot")
        pp.set_defaults(func=lambda a, _p=pinned: cmd_pin(a, _p))

    pr = sub.add_parser("prune", help="remove snapshots a retention policy does not keep")
    pr.add_argument("dir", metavar="REPO", help="backup directory")
    for opt in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        pr.add_argument(f"--keep-{opt}", type=int, metavar="N", help=f"keep {opt} snapshots (-1: all)")
    pr.add_argument("--keep-within", metavar="DURATION", help="keep all within e.g. 7d, 1y2m of the newest")
    pr.add_argument("--max-age-days", type=float, help="keep what is younger (default policy: 30)")
    pr.add_argument("--min-keep", type=int, default=1, help="never keep fewer (default 1)")
    pr.add_argument(
        "--tz",
        default="UTC",
        metavar="ZONE",
        help="IANA time zone of the calendar periods, e.g. Europe/Berlin (default UTC, as in the "
        "notebooks and the library, whatever this machine's zone)",
    )
    pr.add_argument(
        "--stale-after-hours",
        type=float,
        default=24,
        help="remove unfinished temporary folders older than this (default 24)",
    )
    pr.add_argument("--dry-run", action="store_true", help="show decisions, delete nothing")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)

    d = sub.add_parser("diff", help="compare two snapshots (DuckDB)")
    d.add_argument("old")
    d.add_argument("new")
    d.add_argument("--json", action="store_true")
    d.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    d.add_argument(
        "--exit-code",
        action="store_true",
        help=f"exit {EXIT_DIFFERENT} when the snapshots differ (data or schema), 0 when the same",
    )
    d.set_defaults(func=cmd_diff)

    q = sub.add_parser("sql", help="query a snapshot with DuckDB SQL")
    q.add_argument("snapshot")
    q.add_argument("query", nargs="?", help="SQL to run (default: an interactive prompt)")
    q.add_argument("--max-rows", type=int, default=40)
    q.add_argument(
        "--external-access",
        action="store_true",
        help="let queries read and write other files (COPY ... TO to export results); "
        "by default DuckDB sees only this snapshot's files and writes nothing",
    )
    q.set_defaults(func=cmd_sql)

    cp = sub.add_parser("copy", help="copy snapshots to another repository, verified there (3-2-1 backups)")
    cp.add_argument("source", metavar="SRC", help="repository to copy from")
    cp.add_argument("target", metavar="DST", help="repository to copy to (made if missing)")
    cp.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="ids, latest or latest~N (default: all)")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_copy)

    dm = sub.add_parser("demo", help="build a demo database on embedded PostgreSQL, back it up twice, verify")
    dm.add_argument("--to", type=Path, default=Path("backups"), help="backup directory (default ./backups)")
    dm.add_argument("--scale", type=float, default=1.0, help="demo size (1.0: a few hundred thousand rows)")
    dm.add_argument(
        "--where", action="store_true", help="list every file, folder and user the demo's server uses, and stop"
    )
    dm.add_argument(
        "--remove", action="store_true", help="stop the notebooks' demo server and delete its files (not --to)"
    )
    dm.set_defaults(func=cmd_demo)
    return p


def help_markdown() -> str:
    """Every command's ``--help`` as Markdown: docs/cli.md is this text (a test keeps them equal)."""
    import os

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; docs must not depend on it
    try:
        parser = build_parser()
        out = [
            "# backupkit command reference",
            "",
            "Generated from `backupkit COMMAND --help`; exit codes are listed in README.md.",
            "",
            "```",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, cmd in _commands(parser).items():
            out += ["", f"## backupkit {name}", "", "```", cmd.format_help().rstrip(), "```"]
        return "\n".join(out) + "\n"
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command, by name."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


#: Library parameters whose option has another name (a repeatable option is singular).
_PARAMETER_OPTIONS = {"schemas": "schema", "tables": "table", "exclude": "exclude_table"}


def _flags(command: argparse.ArgumentParser) -> dict[str, str]:
    """The command's options by the library parameter each passes on, which mostly has the
    option's name: ``{"lock_wait_timeout": "--lock-wait-timeout", "jobs": "--jobs", ...}``."""
    flags: dict[str, str] = {}
    for action in command._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.dest != "help":
            named = "--" + action.dest.replace("_", "-")
            flags[action.dest] = named if named in long else long[0]
    return flags


def _in_flags(text: str, flags: dict[str, str], *, leading: bool) -> str:
    """A library message or hint in the command's words: a parameter name between backquotes,
    as in "pass a larger `timeout`", becomes its flag (`--timeout`); with ``leading``, so does
    the name that opens the text ("jobs 0 is out of range" -> "--jobs 0 is out of range")."""

    def quoted(m: re.Match[str]) -> str:
        flag = flags.get(m[1]) or flags.get(_PARAMETER_OPTIONS.get(m[1], ""))
        return f"`{flag}`" if flag else m[0]

    text = re.sub(r"`([a-z][a-z0-9_]*)`", quoted, text)
    first = re.match(r"[a-z][a-z0-9_]*(?= )", text)
    if leading and first and first[0] in flags:
        text = flags[first[0]] + text[first.end() :]
    return text


class _FlagsFormatter(logging.Formatter):
    """``warning: message`` (``info:`` with -v), like the command's ``error:`` lines, with the
    library's parameter names shown as this command's flags."""

    def __init__(self, flags: dict[str, str]):
        super().__init__("%(message)s")
        self.flags = flags

    def format(self, record: logging.LogRecord) -> str:
        level = paint(record.levelname.lower(), stream=sys.stderr)
        return f"{level}: {_in_flags(super().format(record), self.flags, leading=False)}"


def _os_error(exc: OSError) -> BackupkitError:
    """A last net for file-system errors no command turned into its own message: one line,
    exit 8 when something could not be written (disk full, read-only), else 7 (cannot read)."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return StorageError(f"cannot write {where}{exc.strerror or exc}")
    return SnapshotError(
        f"cannot access {where}{exc.strerror or exc}",
        hint="check that this user may read (and for backup/prune/pin, write) the backup directory",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``backupkit`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = _flags(_commands(parser)[args.command])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FlagsFormatter(flags))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        if getattr(args, "jobs", None) is not None:
            from .snapshot.verify import check_jobs

            check_jobs(args.jobs)
        try:
            return args.func(args)
        except OSError as exc:
            raise _os_error(exc) from None
    except KeyboardInterrupt:
        print(
            "interrupted (an unfinished backup never looks like a snapshot; a one-transaction restore was rolled back)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BackupkitError as exc:
        from .pg.dsn import redact

        # Only a bad-argument error opens with the name of what was given wrong.
        bad_argument = isinstance(exc, ConfigError | RetentionError)
        print(
            f"{paint('error', stream=sys.stderr)}: {redact(_in_flags(str(exc), flags, leading=bad_argument))}",
            file=sys.stderr,
        )
        if exc.hint:
            print(f"hint: {_in_flags(exc.hint, flags, leading=False)}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
