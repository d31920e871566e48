"""The restore's last steps that run one statement per object in a savepoint (pg_cron jobs,
the project's objects on the platform's tables): an object the target refuses is a warning
and costs nothing else, but a cancelled statement (the restore's time limit, a lock wait,
a lost connection) is the restore's failure, never a warning beside a reported success."""

from __future__ import annotations

import psycopg
import pytest

from backupkit.pg.cron import Job, Statement, schedule
from backupkit.recovery.left_out import Remade, make_again

POLICY = {"kind": "policy", "name": "p", "schema": "storage", "table": "objects"}


def test_a_refused_object_is_a_warning_and_the_transaction_goes_on(make_db):
    with psycopg.connect(make_db()) as conn:
        warnings = make_again(conn, [Remade(POLICY, "CREATE POLICY p ON storage.objects USING (true)")])
        assert warnings == [
            'could not make policy "p" on storage.objects again: schema "storage" does not exist; its definition '
            "is in the snapshot's schema/platform.dump (pg_restore -f - shows it)"
        ]
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the savepoint kept the transaction usable


def test_a_cancelled_statement_ends_the_step_instead_of_becoming_a_warning(make_db):
    dsn = make_db()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            make_again(conn, [Remade(POLICY, "SELECT pg_sleep(5)")])
    job = Job(name="j", schedule="* * * * *", command="SELECT 1", database="d", username="u")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            schedule(conn, [Statement("SELECT pg_sleep(5), %s", ("x",), job)])
