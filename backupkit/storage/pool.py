"""The repository's pool of shared data files: each distinct file stored once, by its hash.

A data file of a snapshot whose manifest entry says ``"shared": true`` is not in the
snapshot's folder but in the pool, named by the SHA-256 of its stored bytes::

    .shared/<first two hex digits>/<sha256>

A daily series of a database whose big tables mostly grow stores each unchanged
file once: the snapshots' chunk boundaries stay put (``capture.chunks.page_ranges``),
files end after rows chosen by their content (``pg.copyio.FileCuts``) and compression
is deterministic, so unchanged rows make the same file, byte for byte.

Rules that keep the pool safe, all under the repository's lock (``storage.lock``):

* **Adding** (``share``): a file is written and hashed under the snapshot's staging
  name first, then moved into the pool (or dropped, when the pool has it already), all
  before the manifest that refers to it is written.  A crash leaves at most files
  nobody refers to.  On S3, where a move is a copy, the file's writer does it as it
  closes (``place``): a small file is put under its pool name directly, one request; a
  large one is copied there server-side.  The same rule.
* **Collecting** (``collect``): prune removes a pool file only when no listed snapshot
  refers to it, and only when every snapshot's manifest could be read (one that
  cannot might refer to anything).  A file only a removed snapshot used goes at once; an
  orphan (no snapshot ever listed used it: left by a crashed backup, or an interrupted
  collection) only once it is older than a grace period, so a backup whose lock was
  taken over as stale does not lose what it has just added.

A pool file whose bytes are not what its name promises (a crash mid-copy into a pool
that is not atomic, someone's edit, bit rot on a disk, an object overwritten on S3) is
never used again: the new file stays in its snapshot's own folder instead (``KEPT``), and
``verify`` names any snapshot referring to it.  On a local disk its bytes are hashed.  On
a storage that checks every body it accepts (``Storage.verified_writes``: S3), where
reading it back would cost a download, what the storage tells for free is compared
instead (``Storage.content_tag``: the ETag, an MD5): with the MD5 of the new file's bytes
by its writer (``place``), with the new file's own ETag by ``share``.  Where the two cannot
be compared (a store whose ETags are not MD5s; a file uploaded in parts, whose ETag is
that of its parts, against an object made by a copy, whose ETag is its content's MD5) the
new file is kept too: that costs space, never a snapshot damaged from the start.

``has`` (is the file there, with nothing to compare it to) still trusts the size on S3:
its callers (a Storage bucket's unchanged file, ``copy``) know no MD5 of the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from .base import BLOCK, Entry, Storage

log = logging.getLogger("backupkit")

#: The pool's prefix at the top of the repository (hidden: never listed as a snapshot).
POOL = ".shared"


def blob_name(sha256: str) -> str:
    """The storage name of the pool file whose stored bytes hash to ``sha256``."""
    return f"{POOL}/{sha256[:2]}/{sha256}"


def _found(storage: Storage, name: str) -> Entry | None:
    try:
        return storage.stat(name)
    except FileNotFoundError:
        return None


def _size(found: Entry | None) -> int | None:
    if found is None:
        return None
    return found.size if found.kind == "file" else -1


#: What ``share`` did with a file: moved it into the pool, found it there already, or kept it.
ADDED, PRESENT, KEPT = "added", "present", "kept"


def _intact(storage: Storage, name: str, sha256: str) -> bool:
    """Whether pool file ``name`` still hashes to ``sha256``; taken on trust where reading it
    back means a download (see the module docstring)."""
    if storage.verified_writes:
        return True
    return _hashes_to(storage, name, sha256)


def _same(storage: Storage, found: Entry, staged: str, sha256: str) -> bool:
    """Whether pool file ``found`` holds the bytes of file ``staged`` (which hash to ``sha256``):
    hashed where a read is cheap, else by their tags, which must both exist and be equal."""
    if not storage.verified_writes:
        return _hashes_to(storage, found.name, sha256)
    tag = storage.content_tag(found)
    return tag is not None and tag == storage.content_tag(storage.stat(staged))


def _hashes_to(storage: Storage, name: str, sha256: str) -> bool:
    h = hashlib.sha256()
    try:
        with storage.open(name) as f:
            while block := f.read(BLOCK):
                h.update(block)
    except OSError:
        return False
    return h.hexdigest() == sha256


def has(storage: Storage, sha256: str, size: int) -> bool:
    """Whether the pool holds the file of that hash, whole (of that size, and on a local disk
    of those bytes)."""
    name = blob_name(sha256)
    return _size(_found(storage, name)) == size and _intact(storage, name, sha256)


def share(storage: Storage, staged: str, sha256: str, size: int) -> str:
    """Put file ``staged`` (``size`` bytes hashing to ``sha256``) into the pool.

    ``ADDED``: moved there; ``PRESENT``: an identical file was there, and ``staged`` is
    removed; ``KEPT``: the pool's file of that name is damaged, or not known to hold these
    bytes (see the module docstring), so ``staged`` stays where it is (and the manifest must
    not call it shared).
    """
    name = blob_name(sha256)
    found = _found(storage, name)
    if found is None:
        try:
            storage.rename(staged, name)
            return ADDED
        except FileExistsError:
            found = _found(storage, name)
    if found is not None and _size(found) == size and _same(storage, found, staged, sha256):
        storage.remove(staged)
        return PRESENT
    if found is not None and _size(found) == size:
        # Bit rot or an overwrite keeps the size: trusting it would make every later snapshot
        # of these rows damaged from the start.
        log.warning("%s %s: this snapshot keeps its own copy", storage.where(name), _unlike(storage))
    else:
        what = _size(found)
        log.warning("%s is %s bytes, not %d: this snapshot keeps its own copy", storage.where(name), what, size)
    return KEPT


def _unlike(storage: Storage) -> str:
    """How a pool file of the right size was found not to be the new file, for a warning."""
    if not storage.verified_writes:
        return "does not hash to its name"
    return "is not known to hold these bytes (its ETag differs: overwritten, or a store whose ETags are not MD5s)"


def place(writer: BinaryIO, sha256: str) -> None:
    """Before a new file's ``writer`` is closed, when its stored bytes hash to ``sha256``:
    have it store the file under its pool name instead of the one it was created with,
    where the writer can (an S3 writer: it knows the MD5 of the bytes it sent, to compare
    with the ETag of an object found under that name).  After close, ``placed(writer)``
    says what happened."""
    redirect = getattr(writer, "redirect", None)
    if redirect is not None:
        redirect(blob_name(sha256))


def placed(writer: BinaryIO) -> str:
    """After ``place`` and close: ``ADDED``, ``PRESENT``, or ``""``: still under its own name (not
    redirected, or the pool's name is not known to hold these bytes: ``share`` then says KEPT)."""
    outcome = getattr(writer, "placed", "")
    return outcome if outcome in (ADDED, PRESENT) else ""


def referenced(manifest: Mapping) -> dict[str, int]:
    """The pool names a manifest refers to (data files and bucket files), with their sizes."""
    data = [f for t in manifest.get("tables", []) for f in t.get("files", [])]
    bucket = [f for b in (manifest.get("storage") or {}).get("buckets", []) for f in b.get("files", [])]
    return {blob_name(f["sha256"]): f["bytes"] for f in data + bucket if f.get("shared") is True}


def files(storage: Storage) -> list[Entry]:
    """Every file in the pool."""
    try:
        return [e for e in storage.walk(POOL) if e.kind == "file"]
    except FileNotFoundError:
        return []


def unreferenced(
    pool: Iterable[Entry], wanted: set[str], now: float, grace_seconds: float, known: Container[str] = frozenset()
) -> list[Entry]:
    """The pool files to remove: not in ``wanted``, and either ``known`` (used by a snapshot
    being removed) or unchanged for ``grace_seconds`` at ``now`` (an orphan: perhaps the
    file a backup whose lock was taken over has just added, until it is that old)."""
    return [e for e in pool if e.name not in wanted and (e.name in known or now - e.mtime >= grace_seconds)]


@dataclass
class Collected:
    """What ``collect`` removed from the pool (names and bytes), and what it could not."""

    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    failed: list[str] = field(default_factory=list)


def collect(
    storage: Storage,
    wanted: set[str],
    grace_seconds: float,
    known: Container[str] = frozenset(),
    now: float | None = None,
) -> Collected:
    """Remove the pool files no snapshot refers to (``wanted``: every referenced name; see
    ``unreferenced``).  The caller holds the repository's lock and has read every manifest."""
    now = time.time() if now is None else now
    done = Collected()
    for entry in unreferenced(files(storage), wanted, now, grace_seconds, known):
        try:
            storage.remove(entry.name)
        except OSError as exc:
            done.failed.append(f"{entry.name}: {exc.strerror or exc}")
            continue
        done.removed.append(entry.name)
        done.bytes += entry.size
    return done
