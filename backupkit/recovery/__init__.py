"""Restoring a snapshot (``backupkit.restore``): planning, the SQL scripts,
the parallel load, in-place and selective restores, and the checks after.

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``, ``pg``.
"""
