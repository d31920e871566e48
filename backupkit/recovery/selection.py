"""Choosing which of a snapshot's tables to restore (a pure function of the manifest)."""

from __future__ import annotations

from ..errors import ConfigError
from ..snapshot import manifest as mf


def select_tables(manifest: dict, tables: list[str], schemas: list[str], with_dependencies: bool = False) -> list[dict]:
    """Manifest table entries named by ``tables`` (``schema.table``) or in ``schemas``.

    Nothing named means every table.  Naming a partitioned or inheritance
    parent selects its partitions too.  ``with_dependencies`` adds, recursively,
    every table the chosen ones reference through foreign keys.  The result
    keeps the manifest's order.
    """
    entries = manifest["tables"]
    by_key = {mf.table_key(t): t for t in entries}
    if not tables and not schemas:
        return list(entries)
    parents = {t["parent"] for t in entries if t.get("parent")}
    unknown = [n for n in tables if n not in by_key and n not in parents]
    if unknown:
        raise ConfigError(
            f"the snapshot has no table {', '.join(unknown)}",
            hint="`backupkit sql SNAPSHOT` or the manifest lists its tables (schema.table)",
        )
    missing = [s for s in schemas if not any(t["schema"] == s for t in entries)]
    if missing:
        raise ConfigError(f"the snapshot has no tables in schema {', '.join(missing)}")
    chosen = {k for k, t in by_key.items() if k in tables or t["schema"] in schemas or t.get("parent") in tables}
    if with_dependencies:
        todo = list(chosen)
        while todo:
            for fk in by_key[todo.pop()].get("foreign_keys", []):
                ref = f"{fk['ref_schema']}.{fk['ref_table']}"
                # A partitioned parent is referenced by name; its rows live in its partitions.
                refs = [ref] if ref in by_key else [k for k, t in by_key.items() if t.get("parent") == ref]
                for r in refs:
                    if r not in chosen:
                        chosen.add(r)
                        todo.append(r)
    return [t for t in entries if mf.table_key(t) in chosen]
