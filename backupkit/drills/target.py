"""Where a drill restores: a throwaway database nobody else uses, gone afterwards.

By default a new embedded PostgreSQL server in a folder of its own under
``<tmp>/backupkit-drills/``; with ``dsn`` (a role with CREATEDB) a new database
``backupkit_drill_<pid>_<random>`` on that server.  Either is removed when the drill
ends, however it ends; a drill killed outright (kill -9) cannot, so every drill first
removes what earlier drills left behind:

* a server folder of this machine whose drill process is gone (its pid is in the name);
* a database on the ``dsn`` server whose drill no longer holds its advisory lock.  A drill
  keeps a session open on the ``dsn``'s own database for as long as it runs, holding an
  advisory lock named after its database; the server releases it when that session
  ends, however the drill died.  So drills on several machines sharing one server
  remove each other's leftovers, never each other's running drills (a pid says
  nothing about another machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from ..pg.dsn import connect
from ..pg.embedded import EmbeddedServer

log = logging.getLogger("backupkit")

#: Names of throwaway databases and server folders: the drill's pid, then a random part.
PREFIX = "backupkit_drill_"
_NAME = re.compile(rf"{PREFIX}(\d+)_[0-9a-f]+")


def drills_root() -> Path:
    """The folder holding the throwaway servers' folders."""
    return Path(tempfile.gettempdir()) / "backupkit-drills"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: First key of the drills' advisory locks (the second is the hash of the database's name).
LOCK_CLASS = 0x6B64726C  # "kdrl"


def _lock_args(name: str) -> list:
    return [LOCK_CLASS, name]


_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"


def _new_name() -> str:
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


def remove_leftovers(dsn: str | None = None) -> list[str]:
    """Remove the throwaway servers (and, with ``dsn``, databases) of drills that died; their names."""
    removed = []
    root = drills_root()
    for folder in sorted(root.glob(f"{PREFIX}*")) if root.is_dir() else []:
        m = _NAME.fullmatch(folder.name)
        if m and not _alive(int(m[1])):
            server = EmbeddedServer(folder / "data")
            with contextlib.suppress(Exception):
                server.shut_down()  # a server whose drill was killed still runs: stop it first
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if dsn is not None:
        with connect(dsn, autocommit=True) as conn:
            found = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [PREFIX])
            names = [n for (n,) in found]
            for name in names:
                if not _NAME.fullmatch(name):
                    continue
                if conn.execute(_TRY_LOCK, _lock_args(name)).fetchone() != (True,):
                    continue  # its drill is running (here or on another machine)
                try:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                finally:
                    conn.execute(_UNLOCK, _lock_args(name))
                removed.append(name)
    for name in removed:
        log.info("drill: removed %s, left by a drill that did not finish", name)
    return removed


@contextlib.contextmanager
def throwaway(dsn: str | None = None) -> Iterator[str]:
    """The DSN of a new, empty database for one drill; dropped (with its server) on the way out."""
    remove_leftovers(dsn)
    name = _new_name()
    if dsn is None:
        folder = drills_root() / name
        folder.mkdir(parents=True, mode=0o755)
        os.chmod(folder, 0o755)  # the server's OS user (when we are root) passes through it
        server = EmbeddedServer(folder / "data", remove_parent=True)
        try:
            server.start()
            yield server.createdb("drill")
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
        return
    # The lock is taken before the database exists, so no other drill ever sees it unlocked.
    with connect(dsn, autocommit=True) as holder:
        if holder.execute(_TRY_LOCK, _lock_args(name)).fetchone() != (True,):
            raise psycopg.OperationalError(f"drill database name {name} is in use")  # a hash collision
        holder.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
        finally:
            holder.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
