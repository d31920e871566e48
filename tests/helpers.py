"""Small helpers shared by tests: run the CLI as a user would, build a small database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

SMALL_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                        mood mood, tags text[], meta jsonb, created timestamptz DEFAULT now());
CREATE TABLE orders (id serial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     total numeric(12,2), note text, doubled numeric GENERATED ALWAYS AS (total * 2) STORED);
CREATE TABLE "Odd ""Name"".x" (a int, b text);
INSERT INTO customers (name, mood, tags, meta)
  SELECT 'c' || i, (ARRAY['sad','ok','happy'])[1 + i % 3]::mood, ARRAY['a,b', NULL, 'q"'],
         jsonb_build_object('i', i) FROM generate_series(1, 2000) i;
INSERT INTO orders (customer_id, total, note)
  SELECT 1 + i % 2000, (i % 1000) / 7.0, CASE WHEN i % 5 = 0 THEN '' WHEN i % 7 = 0 THEN NULL ELSE E'n\\n' || i END
  FROM generate_series(1, 20000) i;
INSERT INTO "Odd ""Name"".x" VALUES (1, 'dup'), (1, 'dup'), (NULL, NULL);
"""


def run_sql(dsn: str, script: str) -> None:
    """Run ``script`` (one or more statements, no parameters) in its own autocommit session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


def sql_rows(dsn: str, query: str) -> list[tuple]:
    """The rows of ``query``, read in a session of its own."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def load_small(dsn: str) -> None:
    """A small database with awkward names and values (used by backup/verify tests)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(SMALL_SCHEMA)


def run_cli(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m backupkit ARGS`` in a subprocess, as a user would run the command."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("BACKUPKIT_DSN", "DATABASE_URL", "SUPABASE_DB_URL")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "backupkit", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=600,
    )


def snapshot_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` that look like snapshots (not hidden)."""
    return (
        sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
        if Path(root).exists()
        else []
    )


def wait_for(predicate, seconds: float, every: float = 0.02):
    """``predicate()`` once it is true, or its last value after ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(every)


def stored_file(snapshot: Path, rel: str | dict) -> Path:
    """Where the bytes of file ``rel`` (a path in the manifest, or its entry) of a local snapshot
    are: in the snapshot's folder, or in the repository's pool when the file is shared
    (``backupkit.storage.pool``).  Tests damage snapshots through this path."""
    from backupkit.storage.location import locate

    rel = rel["path"] if isinstance(rel, dict) else rel
    snapshot = Path(snapshot)
    return snapshot.parent / locate(snapshot).stored(rel)


def copy_snapshot_folder(snapshot: Path, dest: Path) -> Path:
    """``shutil.copytree`` of a snapshot folder to ``dest``, with the shared data files it refers
    to copied into the pool of ``dest``'s repository: a private copy that can be damaged
    without touching the original or its repository's pool."""
    import shutil

    from backupkit.snapshot import manifest as mf
    from backupkit.storage.pool import referenced

    snapshot, dest = Path(snapshot), Path(dest)
    shutil.copytree(snapshot, dest)
    for name in referenced(mf.read(snapshot)):
        target = dest.parent / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(snapshot.parent / name, target)
    return dest


class TcpProxy:
    """A TCP proxy on 127.0.0.1 (``url``) to the server at ``endpoint`` (``http://host:port``):
    each connection it accepts is served by ``serve`` in a thread of its own.  Real sockets."""

    def __init__(self, endpoint: str):
        host, port = endpoint.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        """Pass one client connection on to ``target`` (the subclass's behaviour)."""
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()
