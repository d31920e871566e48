"""Where a drill restores: a throwaway database nobody else uses, gone afterwards.

By default a new embedded PostgreSQL server in a folder of its own under
``<tmp>/backupkit-drills/``; with ``dsn`` (a role with CREATEDB) a new database
``backupkit_drill_<pid>_<random>`` on that server.  Either is removed when the drill
ends, however it ends; a drill killed outright (kill -9) cannot, so every drill first
removes what earlier drills of this machine left behind: folders and databases whose
drill process is gone (its pid is in the name).
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
                m = _NAME.fullmatch(name)
                if m and not _alive(int(m[1])):
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
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
    with connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
