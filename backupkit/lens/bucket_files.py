"""The lens on a snapshot's Storage bucket files: a SQL view of them, and what changed.

Both come from the manifests alone (a file's key, size, hash, type and time are there),
so nothing is downloaded to list or compare files.  Pure, but for the SQL text.
"""

from __future__ import annotations

from collections.abc import Mapping

from .duck import literal

#: The view's columns, in order.
COLUMNS = "(bucket, key, size, sha256, content_type, last_modified, etag)"


def files_of(manifest: Mapping) -> dict[tuple[str, str], dict]:
    """(bucket, key) -> the file's manifest entry, for every bucket file of a snapshot."""
    return {(b["name"], f["key"]): f for b in (manifest.get("storage") or {}).get("buckets", []) for f in b["files"]}


def storage_files_sql(manifest: Mapping) -> str:
    """A SELECT of every bucket file (``backupkit.storage_files``), one row per file."""
    rows = [
        f"({literal(bucket)}, {literal(key)}, {int(f['size'])}::BIGINT, {literal(f['sha256'])}, "
        f"{'NULL' if f.get('content_type') is None else literal(f['content_type'])}::VARCHAR, "
        f"{'NULL' if not f.get('last_modified') else literal(f['last_modified'])}::TIMESTAMPTZ, "
        f"{literal(f.get('etag') or '')})"
        for (bucket, key), f in sorted(files_of(manifest).items())
    ]
    if not rows:
        empty = "('', '', 0::BIGINT, '', NULL::VARCHAR, NULL::TIMESTAMPTZ, '')"
        return f"SELECT * FROM (VALUES {empty}) AS f{COLUMNS} WHERE false"
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS f{COLUMNS}"


def files_diff(old: Mapping, new: Mapping) -> dict:
    """Bucket files added, removed and changed (by content hash) from ``old`` to ``new``,
    per bucket: ``{bucket: {"added": [key], "removed": [key], "changed": [key]}}`` for
    every bucket with a difference, keys in order."""
    before, after = files_of(old), files_of(new)
    out: dict[str, dict[str, list[str]]] = {}

    def note(kind: str, bucket: str, key: str) -> None:
        out.setdefault(bucket, {"added": [], "removed": [], "changed": []})[kind].append(key)

    for bk in sorted(set(before) | set(after)):
        if bk not in before:
            note("added", *bk)
        elif bk not in after:
            note("removed", *bk)
        elif before[bk]["content_sha256"] != after[bk]["content_sha256"]:
            note("changed", *bk)
    return out
