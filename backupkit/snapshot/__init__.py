"""The snapshot format: the manifest model, data files, verification and signatures.

May import: ``errors``, ``storage``.  Knows nothing of PostgreSQL.
"""
