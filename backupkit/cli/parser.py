"""The ``backupkit`` argument parser, and docs/cli.md generated from it."""

from __future__ import annotations

import argparse
import functools
import os
import re
from pathlib import Path

from .. import __version__
from ..capture.chunks import CHUNK_BYTES
from .codes import EXIT_DIFFERENT
from .commands import (
    cmd_backup,
    cmd_check,
    cmd_copy,
    cmd_demo,
    cmd_diff,
    cmd_drill,
    cmd_keygen,
    cmd_list,
    cmd_pin,
    cmd_prune,
    cmd_restore,
    cmd_sql,
    cmd_status,
    cmd_verify,
)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(text: str) -> int:
    """Bytes from ``16M``, ``16MiB``, ``16MB`` (all 16 MiB) or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 16M or 64MiB")
    return int(m[1]) * _UNITS[m[2].lower()]


def _path(text: str) -> Path | str:
    """A path; an empty argument stays "" (not ``Path("")``, which is "."), so that it is refused."""
    return Path(text) if text else text


def _rows(text: str) -> int:
    """A number of rows to show: 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows: give 1 or more")
    return int(text)


def _notify_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--notify",
        metavar="URL",
        help="ping URL/start, URL or URL/fail (Healthchecks style; json+https://... posts JSON) "
        "(default $BACKUPKIT_NOTIFY); an unreachable monitor only warns",
    )


def _storage_options(p: argparse.ArgumentParser, verb: str, every: str) -> None:
    """The Supabase Storage options of ``backup`` and ``restore`` (the secret: environment only);
    ``verb`` and ``every`` are the help of ``--storage-bucket`` and ``--storage-all-buckets``."""
    g = p.add_argument_group(
        "Supabase Storage buckets",
        "files read and written through Storage's S3 endpoint; the secret key only from $BACKUPKIT_STORAGE_SECRET",
    )
    g.add_argument(
        "--storage-bucket", dest="storage_buckets", action="append", metavar="NAME", help=f"{verb} (repeatable)"
    )
    g.add_argument("--storage-all-buckets", action="store_true", help=every)
    g.add_argument(
        "--storage-endpoint",
        metavar="URL",
        help="https://<project>.supabase.co/storage/v1/s3 (default $BACKUPKIT_STORAGE_ENDPOINT)",
    )
    g.add_argument("--storage-key-id", metavar="ID", help="S3 access key id (default $BACKUPKIT_STORAGE_KEY_ID)")
    g.add_argument(
        "--storage-region", metavar="REGION", help="the project's region (default $BACKUPKIT_STORAGE_REGION)"
    )


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
        type=_path,
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
    b.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        help="keep every data file in the snapshot's own folder instead of the repository's pool of "
        "shared files (by default a file the repository has already, unchanged rows of an earlier "
        "snapshot, is not stored again)",
    )
    b.add_argument(
        "--chunk-size",
        dest="chunk_bytes",
        type=_size,
        metavar="SIZE",
        help=f"split tables larger than SIZE on disk into page ranges of SIZE, one COPY each "
        f"(default {CHUNK_BYTES >> 20}M); a COPY's rows go into files of a few MB either way",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _notify_option(b)
    _storage_options(
        b, "also back up the files of this Storage bucket", "also back up the files of every Storage bucket"
    )
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
        type=_path,
        metavar="FILE",
        help="require a good signature by this Ed25519 public key (PEM) "
        "(default: $BACKUPKIT_PUBLIC_KEY; without one a signature is not checked)",
    )
    v.add_argument(
        "--identity",
        type=_path,
        metavar="FILE",
        help="age identity file (mode 0600) to decrypt an encrypted snapshot with; only --deep needs it, "
        "and given, it must be one of the snapshot's recipients (default: $BACKUPKIT_IDENTITY)",
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    k = sub.add_parser(
        "keygen", help="create an Ed25519 key pair to sign snapshots with, or an age identity to encrypt them to"
    )
    k.add_argument(
        "--private-key",
        type=_path,
        metavar="FILE",
        help="where to write the signing private key (PEM, mode 0600; never overwritten)",
    )
    k.add_argument(
        "--public-key",
        type=_path,
        metavar="FILE",
        help="where to write the signing public key (PEM, for verify --public-key)",
    )
    k.add_argument(
        "--age-identity",
        type=_path,
        metavar="FILE",
        help="where to write a new age identity (mode 0600; never overwritten; for restore --identity); "
        "its public key, for backup --recipient, is printed",
    )
    k.set_defaults(func=cmd_keygen)

    c = sub.add_parser("check", help="preflight: can this database be backed up completely?")
    c.add_argument("--dsn", help=dsn_help)
    c.add_argument("--schema", action="append")
    c.add_argument("--table", action="append", help="only this schema.table, as for backup (repeatable)")
    c.add_argument("--exclude-table", action="append", help="leave out schema.table, as for backup (repeatable)")
    c.add_argument(
        "--lock-wait-timeout",
        type=float,
        default=60,
        metavar="SECONDS",
        help="fail when a table stays locked (e.g. by a migration) this long, as the backup would "
        "(default 60; 0 waits forever)",
    )
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
    mode.add_argument(
        "--files-only", action="store_true", help="only the Storage bucket files (--storage-bucket), not the database"
    )
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
    r.add_argument(
        "--cron-jobs",
        choices=("as-they-were", "paused", "skip"),
        default="as-they-were",
        help="the snapshot's pg_cron jobs, on a whole restore: scheduled as they were (default), "
        "all paused (a staging copy), or not at all",
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
        type=_path,
        metavar="FILE",
        help="age identity file (mode 0600) of a recipient of an encrypted snapshot (default: $BACKUPKIT_IDENTITY)",
    )
    r.add_argument("--quiet", "-q", action="store_true")
    _storage_options(
        r,
        "also restore the snapshot's files of this bucket, after the database",
        "also restore the snapshot's files of every bucket it holds, after the database",
    )
    r.add_argument(
        "--storage-prefix", action="append", metavar="PREFIX", help="only files whose key starts so (repeatable)"
    )
    r.add_argument(
        "--storage-overwrite",
        action="store_true",
        help="replace files that changed after the snapshot too (by default they are kept and listed)",
    )
    r.set_defaults(func=cmd_restore, owner=False)

    dr = sub.add_parser("drill", help="prove a snapshot restores: restore it into a throwaway database and compare")
    dr.add_argument("repository", metavar="REPO", help="backup directory or s3:// URL (or a snapshot folder)")
    dr.add_argument("snapshot", nargs="?", help="id, latest or latest~N (default: the newest)")
    dr.add_argument(
        "--dsn",
        help="make the throwaway database on this server (its role needs CREATEDB); default: a temporary "
        "embedded PostgreSQL",
    )
    dr.add_argument("--identity", type=_path, metavar="FILE", help="age identity file, for an encrypted snapshot")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--quiet", "-q", action="store_true")
    _notify_option(dr)
    dr.set_defaults(func=cmd_drill)

    st = sub.add_parser(
        "status",
        help="a repository's state for monitoring: exit 0 ok, 6, 14, 15 or 16 (README); 7 when it cannot be read",
    )
    st.add_argument("repository", metavar="REPO", help="backup directory or s3:// URL")
    st.add_argument(
        "--max-age", default="26h", metavar="DURATION", help="stale when the newest snapshot is older (default 26h)"
    )
    st.add_argument("--runs", metavar="DIR", help="the scheduled notebooks' runs_dir, for the last run's status")
    st.add_argument(
        "--run-limit",
        default="24h",
        metavar="DURATION",
        help="a run recorded on another host that still says running after this is taken for dead "
        "(default 24h; on this host a run's processes are looked at)",
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

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
    _notify_option(pr)
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
    d.add_argument(
        "--identity",
        type=_path,
        metavar="FILE",
        help="age identity file to read encrypted snapshots with (decrypted into private scratch space, "
        "removed at the end; default: $BACKUPKIT_IDENTITY)",
    )
    d.set_defaults(func=cmd_diff)

    q = sub.add_parser("sql", help="query a snapshot with DuckDB SQL")
    q.add_argument("snapshot")
    q.add_argument("query", nargs="?", help="SQL to run (default: an interactive prompt)")
    q.add_argument("--max-rows", type=_rows, default=40, help="rows to show at most (default 40)")
    q.add_argument(
        "--external-access",
        action="store_true",
        help="let queries read and write other files (COPY ... TO to export results); "
        "by default DuckDB sees only this snapshot's files and writes nothing",
    )
    q.add_argument(
        "--identity",
        type=_path,
        metavar="FILE",
        help="age identity file to read an encrypted snapshot with (decrypted into private scratch space, "
        "removed when the command ends; not with --external-access; default: $BACKUPKIT_IDENTITY)",
    )
    q.set_defaults(func=cmd_sql)

    cp = sub.add_parser("copy", help="copy snapshots to another repository, verified there (3-2-1 backups)")
    cp.add_argument("source", metavar="SRC", help="repository to copy from")
    cp.add_argument("target", metavar="DST", help="repository to copy to (made if missing)")
    cp.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="ids, latest or latest~N (default: all)")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_copy)

    dm = sub.add_parser("demo", help="build a demo database on embedded PostgreSQL, back it up twice, verify")
    dm.add_argument("--to", type=_path, default=Path("backups"), help="backup directory (default ./backups)")
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
        for name, cmd in commands_of(parser).items():
            out += ["", f"## backupkit {name}", "", "```", cmd.format_help().rstrip(), "```"]
        return "\n".join(out) + "\n"
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each command, by name."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)
