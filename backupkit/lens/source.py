"""Where the lens reads a snapshot: files on this machine, decrypted when they must be.

DuckDB reads files by path.  A snapshot elsewhere (``s3://``) is read through its
verified copy in the local cache (``storage.cache``); an encrypted one, given the
identity, through a decrypted copy in private scratch space that lives as long as the
caller's ``ExitStack`` (plain data never stays on disk after it: ``diff`` and
``integrity`` close it when the call ends, ``duck.open_snapshot`` when its connection
is closed).  Without the identity an encrypted snapshot is refused with one line, as
before.
"""

from __future__ import annotations

import contextlib

from ..snapshot import encryption
from ..snapshot import manifest as mf
from ..storage.cache import local_copy
from ..storage.location import SnapshotLocation, locate
from ..storage.scratch import scratch


def readable(
    snapshot: mf.SnapshotArg, identity: encryption.IdentityArg | None, stack: contextlib.ExitStack
) -> SnapshotLocation:
    """``snapshot`` as the lens can read it (see the module docstring)."""
    location = local_copy(locate(snapshot))
    if identity is None or not encryption.recipients_of(mf.read(location)):
        return location
    plain = stack.enter_context(scratch("backupkit-plain-"))
    return encryption.plain_copy(location, identity, plain)
