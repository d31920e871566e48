"""The snapshot model (backupkit/snapshot/model.py) is what backups write, and docs/snapshot-format.md is made from it."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import psycopg
import pytest

import backupkit
from backupkit.snapshot import encryption, format_doc, model, signing
from backupkit.snapshot import manifest as mf

ROOT = Path(__file__).parent.parent
FIDELITY_SQL = Path(__file__).with_name("fidelity.sql")


def test_snapshot_format_doc_is_current():
    assert (ROOT / "docs" / "snapshot-format.md").read_text() == format_doc.format_markdown(), (
        "docs/snapshot-format.md is stale: python -c 'from backupkit.snapshot.format_doc import format_markdown; "
        'print(format_markdown(), end="")\' > docs/snapshot-format.md'
    )


def test_every_field_has_a_meaning():
    classes = model.models()
    assert classes[0] is model.Manifest
    # Every TypedDict of the module is reachable from Manifest, so every one is in the docs.
    assert {v for v in vars(model).values() if model.is_model(v)} == set(classes)
    for cls in classes:
        assert (cls.__doc__ or "").strip(), f"model.{cls.__name__} has no docstring"
        assert model.fields(cls), f"model.{cls.__name__} has no fields"
        for f in model.fields(cls):
            assert f.meaning.strip(), f"model.{cls.__name__}.{f.name} has no meaning"
            assert format_doc.type_text(f.type)


def test_optional_keys():
    """What may be absent: written only when signed, or missing from older snapshots."""
    optional = {(cls.__name__, f.name) for cls in model.models() for f in model.fields(cls) if not f.required}
    assert optional == {
        ("Manifest", k)
        for k in (
            "extensions",
            "publications",
            "default_privileges",
            "large_objects",
            "roles",
            "role_settings",
            "database_settings",
            "cron_jobs",
            "left_on_platform",
            "encryption",
            "object_lock",
            "signed_by",
            "storage",
        )
    } | {("Table", "data_format"), ("DataFile", "text_bytes"), ("DataFile", "text_hash"), ("DataFile", "shared")} | {
        ("BucketFile", "shared"),
        ("PlatformObject", "oid"),  # absent in snapshots of 2026-12-07 without schema/platform.dump
    }


def problems(value: object, tp: object, where: str, seen: set[tuple[str, str]]) -> list[str]:
    """Every way ``value`` (parsed JSON) differs from model type ``tp``; keys met are added to ``seen``."""
    if model.is_model(tp):
        assert isinstance(tp, type)
        if not isinstance(value, dict):
            return [f"{where}: a {type(value).__name__}, not a {tp.__name__} object"]
        declared = {f.name: f for f in model.fields(tp)}
        out = [f"{where}: key {k!r} is not in model.{tp.__name__}" for k in value if k not in declared]
        out += [
            f"{where}: required key {f.name!r} of model.{tp.__name__} is missing"
            for f in declared.values()
            if f.required and f.name not in value
        ]
        for k, v in value.items():
            if k in declared:
                seen.add((tp.__name__, k))
                out += problems(v, declared[k].type, f"{where}.{k}", seen)
        return out
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: a {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in problems(item, args[0], f"{where}[{i}]", seen)]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: a {type(value).__name__}, not an object"]
        return [p for k, item in value.items() for p in problems(item, args[1], f"{where}.{k}", seen)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return [] if type(None) in args else [f"{where}: null, not {format_doc.type_text(tp)}"]
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return problems(value, members[0], where, seen)
        results = [problems(value, m, where, seen) for m in members]
        return [] if any(not r for r in results) else [f"{where}: {value!r:.80} is not {format_doc.type_text(tp)}"]
    if origin is typing.Literal:
        return [] if value in args else [f"{where}: {value!r:.80} is not {format_doc.type_text(tp)}"]
    ok = {
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        type(None): value is None,
    }
    if tp not in ok:
        return [f"{where}: the test cannot check type {tp!r}"]
    return [] if ok[tp] else [f"{where}: {value!r:.80} is not {format_doc.type_text(tp)}"]


@pytest.fixture(scope="module")
def written(pg_server, tmp_path_factory) -> dict:
    """manifest.json of a signed, encrypted backup of the fidelity fixture (with the table entry of an
    unencrypted backup of one table added, whose file is shared): partitions, inheritance, enums,
    domains, identity and generated columns, foreign keys, indexes, forced RLS, sequences owned and
    free-standing, materialized views, extensions, publications, default privileges, large objects, roles."""
    dsn = pg_server.createdb("model")
    root = tmp_path_factory.mktemp("model")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FIDELITY_SQL.read_text())
        signing.keygen(root / "sign.pem", root / "sign.pub")
        res = backupkit.backup(
            dsn,
            root / "backups",
            schemas=["public", "ext", "Odd Schema.v1"],
            exclude=["public.wide_table"],
            label="model",
            sign_key=root / "sign.pem",
            recipients=[encryption.keygen(root / "age.txt")],
        )
        # Unencrypted, the data files go to the repository's pool: the entries say "shared".
        plain = backupkit.backup(dsn, root / "plain", tables=["public.measurements_2024"])
    finally:
        pg_server.dropdb(dsn)
    manifest = json.loads((res.path / mf.MANIFEST).read_text())
    manifest["tables"] += json.loads((plain.path / mf.MANIFEST).read_text())["tables"]
    return manifest


def test_written_manifest_is_the_model(written):
    seen: set[tuple[str, str]] = set()
    assert problems(written, model.Manifest, "manifest", seen) == []
    # ... and the model has no key a backup does not write (the fixture makes every one appear).
    declared = {(cls.__name__, f.name) for cls in model.models() for f in model.fields(cls)}
    # object_lock needs an S3 bucket with Object Lock: tests/test_object_lock.py checks it against the model.
    s3_only = {("Manifest", "object_lock")} | {("ObjectLock", f.name) for f in model.fields(model.ObjectLock)}
    # storage needs a Storage endpoint: tests/test_buckets.py checks it against the model.
    s3_only |= {("Manifest", "storage")} | {
        (cls.__name__, f.name)
        for cls in (model.Buckets, model.Bucket, model.BucketFile, model.BucketSettings, model.Mismatch)
        for f in model.fields(cls)
    }
    # cron_jobs needs pg_cron: tests/test_cron_jobs.py checks it against the model.
    s3_only |= {("Manifest", "cron_jobs")} | {("CronJob", f.name) for f in model.fields(model.CronJob)}
    # left_on_platform needs a Supabase project: tests/test_supabase_restore.py checks it against the model.
    s3_only |= {("Manifest", "left_on_platform")} | {
        ("PlatformObject", f.name) for f in model.fields(model.PlatformObject)
    }
    assert sorted(declared - seen - s3_only) == []
    # The fixture does reach the cases the docs describe.
    tables = {mf.table_key(t): t for t in written["tables"]}
    assert tables["public.measurements_2024"]["is_partition"] and tables["public.inh_child"]["parent"]
    assert tables["public.rls_secret"]["rls"]["forced"]
    assert any(c["enum"] for t in tables.values() for c in t["columns"])
    assert any(c["generated"] for t in tables.values() for c in t["columns"])
    assert {s["owned_by"] is None for s in written["sequences"]} == {True, False}
    assert {d["schema"] is None for d in written["default_privileges"]} == {True, False}


def test_model_catches_what_it_does_not_know(written):
    """The check above would fail on an invented key, a missing one, or a wrong type."""
    broken = json.loads(json.dumps(written))
    broken["kind"] = "table"
    broken["tables"][0]["kind"] = "table"
    del broken["tables"][0]["rows"]
    broken["tables"][0]["columns"][0]["identity"] = "x"
    broken["sequences"][0]["last_value"] = True
    found = problems(broken, model.Manifest, "manifest", set())
    assert len(found) == 5, found
    # An old (version 1) snapshot lacks the optional keys and still fits.
    old = json.loads(json.dumps(written))
    for k in ("extensions", "publications", "default_privileges", "large_objects", "roles", "encryption", "signed_by"):
        del old[k]
    for t in old["tables"]:
        del t["data_format"]
        for f in t["files"]:
            del f["text_bytes"]
    assert problems(old, model.Manifest, "manifest", set()) == []


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("cron_jobs", [{"name": 1}], "cron_jobs is not a list of jobs"),
        ("cron_jobs", "nightly", "cron_jobs is not a list of jobs"),
        ("left_on_platform", ['trigger "t" on auth.users'], "left_on_platform is not a list of objects"),
        ("left_on_platform", [{"kind": "policy", "name": "p", "schema": "storage"}], "left_on_platform is not"),
    ],
)
def test_a_malformed_new_key_is_a_manifest_problem_not_a_crash(written, key, value, problem):
    """A restore reads these keys: a manifest whose shape is wrong is refused as such, like any."""
    broken = {**json.loads(json.dumps(written)), key: value}
    added = set(mf.validate(broken)) - set(mf.validate(written))
    assert [p for p in added if problem in p] == list(added) != [], added
