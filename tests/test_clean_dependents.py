"""A whole-snapshot ``restore --clean`` into a database where something outside the snapshot
depends on its tables: another schema's view and foreign key, a view made after the backup.

pg_restore --clean drops each table of the snapshot to make it again; those dependents are not
in the snapshot, so the DROP failed and the restore rolled back, after a dry run that passed.
"""

from __future__ import annotations

import psycopg
from helpers import run_cli

import backupkit

SCHEMA = """
    CREATE TABLE public.authors (id int PRIMARY KEY, name text);
    CREATE TABLE public.books (id int PRIMARY KEY, author int REFERENCES public.authors, title text);
    CREATE VIEW public.titles AS SELECT b.title, a.name FROM public.books b JOIN public.authors a ON a.id = b.author;
    INSERT INTO public.authors VALUES (1, 'Le Guin'), (2, 'Lem');
    INSERT INTO public.books VALUES (1, 1, 'The Dispossessed'), (2, 2, 'Solaris');
"""

OUTSIDE = """
    CREATE SCHEMA reports;
    CREATE VIEW reports.per_author AS SELECT author, count(*) FROM public.books GROUP BY author;
    CREATE TABLE reports.favourites (book int REFERENCES public.books);
    CREATE VIEW public.made_later AS SELECT name FROM public.authors;
"""


def _run(dsn: str, script: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script)


def _rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_whole_clean_restore_names_what_outside_the_snapshot_depends_on_its_tables(make_db, tmp_path):
    source, target = make_db("cdsrc"), make_db("cdtgt")
    _run(source, SCHEMA)
    snap = backupkit.backup(source, tmp_path, schemas=["public"], progress=False).path
    backupkit.restore(snap, target, progress=False)
    _run(target, OUTSIDE + "DELETE FROM public.books WHERE id = 2")

    dry = run_cli("restore", snap, "--dsn", target, "--clean", "--dry-run")
    real = run_cli("restore", snap, "--dsn", target, "--clean")

    for run in (dry, real):
        assert run.returncode == 9, run.stdout + run.stderr
        assert "nothing was changed" in run.stderr
        assert (
            "`--clean` drops and makes again public.authors, but these depend on it and are not in the "
            "snapshot (the restore would not make them again): view public.made_later;"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again public.books, but these depend on it and are not in the "
            "snapshot (the restore would not make them again): foreign key favourites_book_fkey of "
            "reports.favourites, view reports.per_author;"
        ) in run.stderr
        # The snapshot's own view and foreign key are dropped and made again with their tables.
        assert "public.titles" not in run.stderr and "books_author_fkey" not in run.stderr
    assert _rows(target, "SELECT count(*) FROM public.books") == [(1,)]  # unchanged

    _run(target, "DROP SCHEMA reports CASCADE; DROP VIEW public.made_later")
    again = run_cli("restore", snap, "--dsn", target, "--clean")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _rows(target, "SELECT * FROM public.titles ORDER BY 1") == [
        ("Solaris", "Lem"),
        ("The Dispossessed", "Le Guin"),
    ]
