"""manifest.json: reading, validating, writing, and the self-checksum that makes accidental edits visible.

The self-checksum (``manifest_sha256``) and the per-file SHA-256 values detect
damage: bit rot, truncation, a lost or extra file, an edit not resealed.  They do
not authenticate: someone who can write the snapshot can reseal a forged one
(see ``digest``).  That needs a signature with a key kept elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import SnapshotDamaged, SnapshotError, SnapshotNotFound
from ..storage.base import NotAPlainFile, check_name
from ..storage.location import SnapshotLocation, locate
from . import formats

#: What commands accept as a snapshot: its folder, or a location in any storage.
SnapshotArg = str | os.PathLike[str] | SnapshotLocation

FORMAT = "backupkit-snapshot"
#: 2: data files in COPY's text format (1: CSV).  Older backupkits refuse a newer version.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The Ed25519 signature of manifest.json's bytes (optional; see ``backupkit.snapshot.signing``).
SIGNATURE = "manifest.json.sig"
#: A signature file larger than this is not one backupkit wrote (88 base64 characters and a newline).
MAX_SIGNATURE_BYTES = 1024
#: The folders of a snapshot: the schema (from pg_dump), the data files (from COPY) and
#: the Storage bucket files (``backup --storage-bucket``, named by their SHA-256).
SCHEMA_DIR, DATA_DIR, FILES_DIR = "schema", "data", "files"
#: The schema files inside a snapshot (kept here, free of psycopg, for readers like diff).
DUMP = "schema/schema.dump"
PRE_DATA = "schema/pre-data.sql"
POST_DATA = "schema/post-data.sql"
#: Extensions, publications, database-wide default privileges, large objects (since 2026-12).
DATABASE_DUMP = "schema/database.dump"
DATABASE_SQL = "schema/database.sql"
#: pg_cron's jobs, commands included (``pg.cron``): a schema file, encrypted like the others.
CRON_JOBS = "schema/cron_jobs.json"
#: pg_dump's post-data of the platform tables (auth, storage, realtime) a Supabase project put
#: its own policies and triggers on, kept when those schemas are not backed up (``pg.left_out``).
PLATFORM_DUMP = "schema/platform.dump"


def digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, without its own ``manifest_sha256``.

    What this self-checksum detects, and what it does not:

    * It detects accidental change: a flipped bit, a truncated or hand-edited
      manifest whose editor did not reseal it.  Together with the per-file
      ``sha256`` values it vouches for, every byte of the snapshot is covered.
    * It does NOT detect a consistent forgery.  The checksum is computed from the
      manifest alone, with no secret, so anyone who can write the snapshot can
      change a data file, put its new hash into the manifest and reseal it
      (``seal``); ``verify`` (even ``--deep``) then passes.  Only a signature
      made with a key kept away from the backups (``backup --sign-key``,
      ``verify --public-key``; see ``backupkit.snapshot.signing``) can tell such a
      snapshot from a genuine one.
    """
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """Return ``manifest`` with ``manifest_sha256`` set (see ``digest`` for what that proves)."""
    return {**manifest, "manifest_sha256": digest(manifest)}


def write(snapshot: SnapshotArg, manifest: dict) -> SnapshotLocation:
    """Write the sealed manifest into ``snapshot`` (exclusive, durable) and return where it is."""
    location = locate(snapshot)
    location.storage.write(location.key(MANIFEST), json.dumps(seal(manifest), indent=2, ensure_ascii=False).encode())
    return location


#: A manifest larger than this is not one backupkit wrote (a 10,000-table snapshot is ~30 MB).
MAX_MANIFEST_BYTES = 256 << 20


def unreadable(path: Path | str | SnapshotLocation, exc: OSError) -> SnapshotError:
    """The error for a snapshot file or folder that exists but cannot be read (exit 7)."""
    remote = str(path).startswith("s3://")
    return SnapshotError(
        f"cannot read {path}: {exc.strerror or exc}",
        hint="check the bucket, the endpoint (AWS_ENDPOINT_URL) and the credentials (AWS_* variables or a profile)"
        if remote
        else "run backupkit as a user that may read the backup directory, or fix its permissions",
    )


def read(snapshot: SnapshotArg) -> dict:
    """Load a snapshot's manifest, checking it is one and has the shape readers rely on.

    Raises ``SnapshotNotFound`` (no snapshot), ``SnapshotError`` (it cannot be read:
    permissions; or a newer backupkit wrote it), or ``SnapshotDamaged`` naming the problem (no manifest, not JSON,
    nested too deep, a wrong type or a missing key, a file path that is not a plain
    path inside the snapshot; see ``validate``).  The manifest's own checksum and the
    files' hashes are checked by ``verify``.
    """
    location = locate(snapshot)
    folder, path = str(location), location.where(MANIFEST)
    try:
        raw = location.storage.read(location.key(MANIFEST), MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        if not _exists(location):
            raise SnapshotNotFound(
                f"no snapshot at {folder}", hint="run `backupkit list DIR` to see the snapshots there"
            ) from None
        raise SnapshotDamaged(
            f"{folder} has no {MANIFEST}",
            [f"missing {MANIFEST}"],
            hint="this is not a complete snapshot; do not restore from it",
        ) from None
    except NotAPlainFile as exc:
        if exc.name == location.id and exc.what == "is not a folder":
            raise SnapshotNotFound(
                f"no snapshot at {folder}", hint="run `backupkit list DIR` to see the snapshots there"
            ) from None
        if exc.name == location.id:
            raise SnapshotDamaged(
                f"{folder} {exc.what}, not a snapshot folder", [f"{location.id} {exc.what}"]
            ) from None
        if exc.what == "is a symbolic link":
            raise SnapshotDamaged(
                f"{path} is a symbolic link",
                [f"{MANIFEST} is a symbolic link"],
                hint="a snapshot's files are never links; do not restore from it",
            ) from None
        raise SnapshotDamaged(f"{path} is not a regular file", [f"{MANIFEST} is not a regular file"]) from None
    except ValueError:
        raw = b"x" * (MAX_MANIFEST_BYTES + 1)  # larger than the limit; reported just below
    except OSError as exc:
        raise unreadable(path, exc) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise SnapshotDamaged(
            f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB", [f"{MANIFEST} is implausibly large"]
        )
    try:
        manifest = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotDamaged(f"{path} is not valid JSON: {exc}", [f"{MANIFEST} is not valid JSON ({exc})"]) from None
    except RecursionError:
        raise SnapshotDamaged(
            f"{path} is nested too deeply to be a manifest",
            [f"{MANIFEST} is nested too deeply (not a backupkit manifest)"],
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotDamaged(f"{path} is not a backupkit manifest", [f"{MANIFEST} has the wrong format"])
    version = manifest.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise SnapshotDamaged(
            f"{path}: format_version is {version!r}, not a number",
            [f"{MANIFEST}: format_version is not a whole number"],
        )
    if version > FORMAT_VERSION:
        # Not damage: every snapshot that backupkit wrote is refused alike, so "restore from
        # another snapshot" would be the wrong advice; unusable here (exit 7) until upgraded.
        raise SnapshotError(
            f"{folder} was written by a newer backupkit (format_version {version}; "
            f"this one reads up to {FORMAT_VERSION})",
            hint="upgrade backupkit (pip install -U backupkit) to read it",
        )
    problems = validate(manifest)
    if problems:
        raise SnapshotDamaged(
            f"{path} is malformed: "
            + "; ".join(problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""),
            problems,
            hint="this snapshot cannot be used; restore from another (`backupkit list DIR`)",
        )
    return manifest


def check_path(rel: object) -> str | None:
    """Why ``rel`` is not an acceptable file path in a manifest, or None when it is.

    Acceptable: a non-empty relative POSIX path whose segments are all proper names
    (``storage.base.check_name``); such a path can only name something inside the
    snapshot, and the storage refuses links when the file is opened.
    """
    return check_name(rel)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _file_problems(where: str, entries: object, data: bool, shareable: bool | None = None) -> list[str]:
    if not isinstance(entries, list):
        return [f"{MANIFEST}: {where} files are a {type(entries).__name__}, not a list"]
    problems = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problems.append(f"{MANIFEST}: {where} file #{i} is a {type(e).__name__}, not an object")
            continue
        why = check_path(e.get("path")) if "path" in e else "is missing"
        name = e["path"] if isinstance(e.get("path"), str) else f"#{i}"
        if why:
            problems.append(f"{MANIFEST}: {where} file path {e.get('path')!r} {why}")
        if not _is_count(e.get("bytes")):
            problems.append(f"{MANIFEST}: {name}: bytes is {e.get('bytes')!r}, not a size")
        sha = e.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            problems.append(f"{MANIFEST}: {name}: sha256 is {sha!r}, not a SHA-256")
        if data and "rows" in e and not _is_count(e["rows"]):
            problems.append(f"{MANIFEST}: {name}: rows is {e['rows']!r}, not a count")
        if "shared" in e and (not (data if shareable is None else shareable) or not isinstance(e["shared"], bool)):
            problems.append(f"{MANIFEST}: {name}: shared is {e['shared']!r}; only a data file may be shared (true)")
    return problems


def _storage_problems(storage: object) -> list[str]:
    """The shape of ``storage`` (bucket files): each bucket's files are file entries under
    ``files/``; one path is one content (equal files share it, never unequal ones)."""
    if storage is None:
        return []
    buckets = storage.get("buckets") if isinstance(storage, dict) else None
    if not isinstance(buckets, list) or not all(
        isinstance(b, dict) and isinstance(b.get("name"), str) for b in buckets
    ):
        return [f"{MANIFEST}: storage.buckets is not a list of named buckets"]
    problems: list[str] = []
    by_path: dict[str, tuple[object, object]] = {}
    for b in buckets:
        files = b.get("files")
        problems += _file_problems(f"bucket {b['name']}", files, data=False, shareable=True)
        for f in files if isinstance(files, list) and not problems else []:
            if not (isinstance(f.get("key"), str) and f["path"].startswith(FILES_DIR + "/")):
                problems.append(f"{MANIFEST}: bucket {b['name']}: {f['path']} has no key or is not under {FILES_DIR}/")
            elif by_path.setdefault(f["path"], (f["sha256"], f["bytes"])) != (f["sha256"], f["bytes"]):
                problems.append(f"{MANIFEST}: {f['path']} is listed with two different contents")
    return problems


def _role_settings_problems(settings: object) -> list[str]:
    """The shape of ``role_settings`` (when present): for each scope, settings by role and name, all strings."""
    if settings is None:
        return []
    scopes = ("all_databases", "this_database")
    if isinstance(settings, dict) and all(
        isinstance(by_role := settings.get(scope), dict)
        and all(
            isinstance(role, str)
            and isinstance(values, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
            for role, values in by_role.items()
        )
        for scope in scopes
    ):
        return []
    return [f"{MANIFEST}: role_settings is not settings by role and name for all_databases and this_database"]


def _database_settings_problems(settings: object) -> list[str]:
    """The shape of ``database_settings`` (when present): settings by name, all strings."""
    if settings is None or (
        isinstance(settings, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in settings.items())
    ):
        return []
    return [f"{MANIFEST}: database_settings is not settings by name"]


def _cron_jobs_problems(jobs: object) -> list[str]:
    """The shape of ``cron_jobs`` (when present): jobs with a name (or null) and the strings
    and flag a restore reads."""
    if jobs is None:
        return []
    if isinstance(jobs, list) and all(
        isinstance(j, dict)
        and (j.get("name") is None or isinstance(j.get("name"), str))
        and all(isinstance(j.get(k), str) for k in ("schedule", "database", "username"))
        and isinstance(j.get("active"), bool)
        for j in jobs
    ):
        return []
    return [f"{MANIFEST}: cron_jobs is not a list of jobs with schedule, database, username and active"]


def _left_on_platform_problems(left: object) -> list[str]:
    """The shape of ``left_on_platform`` (when present): objects of four strings, and an
    integer ``oid`` where recorded."""
    keys = ("kind", "name", "schema", "table")

    def good(i: object) -> bool:
        if not (isinstance(i, dict) and all(isinstance(i.get(k), str) for k in keys)):
            return False
        oid = i.get("oid", 0)
        return isinstance(oid, int) and not isinstance(oid, bool)

    if left is None or (isinstance(left, list) and all(map(good, left))):
        return []
    return [f"{MANIFEST}: left_on_platform is not a list of objects with kind, name, schema and table"]


def validate(manifest: dict) -> list[str]:
    """Every way ``manifest`` lacks the shape readers rely on (empty when it has it).

    Checked: ``created_at`` an ISO time; ``tables`` a list of objects with string
    ``schema``/``name``, a count ``rows`` and a list ``files``; ``schema_files`` (when
    present) a list; every file entry an object with a contained ``path`` (``check_path``),
    a size ``bytes``, a hex ``sha256`` and, for data files, an optional count ``rows``;
    no path listed twice; ``encryption`` (when present) of a scheme this backupkit reads;
    ``role_settings`` (when present) strings by scope, role and setting name;
    ``database_settings`` (when present) strings by setting name; ``cron_jobs`` and
    ``left_on_platform`` (when present) of the shapes ``model.CronJob`` and
    ``model.PlatformObject`` describe.
    Called by ``read``, so list, verify, restore, diff, sql and prune all refuse the same
    malformed manifests the same way.
    """
    from . import encryption  # lazily: it imports this module

    problems = encryption.problems(manifest)
    created = manifest.get("created_at")
    try:
        datetime.fromisoformat(created)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        problems.append(f"{MANIFEST}: created_at is {created!r}, not a time")
    problems += _file_problems("schema", manifest.get("schema_files", []), data=False)
    tables = manifest.get("tables")
    if not isinstance(tables, list):
        return problems + [
            f"{MANIFEST}: tables is {'missing' if tables is None else type(tables).__name__}, not a list"
        ]
    for i, t in enumerate(tables):
        if not isinstance(t, dict):
            problems.append(f"{MANIFEST}: table #{i} is a {type(t).__name__}, not an object")
            continue
        if not (isinstance(t.get("schema"), str) and isinstance(t.get("name"), str)):
            problems.append(f"{MANIFEST}: table #{i} has no schema and name")
            continue
        key = table_key(t)
        if not _is_count(t.get("rows")):
            problems.append(f"{MANIFEST}: {key}: rows is {t.get('rows')!r}, not a count")
        if t.get("data_format", formats.DEFAULT.name) not in formats.FORMATS:
            problems.append(f"{MANIFEST}: {key}: unknown data_format {t.get('data_format')!r}")
        problems += _file_problems(key, t.get("files"), data=True)
    problems += _storage_problems(manifest.get("storage"))
    problems += _role_settings_problems(manifest.get("role_settings"))
    problems += _database_settings_problems(manifest.get("database_settings"))
    problems += _cron_jobs_problems(manifest.get("cron_jobs"))
    problems += _left_on_platform_problems(manifest.get("left_on_platform"))
    if not problems:
        paths = [e["path"] for e in all_files(manifest)]
        dupes = sorted({p for p in paths if paths.count(p) > 1}) if len(set(paths)) != len(paths) else []
        problems += [f"{MANIFEST}: {p} is listed twice" for p in dupes]
    return problems


def _exists(location: SnapshotLocation) -> bool:
    try:
        location.storage.stat(location.id)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def open_file(snapshot: SnapshotArg, rel: str) -> BinaryIO:
    """Open file ``rel`` of a snapshot for reading, refusing anything but a plain file inside.

    The storage opens the name without following a link anywhere (a linked ``data``
    folder, a linked file), so nothing outside the snapshot is opened or even looked
    at: the error never says anything about the file a link or path points to.
    Raises ``SnapshotDamaged`` (path not contained, link, not a regular file,
    missing) or ``SnapshotError`` (permissions).
    """
    location = locate(snapshot)
    why = check_path(rel)
    if why:
        raise SnapshotDamaged(f"file path {rel!r} {why}", [f"file path {rel!r} {why}"])
    try:
        return location.storage.open(location.stored(rel))
    except FileNotFoundError:
        raise SnapshotDamaged(f"missing file {rel}", [f"missing file {rel}"]) from None
    except NotAPlainFile as exc:
        where = exc.name.split("/", 1)[1] if exc.name.startswith(location.id + "/") else exc.name
        kind = exc.what if exc.what in ("is a symbolic link", "is not a folder") else "not a regular file"
        msg = (
            f"{rel}: {where} {kind}; snapshot files must be plain files inside the snapshot"
            if kind != "not a regular file"
            else f"{rel}: not a regular file"
        )
        raise SnapshotDamaged(msg, [msg]) from None
    except OSError as exc:
        raise unreadable(location.where(rel), exc) from None


def read_member(snapshot: SnapshotArg, rel: str, limit: int) -> bytes | None:
    """The bytes of plain file ``rel`` of a snapshot, or None when it is absent.

    ``SnapshotDamaged`` when it is a link, not a regular file, or larger than
    ``limit``; ``SnapshotError`` when it cannot be read, or is encrypted (an age file:
    ``encryption.not_for_lens``; readers of plain text cannot decrypt it).
    """
    location = locate(snapshot)
    try:
        f = open_file(location, rel)
    except SnapshotDamaged as exc:
        if exc.problems == [f"missing file {rel}"]:
            return None
        raise
    try:
        with f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise unreadable(location.where(rel), exc) from None
    if len(data) > limit:
        raise SnapshotDamaged(f"{rel} is implausibly large", [f"{rel} is implausibly large"])
    from . import encryption  # lazily: it imports this module

    if encryption.is_sealed(data):  # the plain text a caller wants is not here without a key
        raise encryption.not_for_lens(location)
    return data


def table_key(table: dict) -> str:
    """``schema.name`` of a manifest table entry."""
    return f"{table['schema']}.{table['name']}"


def bucket_files(manifest: dict) -> list[dict]:
    """The Storage bucket files the manifest vouches for, one entry per stored file: files of
    equal content (their one ``files/<sha256>``) count once."""
    seen: dict[str, dict] = {}
    for b in (manifest.get("storage") or {}).get("buckets", []):
        for f in b.get("files", []):
            seen.setdefault(f["path"], f)
    return list(seen.values())


def all_files(manifest: dict) -> list[dict]:
    """Every file entry (schema, data and bucket files) the manifest vouches for."""
    files = list(manifest.get("schema_files", []))
    for t in manifest.get("tables", []):
        files.extend(t.get("files", []))
    return files + bucket_files(manifest)
