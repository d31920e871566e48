"""Review of encryption, signing, keygen and secrets, as an operator at 3 a.m. meets them.

Real components only: the embedded PostgreSQL (``make_db``), the real command
(``run_cli``), papermill running the real notebooks as tests/test_notebooks.py does.
Each test names what a user saw before its fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import psycopg
import pyrage
import pytest
import zstandard
from helpers import load_small, run_cli
from papermill.exceptions import PapermillExecutionError
from test_notebooks import SOURCE_VAR, execute, run_records

import backupkit
from backupkit.demo.data import create_demo
from backupkit.errors import ConfigError, SnapshotDamaged
from backupkit.snapshot import encryption, signing
from backupkit.snapshot import verify as verify_module


def _secret_line(identity: Path) -> str:
    (line,) = [x for x in identity.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1")]
    return line


def _everything_written(root: Path) -> dict[str, str]:
    """{file: text} for every file under ``root`` (executed notebooks, run records, snapshots)."""
    return {str(p): p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def keys(tmp_path):
    """Two age identities (files, mode 0600) and their public keys."""
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    a, b = folder / "a.txt", folder / "b.txt"
    return a, encryption.keygen(a), b, encryption.keygen(b)


@pytest.fixture
def source(make_db):
    dsn = make_db("crsrc")
    load_small(dsn)
    return dsn


@pytest.fixture
def demo_source(make_db, home, monkeypatch):
    """A demo database whose DSN only the kernel's environment holds (``SOURCE_VAR``)."""
    dsn = make_db("crnb")
    create_demo(dsn, scale=0.02)
    monkeypatch.setenv(SOURCE_VAR, dsn)
    return dsn


# -- 1. a secret key where a public key or a path belongs is never shown ---------------------------


@pytest.mark.parametrize("spelt", ['"{key}"', "BACKUPKIT_RECIPIENTS={key}", "# public key: age1x {key}"])
def test_a_secret_key_in_the_recipients_never_reaches_the_executed_notebook(
    keys, demo_source, tmp_path, monkeypatch, spelt
):
    """``BACKUPKIT_RECIPIENTS="AGE-SECRET-KEY-1…"`` copied from a .env file with its quotes (or
    after a ``NAME=``, or a whole identity file pasted in) for the scheduled backup notebook:
    the error quoted the secret key back (or complained that ``'#'`` is no public key), and
    the executed notebook kept it in the failed cell's ``evalue``."""
    secret = _secret_line(keys[0])
    monkeypatch.setenv("BACKUPKIT_RECIPIENTS", spelt.format(key=secret))
    monkeypatch.delenv("BACKUPKIT_IDENTITY", raising=False)
    work = tmp_path / "work"
    work.mkdir()

    with pytest.raises(PapermillExecutionError) as info:
        execute("backup", work, backup_dir="bk", dsn_env=SOURCE_VAR, runs_dir="runs")

    assert info.value.ename == "ConfigError"
    assert info.value.evalue.startswith("recipients holds a secret key (AGE-SECRET-KEY-1…)")
    (record,) = run_records(work / "runs")
    assert record["status"] == "failed"
    assert not (work / "bk").exists() or not any((work / "bk").iterdir())
    for name, text in _everything_written(work).items():
        assert secret[16:] not in text.upper(), name


def test_a_dsn_in_the_recipients_is_not_quoted_back(source, tmp_path):
    """``BACKUPKIT_RECIPIENTS=$DATABASE_URL`` (the wrong variable in a cron line): the error
    quoted the DSN, password and all, into the notebook's ``evalue`` and the library's
    exception; now it says what is wrong without the value."""
    with pytest.raises(ConfigError) as info:
        backupkit.backup(source, tmp_path / "bk", recipients=["postgresql://app:hunter2secret@db.example/app"])
    assert "hunter2secret" not in str(info.value) and "db.example" not in str(info.value)
    assert "is not an age X25519 public key" in str(info.value)
    # A mistyped public key is still shown, so the user sees which one.
    with pytest.raises(ConfigError, match="recipients 'age1typo' is not an age X25519 public key"):
        backupkit.backup(source, tmp_path / "bk", recipients=["age1typo"])
    assert not (tmp_path / "bk").exists()


@pytest.mark.parametrize("spelt", ['"{key}"', "{key};", "export {key}", "{lower}"])
def test_a_secret_key_given_as_the_identity_is_never_shown(keys, source, tmp_path, monkeypatch, spelt):
    """``BACKUPKIT_IDENTITY='"AGE-SECRET-KEY-1…"'`` (the key, quoted, where its file's path
    belongs): "no age identity at "AGE-SECRET-KEY-1…"" carried the whole key in the exception
    the restore notebook shows (and keeps in its ``evalue``), and in the drill's record."""
    secret = _secret_line(keys[0])
    snap = backupkit.backup(source, tmp_path / "bk", recipients=[keys[1]], progress=False)
    value = spelt.format(key=secret, lower=secret.lower())
    target = tmp_path / "target"

    with pytest.raises(ConfigError) as info:
        backupkit.restore(snap.path, "postgresql://nobody@127.0.0.1:1/none", identity=value)
    said = f"{info.value} {info.value.hint}"
    assert "given as the key itself, not as the path of a file" in said
    assert secret[16:].upper() not in said.upper()

    monkeypatch.setenv("BACKUPKIT_IDENTITY", value)
    out = run_cli("-v", "verify", "--deep", snap.path)
    assert out.returncode == 2 and "given as the key itself" in out.stderr, out.stderr
    assert secret[16:].upper() not in (out.stdout + out.stderr).upper()
    assert not target.exists()


def test_a_pem_body_given_as_the_signing_key_is_never_shown(source, tmp_path):
    """A CI secret holding the Ed25519 key's base64 body without its PEM lines, in
    ``BACKUPKIT_SIGN_KEY``: "no signing key at MC4CAQ…" printed the private key."""
    signing.keygen(tmp_path / "s.pem", tmp_path / "s.pub")
    body = "".join(line for line in (tmp_path / "s.pem").read_text().splitlines() if not line.startswith("-----"))
    with pytest.raises(ConfigError) as info:
        signing.load_private_key(body)
    assert body not in str(info.value) and "given as the key itself" in str(info.value)
    out = run_cli("backup", "--dsn", source, "--to", tmp_path / "bk", env={"BACKUPKIT_SIGN_KEY": body})
    assert out.returncode == 2 and "given as the key itself" in out.stderr, out.stderr
    assert body[21:] not in out.stdout + out.stderr
    assert not (tmp_path / "bk").exists()


# -- 2. what the lens reads is what was verified -------------------------------------------------


def _forged_orders(snap, identity: Path, recipients: list[str]) -> bytes:
    """The stored bytes of the snapshot's orders file as someone who can write the repository
    makes them: one row instead of 20000, encrypted to the public keys the manifest names."""
    (orders,) = [t for t in snap.manifest["tables"] if t["name"] == "orders"]
    stored = (snap.path / orders["files"][0]["path"]).read_bytes()
    (key,) = encryption.load_identity(identity)
    text = zstandard.ZstdDecompressor().decompressobj().decompress(pyrage.decrypt(stored, [key]))
    forged = zstandard.ZstdCompressor().compress(text.split(b"\n", 1)[0] + b"\n")
    out = io.BytesIO()
    encryption.encrypt_blocks([forged], out, recipients)
    return out.getvalue()


def test_sql_never_reads_a_file_swapped_after_it_was_verified(keys, source, tmp_path, monkeypatch):
    """``open_snapshot(..., identity=)`` (``backupkit sql``, ``diff``, the explore notebook)
    verified the encrypted snapshot, then decrypted its files without hashing them again: an
    orders file replaced in between (anyone can encrypt to the recipients the manifest names)
    was served as the snapshot's rows, 1 order instead of 20000, with no word."""
    snap = backupkit.backup(source, tmp_path / "bk", recipients=[keys[1], keys[3]], progress=False)
    (orders,) = [t for t in snap.manifest["tables"] if t["name"] == "orders"]
    stored = snap.path / orders["files"][0]["path"]
    forged = _forged_orders(snap, keys[0], snap.manifest["encryption"]["recipients"])
    real_verify = verify_module.verify
    scratch = tmp_path / "tmp"  # where the decrypted copy is made
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def verify_then_swap(*args, **kwargs):
        report = real_verify(*args, **kwargs)
        stored.write_bytes(forged)  # after the hashes were checked, before the copy is made
        return report

    monkeypatch.setattr(verify_module, "verify", verify_then_swap)
    with pytest.raises(SnapshotDamaged, match="not the file the manifest describes") as info:
        backupkit.open_snapshot(snap.path, identity=keys[2]).sql("SELECT count(*) FROM public.orders").fetchall()
    assert info.value.problems == [f"{orders['files'][0]['path']}: checksum mismatch"]
    assert list(scratch.iterdir()) == []  # the decrypted copy is removed, forged rows and all


# -- 3. an identity file saved back from a password manager -------------------------------------


def test_an_identity_file_with_a_bom_and_crlf_restores(keys, source, tmp_path, make_db):
    """The README says to keep the identity in a password manager; saved back on a fresh
    machine by a Windows editor it starts with a byte-order mark (and has CRLF line ends):
    the restore said "line 1: not an age X25519 identity … plugin, ssh and passphrase
    identities are not supported", though the key was right."""
    snap = backupkit.backup(source, tmp_path / "bk", recipients=[keys[1]], progress=False)
    saved = tmp_path / "keys" / "from-vault.txt"
    saved.write_bytes(b"\xef\xbb\xbf" + keys[0].read_text().replace("\n", "\r\n").encode())
    saved.chmod(0o600)
    target = make_db("crbom")
    out = run_cli("restore", snap.path, "--dsn", target, "--identity", saved, "-q")
    assert out.returncode == 0, out.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (2000,)
    # Still private: the mode rule holds whatever the content.
    saved.chmod(0o644)
    out = run_cli("verify", "--deep", snap.path, "--identity", saved)
    assert out.returncode == 2 and "accessible by other users (mode 0644)" in out.stderr


# -- 4. keygen's refusal in the command's words ----------------------------------------------------


def test_keygen_same_file_twice_names_both_flags(tmp_path):
    """``keygen --private-key k.pem --public-key k.pem`` said "--private-key and public_key
    must be different files": half flag, half Python parameter."""
    out = run_cli("keygen", "--private-key", tmp_path / "k.pem", "--public-key", tmp_path / "k.pem")
    assert out.returncode == 2
    assert "error: --private-key, --public-key and --age-identity must be different files" in out.stderr, out.stderr
    assert not (tmp_path / "k.pem").exists()
    with pytest.raises(ConfigError, match="private_key and `public_key` must be different files"):
        signing.keygen(tmp_path / "k.pem", tmp_path / "k.pem")


def test_keygen_writes_nothing_when_one_of_its_files_exists(tmp_path):
    """Asked for a signing pair and an age identity whose file exists, keygen wrote the pair,
    then refused the identity: half of what was asked, and a re-run refused the pair."""
    (tmp_path / "age.txt").write_text("something of the user's\n")
    pair = ("--private-key", tmp_path / "sign.pem", "--public-key", tmp_path / "sign.pub")

    out = run_cli("keygen", *pair, "--age-identity", tmp_path / "age.txt")

    assert out.returncode == 2 and "age.txt already exists" in out.stderr and "nothing was written" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["age.txt"]
    assert (tmp_path / "age.txt").read_text() == "something of the user's\n"
    again = run_cli("keygen", *pair, "--age-identity", tmp_path / "new-age.txt")
    assert again.returncode == 0, again.stderr
    assert {"sign.pem", "sign.pub", "new-age.txt"} <= {p.name for p in tmp_path.iterdir()}


# -- 5. a file that does not decrypt: the hint leads somewhere -----------------------------------


def test_the_hint_for_a_file_that_does_not_decrypt_finds_it(keys, source, tmp_path, make_db):
    """An encrypted orders file cut short and resealed into the manifest (hashes and all): the
    restore stopped with "cannot be decrypted … hint: run `backupkit verify` on the snapshot",
    and that verify said "intact", exit 0.  The hint now names the check that finds it."""
    from backupkit.snapshot import manifest as mf

    snap = backupkit.backup(source, tmp_path / "bk", recipients=[keys[1]], progress=False)
    manifest = json.loads((snap.path / mf.MANIFEST).read_text())
    (orders,) = [t for t in manifest["tables"] if t["name"] == "orders"]
    entry = orders["files"][0]
    cut = (snap.path / entry["path"]).read_bytes()[:-200]
    (snap.path / entry["path"]).write_bytes(cut)
    entry["bytes"], entry["sha256"] = len(cut), hashlib.sha256(cut).hexdigest()
    manifest["manifest_sha256"] = mf.digest(manifest)
    (snap.path / mf.MANIFEST).write_text(json.dumps(manifest, indent=2))

    out = run_cli("restore", snap.path, "--dsn", make_db("crcut"), "--identity", keys[0], "-q")
    assert out.returncode == SnapshotDamaged.exit_code, out.stderr
    (hint,) = [line for line in out.stderr.splitlines() if line.startswith("hint: ")]
    assert "`backupkit verify --deep --identity FILE`" in hint
    # Following the hint finds the file.
    out = run_cli("verify", "--deep", "--identity", keys[0], snap.path)
    assert out.returncode == SnapshotDamaged.exit_code
    assert f"PROBLEM: {entry['path']}: cannot be decrypted" in out.stdout
