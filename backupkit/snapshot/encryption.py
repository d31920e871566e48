"""Client-side encryption of snapshots to age public keys (X25519, through pyrage).

A host that takes backups needs only the recipients' public keys (``age1…``): what it
writes, it cannot read back, so whoever gets hold of that host or of the repository
cannot read the old backups.  Reading rows back (``restore``, ``verify --deep``) needs
an identity: the secret key (``AGE-SECRET-KEY-1…``), in a file in ``age-keygen``'s
format (``#`` comment lines and one key per line), mode 0600 like every private key
backupkit reads (``signing.read_key_file``).  ``keygen`` writes one; ``age-keygen``'s
work too, and the files are the ``age`` command's (``age -d -i FILE`` decrypts any
file of a snapshot, ``zstd -d`` then gives a data file's COPY text).

What is encrypted: every file of the snapshot but ``manifest.json`` and its signature.
The data files are their zstd frames as one age stream (compressed first, then
encrypted); the schema files (the pg_dump archives and their SQL) are encrypted too,
since function bodies, column defaults and large objects hold data.  The manifest
stays readable, so that ``list``, ``prune``, ``copy`` and ``verify`` work without a key
(it names tables, columns, roles and row counts, not row values); it records
``"encryption": {"scheme": "age", "recipients": [...]}``, and each file's ``bytes`` and
``sha256`` are those of the stored (encrypted) bytes: ``verify`` checks every byte
without any key.

Everything streams, nothing is held whole: writing, pyrage's ``encrypt_io`` pulls the
compressed frames from the COPY as it needs them, in the writing thread
(``encrypt_blocks``); reading, ``decrypt_io`` runs in a thread that pushes the plain
bytes through a pipe to the reader (``open_plain``), after the reader has hashed the
stored bytes.  A tool that needs a path (pg_restore; DuckDB, later) gets the plain
file in private scratch space (``local_path``, ``decrypt_into``).

A reader learns that a snapshot is encrypted from its manifest (``recipients_of``) and
reads it through ``unlock``'s location, which carries the identities; a reader given
no identity recognises an encrypted file by its first bytes (``is_sealed``) and
refuses it with one line (``locked``, ``not_for_lens``) instead of misreading it.

Environment (resolved by the command line only, like the signing keys):
``BACKUPKIT_RECIPIENTS`` (``age1…`` keys separated by spaces or commas, for ``backup``)
and ``BACKUPKIT_IDENTITY`` (path of an identity file, for ``restore`` and ``verify``).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, SnapshotDamaged, SnapshotError, StorageError
from ..storage.local import LocalStorage
from ..storage.location import SnapshotLocation, locate
from ..storage.scratch import scratch
from . import manifest as mf

#: The ``scheme`` of a manifest's ``encryption``: age (age-encryption.org/v1), X25519 recipients.
SCHEME = "age"
#: The first bytes of every age file (binary, not armored): how a reader without keys recognises one.
MAGIC = b"age-encryption.org/v1\n"
RECIPIENTS_ENV = "BACKUPKIT_RECIPIENTS"
IDENTITY_ENV = "BACKUPKIT_IDENTITY"
#: An identity file larger than this is not one (a key line is 74 characters).
_MAX_IDENTITY_BYTES = 64 << 10
#: Bytes per read when a whole file is encrypted or decrypted.
_BLOCK = 1 << 20
#: What the decrypting thread gathers before it writes into the pipe (whose own buffer is 64 KiB).
_PIPE_BUFFER = 64 << 10
_SECRET_PREFIX = "AGE-SECRET-KEY-1"
_KEYGEN_HINT = "create one with `backupkit keygen --age-identity FILE` (or age-keygen)"
#: An age secret key's prefix anywhere in a value, in either case.
_SECRET_IN = re.compile(r"AGE-SECRET-KEY-", re.I)
#: A recipient value an error may quote: what a mistyped public key looks like, nothing that
#: could be a DSN, a URL or a secret of another kind.
_SHOWN = re.compile(r"[A-Za-z0-9._-]{0,80}")

#: What ``identity`` may be: a path of an identity file, or pyrage X25519 identities.
IdentityArg = str | os.PathLike[str] | Any


# -- keys ----------------------------------------------------------------------------------


def parse_recipients(recipients: Iterable[str | Any]) -> list[str]:
    """The age recipients (``age1…`` public keys, or pyrage ``x25519.Recipient``) checked and
    spelt as age spells them, each once, in the order given; ConfigError for one that is not."""
    import pyrage

    texts = [r.strip() if isinstance(r, str) else str(r) for r in recipients]
    # Every value is looked at before any is echoed: a secret key anywhere (quoted as in a .env
    # file, after a NAME=, or after the comment lines of an identity file pasted whole) is never
    # shown, and the error says what it is rather than that "#" is no public key.
    if any(_SECRET_IN.search(text) for text in texts):
        raise ConfigError(
            "recipients holds a secret key (AGE-SECRET-KEY-1…) where a public key (age1…) belongs",
            hint="a backup host needs only the public key: `backupkit keygen --age-identity` prints it",
        )
    found: list[str] = []
    for text in texts:
        try:
            key = str(pyrage.x25519.Recipient.from_str(text))
        except (pyrage.RecipientError, ValueError):
            # Only what may be a mistyped key is shown: a DSN or a password put in the wrong
            # variable is not (executed notebooks keep a failed cell's message unredacted).
            shown = repr(text) if _SHOWN.fullmatch(text) else f"of {len(text)} characters"
            raise ConfigError(
                f"recipients {shown} is not an age X25519 public key (age1…)",
                hint="`backupkit keygen --age-identity FILE` prints the public key of the identity it writes",
            ) from None
        if key not in found:
            found.append(key)
    return found


def recipients_from(option: Sequence[str] | None) -> list[str]:
    """``--recipient`` values if any, else the keys in ``$BACKUPKIT_RECIPIENTS`` (spaces or commas between)."""
    if option:
        return list(option)
    if RECIPIENTS_ENV not in os.environ:
        return []
    found = [r for r in re.split(r"[\s,]+", os.environ[RECIPIENTS_ENV]) if r]
    if not found:
        # Set to nothing ("$KEYS" unset in a cron line): meant to encrypt, so never a plaintext backup.
        raise ConfigError(
            f"{RECIPIENTS_ENV} is set but holds no age public key",
            hint=f"put the keys (age1...) in it, or unset {RECIPIENTS_ENV} for an unencrypted backup",
        )
    return found


def identity_path(option: str | os.PathLike[str] | None) -> Path | None:
    """``--identity`` if given, else ``$BACKUPKIT_IDENTITY`` if set and not empty, else None."""
    if option is not None and str(option) != "":
        return Path(option)
    found = os.environ.get(IDENTITY_ENV, "")
    return Path(found) if found else None


def load_identity(identity: IdentityArg) -> tuple[Any, ...]:
    """The X25519 identities of ``identity``: a file in age-keygen's format (``#`` comments,
    ``AGE-SECRET-KEY-1…`` lines), or pyrage identities given as they are (one or a list).

    ConfigError when the file is missing, readable or writable by group or others, or holds
    anything but X25519 identities; no message ever shows a line of it.
    """
    import pyrage

    from .signing import read_key_file

    if isinstance(identity, pyrage.x25519.Identity):
        return (identity,)
    given = identity if isinstance(identity, (list, tuple)) else ()
    if given and all(isinstance(i, pyrage.x25519.Identity) for i in given):
        return tuple(given)
    path = Path(identity)
    data = read_key_file(
        path,
        "age identity",
        private=True,
        why="anyone with it can read every backup encrypted to it",
        limit=_MAX_IDENTITY_BYTES,
        make=_KEYGEN_HINT,
    )
    try:
        # utf-8-sig: a key saved back from a password manager by a Windows editor starts with a BOM.
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not an age identity file (not text)", hint=_KEYGEN_HINT) from None
    found = []
    for n, line in enumerate((s.strip() for s in lines), 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("age1"):
            raise ConfigError(
                f"{path}, line {n}: a public key (age1…), where the identity (the secret key) belongs",
                hint="pass the file `backupkit keygen --age-identity` wrote; "
                "the public key is for backup's `recipients`",
            )
        if not line.startswith(_SECRET_PREFIX):
            raise ConfigError(
                f"{path}, line {n}: not an age X25519 identity (AGE-SECRET-KEY-1…)",
                hint="plugin, ssh and passphrase identities are not supported",
            )
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except (pyrage.IdentityError, ValueError):
            raise ConfigError(f"{path}, line {n}: a malformed AGE-SECRET-KEY-1 line") from None
    if not found:
        raise ConfigError(f"{path} holds no age identity (no AGE-SECRET-KEY-1… line)", hint=_KEYGEN_HINT)
    return tuple(found)


def keygen(identity: str | os.PathLike[str]) -> str:
    """Write a new age identity to file ``identity`` (age-keygen's format, mode 0600, never
    overwritten) and return its public key: the ``age1…`` recipient to back up to.

    ConfigError when the file exists, StorageError when it cannot be written.
    """
    import pyrage

    from .signing import write_new

    path = Path(identity)
    if os.path.lexists(path):
        raise ConfigError(
            f"{path} already exists; backupkit never overwrites a key",
            hint="choose another file name; snapshots encrypted to the old key need it to be restored",
        )
    key = pyrage.x25519.Identity.generate()
    recipient = str(key.to_public())
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"# created: {created}\n# public key: {recipient}\n{key}\n"
    try:
        write_new(path, text.encode(), 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; backupkit never overwrites a key") from None
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return recipient


# -- what a manifest says ------------------------------------------------------------------


def manifest_entry(recipients: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``encryption`` for a snapshot encrypted to ``recipients`` (checked already)."""
    return {"scheme": SCHEME, "recipients": list(recipients)}


def problems(manifest: dict) -> list[str]:
    """What is wrong with a manifest's ``encryption`` (empty when absent or well-formed)."""
    if "encryption" not in manifest:
        return []
    enc = manifest["encryption"]
    if not isinstance(enc, dict):
        return [f"{mf.MANIFEST}: encryption is a {type(enc).__name__}, not an object"]
    if enc.get("scheme") != SCHEME:
        return [f"{mf.MANIFEST}: encryption scheme {enc.get('scheme')!r} is not one this backupkit reads ({SCHEME!r})"]
    recipients = enc.get("recipients")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        return [f"{mf.MANIFEST}: encryption recipients are not a list of age public keys"]
    return []


def recipients_of(manifest: dict) -> list[str] | None:
    """The recipients an encrypted snapshot's files are encrypted to; None when it is not encrypted."""
    enc = manifest.get("encryption")
    return list(enc["recipients"]) if isinstance(enc, dict) else None


def is_sealed(head: bytes) -> bool:
    """Whether bytes that start a file are an age file's start."""
    return head[: len(MAGIC)] == MAGIC


# -- unlocking a snapshot for reading --------------------------------------------------------


@dataclass(frozen=True)
class UnlockedLocation(SnapshotLocation):
    """An encrypted snapshot's location with the identities that decrypt it.

    Readers given it decrypt what they read (``datafile.iter_blocks``, ``local_path``,
    ``decrypt_into``); everything else (``mf.open_file``, ``verify``'s hashing) sees the
    stored bytes, as through any location.
    """

    identities: tuple[Any, ...] = field(default=(), repr=False, compare=False)


def identities_of(snapshot: mf.SnapshotArg) -> tuple[Any, ...] | None:
    """The identities an unlocked location carries; None for any other snapshot argument."""
    return snapshot.identities if isinstance(snapshot, UnlockedLocation) else None


def locked(snapshot: mf.SnapshotArg | None, recipients: Sequence[str] = ()) -> ConfigError:
    """The error for reading an encrypted snapshot (None: one not named) without an identity:
    says what to pass."""
    name = f"snapshot {locate(snapshot).name}" if snapshot is not None else "this snapshot"
    to = f" to {', '.join(recipients)}" if recipients else ""
    return ConfigError(
        f"{name} is encrypted{to}: pass `identity`, the age identity file of one of its recipients",
        hint="list, verify, copy and prune work without it; restoring and recounting rows need the secret key",
    )


def not_for_lens(snapshot: mf.SnapshotArg) -> SnapshotError:
    """The error for a reader given no identity (diff, sql, DuckDB) meeting an encrypted file."""
    location = locate(snapshot)
    return SnapshotError(
        f"snapshot {location.name} is encrypted: sql, DuckDB and diff read encrypted snapshots only with `identity`",
        hint="pass the age identity file of one of its recipients; `backupkit verify` checks it without the key",
    )


def check_identity(snapshot: mf.SnapshotArg, manifest: dict, identity: IdentityArg | None) -> tuple[Any, ...] | None:
    """The identities to read ``snapshot`` with: None when its manifest says it is not encrypted
    (an identity given is then not even loaded).  ConfigError when it is encrypted and
    ``identity`` is missing, unreadable, or none of its keys is one of the snapshot's recipients."""
    recipients = recipients_of(manifest)
    if recipients is None:
        return None
    if identity is None:
        raise locked(snapshot, recipients)
    identities = load_identity(identity)
    mine = sorted({str(i.to_public()) for i in identities})
    if not set(mine) & set(recipients):
        given = f" {identity}" if isinstance(identity, (str, os.PathLike)) else ""
        raise ConfigError(
            f"identity{given} cannot decrypt snapshot {locate(snapshot).name}: it is encrypted to "
            f"{', '.join(recipients)}, the identity's public key is {', '.join(mine)}",
            hint="pass the age identity file of one of the snapshot's recipients as `identity`",
        )
    return identities


def unlock(snapshot: mf.SnapshotArg, manifest: dict, identity: IdentityArg | None) -> SnapshotLocation:
    """The location to read ``snapshot`` (whose manifest is ``manifest``) through: the snapshot's
    own when it is not encrypted, else an ``UnlockedLocation`` carrying the identities
    (``check_identity`` says when there are none that fit)."""
    location = locate(snapshot)
    identities = check_identity(location, manifest, identity)
    if identities is None:
        return location
    return UnlockedLocation(location.storage, location.id, identities)


# -- writing ---------------------------------------------------------------------------------


class _Source:
    """What ``encrypt_io`` reads: the bytes an iterator yields, as many at a time as pyrage asks.

    pyrage turns an exception raised here into an ``EncryptError`` carrying only its text;
    it is kept (``error``) so the caller can raise the original (a psycopg error, Ctrl-C).
    """

    def __init__(self, blocks: Iterable[bytes]):
        self._blocks = iter(blocks)
        self._view = memoryview(b"")
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            while not self._view:
                block = next(self._blocks, None)
                if block is None:
                    return b""
                self._view = memoryview(block)
        except BaseException as exc:
            self.error = exc
            raise
        if n is None or n < 0:
            n = len(self._view)
        data, self._view = self._view[:n].tobytes(), self._view[n:]
        return data


class _Sink:
    """What pyrage writes to: ``out``, the bytes hashed and counted; ``out``'s exception kept."""

    def __init__(self, out: Any):
        import hashlib

        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self.out.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _raise_kept(*ends: Any) -> None:
    """Raise the first exception one of pyrage's reader and writer kept (see ``_Source``)."""
    for end in ends:
        if getattr(end, "error", None) is not None:
            raise end.error


def encrypt_blocks(blocks: Iterable[bytes], out: BinaryIO, recipients: Sequence[str]) -> tuple[int, str]:
    """Encrypt the bytes ``blocks`` yields into ``out``, one age stream to ``recipients``;
    the stored size and hex SHA-256.

    The blocks are pulled as pyrage needs them, in this thread, so a block is encrypted
    and written before the next one is made: memory holds one block and one age chunk
    (64 KiB), whatever the file's size.  An exception of ``blocks`` or of ``out`` is
    raised as it is.
    """
    import pyrage

    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    source, sink = _Source(blocks), _Sink(out)
    try:
        pyrage.encrypt_io(source, sink, keys)
    except (pyrage.EncryptError, OSError):
        _raise_kept(source, sink)
        raise
    return sink.size, sink.sha.hexdigest()


def encrypt_file(src: BinaryIO, out: BinaryIO, recipients: Sequence[str]) -> tuple[int, str]:
    """``encrypt_blocks`` of everything ``src`` reads."""
    return encrypt_blocks(iter(lambda: src.read(_BLOCK), b""), out, recipients)


# -- reading ---------------------------------------------------------------------------------


def _decrypt_error(rel: str, exc: BaseException) -> SnapshotDamaged:
    name = rel.rsplit("/", 1)[-1]
    return SnapshotDamaged(
        f"{name} cannot be decrypted ({exc}): the file is damaged, or not encrypted to this identity",
        [f"{rel}: cannot be decrypted ({exc})"],
        # Plain `verify` hashes the stored bytes only, and a file resealed into the manifest
        # passes it: only decrypting every file shows which ones do not.
        hint="run `backupkit verify --deep --identity FILE` on the snapshot to find every such file, "
        "and restore from another snapshot",
    )


class _Capturing:
    """A reader whose exception is kept, like ``_Source`` (pyrage reads it in another thread)."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.raw.read(n)
        except BaseException as exc:
            self.error = exc
            raise


class PlainReader:
    """A reader of the plain bytes of an age stream: ``decrypt_io`` runs in a thread of its own
    and writes into a pipe, which this reads (see ``open_plain``).

    The pipe holds at most 64 KiB, so memory does not grow with the file.  ``close``
    (also on leaving a ``with`` block) ends the thread early: its next write into the
    closed pipe fails.  The first ``read`` that finds the end raises what went wrong
    in the thread: ``SnapshotDamaged`` for bytes that do not decrypt (damaged, or not
    encrypted to these identities), else the stored reader's own exception.
    """

    def __init__(self, stored: Any, identities: Sequence[Any], rel: str):
        self.rel = rel
        self._stored = _Capturing(stored)
        self._identities = list(identities)
        r, w = os.pipe()  # not inherited by child processes (PEP 446)
        self._pipe = os.fdopen(r, "rb", buffering=0)
        self._sink = _Sink(os.fdopen(w, "wb", buffering=_PIPE_BUFFER))
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="backupkit-decrypt", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        import pyrage

        try:
            pyrage.decrypt_io(self._stored, self._sink, self._identities)
        except (pyrage.DecryptError, OSError) as exc:  # a damaged chunk is an OSError
            if self._stored.error is not None:
                self._failure = self._stored.error
            elif self._sink.error is None:  # a write into the pipe failed: the reader closed it
                self._failure = _decrypt_error(self.rel, exc)
        except BaseException as exc:  # not pyrage's: kept for the reader
            self._failure = exc
        finally:
            with contextlib.suppress(OSError):
                self._sink.out.close()

    def read(self, n: int = -1) -> bytes:
        data = self._pipe.read(n) if n is not None and n >= 0 else self._pipe.readall()
        if not data:
            self._thread.join()
            if self._failure is not None:
                raise self._failure
        return data or b""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pipe.close()
        self._thread.join()

    def __enter__(self) -> PlainReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_plain(stored: Any, identities: Sequence[Any], rel: str) -> PlainReader:
    """A reader of the plain bytes of age stream ``stored`` (anything with ``read``), decrypted
    with ``identities`` as they are read; ``rel`` names the file in errors.  Close it."""
    return PlainReader(stored, identities, rel)


def decrypt_into(
    snapshot: mf.SnapshotArg, rel: str, into: LocalStorage, name: str | None = None, *, sha256: str | None = None
) -> Path:
    """The plain bytes of file ``rel`` of ``snapshot`` in new file ``name`` (default: ``rel``'s
    base name) of scratch space ``into``; its path.

    For readers that need a plain file by path: pg_restore here, DuckDB (the lens) later.
    An ``unlock``-ed snapshot's file is decrypted on the way (streamed: memory does not grow
    with the file); any other is copied as stored.  ``into`` should be private scratch space
    (``storage.scratch.scratch``), removed when done: it holds the plain bytes.  With
    ``sha256`` (the manifest's, of the stored bytes) the stored bytes are hashed on the way,
    and ``SnapshotDamaged`` raised, the copy unused, when they differ.
    """
    location = locate(snapshot)
    name = name or rel.rsplit("/", 1)[-1]
    identities = identities_of(location)
    with mf.open_file(location, rel) as raw, into.create(name) as out:
        stored: Any = _Hashed(raw) if sha256 is not None else raw
        if identities is None:
            while block := stored.read(_BLOCK):
                out.write(block)
        else:
            _decrypt(stored, out, identities, rel)
            while sha256 is not None and stored.read(_BLOCK):  # what follows the age stream counts too
                pass
    if sha256 is not None and stored.hash.hexdigest() != sha256:
        raise SnapshotDamaged(
            f"{location.where(rel)} is not the file the manifest describes (its SHA-256 differs): "
            "it changed after the snapshot was verified",
            [f"{rel}: checksum mismatch"],
            hint="run `backupkit verify` on the snapshot, and find out what is writing to it",
        )
    return into.path(name)


class _Hashed:
    """A reader that hashes what passes through it (SHA-256)."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data


def plain_copy(snapshot: mf.SnapshotArg, identity: IdentityArg, into: LocalStorage) -> SnapshotLocation:
    """A decrypted copy of encrypted ``snapshot`` in private scratch space ``into``, for readers
    of plain files (diff, integrity: DuckDB).

    Every stored file is verified against the manifest first, and hashed again as it is
    decrypted (a file replaced meanwhile is SnapshotDamaged); the copy's manifest records
    the plain files' sizes and hashes, without ``encryption`` (nor ``signed_by``: the copy is
    not what was signed), sealed anew.  ``into`` holds plain data: remove it when done
    (``storage.scratch.scratch``).  A wrong or missing identity is the usual ConfigError.
    """
    import copy
    import hashlib

    from .verify import verify

    location = locate(snapshot)
    unlock(location, mf.read(location), identity)  # a wrong key is refused before anything is hashed
    report = verify(location)
    if not report.ok:
        raise SnapshotDamaged(
            f"snapshot {location.name} does not verify: " + "; ".join(report.problems[:3]),
            report.problems,
            hint=f"run `backupkit verify {location}`",
        )
    assert report.manifest is not None  # read, or the report would not be ok
    manifest = report.manifest
    unlocked = unlock(location, manifest, identity)
    plain = copy.deepcopy(manifest)
    plain.pop("encryption", None)
    plain.pop("signed_by", None)
    for entry in plain.get("schema_files", []) + [f for t in plain["tables"] for f in t["files"]]:
        # The stored bytes are hashed again as they are decrypted: a file replaced after it was
        # verified (anyone can encrypt to the public recipients the manifest names) is refused,
        # not handed to DuckDB as the snapshot's rows.
        decrypt_into(unlocked, entry["path"], into, name=f"{location.id}/{entry['path']}", sha256=entry["sha256"])
        sha, size = hashlib.sha256(), 0
        with into.open(f"{location.id}/{entry['path']}") as f:
            while block := f.read(_BLOCK):
                sha.update(block)
                size += len(block)
        entry["bytes"], entry["sha256"] = size, sha.hexdigest()
        entry.pop("shared", None)  # decrypted into the copy's own folder
    return mf.write(SnapshotLocation(into, location.id), plain)


def _decrypt(stored: BinaryIO, out: BinaryIO, identities: Sequence[Any], rel: str) -> None:
    import pyrage

    source, sink = _Capturing(stored), _Sink(out)
    try:
        pyrage.decrypt_io(source, sink, list(identities))
    except (pyrage.DecryptError, OSError) as exc:  # a damaged chunk is an OSError
        _raise_kept(source, sink)
        raise _decrypt_error(rel, exc) from None


@contextlib.contextmanager
def local_path(snapshot: mf.SnapshotArg, rel: str, manifest: dict | None = None) -> Iterator[Path]:
    """A path on this machine holding the plain bytes of file ``rel`` of ``snapshot``, for a tool
    that reads files by path (pg_restore): an ``unlock``-ed snapshot's file decrypted into
    private scratch space removed on exit, any other file as ``Storage.local_path`` gives it.

    With the ``manifest`` a restore acts on, the path is always such a private copy, made
    while its stored bytes are hashed against the manifest: the tool reads what was verified
    (and, for a signed snapshot, what was signed), whatever happens to the snapshot meanwhile.
    Inside ``checked_copies`` each file is copied once and the copy handed out again.
    """
    location = locate(snapshot)
    if manifest is None:
        if identities_of(location) is None:
            with location.storage.local_path(location.stored(rel)) as path:
                yield path
            return
        with scratch("backupkit-plain-") as tmp:
            yield decrypt_into(location, rel, tmp)
        return
    sha256 = _stored_sha256(manifest, rel)
    if sha256 is None:
        raise SnapshotDamaged(f"{location.where(rel)} is not listed in the manifest", [f"{rel}: not listed"])
    copies = _COPIES.get()
    if copies is None:
        with scratch("backupkit-plain-") as tmp:
            yield decrypt_into(location, rel, tmp, sha256=sha256)
        return
    key = (location.where(rel), sha256)
    if key not in copies.paths:
        copies.paths[key] = decrypt_into(location, rel, copies.folder, f"{len(copies.paths)}.bin", sha256=sha256)
    yield copies.paths[key]


def read_checked(snapshot: mf.SnapshotArg, rel: str, manifest: dict, limit: int = 64 << 20) -> bytes:
    """The plain bytes of small schema file ``rel`` (``local_path`` with ``manifest``: checked
    against its SHA-256 and decrypted); more than ``limit`` bytes is damage."""
    with local_path(snapshot, rel, manifest) as path, LocalStorage(path.parent).open(path.name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        where = locate(snapshot).where(rel)
        raise SnapshotDamaged(f"{where} is larger than {limit} bytes", [f"{rel}: too large"])
    return data


@dataclass
class _Copies:
    """The checked copies of one ``checked_copies`` block, in its scratch folder."""

    folder: LocalStorage
    paths: dict[tuple[str, str], Path] = field(default_factory=dict)


_COPIES: contextvars.ContextVar[_Copies | None] = contextvars.ContextVar("backupkit_checked_copies", default=None)


@contextlib.contextmanager
def checked_copies() -> Iterator[None]:
    """Within this block (in this thread) ``local_path(..., manifest)`` copies and checks each
    file once: a restore reads its archives three times, and database.dump holds every large
    object's data.  The copies are removed when the block ends.  Also a function decorator."""
    with scratch("backupkit-checked-") as folder:
        token = _COPIES.set(_Copies(folder))
        try:
            yield
        finally:
            _COPIES.reset(token)


def _stored_sha256(manifest: dict, rel: str) -> str | None:
    """The manifest's SHA-256 of schema file ``rel`` (None when it lists no such file)."""
    return next((f["sha256"] for f in manifest.get("schema_files", []) if f.get("path") == rel), None)
