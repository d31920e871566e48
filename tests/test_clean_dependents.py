"""A whole-snapshot ``restore --clean`` into a database where something outside the snapshot
depends on its tables: another schema's view and foreign key, a view made after the backup.

pg_restore --clean drops each table of the snapshot to make it again; those dependents are not
in the snapshot, so the DROP failed and the restore rolled back, after a dry run that passed.
"""

from __future__ import annotations

import pytest
from helpers import run_cli, run_sql, sql_rows

import backupkit


def clean_runs(snap, dsn: str) -> tuple:
    """A whole-snapshot `--clean` restore's dry run, then the real run, by the CLI."""
    dry = run_cli("restore", snap, "--dsn", dsn, "--clean", "--dry-run")
    return dry, run_cli("restore", snap, "--dsn", dsn, "--clean")


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


def test_whole_clean_restore_names_what_outside_the_snapshot_depends_on_its_tables(make_db, tmp_path):
    source, target = make_db("cdsrc"), make_db("cdtgt")
    run_sql(source, SCHEMA)
    snap = backupkit.backup(source, tmp_path, schemas=["public"], progress=False).path
    backupkit.restore(snap, target, progress=False)
    run_sql(target, OUTSIDE + "DELETE FROM public.books WHERE id = 2")

    dry, real = clean_runs(snap, target)

    for run in (dry, real):
        assert run.returncode == 9, run.stdout + run.stderr
        assert "nothing was changed" in run.stderr
        assert (
            "`--clean` drops and makes again public.authors, but these depend on it and the restore "
            "would not drop and make them again: view public.made_later;"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again public.books, but these depend on it and the restore "
            "would not drop and make them again: foreign key favourites_book_fkey of "
            "reports.favourites, view reports.per_author;"
        ) in run.stderr
        # The snapshot's own view and foreign key are dropped and made again with their tables.
        assert "public.titles" not in run.stderr and "books_author_fkey" not in run.stderr
    assert sql_rows(target, "SELECT count(*) FROM public.books") == [(1,)]  # unchanged

    run_sql(target, "DROP SCHEMA reports CASCADE; DROP VIEW public.made_later")
    again = run_cli("restore", snap, "--dsn", target, "--clean")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sql_rows(target, "SELECT * FROM public.titles ORDER BY 1") == [
        ("Solaris", "Lem"),
        ("The Dispossessed", "Le Guin"),
    ]


def test_a_key_or_policy_added_after_the_backup_between_the_snapshots_own_tables(make_db, tmp_path):
    """A later migration's foreign key or policy on one of the snapshot's tables, reading another:
    pg_restore drops the archive's keys first, then its tables in reverse order, so a new key
    always stood in the way, and a new policy when its table was dropped after the one it reads;
    a policy whose table is dropped first goes with it."""
    source, target = make_db("cdsrc2"), make_db("cdtgt2")
    run_sql(
        source,
        """CREATE TABLE public.a_child (id int PRIMARY KEY, p int);
           CREATE TABLE public.b_parent (id int PRIMARY KEY);
           CREATE TABLE public.c_docs (id int PRIMARY KEY, member int);
           CREATE TABLE public.z_child (id int PRIMARY KEY, p int);
           INSERT INTO public.b_parent VALUES (1); INSERT INTO public.a_child VALUES (1, 1);
           INSERT INTO public.z_child VALUES (1, 1); INSERT INTO public.c_docs VALUES (1, 1)""",
    )
    snap = backupkit.backup(source, tmp_path, progress=False).path
    backupkit.restore(snap, target, progress=False)
    run_sql(
        target,
        """ALTER TABLE public.z_child ADD FOREIGN KEY (p) REFERENCES public.b_parent;
           ALTER TABLE public.a_child ENABLE ROW LEVEL SECURITY;
           CREATE POLICY members ON public.a_child USING (p IN (SELECT member FROM public.c_docs));
           ALTER TABLE public.z_child ENABLE ROW LEVEL SECURITY;
           CREATE POLICY parents ON public.z_child USING (p IN (SELECT id FROM public.b_parent))""",
    )

    dry = run_cli("restore", snap, "--dsn", target, "--clean", "--dry-run")

    assert dry.returncode == 9, dry.stdout + dry.stderr
    assert "public.b_parent, but these depend on it and the restore would not" in dry.stderr
    assert "foreign key z_child_p_fkey of public.z_child;" in dry.stderr
    assert "public.c_docs, but these depend on it and the restore would not" in dry.stderr
    assert "policy members on public.a_child;" in dry.stderr
    assert "policy parents" not in dry.stderr  # public.z_child, and it with it, is dropped first

    run_sql(target, "ALTER TABLE public.z_child DROP CONSTRAINT z_child_p_fkey; DROP POLICY members ON public.a_child")
    real = run_cli("restore", snap, "--dsn", target, "--clean")
    assert real.returncode == 0, real.stdout + real.stderr
    assert sql_rows(target, "SELECT count(*) FROM pg_policy WHERE polname = 'parents'") == [(0,)]


def test_supabase_trigger_on_auth_users_stops_a_whole_clean_restore_of_public(supabase_project, tmp_path):
    """Supabase's own quickstart: trigger on_auth_user_created on auth.users calls
    public.handle_new_user().  A whole `--clean` restore of a `public` snapshot into the live
    project drops that function to make it again, while the platform's auth.users and its
    trigger stay: the dry run passed and the real run rolled back.  Naming the schema, as the
    message says, replaces the rows in place and keeps the function."""
    project = supabase_project.app_project()
    snap = backupkit.backup(project, tmp_path, schemas=["public"], progress=False).path

    dry, real = clean_runs(snap, project)

    for run in (dry, real):
        assert run.returncode == 9, run.stdout + run.stderr
        assert (
            "`--clean` drops and makes again public.handle_new_user(), but these depend on it and the restore "
            "would not drop and make them again: trigger on_auth_user_created on auth.users;"
        ) in run.stderr
    named = run_cli("restore", snap, "--dsn", project, "--schema", "public", "--clean", "--dry-run")
    assert named.returncode == 0, named.stdout + named.stderr


ROUTINES = """
    CREATE TABLE public.orders (id int PRIMARY KEY, state text);
    CREATE FUNCTION public.new_id() RETURNS int LANGUAGE sql AS 'SELECT 7';
    CREATE TYPE public.mood AS ENUM ('sad', 'ok');
    CREATE FUNCTION public.to_mood(int) RETURNS public.mood LANGUAGE sql AS $$SELECT 'ok'::public.mood$$;
    CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';
    INSERT INTO public.orders VALUES (1, 'open');
"""

ON_ROUTINES = """
    CREATE SCHEMA app;
    CREATE TABLE app.events (id int DEFAULT public.new_id(), feeling public.mood, copy public.orders,
                             moods public.mood[]);
    CREATE FUNCTION app.count_orders() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM public.orders; END;
    CREATE CAST (int AS public.mood) WITH FUNCTION public.to_mood(int);
    CREATE EVENT TRIGGER watch_ddl ON ddl_command_end EXECUTE FUNCTION public.on_ddl();
    CREATE VIEW app.next_ids AS SELECT public.new_id() AS id;
    CREATE FUNCTION public.made_later() RETURNS int LANGUAGE sql AS 'SELECT 1';
    CREATE VIEW app.later AS SELECT public.made_later() AS one;
"""


def test_whole_clean_restore_names_what_outside_depends_on_its_functions_and_types(make_db, tmp_path):
    """Another schema's column default calling public.new_id(), a view calling it and a column
    of the public.mood type: pg_restore --clean drops the function and the type to make them
    again, and the DROP failed in the real run (rolled back) after a dry run that passed.  A
    function made after the backup is not the snapshot's: the restore leaves it, and what uses it."""
    target = make_db("cdfn")
    run_sql(target, ROUTINES)
    snap = backupkit.backup(target, tmp_path, schemas=["public"], progress=False).path
    run_sql(target, ON_ROUTINES + "UPDATE public.orders SET state = 'paid'")

    dry, real = clean_runs(snap, target)
    for run in (dry, real):
        assert run.returncode == 9, run.stdout + run.stderr
        assert (
            "`--clean` drops and makes again function public.new_id(), but these depend on it and the restore "
            "would not drop and make them again: default value for column id of table app.events, view app.next_ids;"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again type public.mood, but these depend on it and the restore would not "
            "drop and make them again: cast from integer to mood, column feeling of table app.events, "
            "column moods of table app.events;"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again function public.to_mood(integer), but these depend on it and the "
            "restore would not drop and make them again: cast from integer to mood;"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again function public.on_ddl(), but these depend on it and the restore "
            "would not drop and make them again: event trigger watch_ddl;"
        ) in run.stderr
        assert (  # its SQL-standard body reads the table
            "`--clean` drops and makes again table public.orders, but these depend on it and the restore would not "
            "drop and make them again: function app.count_orders();"
        ) in run.stderr
        assert (
            "`--clean` drops and makes again type public.orders, but these depend on it and the restore would not "
            "drop and make them again: column copy of table app.events;"
        ) in run.stderr
        assert "made_later" not in run.stderr
    assert sql_rows(target, "SELECT state FROM public.orders") == [("paid",)]  # unchanged

    run_sql(
        target,
        "DROP TABLE app.events; DROP VIEW app.next_ids; DROP FUNCTION app.count_orders();"
        "DROP CAST (int AS public.mood); DROP EVENT TRIGGER watch_ddl",
    )
    again = run_cli("restore", snap, "--dsn", target, "--clean")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sql_rows(target, "SELECT state FROM public.orders") == [("open",)]
    assert sql_rows(target, "SELECT one FROM app.later") == [(1,)]


def test_whole_clean_restore_sets_aside_the_triggers_that_call_its_functions_and_puts_them_back(make_db, tmp_path):
    """A trigger on a partitioned table of another schema calls public.stamp(), which the
    restore drops and makes again: it is set aside with its partitions' clones and made again
    as it is, and the restore goes through (it was refused, naming each partition's clone)."""
    target = make_db("cdtrg")
    run_sql(
        target,
        """
        CREATE TABLE public.orders (id int PRIMARY KEY);
        CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.at := 1; RETURN NEW; END';
        CREATE FUNCTION public.loud() RETURNS boolean LANGUAGE sql AS 'SELECT true';
        INSERT INTO public.orders VALUES (1);
        """,
    )
    snap = backupkit.backup(target, tmp_path, schemas=["public"], progress=False).path
    run_sql(
        target,
        """
        CREATE SCHEMA events;
        CREATE TABLE events.log (day int, at int) PARTITION BY RANGE (day);
        CREATE TABLE events.log_1 PARTITION OF events.log FOR VALUES FROM (0) TO (10);
        CREATE TABLE events.log_2 PARTITION OF events.log FOR VALUES FROM (10) TO (20);
        CREATE TRIGGER stamp BEFORE INSERT ON events.log FOR EACH ROW EXECUTE FUNCTION public.stamp();
        COMMENT ON TRIGGER stamp ON events.log IS 'stamps every row';
        ALTER TABLE events.log_2 DISABLE TRIGGER stamp;
        CREATE FUNCTION events.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
        CREATE TABLE events.plain (id int);
        CREATE TRIGGER noisy BEFORE INSERT ON events.plain FOR EACH ROW WHEN (public.loud())
          EXECUTE FUNCTION events.noop();
        INSERT INTO public.orders VALUES (2);
        """,
    )
    dry = run_cli("restore", snap, "--dsn", target, "--clean", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert 'setting aside trigger "stamp" on events.log' in dry.stdout + dry.stderr
    real = run_cli("restore", snap, "--dsn", target, "--clean")
    assert real.returncode == 0, real.stdout + real.stderr
    assert sql_rows(target, "SELECT id FROM public.orders") == [(1,)]
    run_sql(target, "INSERT INTO events.log (day) VALUES (3), (13)")
    # It fires, on the function the restore made, and not where it was switched off.
    assert sql_rows(target, "SELECT day, at FROM events.log ORDER BY 1") == [(3, 1), (13, None)]
    assert sql_rows(
        target, "SELECT tgrelid::regclass::text, tgenabled::text FROM pg_trigger WHERE tgname = 'stamp' ORDER BY 1"
    ) == [("events.log", "O"), ("events.log_1", "O"), ("events.log_2", "D")]
    assert sql_rows(
        target, "SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'stamp' AND tgparentid = 0"
    ) == [("stamps every row",)]
    # A trigger whose WHEN clause calls the snapshot's function: set aside and put back too.
    assert sql_rows(
        target, "SELECT pg_get_triggerdef(oid) LIKE '%WHEN (loud())%' FROM pg_trigger WHERE tgname = 'noisy'"
    ) == [(True,)]


def test_what_changed_since_the_restore_was_planned_is_not_undone(make_db, tmp_path):
    """The set-aside trigger's definition is read when the restore is planned; switched off
    (or changed) between that and the restore, putting the planned definition back would
    undo it without a word.  The restore checks, the table locked, before dropping anything."""
    import psycopg

    from backupkit.errors import RestoreError
    from backupkit.pg.schema import toc
    from backupkit.recovery.in_the_way import plan_in_the_way, still_as_planned

    target = make_db("cdrace")
    run_sql(
        target,
        """
        CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
        CREATE SCHEMA events;
        CREATE TABLE events.log (id int);
        CREATE TRIGGER stamp BEFORE INSERT ON events.log FOR EACH ROW EXECUTE FUNCTION public.stamp();
        """,
    )
    snap = backupkit.backup(target, tmp_path, schemas=["public"], progress=False).path
    entries = toc(snap / "schema" / "schema.dump")
    with psycopg.connect(target) as conn:
        planned = plan_in_the_way(conn, target, entries, ["public"])
    assert [p.item["name"] for p in planned.put_back] == ["stamp"]
    with psycopg.connect(target) as conn:
        still_as_planned(conn, planned.put_back)  # nothing changed: no error
    run_sql(target, "ALTER TABLE events.log DISABLE TRIGGER stamp")
    with psycopg.connect(target) as conn, pytest.raises(RestoreError, match="changed since the restore was planned"):
        still_as_planned(conn, planned.put_back)


def test_materialized_views_are_refreshed_with_the_set_aside_policies_back_in_place(make_db, tmp_path):
    """A materialized view of the snapshot, owned by a role row-level security applies to,
    reads another schema's table through a restrictive policy that calls one of the
    snapshot's functions.  The policy is set aside while the restore replaces the function;
    the view was refreshed before it was back, and held the rows the policy hides."""
    target = make_db("cdmv")
    run_sql(
        target,
        """
        DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mv_reader') THEN
          CREATE ROLE mv_reader NOLOGIN; END IF; END $$;
        CREATE TABLE public.orders (id int PRIMARY KEY);
        CREATE SCHEMA app;
        CREATE TABLE app.t (id int);
        INSERT INTO app.t VALUES (1), (2);
        GRANT USAGE ON SCHEMA app TO mv_reader;
        GRANT SELECT ON app.t TO mv_reader;
        CREATE FUNCTION public.visible(int) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT $1 = 1';
        ALTER TABLE app.t ENABLE ROW LEVEL SECURITY;
        CREATE POLICY everyone ON app.t FOR SELECT USING (true);
        CREATE POLICY only_visible ON app.t AS RESTRICTIVE FOR SELECT USING (public.visible(id));
        CREATE MATERIALIZED VIEW public.mv AS SELECT id FROM app.t;
        ALTER MATERIALIZED VIEW public.mv OWNER TO mv_reader;
        REFRESH MATERIALIZED VIEW public.mv;
        """,
    )
    assert sql_rows(target, "SELECT id FROM public.mv") == [(1,)]
    snap = backupkit.backup(target, tmp_path, schemas=["public"], progress=False).path
    real = run_cli("restore", snap, "--dsn", target, "--clean", "--owner")
    assert real.returncode == 0, real.stdout + real.stderr
    assert sql_rows(target, "SELECT id FROM public.mv") == [(1,)]
