"""What the snapshot's source had and the snapshot does not hold, named by a whole restore.

A backup of some schemas of a Supabase project leaves out the project's own policies and
triggers on the platform's tables (``pg.left_out``: warned of when it was taken, recorded in
the manifest's ``left_on_platform``).  Restoring it into a new project, they are missing
there too: each the target lacks is named, so nobody finds out from a failing upload.
"""

from __future__ import annotations

import psycopg

from ..pg.left_out import shown

_THERE = """
SELECT 'policy', n.nspname, c.relname, p.polname
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%(schemas)s)
UNION ALL
SELECT 'trigger', n.nspname, c.relname, t.tgname
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND n.nspname = ANY(%(schemas)s)
"""


def missing_notes(conn: psycopg.Connection, manifest: dict) -> list[str]:
    """One note naming the source's objects on the platform's tables that the snapshot does
    not hold and the target lacks (none when it has them all, or the manifest names none),
    with the backup that would hold them; Realtime's are to be made again (backupkit does not
    restore Realtime's own tables)."""
    backed_up = list(manifest.get("schemas", []))
    left = [i for i in manifest.get("left_on_platform") or [] if i["schema"] not in backed_up]
    if not left:
        return []
    there = set(conn.execute(_THERE, {"schemas": sorted({i["schema"] for i in left})}).fetchall())
    missing = [i for i in left if (i["kind"], i["schema"], i["table"], i["name"]) not in there]
    if not missing:
        return []
    fixes = []
    add = sorted({i["schema"] for i in missing} - {"realtime"})
    if add:
        whole = " ".join(f"--schema {s}" for s in [*backed_up, *add])
        fixes.append(f"restore a snapshot taken with {whole} for them")
    if any(i["schema"] == "realtime" for i in missing):
        fixes.append("make the realtime ones again here")
    return [
        f"the source project had {shown(missing)}, which this snapshot does not hold (its schemas were "
        f"{', '.join(backed_up)}) and this database lacks: " + "; ".join(fixes)
    ]
