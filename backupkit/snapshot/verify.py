"""Checking a snapshot against its manifest: every byte hashed, nothing missing, nothing extra."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import zstandard

from ..errors import ConfigError, SnapshotDamaged, SnapshotNotFound
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from . import encryption, formats
from . import manifest as mf
from .datafile import count_rows_in, file_sha256
from .encryption import IdentityArg
from .formats import DataFormat

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_READ = 1 << 20
#: The most parallel workers (``--jobs``) any command accepts.  A fixed cap rather than one
#: relative to this machine's CPUs: the work is mostly PostgreSQL's and the disk's, each job
#: holds a server connection (max_connections is often 100, fewer behind Supabase's pooler),
#: and a cap that changed from machine to machine would make a scheduled job fail elsewhere.
MAX_JOBS = 64
#: Files checked at once by size alone (``quick``, or a snapshot just written to S3), and
#: files downloaded and hashed at once from a remote storage: both wait on round trips.
REMOTE_THREADS = 16


@dataclass
class VerifyReport:
    """The outcome of verifying one snapshot; ``ok`` is False when ``problems`` is not empty."""

    snapshot: SnapshotLocation
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    deep: bool = False
    #: ``manifest.json.sig``: "valid" (checked with the public key given), "invalid" (bad,
    #: malformed or by another key), "missing" (a public key was given but there is no
    #: signature), "unchecked" (present, no public key given), "absent" (none, none asked for).
    signature: str = "absent"
    #: Id of the public key a valid signature was checked with (``signing.key_id``).
    key_id: str | None = None
    #: The age recipients an encrypted snapshot's files are encrypted to; None: not encrypted.
    encrypted_to: list[str] | None = None
    #: Where ``storage.objects`` and the Storage bucket files differed at backup time
    #: (``model.Mismatch``): facts about the source project, not damage to the snapshot.
    storage_mismatches: list[dict] = field(default_factory=list)
    #: The manifest every check was made against (None when it could not be read): the one a
    #: caller acting on a verified snapshot must use, not a copy read again afterwards.
    manifest: dict | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def signed(self) -> bool:
        """True only when the signature was checked and is good."""
        return self.signature == "valid"

    def to_dict(self) -> dict:
        return {
            "snapshot": str(self.snapshot),
            "ok": self.ok,
            "problems": self.problems,
            "files": self.files,
            "bytes": self.bytes,
            "deep": self.deep,
            "signed": self.signed,
            "signature": self.signature,
            "key_id": self.key_id,
            "encrypted_to": self.encrypted_to,
            "storage_mismatches": self.storage_mismatches,
        }


#: Hex SHA-256 of a file, read in 1 MiB blocks (one implementation, in datafile).
sha256_file = file_sha256


def _sha256_stream(f: BinaryIO) -> tuple[str, int]:
    """Hex SHA-256 and length of what ``f`` reads."""
    h = hashlib.sha256()
    n = 0
    while block := f.read(_READ):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def _check_file(
    location: SnapshotLocation,
    entry: dict,
    rows: int | None,
    data_format: DataFormat = formats.DEFAULT,
    rehash: bool = True,
    confirmed: Mapping[str, int] | None = None,
) -> list[str]:
    # open_file refuses links and paths leading outside before anything is read or
    # even stat-ed there, so a problem never discloses the size of a file elsewhere.
    rel = entry["path"]
    if not rehash:
        return _check_size(location, entry, confirmed or {})
    try:
        f = mf.open_file(location, rel)
    except SnapshotDamaged as exc:
        return exc.problems or [str(exc)]
    problems = []
    with f:
        try:
            sha, size = _sha256_stream(f)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise mf.unreadable(location.where(rel), exc) from None
            return [f"{rel}: cannot be read ({exc.strerror or exc})"]
    if size != entry["bytes"]:
        problems.append(f"{rel}: {size} bytes, manifest says {entry['bytes']} (truncated or grown)")
    if sha != entry["sha256"]:
        problems.append(f"{rel}: checksum mismatch (the file's content changed)")
    if rows is not None and not problems:
        try:
            found = count_rows_in(location, rel, data_format)
        except zstandard.ZstdError as exc:
            return [f"{rel}: cannot be decompressed ({exc})"]
        except SnapshotDamaged as exc:  # an encrypted file that does not decrypt
            return exc.problems or [str(exc)]
        except OSError as exc:
            raise mf.unreadable(location.where(rel), exc) from None
        if found != rows:
            problems.append(f"{rel}: {found} rows, manifest says {rows}")
    return problems


def _check_size(location: SnapshotLocation, entry: dict, confirmed: Mapping[str, int]) -> list[str]:
    """The file is there, a plain file of the manifest's size (its bytes were checked when
    written); the size of a ``confirmed`` name is the one its writer saw stored."""
    rel = entry["path"]
    if why := mf.check_path(rel):
        return [f"{rel!r}: {why}"]
    name = location.stored(rel)
    if name in confirmed:
        size = confirmed[name]
        return [] if size == entry["bytes"] else [f"{rel}: {size} bytes, manifest says {entry['bytes']}"]
    try:
        found = location.storage.stat(name)
    except FileNotFoundError:
        return [f"{rel}: missing"]
    except OSError as exc:
        raise mf.unreadable(location.where(rel), exc) from None
    if found.kind != "file":
        return [f"{rel}: not a plain file"]
    if found.size != entry["bytes"]:
        return [f"{rel}: {found.size} bytes, manifest says {entry['bytes']} (truncated or grown)"]
    return []


def _walk_problems(location: SnapshotLocation, listed: set[str]) -> list[str]:
    """Links, special files and files the manifest does not list, found without following links."""
    problems = []
    prefix = location.key() + "/"
    try:
        for entry in location.storage.walk(location.key()):
            rel = entry.name[len(prefix) :]
            if entry.kind == "link":
                # The target is never looked at: whether it exists says nothing we may disclose.
                problems.append(
                    f"{rel} is a symbolic link (a snapshot holds no links; dangling or not, "
                    "it is not the snapshot's own)"
                )
            elif entry.kind == "other":
                problems.append(f"{rel} is not a regular file (a device, socket or pipe)")
            elif entry.kind == "file" and rel not in (mf.MANIFEST, mf.SIGNATURE) and rel not in listed:
                problems.append(f"unexpected file {rel} (not in the manifest)")
    except OSError as exc:
        raise mf.unreadable(location.where(), exc) from None
    return problems


def check_jobs(jobs: int | None) -> int | None:
    """``jobs`` if it is a sane number of parallel workers (1 to ``MAX_JOBS``); else ConfigError."""
    if jobs is None:
        return None
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(
            f"jobs {jobs!r} is out of range: use 1 to {MAX_JOBS}",
            hint="each job is a process with its own PostgreSQL connection; a few per CPU core is plenty",
        )
    return jobs


def _check_signature(
    location: SnapshotLocation, m: dict, public_key: Ed25519PublicKey | None, report: VerifyReport
) -> None:
    """Fill ``report.signature`` and add problems: see ``verify``."""
    sig_name = mf.SIGNATURE
    try:
        sig = mf.read_member(location, sig_name, mf.MAX_SIGNATURE_BYTES)
    except SnapshotDamaged as exc:
        report.problems.extend(exc.problems or [str(exc)])
        report.signature = "invalid"
        return
    signed_by = m.get("signed_by")
    if sig is None:
        if public_key is not None:
            report.signature = "missing"
            report.problems.append(
                f"{sig_name} is missing: the snapshot is not signed, so it cannot be shown to be genuine"
            )
        elif signed_by:
            report.signature = "missing"
            report.problems.append(f"{sig_name} is missing, but the manifest says it was signed (key {signed_by})")
        return
    from . import signing  # cryptography only for signed snapshots

    if signing.parse_signature(sig) is None:
        report.signature = "invalid"
        report.problems.append(f"{sig_name} is malformed (not a base64 Ed25519 signature)")
        return
    if public_key is None:
        report.signature = "unchecked"
        return
    manifest_bytes = mf.read_member(location, mf.MANIFEST, mf.MAX_MANIFEST_BYTES)
    kid = signing.key_id(public_key)
    try:
        same = manifest_bytes is not None and json.loads(manifest_bytes.decode()) == m
    except (ValueError, UnicodeDecodeError, RecursionError):
        same = False
    if same and manifest_bytes is not None and signing.check(manifest_bytes, sig, public_key):
        report.signature, report.key_id = "valid", kid
        return
    report.signature = "invalid"
    if not same:
        report.problems.append(f"{mf.MANIFEST} changed while it was being verified")
    elif signed_by and signed_by != kid:
        report.problems.append(
            f"{sig_name}: the manifest says it was signed by key {signed_by}, "
            f"not by the public key given ({kid}); the signature does not verify"
        )
    else:
        report.problems.append(
            f"{sig_name}: bad signature: {mf.MANIFEST} is not what key {kid} signed (forged or altered)"
        )


def verify(
    snapshot: mf.SnapshotArg,
    *,
    deep: bool = False,
    jobs: int | None = None,
    public_key: Ed25519PublicKey | str | Path | None = None,
    identity: IdentityArg | None = None,
    written: bool = False,
    quick: bool = False,
    confirmed: Mapping[str, int] | None = None,
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Re-hash every file of ``snapshot`` against its manifest (and with ``deep``, recount rows).

    Returns a report instead of raising, so callers can show every problem at once.
    Problems include a malformed manifest, file paths that are not plain relative
    paths inside the snapshot, symbolic links anywhere in it (to files or folders,
    dangling or not), special files, and files the manifest does not list.

    What passing proves: every file is byte-for-byte what the manifest says, and the
    manifest is as written (its self-checksum matches) — i.e. no accidental damage.
    It does not prove the snapshot is genuine: someone able to write the snapshot
    can change files and reseal the manifest consistently (``manifest.digest``).

    That is what ``public_key`` is for (a PEM file path or an ``Ed25519PublicKey``; see
    ``backupkit.snapshot.signing``): then ``manifest.json.sig`` must be that key's signature of
    ``manifest.json``'s exact bytes; a missing, malformed or bad signature is a problem,
    a good one sets ``report.signature = "valid"`` (``report.signed``).  Without
    ``public_key`` a signature file is accepted (it must be a plain, well-formed file
    inside the snapshot) but not checked: ``report.signature == "unchecked"``.  A
    bad key file raises ``ConfigError`` before anything is read.

    ``written=True`` is for the writer of a snapshot, right after writing it: on a storage
    that checked a digest of every body it accepted (``Storage.verified_writes``: S3) the
    files are checked by presence and size, and their hashes are the ones computed while
    writing, instead of downloading everything again; elsewhere it changes nothing.

    An encrypted snapshot (see ``backupkit.snapshot.encryption``) is checked without any
    key: the hashes are of the stored, encrypted bytes.  Only ``deep`` (recounting rows
    means decrypting) needs ``identity``, an age identity file of one of its recipients;
    without it, or with another key, ``deep`` raises ``ConfigError`` before anything is
    hashed.  An ``identity`` given without ``deep`` is checked all the same (ConfigError when
    it is not one of the recipients).  ``report.encrypted_to`` lists the recipients.

    ``quick=True`` checks every file's presence and size only, not its hash (what a monitor
    can afford at every poll; ``status`` uses it).

    ``confirmed`` (with ``written``, on a storage with ``verified_writes``): storage names
    and sizes the caller saw stored while writing (a backup's own data files: each write
    succeeded with its digest checked, or found the pool's file holding those bytes by its ETag); they are
    compared with the manifest instead of asking the storage again, a request each.

    ``stop`` (set by another thread): the files not checked yet are skipped, each a problem,
    so a verification cut short never passes.

    Raises ``SnapshotNotFound`` when there is no folder and ``SnapshotError`` when a
    file or folder of the snapshot cannot be read (permissions): an unreadable
    snapshot is not known to be damaged, and neither is it known to be intact.
    """
    location = locate(snapshot)
    jobs = check_jobs(jobs)
    if isinstance(public_key, (str, Path)):
        from .signing import load_public_key

        public_key = load_public_key(public_key)
    try:
        kind = location.storage.stat(location.id).kind
    except FileNotFoundError:
        kind = None
    except OSError as exc:
        raise mf.unreadable(location.where(), exc) from None
    if kind not in ("dir", "link"):
        raise SnapshotNotFound(f"no snapshot at {location}", hint="run `backupkit list DIR` to see the snapshots")
    report = VerifyReport(location, deep=deep)
    try:
        m = mf.read(location)
    except SnapshotDamaged as exc:
        report.problems.extend(exc.problems or [str(exc)])
        return report
    report.manifest = m
    report.encrypted_to = encryption.recipients_of(m)
    report.storage_mismatches = list((m.get("storage") or {}).get("mismatches", []))
    if deep:  # recounting rows reads them: an encrypted snapshot's need its identity
        location = encryption.unlock(location, m, identity)
    elif identity is not None:
        # Not needed to hash the stored bytes, but given: "intact" must not read as "and this
        # key opens it" when it does not.
        encryption.check_identity(location, m, identity)
    if m.get("manifest_sha256") != mf.digest(m):
        report.problems.append("manifest.json was edited after the backup (its checksum does not match)")
    # mf.read validated the shape: every entry has a contained path, a size and a hash.
    entries = [(e, None, formats.DEFAULT) for e in m.get("schema_files", [])]
    for t in m["tables"]:
        entries += [(f, f.get("rows") if deep else None, formats.of(t)) for f in t["files"]]
    entries += [(f, None, formats.DEFAULT) for f in mf.bucket_files(m)]
    # A shared data file lives in the repository's pool: in the folder it would be unexpected.
    listed = {e["path"] for e, _, _ in entries if e.get("shared") is not True}
    rehash = not quick and not (written and location.storage.verified_writes and not deep)
    # Hashing local files is bound by CPU; a stat, or anything on S3, by round trips.
    local = rehash and isinstance(location.storage, LocalStorage)
    workers = jobs or (min(4, os.cpu_count() or 1) if local else REMOTE_THREADS)
    with ThreadPoolExecutor(workers) as pool:

        def check(e: tuple[dict, int | None, DataFormat]) -> list[str]:
            if stop is not None and stop.is_set():
                return [f"{e[0]['path']}: not checked (verification stopped)"]
            return _check_file(location, *e, rehash=rehash, confirmed=confirmed)

        for problems in pool.map(check, entries):
            report.problems.extend(problems)
    report.files = len(entries)
    report.bytes = sum(e["bytes"] for e, _, _ in entries)
    _check_signature(location, m, public_key, report)
    report.problems.extend(_walk_problems(location, listed))
    return report


def refuse_unfinished(snapshot: mf.SnapshotArg) -> None:
    """Raise ``SnapshotNotFound`` for a folder whose name starts with ``.``: never a snapshot.

    A backup killed between writing its manifest and publishing it leaves such a folder
    (``.tmp-…``) holding files that may verify, but it was never checked through to the
    end nor published: ``list`` calls it incomplete, and nothing may restore it as if whole.
    """
    location = locate(snapshot)
    if location.id.startswith("."):
        raise SnapshotNotFound(
            f"{location} is an unfinished backup (or one being removed), not a snapshot",
            hint="restore a complete snapshot: `backupkit list DIR` shows them",
        )


def damage_hint(report: VerifyReport) -> str:
    """What to do about a damaged snapshot.  "Another snapshot" is the answer unless a damaged
    file is one the repository stores once for several snapshots: the next one picked may
    use the same file, so the user is told so, and where its bytes are."""
    tables = (report.manifest or {}).get("tables", [])
    shared = [f["path"] for t in tables for f in t["files"] if f.get("shared") is True]
    hit = next((p for p in shared for q in report.problems if q.startswith((f"{p}:", f"missing file {p}"))), None)
    if hit is None:
        return "restore from another snapshot (`backupkit list DIR`), and check the storage"
    where = report.snapshot.storage.where(report.snapshot.stored(hit))
    return (
        f"{hit} is stored once for the repository, at {where}, and other snapshots "
        "may use it too: `backupkit verify` the snapshot you pick before restoring it, and check the storage"
    )


def ensure_intact(
    snapshot: mf.SnapshotArg,
    *,
    deep: bool = False,
    public_key: Ed25519PublicKey | str | Path | None = None,
    identity: IdentityArg | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Verify ``snapshot`` and return the manifest it was verified against (with ``public_key``:
    the one whose signature was checked), or raise SnapshotDamaged naming every problem (a
    missing or bad signature is one; see ``verify``, also for ``stop``).  An unfinished
    backup's folder is refused first (``refuse_unfinished``)."""
    refuse_unfinished(snapshot)
    report = verify(snapshot, deep=deep, public_key=public_key, identity=identity, stop=stop)
    if not report.ok:
        raise SnapshotDamaged(
            f"snapshot {locate(snapshot).name} is damaged: "
            + "; ".join(report.problems[:5])
            + (f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""),
            report.problems,
            hint=damage_hint(report),
        )
    assert report.manifest is not None  # read, or verify would have reported it
    return report.manifest
