"""What a command imports: only what its run uses.  At a small database's size, start-up is
most of a backup or a restore (benchmarks/RESULTS.md), so a key, a notification, a progress
bar or S3 costs their imports only to the runs that use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg

#: Imported only by the runs that need them: signing keys, notifications, progress bars, S3, SQL.
OPTIONAL = ("cryptography", "urllib.request", "tqdm", "boto3", "botocore", "duckdb")

_RUN = """
import json, sys
from backupkit.cli.run import main
sys.argv = ["backupkit", *sys.argv[1:]]
try:
    code = main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in OPTIONAL if m in sys.modules)}))
""".replace("OPTIONAL", repr(OPTIONAL))


def _imports(*args: str, dsn: str) -> dict:
    env = {**os.environ, "BACKUPKIT_DSN": dsn}
    for name in ("BACKUPKIT_SIGN_KEY", "BACKUPKIT_PUBLIC_KEY", "BACKUPKIT_NOTIFY", "BACKUPKIT_RECIPIENTS"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_plain_backup_and_restore_import_nothing_they_do_not_use(make_db, tmp_path):
    source, target = make_db(), make_db()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g")
    backup = _imports("backup", "--jobs", "2", "-q", "--to", str(tmp_path), dsn=source)
    assert backup == {"code": 0, "loaded": []}
    (snapshot,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    restore = _imports("restore", str(snapshot), "--jobs", "2", "-q", dsn=target)
    assert restore == {"code": 0, "loaded": []}
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)


def test_the_installed_executable_is_the_command_entry_point():
    # ``command`` is ``main`` plus the exit that skips shutdown's collections; the script
    # pip installs must call it, or every run pays them again.
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "backupkit"]
    assert script.value == "backupkit.cli:command"
    out = subprocess.run(
        [sys.executable, "-c", "from backupkit.cli import command; command()", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith("backupkit ")
