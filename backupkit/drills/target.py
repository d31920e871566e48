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

A leftover database the ``dsn``'s role cannot drop (another role's, or held open by a
superuser's session) is named in a warning and left; so is the drill's own database
when dropping it fails at the end, so that the drill's outcome is what the caller sees.
A role without CREATEDB gets a ``ConfigError`` saying to grant it.
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

from ..errors import ConfigError, RestoreError
from ..pg.dsn import connect, describe, redact
from ..pg.embedded import EmbeddedServer
from ..runtime.signals import uninterrupted

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
                    _drop(conn, name)
                except psycopg.Error as exc:
                    # Another role's leftover, or one a session of a superuser holds open: this
                    # drill does not need it gone, so it says so and goes on.
                    log.warning(
                        "drill: cannot remove %s, left by a drill that did not finish: %s; drop it as its "
                        "owner or a superuser (DROP DATABASE %s WITH (FORCE))",
                        name,
                        _reason(exc, dsn),
                        sql.Identifier(name).as_string(conn),
                    )
                    if conn.broken:  # the server went away: the new database cannot be made either
                        break
                    continue
                finally:
                    if not conn.broken:  # a lost connection released its locks already
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
            # A second Ctrl-C or SIGTERM must not leave the server half-stopped (pg_ctl's wait is bounded).
            with uninterrupted("drill: stopping the throwaway server"):
                server.stop()
                shutil.rmtree(folder, ignore_errors=True)
        return
    # The lock is taken before the database exists, so no other drill ever sees it unlocked.
    with connect(dsn, autocommit=True) as holder:
        name = _locked_name(holder, name, dsn)
        _create(holder, name, dsn)
        try:
            yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
        finally:
            try:
                with uninterrupted("drill: dropping the throwaway database"):
                    _drop(holder, name)
            except psycopg.Error as exc:
                # The drill's own outcome (its result, or what stopped it) is what the caller must
                # see; the database left behind is a warning, and the next drill removes it.
                log.warning(
                    "drill: cannot drop the throwaway database %s: %s; the next drill on this server "
                    "removes it, or drop it as its owner or a superuser",
                    name,
                    _reason(exc, dsn),
                )


#: Names tried before giving up when another session holds the lock of each (a hash collision).
_NAME_TRIES = 5


def _locked_name(holder: psycopg.Connection, name: str, dsn: str) -> str:
    """``name``, or a fresh one, whose drill lock ``holder`` now holds."""
    for _ in range(_NAME_TRIES):
        if holder.execute(_TRY_LOCK, _lock_args(name)).fetchone() == (True,):
            return name
        name = _new_name()  # its lock's key collides with one another session holds: another name
    where = describe(dsn)
    raise RestoreError(
        f"cannot reserve a name for the drill's throwaway database on {where['host']}:{where['port']}: "
        f"other sessions hold the advisory locks ({LOCK_CLASS}, …) of {_NAME_TRIES} random names",
        hint="run the drill again; if it keeps failing, look in pg_locks for the sessions holding "
        f"advisory locks with classid {LOCK_CLASS}",
    )


def _create(holder: psycopg.Connection, name: str, dsn: str) -> None:
    """CREATE DATABASE ``name``; a refusal as a ``ConfigError`` (no CREATEDB) or a ``RestoreError``."""
    try:
        holder.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as exc:
        role = holder.info.user
        where = describe(dsn)
        raise ConfigError(
            f"dsn role {role} may not create databases on {where['host']}:{where['port']}, and a drill "
            f"restores into a throwaway database it creates: {_reason(exc, dsn)}",
            hint=f"grant the role CREATEDB (ALTER ROLE {sql.Identifier(role).as_string(holder)} CREATEDB), "
            "pass another `dsn` whose role has it, or leave `dsn` out to drill on a temporary embedded server",
        ) from None
    except psycopg.Error as exc:
        where = describe(dsn)
        raise RestoreError(
            f"cannot create the drill's throwaway database {name} on {where['host']}:{where['port']}: "
            f"{_reason(exc, dsn)}",
            hint="fix what the server says (another session on template1, disk space, max databases) and run "
            "the drill again, or leave `dsn` out to drill on a temporary embedded server",
        ) from None


def _drop(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _reason(exc: psycopg.Error, dsn: str) -> str:
    """The server's message about ``exc`` on one line, with no password in it."""
    text = exc.diag.message_primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return redact(" ".join(text.split()), dsn)
