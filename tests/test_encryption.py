"""Client-side encryption to age public keys: a host with only the public key cannot read what it wrote.

A real backup of a database with distinctive strings planted in rows, a function body, a
column default and a large object: none of them is in any stored byte of the encrypted
snapshot; ``verify`` checks it without a key and catches a flipped byte; restore with the
identity is exact (fingerprint), without it or with another key it stops with one line
saying what to pass; an unencrypted backup is as before.
"""

from __future__ import annotations

import gc
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import duckdb
import psycopg
import pyrage
import pytest
from fingerprint import diff_fingerprints, fingerprint
from helpers import load_small, run_cli
from psycopg import sql as pgsql

import backupkit
from backupkit.errors import ConfigError, SnapshotDamaged, SnapshotError
from backupkit.lens.duck import glob_escape, ident
from backupkit.snapshot import encryption
from backupkit.snapshot import manifest as mf
from backupkit.snapshot.datafile import iter_blocks

TAG = secrets.token_hex(6)
#: Planted in the source, one per place a value can hide; none may be stored in the clear.
SECRETS = {
    "row": f"ROWSECRET{TAG}",
    "function": f"FUNCSECRET{TAG}",
    "default": f"DEFAULTSECRET{TAG}",
    "large object": f"LOBSECRET{TAG}",
}
PLANT = f"""
CREATE TABLE vault (id int PRIMARY KEY, v text, w text DEFAULT '{SECRETS["default"]}');
INSERT INTO vault (id, v) SELECT i, '{SECRETS["row"]}-' || i FROM generate_series(1, 500) i;
CREATE FUNCTION whisper() RETURNS text LANGUAGE sql AS $$ SELECT '{SECRETS["function"]}' $$;
SELECT lo_from_bytea(0, convert_to('{SECRETS["large object"]}', 'UTF8'));
"""


def no_secret_in(snapshot) -> dict[str, list[str]]:
    """{stored file: the secrets its bytes contain}, for every file of the snapshot folder."""
    found = {}
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits = [k for k, v in SECRETS.items() if v.encode() in data]
            if hits:
                found[str(path.relative_to(snapshot))] = hits
    return found


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(identity file, its recipient) and a second, unrelated identity file."""
    d = tmp_path_factory.mktemp("keys")
    recipient = encryption.keygen(d / "age.txt")
    encryption.keygen(d / "other.txt")
    return d / "age.txt", recipient, d / "other.txt"


@pytest.fixture(scope="module")
def source(pg_server):
    dsn = pg_server.createdb("encsrc")
    load_small(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute(PLANT)
    yield dsn
    pg_server.dropdb(dsn)


@pytest.fixture(scope="module")
def sealed(source, keys, tmp_path_factory):
    """An encrypted snapshot of the source."""
    return backupkit.backup(source, tmp_path_factory.mktemp("enc"), recipients=[keys[1]], progress=False)


@pytest.fixture(scope="module")
def plain(source, tmp_path_factory):
    """The same database backed up without encryption."""
    return backupkit.backup(source, tmp_path_factory.mktemp("plain"), progress=False)


@pytest.fixture
def damaged(sealed, tmp_path):
    """A private copy of the encrypted snapshot, to damage."""
    copy = tmp_path / sealed.path.name
    shutil.copytree(sealed.path, copy)
    for p in copy.rglob("*"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    return copy


def one_error(out) -> str:
    """The error line of a failed command; it failed with exactly one, and no traceback."""
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and all(line.startswith(("error:", "hint:")) for line in lines), out.stderr
    return errors[0]


def test_no_stored_byte_holds_a_value(sealed, plain, keys):
    m = sealed.manifest
    assert m["encryption"] == {"scheme": "age", "recipients": [keys[1]]}
    assert m["large_objects"] and any(t["name"] == "vault" for t in m["tables"])
    assert no_secret_in(sealed.path) == {}
    # Every file but the manifest is an age file; the manifest vouches for the stored bytes.
    for entry in mf.all_files(m):
        data = (sealed.path / entry["path"]).read_bytes()
        assert data.startswith(encryption.MAGIC), entry["path"]
        assert len(data) == entry["bytes"]
    assert {p.name for p in sealed.path.iterdir() if p.is_file()} == {mf.MANIFEST}
    # The search can find them: the plain backup stores the schema's in the clear.
    found = no_secret_in(plain.path)
    assert {"function", "default"} <= {k for hits in found.values() for k in hits}, found


def test_an_unencrypted_backup_is_unchanged(plain):
    assert "encryption" not in plain.manifest
    for entry in mf.all_files(plain.manifest):
        with mf.open_file(plain.path, entry["path"]) as f:  # where it is stored (a data file may be shared)
            assert not f.read(len(encryption.MAGIC)).startswith(encryption.MAGIC)
    assert backupkit.verify(plain.path, deep=True).ok
    assert backupkit.verify(plain.path).encrypted_to is None


def test_verify_needs_no_key(sealed, keys):
    report = backupkit.verify(sealed.path)
    assert report.ok and report.files == len(mf.all_files(sealed.manifest))
    assert report.encrypted_to == [keys[1]]
    out = run_cli("verify", sealed.path, env={"BACKUPKIT_IDENTITY": ""})
    assert out.returncode == 0, out.stderr
    assert "intact" in out.stdout and f"encrypted: yes (age, to {keys[1]})" in out.stdout
    # Recounting rows decrypts: with the identity it passes, without it one line says what to pass.
    assert backupkit.verify(sealed.path, deep=True, identity=keys[0]).ok
    out = run_cli("verify", "--deep", "--identity", keys[0], sealed.path)
    assert out.returncode == 0 and "rows recounted" in out.stdout, out.stderr
    with pytest.raises(ConfigError, match="pass `identity`"):
        backupkit.verify(sealed.path, deep=True)
    out = run_cli("verify", "--deep", sealed.path, env={"BACKUPKIT_IDENTITY": ""})
    assert out.returncode == ConfigError.exit_code
    assert "is encrypted" in one_error(out) and "`--identity`" in out.stderr


def test_verify_with_an_identity_that_cannot_open_the_snapshot_says_so(sealed, keys):
    """`verify --identity KEY` is how an operator asks "can this key restore it?": with another
    key it answered "intact", exit 0, and the restore at 3 a.m. found out."""
    with pytest.raises(ConfigError, match="cannot decrypt"):
        backupkit.verify(sealed.path, identity=keys[2])
    out = run_cli("verify", "--identity", keys[2], sealed.path)
    assert out.returncode == ConfigError.exit_code and "cannot decrypt" in one_error(out), out.stdout
    assert backupkit.verify(sealed.path, identity=keys[0]).ok
    assert run_cli("verify", "--identity", keys[0], sealed.path).returncode == 0
    # After a key rotation the host's $BACKUPKIT_IDENTITY is the new key: the nightly hash
    # check of a snapshot encrypted to the old one still passes (the variable is for --deep).
    rotated = run_cli("verify", sealed.path, env={"BACKUPKIT_IDENTITY": str(keys[2])})
    assert rotated.returncode == 0 and "intact" in rotated.stdout, rotated.stderr


def test_verify_catches_a_flipped_byte_without_a_key(damaged, sealed):
    entry = max((f for t in sealed.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    path = damaged / entry["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = backupkit.verify(damaged)
    assert not report.ok and any(entry["path"] in p and "checksum" in p for p in report.problems)
    out = run_cli("verify", damaged)
    assert out.returncode == SnapshotDamaged.exit_code and entry["path"] in out.stdout


def test_a_changed_file_is_caught_while_it_streams(damaged, sealed, keys):
    """iter_blocks hashes the stored bytes before decrypting them: a byte flipped after verify
    (or a file replaced by another age file) stops the read with SnapshotDamaged."""
    entry = max((f for t in sealed.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    location = encryption.unlock(damaged, sealed.manifest, keys[0])
    assert sum(len(b) for b in iter_blocks(location, entry["path"], entry["sha256"])) == entry["text_bytes"]
    path = damaged / entry["path"]
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotDamaged, match="checksum mismatch"):
        for _ in iter_blocks(location, entry["path"], entry["sha256"]):
            pass
    # Read without the identity, an encrypted file is refused, never taken for zstd.
    with pytest.raises(ConfigError, match="is encrypted"):
        next(iter_blocks(damaged, entry["path"]))


def test_restore_with_the_identity_is_exact(sealed, source, keys, make_db):
    target = make_db("encdst")
    res = backupkit.restore(sealed.path, target, identity=keys[0], progress=False)
    assert res.rows == sealed.rows
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT whisper()").fetchone() == (SECRETS["function"],)
        lob = conn.execute("SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata").fetchall()
        assert lob == [(SECRETS["large object"],)]


def test_parallel_restore_by_the_command(sealed, source, keys, make_db):
    target = make_db("encpar")
    out = run_cli("restore", sealed.path, "--dsn", target, "--jobs", "2", "-q", env={"BACKUPKIT_IDENTITY": keys[0]})
    assert out.returncode == 0, out.stderr
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


def tables_in(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert row is not None
        return int(row[0])


def test_restore_without_or_with_the_wrong_identity(sealed, keys, make_db, tmp_path):
    target = make_db("encno")
    with pytest.raises(ConfigError, match="is encrypted.*pass `identity`"):
        backupkit.restore(sealed.path, target)
    out = run_cli("restore", sealed.path, "--dsn", target, env={"BACKUPKIT_IDENTITY": ""})
    assert out.returncode == ConfigError.exit_code
    line = one_error(out)
    assert f"snapshot {sealed.id} is encrypted" in line and "pass `--identity`" in line
    # Another key: named, with the recipients it would need.
    with pytest.raises(ConfigError, match="cannot decrypt"):
        backupkit.restore(sealed.path, target, identity=keys[2])
    out = run_cli("restore", sealed.path, "--dsn", target, "--identity", keys[2])
    assert out.returncode == ConfigError.exit_code
    line = one_error(out)
    assert line.startswith(f"error: --identity {keys[2]} cannot decrypt") and keys[1] in line
    # An identity file others may read is refused, like a signing key.
    loose = tmp_path / "loose.txt"
    shutil.copy(keys[0], loose)
    loose.chmod(0o644)
    out = run_cli("restore", sealed.path, "--dsn", target, "--identity", loose)
    assert out.returncode == ConfigError.exit_code and "accessible by other users" in one_error(out)
    # A public key where the identity belongs: said so, and no secret is ever shown.
    pub = tmp_path / "pub.txt"
    pub.write_text(keys[1] + "\n")
    pub.chmod(0o600)
    out = run_cli("restore", sealed.path, "--dsn", target, "--identity", pub)
    assert out.returncode == ConfigError.exit_code and "a public key" in one_error(out)
    secret = next(line for line in keys[0].read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    assert tables_in(target) == 0
    assert secret not in out.stderr + out.stdout


def test_the_lens_refuses_an_encrypted_snapshot(sealed, plain):
    for args in (("sql", sealed.path, "select 1"), ("diff", plain.path, sealed.path)):
        out = run_cli(*args, env={"BACKUPKIT_IDENTITY": ""})
        assert out.returncode == SnapshotError.exit_code, out.stderr
        assert "is encrypted" in one_error(out) and "read encrypted snapshots only with `--identity`" in out.stderr


def test_diff_and_integrity_read_an_encrypted_snapshot_with_the_identity(sealed, plain, keys, tmp_path):
    """The same database backed up plain and encrypted: with the identity the diff finds no change
    and the integrity checks pass; the decrypted copies are gone afterwards."""
    from backupkit.lens.diff import diff_snapshots
    from backupkit.lens.integrity import integrity

    before = set(Path(tempfile.gettempdir()).glob("backupkit-plain-*"))
    d = diff_snapshots(plain.path, sealed.path, identity=keys[0])
    assert d["same"] is True and d["totals"] == {"inserted": 0, "deleted": 0, "updated": 0}
    assert integrity(sealed.path, identity=keys[0])["ok"] is True
    out = run_cli("diff", plain.path, sealed.path, "--identity", keys[0], "--html", tmp_path / "r.html", "--exit-code")
    assert out.returncode == 0, out.stderr
    assert set(Path(tempfile.gettempdir()).glob("backupkit-plain-*")) == before  # no plain data left behind
    wrong = run_cli("diff", plain.path, sealed.path, "--identity", keys[2])
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr


#: The session settings backups write with, so PostgreSQL's ::text is what the files hold.
SESSION = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3"


def source_rows(dsn: str, table: dict) -> list[tuple]:
    """Every row of a manifest table in the database, each value as PostgreSQL's text."""
    cols = pgsql.SQL(", ").join(pgsql.SQL("{}::text").format(pgsql.Identifier(c)) for c in table["copy_columns"])
    query = pgsql.SQL("SELECT {} FROM {}").format(cols, pgsql.Identifier(table["schema"], table["name"]))
    with psycopg.connect(dsn) as conn:
        conn.execute(SESSION)
        return conn.execute(query).fetchall()


def in_order(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: [(v is None, "" if v is None else str(v)) for v in r])


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    """The temporary directory this process (``tempfile``) and the commands it runs (``$TMPDIR``)
    use, so that what scratch space is left behind can be seen."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    monkeypatch.setenv("TMPDIR", str(where))
    return where


def plain_copies(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("backupkit-plain-*"))


def test_open_snapshot_reads_an_encrypted_snapshot_with_the_identity(sealed, source, keys, tmp):
    """Exactly the source's rows, through a sandbox that reads the decrypted copy's files only;
    the copy is gone once the connection is closed."""
    con = backupkit.open_snapshot(sealed.path, raw=True, identity=keys[0])
    (copy,) = plain_copies(tmp)
    assert copy.stat().st_mode & 0o777 == 0o700
    tables = [t for t in sealed.manifest["tables"] if t["copy_columns"]]
    assert {t["name"] for t in tables} >= {"vault", "customers", "orders"}
    for t in tables:
        view = f"{ident(t['schema'])}.{ident(t['name'])}"
        got = con.sql(f"SELECT * FROM {view}").fetchall()
        assert len(got) == t["rows"] and in_order(got) == in_order(source_rows(source, t)), view
    # The sandbox allows exactly the copy's data files; the stored (age) files are out of reach.
    files = [str(copy / sealed.id / f["path"]) for t in sealed.manifest["tables"] for f in t["files"]]
    (allowed,) = con.sql("SELECT current_setting('allowed_paths')").fetchall()[0]
    assert set(allowed) == set(files) | {glob_escape(f) for f in files}
    stored = sealed.path / sealed.manifest["tables"][0]["files"][0]["path"]
    with pytest.raises(duckdb.PermissionException):
        con.sql(f"SELECT * FROM read_blob('{stored}')").fetchall()
    con.close()
    assert list(tmp.iterdir()) == []  # no plain data left, nor DuckDB's spill folder
    with pytest.raises(duckdb.ConnectionException):
        con.sql("SELECT 1").fetchall()
    con.close()  # twice is harmless

    # Typed views, in a with block.
    with backupkit.open_snapshot(sealed.path, identity=str(keys[0])) as con:
        got = con.sql("SELECT count(*), min(v) FROM public.vault WHERE v LIKE 'ROWSECRET%'").fetchall()
        assert got == [(500, f"{SECRETS['row']}-1")]
    assert plain_copies(tmp) == []
    # Dropped without close(): gone with the last reference to the connection (a relation's, a cursor's).
    for make in (lambda c: c, lambda c: c.cursor()):
        rel = make(backupkit.open_snapshot(sealed.path, identity=keys[0])).sql("SELECT count(*) FROM public.orders")
        gc.collect()
        assert rel.fetchall() == [(20000,)] and len(plain_copies(tmp)) == 1
        del rel
        gc.collect()
        assert plain_copies(tmp) == []


def test_open_snapshot_leaves_no_plain_data_behind(sealed, keys, damaged, tmp, tmp_path):
    """On an error while opening, and at the end of a process that never closed the connection."""
    with pytest.raises(ConfigError, match="cannot decrypt snapshot"):
        backupkit.open_snapshot(sealed.path, identity=keys[2])
    with pytest.raises(ConfigError, match="is encrypted: `identity` does not combine with `external_access`"):
        backupkit.open_snapshot(sealed.path, identity=keys[0], external_access=True)
    with pytest.raises(SnapshotError, match="read encrypted snapshots only with `identity`"):
        backupkit.open_snapshot(sealed.path)
    entry = max((f for t in sealed.manifest["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    data = bytearray((damaged / entry["path"]).read_bytes())
    data[len(data) // 2] ^= 0x01
    (damaged / entry["path"]).write_bytes(bytes(data))
    with pytest.raises(SnapshotDamaged, match="does not verify"):
        backupkit.open_snapshot(damaged, identity=keys[0])
    assert list(tmp.iterdir()) == []
    script = (
        "import sys, backupkit\n"
        "con = backupkit.open_snapshot(sys.argv[1], identity=sys.argv[2])\n"
        "print(con.sql('SELECT count(*) FROM public.vault').fetchall()[0][0], flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(sealed.path), str(keys[0])], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "500", out.stderr
    assert list(tmp.iterdir()) == []


def test_sql_reads_an_encrypted_snapshot_with_the_identity(sealed, source, keys, tmp):
    orders = next(t for t in sealed.manifest["tables"] if t["name"] == "orders")
    with psycopg.connect(source) as conn:
        total, count = conn.execute("SELECT sum(total)::text, count(*) FROM orders").fetchone()
    assert count == orders["rows"]
    query = "SELECT 'sum=' || sum(total)::VARCHAR || ',n=' || count(*) AS answer FROM public.orders"
    for how in ({"args": ("--identity", keys[0])}, {"env": {"BACKUPKIT_IDENTITY": str(keys[0])}}):
        out = run_cli("sql", sealed.path, query, *how.get("args", ()), env=how.get("env"))
        assert out.returncode == 0, out.stderr
        assert f"sum={total},n={count}" in out.stdout, out.stdout
        assert plain_copies(tmp) == []
    # Another key: one line naming the option, exit 2 (bad arguments); nothing decrypted is left.
    out = run_cli("sql", sealed.path, query, "--identity", keys[2])
    assert out.returncode == ConfigError.exit_code
    line = one_error(out)
    assert line.startswith(f"error: --identity {keys[2]} cannot decrypt snapshot {sealed.id}") and keys[1] in line
    out = run_cli("sql", sealed.path, query, "--identity", keys[0], "--external-access")
    assert out.returncode == ConfigError.exit_code
    assert "`--identity` does not combine with `--external-access`" in one_error(out)
    assert list(tmp.iterdir()) == []


def test_the_explore_notebook_reads_an_encrypted_snapshot_with_the_identity(sealed, keys, tmp, tmp_path):
    import nbformat
    import papermill

    notebooks = Path(__file__).parent.parent / "notebooks"
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(
        str(notebooks / "explore.ipynb"),
        str(out),
        parameters={
            "backup_dir": str(sealed.path.parent),
            "identity": str(keys[0]),
            "table": "public.vault",
            "sql": "SELECT count(*) AS n, min(v) AS first FROM public.vault",
        },
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
    )
    book = nbformat.read(out, as_version=4)
    shown = {
        c.source: "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in c.outputs)
        for c in book.cells
        if c.cell_type == "code"
    }
    assert sealed.id in shown["snap = nb.pick_snapshot(backup_dir, snapshot)\nsnap"]
    assert "vault" in shown["nb.snapshot_tables(snap, identity=identity)"]
    answer = shown["nb.query(snap, sql, limit=limit, identity=identity)"]
    assert "500" in answer and f"{SECRETS['row']}-1" in answer, answer
    # The explorer's widgets (their state is saved with the notebook) preview the rows, no error.
    assert "VBox" in shown["nb.explorer(backup_dir, snap, table=table, sql=sql, limit=limit, identity=identity)"]
    widgets = json.dumps(book.metadata.get("widgets", {}))
    assert f"{SECRETS['row']}-1" in widgets and "color:#b00" not in widgets
    assert plain_copies(tmp) == []  # the explorer's copy went with the kernel


def test_decrypt_into_scratch_for_the_lens(sealed, keys, tmp_path):
    """What the lens will call: the plain bytes of a file in private scratch space."""
    from backupkit.storage.scratch import scratch

    location = encryption.unlock(sealed.path, sealed.manifest, keys[0])
    with scratch() as tmp:
        sql = encryption.decrypt_into(location, mf.PRE_DATA, tmp).read_text()
        assert SECRETS["default"] in sql and SECRETS["function"] in sql
    with encryption.local_path(location, mf.DUMP) as dump:
        assert dump.read_bytes().startswith(b"PGDMP")
    assert not dump.exists()


def test_keygen_and_recipients_on_the_command_line(source, tmp_path, keys):
    identity = tmp_path / "k.txt"
    out = run_cli("keygen", "--age-identity", identity)
    assert out.returncode == 0, out.stderr
    recipient = out.stdout.strip()
    assert recipient.startswith("age1") and (identity.stat().st_mode & 0o777) == 0o600
    secret = [line for line in identity.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1")]
    assert len(secret) == 1 and secret[0] not in out.stdout + out.stderr
    assert f"# public key: {recipient}" in identity.read_text()
    assert run_cli("keygen", "--age-identity", identity).returncode == ConfigError.exit_code  # never overwritten
    assert run_cli("keygen").returncode == ConfigError.exit_code
    # --recipient (repeatable), or $BACKUPKIT_RECIPIENTS with spaces or commas between keys.
    repo = tmp_path / "repo"
    out = run_cli("backup", "--dsn", source, "--to", repo, "-q", "--recipient", recipient, "--recipient", keys[1])
    assert out.returncode == 0, out.stderr
    snap = mf.read(out.stdout.strip())
    assert snap["encryption"]["recipients"] == [recipient, keys[1]]
    out = run_cli(
        "backup", "--dsn", source, "--to", repo, "-q", env={"BACKUPKIT_RECIPIENTS": f" {recipient}, {keys[1]}"}
    )
    assert out.returncode == 0, out.stderr
    assert mf.read(out.stdout.strip())["encryption"]["recipients"] == [recipient, keys[1]]
    # A malformed key, or a secret key given as a recipient, stops before anything is written.
    out = run_cli("backup", "--dsn", source, "--to", tmp_path / "no", "--recipient", "age1nope")
    assert out.returncode == ConfigError.exit_code and one_error(out).startswith("error: --recipient 'age1nope'")
    out = run_cli("backup", "--dsn", source, "--to", tmp_path / "no", "--recipient", secret[0])
    assert out.returncode == ConfigError.exit_code and "secret key" in one_error(out)
    assert secret[0] not in out.stderr and not (tmp_path / "no").exists()


def test_an_encrypted_snapshot_on_s3(source, keys, s3_bucket, make_db):
    repo = f"s3://{s3_bucket}/enc"
    res = backupkit.backup(source, repo, recipients=[keys[1]], progress=False)
    assert backupkit.verify(res.location).ok
    assert backupkit.verify(res.location, deep=True, identity=keys[0]).ok
    target = make_db("encs3")
    backupkit.restore(res.location, target, identity=keys[0], progress=False)
    a, b = fingerprint(source), fingerprint(target)
    assert a == b, "\n".join(diff_fingerprints(a, b)[:40])


def test_streams_in_bounded_memory():
    """Encrypting 64 MiB of frames and reading them back holds a few MiB at most."""
    identity = pyrage.x25519.Identity.generate()
    block = os.urandom(1 << 20)

    class Null:  # stores nothing
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    try:
        size, _ = encryption.encrypt_blocks((block for _ in range(64)), Null(), [str(identity.to_public())])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 64 << 20 and peak < 8 << 20, peak
    # And back: the decrypting thread hands the bytes over through a pipe of 64 KiB.
    out = io.BytesIO()
    encryption.encrypt_blocks((block for _ in range(16)), out, [str(identity.to_public())])
    out.seek(0)
    tracemalloc.start()
    try:
        with encryption.open_plain(out, [identity], "data/x") as reader:
            total = 0
            while chunk := reader.read(1 << 20):
                total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 16 << 20 and peak < 8 << 20, peak


def test_library_errors_say_what_to_pass(sealed, tmp_path):
    with pytest.raises(ConfigError, match="recipients 'nope'"):
        backupkit.backup("postgresql://localhost/none", tmp_path / "r", recipients=["nope"])
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="no age identity at"):
        backupkit.restore(sealed.path, "postgresql://localhost/none", identity=tmp_path / "missing.txt")
    manifest = json.loads((sealed.path / mf.MANIFEST).read_text())
    manifest["encryption"]["scheme"] = "rot13"
    assert any("rot13" in p for p in mf.validate(manifest))


def test_a_key_given_instead_of_its_path_is_never_shown(sealed, keys):
    """CI and Kubernetes often put the secret itself in a variable: BACKUPKIT_IDENTITY holding the
    age secret key, not the path of its file.  The error says so in one line, and neither it nor
    the monitor's ping carries the key."""
    from monitor import Monitor

    secret = next(line for line in keys[0].read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    monitor = Monitor()
    try:
        out = run_cli("drill", sealed.path, "--notify", f"{monitor.url}/ping/k", env={"BACKUPKIT_IDENTITY": secret})
    finally:
        monitor.close()
    assert out.returncode == ConfigError.exit_code, out.stderr
    assert "given as the key itself, not as the path of a file" in one_error(out)
    sent = " ".join(body for _, body in monitor.requests)
    assert "/ping/k/fail" in [path for path, _ in monitor.requests]
    assert secret[20:] not in out.stdout + out.stderr + sent
    assert not (sealed.path.parent / ".drills").exists()  # the caller's mistake, not a failed drill on record
