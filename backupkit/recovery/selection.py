"""Choosing which of a snapshot's tables to restore (pure functions of the manifest and the
partition hierarchy the schema archive records)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import ConfigError
from ..snapshot import manifest as mf


def partition_parents(manifest: dict, attached: Mapping[str, str] | None = None) -> dict[str, str]:
    """``schema.table`` of each partition -> its partitioned table's: the manifest's partitions
    and ``attached``, the schema archive's TABLE ATTACH entries (``attached_partitions``), which
    also name the parents of partitioned tables themselves (no table of the manifest: they hold
    no rows), so a sub-partition's every ancestor is known, in snapshots already written too."""
    found = {mf.table_key(t): t["parent"] for t in manifest["tables"] if t.get("parent") and t.get("is_partition")}
    found.update(attached or {})
    return found


def ancestors(key: str, parents: Mapping[str, str]) -> list[str]:
    """The partitioned tables above ``key``, its immediate parent first, up to the root."""
    found: list[str] = []
    while (parent := parents.get(key)) is not None and parent not in found and parent != key:
        found.append(parent)
        key = parent
    return found


def partitioned_above(tables: Iterable[dict], parents: Mapping[str, str]) -> list[str]:
    """Every partitioned table above ``tables`` (which a restore of them must make or keep)."""
    return sorted({a for t in tables for a in ancestors(mf.table_key(t), parents)})


def select_tables(
    manifest: dict,
    tables: list[str],
    schemas: list[str],
    with_dependencies: bool = False,
    parents: Mapping[str, str] | None = None,
) -> list[dict]:
    """Manifest table entries named by ``tables`` (``schema.table``) or in ``schemas``.

    Nothing named means every table.  Naming a partitioned or inheritance
    parent selects its partitions too, down every level (``parents``, from
    ``partition_parents``; the manifest's own immediate parents without it).
    ``with_dependencies`` adds, recursively, every table the chosen ones
    reference through foreign keys: for a partitioned table, all its partitions
    (they hold its rows).  The result keeps the manifest's order.
    """
    entries = manifest["tables"]
    by_key = {mf.table_key(t): t for t in entries}
    if not tables and not schemas:
        return list(entries)
    # Inheritance parents too: naming one selects its children, as before.
    above = {mf.table_key(t): t["parent"] for t in entries if t.get("parent")}
    above.update(parents or {})
    unknown = [n for n in tables if n not in by_key and n not in above.values()]
    if unknown:
        raise ConfigError(
            f"the snapshot has no table {', '.join(unknown)}",
            hint="`backupkit sql SNAPSHOT` or the manifest lists its tables (schema.table)",
        )
    missing = [s for s in schemas if not any(t["schema"] == s for t in entries)]
    if missing:
        raise ConfigError(f"the snapshot has no tables in schema {', '.join(missing)}")

    def below(name: str) -> list[str]:
        return [k for k in by_key if name in ancestors(k, above)]

    chosen = {k for k, t in by_key.items() if k in tables or t["schema"] in schemas}
    chosen |= {k for n in tables for k in below(n)}
    if with_dependencies:
        todo = list(chosen)
        while todo:
            for fk in by_key[todo.pop()].get("foreign_keys", []):
                ref = f"{fk['ref_schema']}.{fk['ref_table']}"
                # A partitioned table is referenced by name; its rows live in its partitions.
                for r in [ref] if ref in by_key else below(ref):
                    if r not in chosen:
                        chosen.add(r)
                        todo.append(r)
    return [t for t in entries if mf.table_key(t) in chosen]
