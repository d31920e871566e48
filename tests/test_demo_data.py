"""The demo database: shape, determinism, RLS and roles, FKs, mutation, refusal."""

from __future__ import annotations

import psycopg
import pytest

from backupkit.demo.data import BASE_ROWS, TABLES, create_demo, mutate_demo, schema_sql
from backupkit.errors import ConfigError

SCALE = 0.02
PUBLIC_TABLES = {"profiles", "products", "orders", "order_items", "events", "audit_log"}
ROLES = ("anon", "authenticated", "service_role")

# (child, column, parent, parent column) for every foreign key in the demo.
FOREIGN_KEYS = [
    ("public.profiles", "id", "auth.users", "id"),
    ("public.orders", "profile_id", "public.profiles", "id"),
    ("public.order_items", "order_id", "public.orders", "id"),
    ("public.order_items", "product_id", "public.products", "id"),
    ("public.events", "profile_id", "public.profiles", "id"),
    ("storage.objects", "bucket_id", "storage.buckets", "id"),
]


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def fingerprints(dsn: str) -> dict[str, str]:
    """md5 of every table's rows (as text, in a fixed order) plus the sequence positions."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        out = {
            t: conn.execute(
                f"SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x"
            ).fetchone()[0]
            for t in TABLES
        }
        out["sequences"] = conn.execute(
            "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ',' ORDER BY sequencename)"
            " FROM pg_sequences WHERE schemaname = 'public'"
        ).fetchone()[0]
    return out


@pytest.fixture(scope="module")
def demo(pg_server):
    """One demo database at SCALE shared by the read-only tests of this module."""
    dsn = pg_server.createdb("demo")
    reported = create_demo(dsn, scale=SCALE)
    yield dsn, reported
    pg_server.dropdb(dsn)


def test_schema_sql_ships_with_the_package():
    ddl = schema_sql()
    assert "CREATE TABLE public.orders" in ddl
    assert "ENABLE ROW LEVEL SECURITY" in ddl


def test_create_demo_reports_counts_that_match_the_tables(demo):
    dsn, reported = demo
    assert list(reported) == list(TABLES)
    assert all(n > 0 for n in reported.values()), reported
    assert reported == counts(dsn)
    expected = {
        "auth.users": round(BASE_ROWS["users"] * SCALE),
        "public.profiles": round(BASE_ROWS["users"] * SCALE),
        "public.products": round(BASE_ROWS["products"] * SCALE),
        "public.orders": round(BASE_ROWS["orders"] * SCALE),
        "public.events": round(BASE_ROWS["events"] * SCALE),
        "storage.objects": round(BASE_ROWS["objects"] * SCALE),
        "storage.buckets": 3,
    }
    assert {t: reported[t] for t in expected} == expected
    # 1 to 5 lines per order
    assert reported["public.orders"] <= reported["public.order_items"] <= 5 * reported["public.orders"]


def test_create_demo_is_deterministic(make_db):
    a, b = make_db("demo_a"), make_db("demo_b")
    assert create_demo(a, scale=SCALE) == create_demo(b, scale=SCALE)
    first = fingerprints(a)
    assert first == fingerprints(b)
    # ... and so is a day of traffic on top.
    assert mutate_demo(a) == mutate_demo(b)
    second = fingerprints(a)
    assert second == fingerprints(b)
    assert second["public.orders"] != first["public.orders"]


def test_rls_is_enabled_on_every_public_table(demo):
    dsn, _ = demo
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        ).fetchall()
        policies = dict(
            conn.execute(
                "SELECT tablename, count(*) FROM pg_policies WHERE schemaname = 'public' GROUP BY 1"
            ).fetchall()
        )
    assert {name for name, _ in rows} == PUBLIC_TABLES
    assert all(rls for _, rls in rows), rows
    assert {"profiles", "products", "orders", "order_items", "events"} <= set(policies)


def test_roles_exist_and_have_supabase_grants(demo):
    dsn, _ = demo
    with psycopg.connect(dsn) as conn:
        roles = dict(
            conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),)).fetchall()
        )
        assert set(roles) == set(ROLES)
        assert not any(roles.values()), "demo roles must be NOLOGIN"
        for role in ROLES:
            for table in ("public.profiles", "public.orders"):
                assert conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (role, table)).fetchone()[0]
            assert conn.execute("SELECT has_schema_privilege(%s, 'auth', 'USAGE')", (role,)).fetchone()[0]


def test_policies_filter_rows_by_auth_uid(demo):
    dsn, _ = demo
    with psycopg.connect(dsn) as conn:
        profile_id, own_orders = conn.execute(
            "SELECT profile_id, count(*) FROM public.orders GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchone()
        total_orders = conn.execute("SELECT count(*) FROM public.orders").fetchone()[0]
        assert 0 < own_orders < total_orders
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(profile_id),))
        assert conn.execute("SELECT auth.uid()").fetchone()[0] == profile_id
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == own_orders
        assert conn.execute("SELECT count(*) FROM public.audit_log").fetchone()[0] == 0
        conn.execute("SET LOCAL ROLE anon")
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM public.products").fetchone()[0] > 0
        conn.rollback()


def test_foreign_keys_hold(demo):
    dsn, _ = demo
    with psycopg.connect(dsn) as conn:
        fks = conn.execute(
            "SELECT count(*) FILTER (WHERE convalidated), count(*) FROM pg_constraint"
            " WHERE contype = 'f' AND connamespace::regnamespace::text IN ('public', 'auth', 'storage')"
        ).fetchone()
        assert fks == (len(FOREIGN_KEYS), len(FOREIGN_KEYS))
        for child, col, parent, pcol in FOREIGN_KEYS:
            orphans = conn.execute(
                f"SELECT count(*) FROM {child} c WHERE c.{col} IS NOT NULL"
                f" AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pcol} = c.{col})"
            ).fetchone()[0]
            assert orphans == 0, f"{child}.{col} -> {parent}"
        # Every order's total is its lines plus the shipping fee.
        wrong = conn.execute(
            "SELECT count(*) FROM public.orders o"
            " WHERE o.total <> (SELECT coalesce(sum(i.line_total), 0) FROM public.order_items i"
            "                    WHERE i.order_id = o.id) + (o.shipping ->> 'fee')::numeric"
        ).fetchone()[0]
        assert wrong == 0


def test_sequences_continue_after_the_loaded_ids(make_db):
    dsn = make_db("demo")
    reported = create_demo(dsn, scale=SCALE)
    with psycopg.connect(dsn) as conn:
        pid = conn.execute(
            "INSERT INTO public.products (sku, name, price) VALUES ('NEW-1', 'New', 1) RETURNING id"
        ).fetchone()[0]
        assert pid == reported["public.products"] + 1
        profile = conn.execute("SELECT id FROM public.profiles LIMIT 1").fetchone()[0]
        oid = conn.execute("INSERT INTO public.orders (profile_id) VALUES (%s) RETURNING id", (profile,)).fetchone()[0]
        assert oid == reported["public.orders"] + 1
        eid = conn.execute("INSERT INTO public.events (kind) VALUES ('x') RETURNING id").fetchone()[0]
        assert eid == reported["public.events"] + 1


def test_mutate_demo_changes_what_it_reports(make_db):
    dsn = make_db("demo")
    create_demo(dsn, scale=SCALE)
    snapshot_sql = {
        "orders": "SELECT id, status::text, total, updated_at FROM public.orders",
        "profiles": "SELECT id::text, settings::text, tags, updated_at FROM public.profiles",
    }

    def snapshot():
        with psycopg.connect(dsn) as conn:
            return {k: {r[0]: r for r in conn.execute(q).fetchall()} for k, q in snapshot_sql.items()}

    before, rows_before = snapshot(), counts(dsn)
    result = mutate_demo(dsn)
    after, rows_after = snapshot(), counts(dsn)

    assert set(result) == {"updated", "inserted", "deleted"}
    assert all(n > 0 for n in result.values()), result
    changed = sum(1 for k in before for key, row in before[k].items() if after[k][key] != row)
    assert changed == result["updated"]
    delta = {t: rows_after[t] - rows_before[t] for t in TABLES}
    assert delta["public.orders"] + delta["public.order_items"] == result["inserted"]
    assert delta["public.orders"] > 0 and delta["public.order_items"] >= delta["public.orders"]
    assert delta["public.events"] == -result["deleted"]
    assert delta["public.audit_log"] > 0  # the orders trigger logged the status changes
    untouched = set(TABLES) - {"public.orders", "public.order_items", "public.events", "public.audit_log"}
    assert all(delta[t] == 0 for t in untouched), delta


def test_create_demo_refuses_a_populated_database(demo):
    dsn, reported = demo
    with pytest.raises(ConfigError) as info:
        create_demo(dsn, scale=SCALE)
    assert "public.orders" in str(info.value)
    assert info.value.hint
    assert counts(dsn) == reported


def test_mutate_demo_needs_a_demo(make_db):
    with pytest.raises(ConfigError):
        mutate_demo(make_db("empty"))


def test_create_demo_rejects_a_nonpositive_scale(make_db):
    with pytest.raises(ConfigError):
        create_demo(make_db("empty"), scale=0)


def test_create_demo_full_scale(make_db):
    reported = create_demo(make_db("demo_full"), scale=1.0)
    total = sum(reported.values())
    assert 200_000 <= total <= 600_000, reported
    assert reported["public.orders"] == BASE_ROWS["orders"]
