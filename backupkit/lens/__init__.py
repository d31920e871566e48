"""Looking inside snapshots: DuckDB views and SQL, integrity checks, the row-level
and schema diff, and the HTML/JSON report.

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``, ``pg`` (pure parsing only).
"""
