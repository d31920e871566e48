"""Arguments that name a place (a repository, a snapshot, a file to write), checked before a
command touches anything: an empty argument, a mistyped URL, or a snapshot's folder given
where a repository belongs must fail in one line, not be written into."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from ..errors import BackupkitError, ConfigError, SnapshotNotFound
from ..snapshot.manifest import FORMAT, MANIFEST
from ..storage.base import Storage
from ..storage.local import LocalStorage
from ..storage.location import open_storage, scheme_of
from ..storage.repository import holds_repository

#: Per command, its arguments that name a repository (``dest``: how the user knows it).
REPOSITORIES = {
    "backup": {"to": "--to"},
    "check": {"to": "--to"},
    "demo": {"to": "--to"},
    "list": {"dir": "REPO"},
    "prune": {"dir": "REPO"},
    "status": {"repository": "REPO"},
    "copy": {"source": "SRC", "target": "DST"},
}
#: Per command, its arguments that name a snapshot (or a repository, for its newest).
SNAPSHOTS = {
    "verify": {"snapshot": "SNAPSHOT"},
    "restore": {"snapshot": "SNAPSHOT"},
    "sql": {"snapshot": "SNAPSHOT"},
    "pin": {"snapshot": "SNAPSHOT"},
    "unpin": {"snapshot": "SNAPSHOT"},
    "diff": {"old": "OLD", "new": "NEW"},
    "drill": {"repository": "REPO"},
}
#: Per command, its options that name a file it writes, or a folder or file it reads.
FILES = {
    "diff": {"html": "--html", "identity": "--identity"},
    "sql": {"identity": "--identity"},
    "status": {"runs": "--runs"},
    "backup": {"sign_key": "--sign-key"},
    "verify": {"public_key": "--public-key", "identity": "--identity"},
    "restore": {"public_key": "--public-key", "identity": "--identity"},
    "drill": {"identity": "--identity"},
    "keygen": {"private_key": "--private-key", "public_key": "--public-key", "age_identity": "--age-identity"},
}
_KEYS = {"sign_key", "public_key", "identity", "private_key", "age_identity"}

_EMPTY_HINT = "an unset shell variable gives an empty argument: check the variable, or write the value out"
#: "s3:/bucket", "s3:bucket", "file:/tmp/x": a URL short of its "//", else a local folder named "s3:".
_MISTYPED_URL = re.compile(r"(?i)(s3|file):(?!//)")
#: How a snapshot's folder is named (``storage.repository.new_id``).
_SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z(-|$)")


def check(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, an argument that names no place or the wrong kind of place."""
    command = args.command
    for dest, shown in REPOSITORIES.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            _repository(os.fspath(value), shown)
    for dest, shown in SNAPSHOTS.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            _snapshot(os.fspath(value), shown)
    for dest, shown in FILES.get(command, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            _file(dest, os.fspath(value), shown)
    if command == "prune":
        _no_repository_inside(os.fspath(args.dir))
    if getattr(args, "dsn", None) is not None and not args.dsn.strip():
        # An unset "$TARGET" must never fall through to $BACKUPKIT_DSN: for restore, the source.
        raise ConfigError("--dsn is empty", hint=_EMPTY_HINT + "; leave --dsn out to use $BACKUPKIT_DSN")


def _named(text: str, shown: str) -> None:
    """An argument that is empty or a URL short of its ``//``."""
    if not text.strip():
        raise ConfigError(f"{shown} is empty", hint=_EMPTY_HINT)
    if _MISTYPED_URL.match(text):
        raise ConfigError(
            f"{shown} {text!r} is neither a folder nor a URL",
            hint="write s3://bucket/prefix or file:///path (two slashes after the colon), or ./name for a folder",
        )


def _repository(text: str, shown: str) -> None:
    _named(text, shown)
    found = holding_snapshot(text)
    if found is None:
        return
    snapshot, exactly = found
    raise ConfigError(
        f"{shown} {text} {'is a snapshot' if exactly else f'is inside snapshot {snapshot}'}, not a backup directory",
        hint=f"give the directory that holds the snapshots: {_parent(snapshot)}",
    )


def _snapshot(text: str, shown: str) -> None:
    _named(text, shown)
    found = holding_snapshot(text)
    if found is not None and not found[1]:
        raise SnapshotNotFound(
            f"{shown} {text} is inside snapshot {found[0]}, not a snapshot",
            hint=f"give the snapshot's folder: {found[0]}",
        )


def _file(dest: str, text: str, shown: str) -> None:
    """A file to write (``--html``), a folder to read (``--runs``) or a key file."""
    if not text.strip():
        raise ConfigError(f"{shown} is empty", hint=_EMPTY_HINT)
    found = holding_snapshot(text) if dest == "html" else None
    if found is not None:
        raise ConfigError(
            f"{shown} {text} is inside snapshot {found[0]}: writing there would damage it",
            hint="write the report outside the snapshots' folders",
        )
    if dest == "runs" and not Path(text).is_dir():
        raise ConfigError(
            f"{shown} {text} is not a folder: no run record can be read there",
            hint="give the runs_dir the scheduled notebooks write their run records to",
        )
    if dest in _KEYS and Path(text).is_dir():
        raise ConfigError(f"{shown} {text} is a folder, not a key file", hint="give the key file's path")


def _no_repository_inside(text: str) -> None:
    """Refuse to prune ``s3://bucket`` when its snapshots are in ``s3://bucket/prod``: a prefix
    without a manifest is an interrupted upload there, and prune removes such once stale."""
    try:
        storage = open_storage(text)
        entries = storage.list()
    except (OSError, BackupkitError):
        return  # prune itself says why it cannot read there
    for entry in entries:
        if entry.kind != "dir" or entry.name.startswith(".") or _SNAPSHOT_ID.match(entry.name):
            continue  # a snapshot's name: no request per snapshot to tell
        if not _exists(storage, f"{entry.name}/{MANIFEST}") and holds_repository(storage, entry.name):
            inner = storage.where(entry.name)
            raise ConfigError(
                f"REPO {text} holds another backup directory, {inner}: prune takes one backup directory at a time",
                hint=f"prune each backup directory by its own path: backupkit prune {inner}",
            )


def _exists(storage: Storage, name: str) -> bool:
    try:
        storage.stat(name)
    except OSError:
        return False
    return True


def holding_snapshot(text: str) -> tuple[str, bool] | None:
    """The snapshot (its folder or URL) that ``text`` names or lies inside, and whether ``text``
    names it exactly; None when there is none.  A snapshot is a folder, or an ``s3://`` prefix,
    holding a manifest.  What cannot be looked at counts as no snapshot: the command itself
    then says why it cannot read there."""
    scheme = scheme_of(text)
    if scheme == "s3":
        return _s3_snapshot(text)
    if scheme not in (None, "file"):
        return None
    given = Path(unquote(urlsplit(text).path)) if scheme == "file" else Path(text)
    path = Path(os.path.abspath(given))
    for n, folder in enumerate((path, *path.parents)):
        try:
            if (folder / MANIFEST).is_file() and _is_manifest(LocalStorage(folder), MANIFEST):
                shown = folder if given.is_absolute() else Path(os.path.relpath(folder))
                return str(shown), n == 0
        except OSError:
            continue
    return None


#: How every manifest backupkit writes begins (``"format"`` is its first key).
_FORMAT_KEY = re.compile(rb'"format"\s*:\s*"' + re.escape(FORMAT.encode()) + rb'"')


def _is_manifest(storage: Storage, name: str) -> bool:
    """Whether file ``name`` is a backupkit manifest: a folder that holds some other
    ``manifest.json`` (a web app's, a container image's) is no snapshot."""
    with storage.open(name) as f:
        return _FORMAT_KEY.search(f.read(64 << 10)) is not None


def _s3_snapshot(text: str) -> tuple[str, bool] | None:
    parts = urlsplit(text)
    names = PurePosixPath(unquote(parts.path).strip("/"))
    if not parts.netloc or str(names) == ".":
        return None
    try:
        storage = open_storage(f"s3://{parts.netloc}")
        for n, prefix in enumerate((names, *list(names.parents)[:-1])):
            try:
                name = f"{prefix}/{MANIFEST}"
                if storage.stat(name).kind == "file" and _is_manifest(storage, name):
                    return f"s3://{parts.netloc}/{prefix}", n == 0
            except FileNotFoundError:
                continue
    except (OSError, BackupkitError):
        return None
    return None


def _parent(snapshot: str) -> str:
    if scheme_of(snapshot) == "s3":
        return snapshot.rsplit("/", 1)[0]
    return os.path.dirname(snapshot) or "."
