"""Talking to PostgreSQL: connection strings, the catalog, COPY streams, pg_dump
archives, the Supabase platform's objects, and the embedded server.

May import: ``errors``, ``snapshot``, ``storage``, ``runtime``.
"""
