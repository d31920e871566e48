"""Finding, describing and connecting with a DSN without ever showing its password."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ConfigError, ConnectionFailed

#: Environment variables consulted, in order, when no DSN is given.
DSN_ENV_VARS = ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")

#: Session settings for every connection, so COPY text is the same whatever the
#: server's or role's defaults (Supabase sets statement_timeout per role).
SESSION_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "client_encoding": "UTF8",
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}


def resolve_dsn(dsn: str | None = None, env: Mapping[str, str] | None = None, env_var: str | None = None) -> str:
    """Return ``dsn``, else the first of ``$BACKUPKIT_DSN``, ``$DATABASE_URL``, ``$SUPABASE_DB_URL``.

    ``env_var`` names one variable to read instead (notebooks take the *name*
    of the variable as a parameter so the secret never enters the notebook).
    """
    env = os.environ if env is None else env
    if dsn:
        return dsn
    names = (env_var,) if env_var else DSN_ENV_VARS
    for name in names:
        if env.get(name):
            return env[name]
    raise ConfigError(
        "no database given",
        hint=f"pass the DSN as `dsn` or set {' or '.join('$' + n for n in names)}",
    )


def _password(dsn: str) -> str | None:
    try:
        password = conninfo_to_dict(dsn).get("password")
        return None if password is None else str(password)
    except (psycopg.ProgrammingError, UnicodeEncodeError):
        # Unparseable: take what stands between "user:" and "@" of a URI.
        m = re.match(r"postgres(?:ql)?://[^:/@\s]*:([^@\s]*)@", dsn)
        return m.group(1) if m else None


#: A URI's user information as its writer meant it: everything up to the last ``@`` before
#: the query (a query's values may hold ``@``: ``?application_name=backup@nightly``).
_USERINFO = re.compile(r"postgres(?:ql)?://(?P<user>[^:@/]*)(?::(?P<password>.*))?@[^@]*$", re.S)


def _meant(dsn: str) -> tuple[str, str | None] | None:
    """User and password of a URI DSN as written (decoded; an empty password is none), or None
    when it has no user information, or its query sets the user or password."""
    head, _, query = dsn.partition("?")
    if re.search(r"(?:^|&)(?:user|password)=", query):
        return None
    m = _USERINFO.match(head)
    if m is None:
        return None
    password = m.group("password")
    return unquote(m.group("user")), unquote(password) if password else None


def redact(text: str, dsn: str | None = None) -> str:
    """``text`` with any password (from ``dsn`` or URI/key=value syntax), age secret key or PEM
    private key replaced by ``****``."""
    if dsn:
        meant = _meant(dsn)
        for pw in (_password(dsn), meant[1] if meant else None):
            if pw:
                text = text.replace(pw, "****")
    # Key material that reached a message by mistake (a key given where a path was expected).
    # A key's body is 59 characters; "AGE-SECRET-KEY-1…" alone is backupkit naming the kind.
    text = re.sub(r"(AGE-SECRET-KEY-)[0-9A-Za-z]{8,}", r"\1****", text, flags=re.I)
    text = re.sub(
        r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
        r"-----BEGIN \1PRIVATE KEY-----****",
        text,
        flags=re.S,
    )
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1****@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1****", text, flags=re.I)


_ENCODE_HINT = (
    "use postgresql://user:password@host:5432/dbname, with special characters in the password percent-encoded"
)


def _parse(dsn: str) -> dict:
    try:
        parsed = conninfo_to_dict(dsn)
    except UnicodeEncodeError:
        # Bytes the shell or environment gave that are not UTF-8 (Python keeps them as surrogates).
        raise ConfigError("the DSN holds bytes that are not UTF-8 text", hint=_ENCODE_HINT) from None
    except psycopg.ProgrammingError:
        # libpq's message quotes the offending part, which may be the password: never show it.
        raise ConfigError("the DSN cannot be parsed (check its quoting and %-escapes)", hint=_ENCODE_HINT) from None
    meant = _meant(dsn)
    if meant is not None and (
        meant[0] != parsed.get("user", "") or (meant[1] is not None and meant[1] != parsed.get("password"))
    ):
        # libpq ends the user information at the first "@" or "/": a password holding one
        # is read in part as the host or the port, and shown wherever those are.
        raise ConfigError(
            "the DSN's user or password holds a character a URI must percent-encode (@ as %40, / as %2F)",
            hint=_ENCODE_HINT,
        )
    return parsed


def describe(dsn: str) -> dict:
    """host, port, database and user of ``dsn`` (never the password)."""
    d = _parse(dsn)
    port = d.get("port") or "5432"
    if not port.isdigit():
        raise ConfigError(
            f"the DSN's port {port!r} is not one port number",
            hint="use postgresql://user:password@host:5432/dbname (one host and port)",
        )
    return {
        "host": d.get("host") or d.get("hostaddr") or "localhost",
        "port": int(port),
        "database": d.get("dbname") or d.get("user") or "postgres",
        "user": d.get("user") or os.environ.get("PGUSER") or "",
    }


def split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password and an env dict carrying it, for child processes.

    Passing the password on a command line would show it in ``ps``.
    """
    d = _parse(dsn)
    pw = d.pop("password", None)
    return make_conninfo("", **d), ({"PGPASSWORD": pw} if pw else {})


def is_transaction_pooler(dsn: str) -> bool:
    """True when ``dsn`` goes through Supabase's transaction pooler (port 6543)."""
    return describe(dsn)["port"] == 6543


POOLER_WARNING = (
    "this DSN goes through a transaction pooler (port 6543): exported snapshots and "
    "long transactions do not work there; use the session pooler (port 5432) or the "
    "direct connection string from Supabase's Connect dialog"
)


def _reason(exc: Exception) -> str:
    """The informative part of libpq's message ("Connection refused", "password authentication failed ...")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if "failed: " in first:
        first = first.rsplit("failed: ", 1)[1]
    return " ".join(first.replace("FATAL:", "").split())


def _connect_hint(reason: str) -> str:
    """What to do next for libpq's ``reason``: a missing database or SSL is no password problem."""
    if re.search(r'database ".*" does not exist', reason):
        return "check the database name at the end of the DSN (host:port/DBNAME); the server has no such database"
    if "SSL" in reason and "not support" in reason:
        return "this server offers no SSL: remove sslmode=require (or verify-*) from the DSN, or enable SSL on it"
    return "check host, port, user and password in the DSN, and that the server accepts connections"


#: TCP keepalives (unless the DSN sets its own), so a client waiting on a server that vanished
#: from the network notices within about a minute instead of the kernel's two hours.
TCP_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}


def connect(
    dsn: str,
    *,
    autocommit: bool = False,
    application: str = "backupkit",
    settings: Mapping[str, str] | None = None,
    connect_timeout: int = 15,
) -> psycopg.Connection:
    """Open a connection with backupkit's session settings; errors never carry the password.

    ``settings`` are applied after (and override) ``SESSION_SETTINGS``, e.g. a
    backup's ``lock_timeout`` and ``idle_in_transaction_session_timeout``.
    """
    where = describe(dsn)  # raises a clean ConfigError for a DSN that cannot be parsed
    given = _parse(dsn)
    keepalives: dict[str, Any] = {k: v for k, v in TCP_KEEPALIVES.items() if k not in given}
    try:
        conn = psycopg.connect(
            dsn, autocommit=True, application_name=application, connect_timeout=connect_timeout, **keepalives
        )
    except psycopg.OperationalError as exc:
        reason = redact(_reason(exc), dsn)
        raise ConnectionFailed(
            f"cannot connect to {where['host']}:{where['port']}/{where['database']} "
            f"as {where['user'] or '(default user)'}: {reason}",
            hint=_connect_hint(reason),
        ) from None
    try:
        apply_settings(conn, settings)
    except BaseException:
        conn.close()
        raise
    conn.autocommit = autocommit
    return conn


def apply_settings(conn: psycopg.Connection, settings: Mapping[str, str] | None = None) -> None:
    """Set ``SESSION_SETTINGS`` and then ``settings`` for the rest of ``conn``'s session, in one round trip."""
    set_settings(conn, {**SESSION_SETTINGS, **(settings or {})})


def set_settings(conn: psycopg.Connection, settings: Mapping[str, str]) -> None:
    """Set exactly ``settings`` for the rest of ``conn``'s session, in one round trip (none when empty)."""
    if settings:
        conn.execute(
            "SELECT " + ", ".join(["pg_catalog.set_config(%s, %s, false)"] * len(settings)),
            [x for kv in settings.items() for x in kv],
        )
