"""Partial restores of tables that inherit (``INHERITS``, the older form of partitioning).

``--table`` of a child alone, into a database without its parent, passed the dry run and then
failed on 'relation does not exist'; now planning names the parent to bring along.
"""

from __future__ import annotations

from helpers import run_cli, run_sql, sql_rows

import backupkit

SCHEMA = """
    CREATE TABLE public.measures (id int PRIMARY KEY, v text);
    CREATE TABLE public.measures_2026 (extra int) INHERITS (public.measures);
    INSERT INTO public.measures VALUES (1, 'own');
    INSERT INTO public.measures_2026 VALUES (2, 'child', 5), (3, 'child', 6);
"""


def test_a_child_table_without_its_parent_is_refused_when_planning(make_db, tmp_path):
    source, target = make_db("inhsrc"), make_db("inhtgt")
    run_sql(source, SCHEMA)
    snap = backupkit.backup(source, tmp_path, progress=False).path

    for extra in (["--dry-run"], []):
        run = run_cli("restore", snap, "--dsn", target, "--table", "public.measures_2026", *extra)
        assert run.returncode == 9, run.stdout + run.stderr
        assert (
            "public.measures_2026 inherits from public.measures, which the target does not have and this "
            "restore does not make: restore public.measures too (`--table`), or make it first"
        ) in run.stderr
    assert sql_rows(target, "SELECT to_regclass('public.measures_2026')") == [(None,)]

    both = run_cli("restore", snap, "--dsn", target, "--table", "public.measures_2026", "--table", "public.measures")
    assert both.returncode == 0, both.stdout + both.stderr
    # The parent's own row once, the child's through the parent too: as in the source.
    assert sql_rows(target, "SELECT id, v FROM public.measures ORDER BY id") == [(1, "own"), (2, "child"), (3, "child")]
    assert sql_rows(target, "SELECT id FROM ONLY public.measures") == [(1,)]


def test_a_child_table_restores_alone_where_its_parent_is(make_db, tmp_path):
    source, target = make_db("inhsrc2"), make_db("inhtgt2")
    run_sql(source, SCHEMA)
    snap = backupkit.backup(source, tmp_path, progress=False).path
    run_sql(target, "CREATE TABLE public.measures (id int PRIMARY KEY, v text)")

    run = run_cli("restore", snap, "--dsn", target, "--table", "public.measures_2026")

    assert run.returncode == 0, run.stdout + run.stderr
    assert sql_rows(target, "SELECT id, extra FROM public.measures_2026 ORDER BY id") == [(2, 5), (3, 6)]
