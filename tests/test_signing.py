"""Signed manifests: a consistent forgery passes the checksums but not the signature."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest
from helpers import copy_snapshot_folder, load_small, run_cli, snapshot_dirs, stored_file

import backupkit
from backupkit.errors import ConfigError, SnapshotDamaged
from backupkit.snapshot import manifest as mf
from backupkit.snapshot import signing
from backupkit.snapshot.verify import ensure_intact, sha256_file
from backupkit.storage import pool


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = run_cli("keygen", "--private-key", d / "sign.pem", "--public-key", d / "sign.pub")
    assert out.returncode == 0, out.stderr
    return d / "sign.pem", d / "sign.pub", out


@pytest.fixture(scope="module")
def signed(pg_server, tmp_path_factory, keys):
    """A snapshot signed through the CLI with the key from $BACKUPKIT_SIGN_KEY, and one unsigned."""
    dsn = pg_server.createdb("signing")
    load_small(dsn)
    root = tmp_path_factory.mktemp("signed")
    out = run_cli(
        "backup", "--to", root / "s", "--quiet", env={"BACKUPKIT_DSN": dsn, "BACKUPKIT_SIGN_KEY": str(keys[0])}
    )
    assert out.returncode == 0, out.stderr
    unsigned = backupkit.backup(dsn, root / "u").path
    pg_server.dropdb(dsn)
    return snapshot_dirs(root / "s")[0], unsigned


def private_copy(src, tmp_path):
    """A copy of snapshot ``src`` in repository folder ``tmp_path``, with its shared files."""
    copy = copy_snapshot_folder(src, tmp_path / src.name)
    for p in [*copy.rglob("*"), *(tmp_path / pool.POOL).rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    return copy


@pytest.fixture
def snap(signed, tmp_path):
    return private_copy(signed[0], tmp_path)


def verify_cli(snap, *extra, env=None):
    out = run_cli("verify", snap, "--json", *extra, env=env)
    return out.returncode, json.loads(out.stdout)


def forge(snap):
    """Change a data file and reseal the manifest consistently, as an attacker could.

    A shared data file is named by its hash in the pool: the forged file goes under its new
    hash's name there (the original pool file is left as it was)."""
    m = mf.read(snap)
    entry = max((f for t in m["tables"] for f in t["files"]), key=lambda f: f["bytes"])
    path = stored_file(snap, entry)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    if entry.get("shared") is True:
        path = snap.parent / pool.blob_name(hashlib.sha256(raw).hexdigest())
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    entry["bytes"], entry["sha256"] = path.stat().st_size, sha256_file(path)
    (snap / mf.MANIFEST).write_text(json.dumps(mf.seal(m), indent=2, ensure_ascii=False))
    return entry["path"]


def test_keygen_modes_and_no_secret_printed(keys):
    private, public, out = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pem = private.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    body = "".join(pem.splitlines()[1:-1])
    assert body not in out.stdout + out.stderr
    kid = signing.key_id(signing.load_public_key(public))
    assert kid in out.stdout and kid == signing.key_id(signing.load_private_key(private).public_key())


def test_keygen_never_overwrites(keys, tmp_path):
    private, _, _ = keys
    before = private.read_bytes()
    out = run_cli("keygen", "--private-key", private, "--public-key", tmp_path / "other.pub")
    assert out.returncode == 2 and "already exists" in out.stderr
    assert private.read_bytes() == before and not (tmp_path / "other.pub").exists()


def test_signed_snapshot_verifies(snap, keys):
    _, public, _ = keys
    assert (snap / mf.SIGNATURE).is_file()
    assert stat.S_IMODE((snap / mf.SIGNATURE).stat().st_mode) == 0o600
    assert mf.read(snap)["signed_by"] == signing.key_id(signing.load_public_key(public))
    code, report = verify_cli(snap, "--public-key", public, "--deep")
    assert code == 0 and report["ok"] and report["signed"] and report["signature"] == "valid"
    assert report["key_id"] == mf.read(snap)["signed_by"]
    out = run_cli("verify", snap, env={"BACKUPKIT_PUBLIC_KEY": str(public)})  # key from the environment
    assert out.returncode == 0 and f"signed: yes (key {report['key_id']})" in out.stdout
    # Without a key the signature file is expected, accepted, and said to be unchecked.
    code, report = verify_cli(snap)
    assert code == 0 and report["signature"] == "unchecked" and not report["signed"]
    assert "not checked" in run_cli("verify", snap).stdout


def test_consistent_forgery_needs_the_key(snap, keys):
    _, public, _ = keys
    forge(snap)
    code, report = verify_cli(snap)
    assert code == 0 and report["ok"], "the documented limit: checksums alone cannot see a resealed forgery"
    code, report = verify_cli(snap, "--public-key", public)
    assert code == 6 and report["signature"] == "invalid" and not report["signed"]
    assert len(report["problems"]) == 1 and "bad signature" in report["problems"][0]
    with pytest.raises(SnapshotDamaged):
        ensure_intact(snap, public_key=public)


def test_wrong_public_key_fails(snap, tmp_path):
    other = signing.keygen(tmp_path / "o.pem", tmp_path / "o.pub")
    code, report = verify_cli(snap, "--public-key", tmp_path / "o.pub")
    assert code == 6 and report["signature"] == "invalid"
    assert other in report["problems"][0] and "not by the public key given" in report["problems"][0]


def test_missing_signature(snap, signed, keys, tmp_path):
    _, public, _ = keys
    unsigned = private_copy(signed[1], tmp_path / "u")
    code, report = verify_cli(unsigned, "--public-key", public)
    assert code == 6 and report["signature"] == "missing" and "is missing" in report["problems"][0]
    code, report = verify_cli(unsigned)  # unchanged without a key
    assert code == 0 and report["signature"] == "absent"
    (snap / mf.SIGNATURE).unlink()
    assert verify_cli(snap, "--public-key", public)[0] == 6
    # The manifest says it was signed: a deleted signature shows even without the key.
    code, report = verify_cli(snap)
    assert code == 6 and report["signature"] == "missing"


def test_signature_must_be_a_plain_well_formed_file(snap, keys, tmp_path):
    _, public, _ = keys
    sig = snap / mf.SIGNATURE
    good = sig.read_bytes()
    sig.write_bytes(b"not base64!\n")
    code, report = verify_cli(snap)
    assert code == 6 and "malformed" in report["problems"][0]
    outside = tmp_path / "elsewhere.sig"
    outside.write_bytes(good)
    sig.unlink()
    os.symlink(outside, sig)
    for extra in ((), ("--public-key", public)):
        code, report = verify_cli(snap, *extra)
        assert code == 6 and not report["signed"]
        assert any("symbolic link" in p for p in report["problems"])


def test_other_stray_files_still_unexpected(snap):
    (snap / "manifest.json.sig2").write_text("x")
    code, report = verify_cli(snap)
    assert code == 6 and report["problems"] == ["unexpected file manifest.json.sig2 (not in the manifest)"]


def test_private_key_permissions_refused(keys, make_db, tmp_path):
    private, _, _ = keys
    loose = tmp_path / "loose.pem"
    shutil.copy(private, loose)
    loose.chmod(0o640)
    with pytest.raises(ConfigError, match="accessible by other users"):
        signing.load_private_key(loose)
    dsn = make_db("loose")
    out = run_cli("backup", "--to", tmp_path / "b", "--sign-key", loose, env={"BACKUPKIT_DSN": dsn})
    assert out.returncode == 2 and "chmod 600" in out.stderr
    assert private.read_text().splitlines()[1] not in out.stdout + out.stderr
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_bad_key_files(keys, tmp_path, snap):
    private, public, _ = keys
    code = run_cli("verify", snap, "--public-key", private)  # a private key where the public one goes
    assert code.returncode == 2 and "private key" in code.stderr
    assert private.read_text().splitlines()[1] not in code.stdout + code.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    junk.chmod(0o600)
    with pytest.raises(ConfigError):
        signing.load_private_key(junk)
    with pytest.raises(ConfigError):
        signing.load_public_key(junk)
    with pytest.raises(ConfigError, match="no signing key"):
        signing.load_private_key(tmp_path / "absent.pem")


def test_library_backup_signs(make_db, keys, tmp_path):
    private, public, _ = keys
    dsn = make_db("libsign")
    load_small(dsn)
    res = backupkit.backup(dsn, tmp_path / "b", sign_key=private)
    report = backupkit.verify(res.path, public_key=signing.load_public_key(public))
    assert report.ok and report.signed and res.manifest["signed_by"] == report.key_id
    data = (res.path / mf.MANIFEST).read_bytes()
    assert signing.check(data, (res.path / mf.SIGNATURE).read_bytes(), signing.load_public_key(public))
    assert not signing.check(data + b" ", (res.path / mf.SIGNATURE).read_bytes(), signing.load_public_key(public))


def test_restore_with_a_public_key_refuses_a_forgery_and_restores_the_signed_snapshot(snap, keys, make_db):
    _, public, _ = keys
    target = make_db("signed_target")
    out = run_cli("restore", snap, "--dsn", target, "-q", env={"BACKUPKIT_PUBLIC_KEY": str(public)})
    assert out.returncode == 0, out.stderr
    forged = make_db("forged_target")
    forge(snap)
    out = run_cli("restore", snap, "--dsn", forged, "--public-key", public)
    assert out.returncode == 6 and "bad signature" in out.stderr and "Traceback" not in out.stderr
    import psycopg

    with psycopg.connect(forged) as conn:  # nothing was restored from the forgery
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_a_schema_archive_swapped_after_the_signature_was_checked_is_not_restored(snap, keys, make_db, monkeypatch):
    """Someone who can write the snapshot swaps schema.dump between the check and its use:
    pg_restore reads a private copy hashed against the signed manifest, so the swap is
    refused, not restored."""
    import importlib

    import psycopg

    _, public, _ = keys
    restore_module = importlib.import_module("backupkit.recovery.job")
    real = restore_module.ensure_intact
    source = make_db("other_source")
    with psycopg.connect(source) as conn:
        conn.execute("CREATE TABLE planted (id int)")
    other = backupkit.backup(source, snap.parent / "other", progress=False)

    def check_then_swap(location, **kw):
        manifest = real(location, **kw)
        dump = snap / mf.DUMP
        dump.chmod(0o600)
        dump.write_bytes((other.path / mf.DUMP).read_bytes())  # after the check, before the use
        return manifest

    monkeypatch.setattr(restore_module, "ensure_intact", check_then_swap)
    target = make_db("swap_target")
    with pytest.raises(SnapshotDamaged) as err:
        backupkit.restore(snap, target, public_key=public, progress=False)

    assert "changed after the snapshot was verified" in str(err.value)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_a_signing_key_given_instead_of_its_path_is_never_shown(keys, tmp_path):
    """BACKUPKIT_SIGN_KEY holding the PEM itself (as a CI secret often does), not its path: one
    line says so, before anything else is done, and no line of the key is printed."""
    pem = keys[0].read_text()
    out = run_cli(
        "backup",
        "--dsn",
        "postgresql://nobody@127.0.0.1:1/none",
        "--to",
        tmp_path / "b",
        env={"BACKUPKIT_SIGN_KEY": pem},
    )
    assert out.returncode == 2, out.stderr
    assert "the signing key was given as the key itself, not as the path of a file" in out.stderr
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert body and not [line for line in body if line in out.stdout + out.stderr]
    assert not (tmp_path / "b").exists()


def test_a_key_file_whose_name_says_secret_key_is_read_as_a_file(keys, tmp_path):
    """Only key material is refused as a path, not a file named like one."""
    import shutil

    from backupkit.snapshot.signing import load_private_key

    named = tmp_path / "backup-secret-key-2024.pem"
    shutil.copy(keys[0], named)
    named.chmod(0o600)
    assert load_private_key(named) is not None
