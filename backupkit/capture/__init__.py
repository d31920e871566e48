"""Taking a snapshot (``backupkit.backup``): preflight, the consistent moment,
the parallel COPY readers, and publishing the verified result.

May import: ``errors``, ``runtime``, ``snapshot``, ``storage``, ``pg``.
"""
