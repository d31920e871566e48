"""The demo: a Supabase-shaped database on embedded PostgreSQL, backed up, changed, backed up again.

Also the notebooks' default database: ``demo_dsn()`` starts (once) a
persistent embedded server holding the demo data, so every notebook runs
as-is with no setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..capture.job import backup
from ..errors import ConfigError
from ..lens.diff import diff_snapshots
from ..pg.dsn import resolve_dsn
from ..pg.embedded import EmbeddedServer, home, temporary_server
from ..snapshot.verify import verify
from .data import create_demo, mutate_demo

DEMO_DB = "demo"


@dataclass
class DemoResult:
    """The demo's snapshots and the lines it reports."""

    snapshots: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def run_demo(to: Path | str = "backups", *, scale: float = 1.0, keep_server: bool = False) -> DemoResult:
    """Create the demo database, back it up, change rows, back up again, verify both."""
    result = DemoResult()
    say = result.lines.append
    with temporary_server() as server:
        dsn = server.createdb(DEMO_DB)
        counts = create_demo(dsn, scale=scale)
        say(
            f"demo database: {len(counts)} tables, {sum(counts.values())} rows on embedded PostgreSQL "
            f"(127.0.0.1:{server.port})"
        )
        first = backup(dsn, to, schemas=["public", "auth", "storage"], label="demo-before", jobs=2)
        say(f"snapshot 1: {first.path}  ({first.rows} rows, {first.bytes / 1e6:.1f} MB, {first.seconds:.1f}s)")
        changed = mutate_demo(dsn)
        say(
            "changed rows: "
            + ", ".join(f"{k} {v}" for k, v in changed.items())
            + " (plus the audit_log rows the orders trigger writes, which the diff below counts)"
        )
        second = backup(dsn, to, schemas=["public", "auth", "storage"], label="demo-after", jobs=2)
        say(f"snapshot 2: {second.path}  ({second.rows} rows, {second.bytes / 1e6:.1f} MB, {second.seconds:.1f}s)")
        for snap in (first, second):
            report = verify(snap.path, deep=True)
            if not report.ok:
                raise ConfigError(f"demo snapshot {snap.path} did not verify: {report.problems}")
            say(f"verified {snap.path.name}: intact ({report.files} files, rows recounted)")
        result.snapshots = [first.path, second.path]
    totals = diff_snapshots(first.path, second.path)["totals"]
    say(
        f"diff (DuckDB): {totals['inserted']} rows inserted, {totals['updated']} updated, "
        f"{totals['deleted']} deleted between the two snapshots"
    )
    say(
        f"next: backupkit list {to}   |   backupkit diff {first.path} {second.path}   |   "
        f'backupkit sql {second.path} "select count(*) from public.orders"'
    )
    return result


def _demo_cluster(home_dir: Path | str | None = None) -> EmbeddedServer:
    return EmbeddedServer(Path(home_dir or home()) / "demo-pg" / "data", persistent=True)


def demo_server(*, keep_running: bool = False) -> EmbeddedServer:
    """The persistent embedded server behind the notebooks' defaults (started if needed).

    It stops when the process that started it exits, unless ``keep_running``.
    """
    return _demo_cluster().start(keep_running=keep_running)


def stop_demo_server(home_dir: Path | str | None = None) -> bool:
    """Stop the persistent demo server under ``home_dir`` (default ``$BACKUPKIT_HOME``) if it runs.

    For a server kept running for the CLI, or left behind by a kernel that was
    killed (kernels stop the server they started when they exit).  Returns True
    when a running server was stopped.
    """
    return _demo_cluster(home_dir).shut_down()


def demo_dsn(scale: float = 0.2, *, keep_running: bool = False) -> str:
    """DSN of the demo database on the persistent embedded server, created on first use.

    ``keep_running`` leaves the server up after this process exits, for the CLI
    (``stop_demo_server()`` stops it).
    """
    server = demo_server(keep_running=keep_running)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone()
    if not exists:
        server.createdb(DEMO_DB)
        create_demo(server.dsn(DEMO_DB), scale=scale)
    return server.dsn(DEMO_DB)


def notebook_dsn(dsn_env: str | None = None) -> str:
    """The DSN a notebook should use: from the env var named ``dsn_env`` (or the CLI's
    lookup when None), else the embedded demo database.  Never print the result."""
    try:
        return resolve_dsn(env_var=dsn_env or None)
    except ConfigError:
        if dsn_env:
            raise ConfigError(
                f"${dsn_env} is not set",
                hint=f"export {dsn_env}=postgresql://... or leave dsn_env empty to use the embedded demo database",
            ) from None
        return demo_dsn()
