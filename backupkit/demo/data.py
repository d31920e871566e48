"""A demo database shaped like a Supabase project, filled with deterministic data.

``create_demo`` runs ``backupkit/sql/demo_schema.sql`` (roles ``anon``,
``authenticated``, ``service_role``; schemas ``auth``, ``storage`` and
``public`` with RLS, policies, enums, jsonb, arrays, bytea, a generated column)
and fills it entirely with server-side SQL: ``generate_series`` for the rows,
``md5`` of a fixed seed string for every "random" choice.  The same ``scale``
therefore gives byte-for-byte identical content in every fresh database, which
lets tests compare a restore against a second, independently built copy.

The text deliberately contains awkward values a backup must carry unchanged:
non-ASCII names, quotes, backslashes, tabs and newlines, the literal ``\\N``,
empty strings next to NULLs, ``infinity`` timestamps, empty and NULL bytea,
array elements that need quoting (``"NULL"``, ``a,b``) and JSON ``null``.

``mutate_demo`` then simulates one day of application traffic (status changes,
new orders, event retention, profile edits) so incremental or repeated backups
have something to notice.

Row counts at ``scale=1``: 5,000 users and profiles, 2,000 products, 60,000
orders, about 180,000 order items, 50,000 events, 5,000 storage objects.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import psycopg

from ..errors import ConfigError, ConnectionFailed
from ..pg.rows import one_row

#: Rows per table at ``scale=1`` (order_items follows from orders: 1-5 lines each).
BASE_ROWS = {
    "users": 5_000,
    "products": 2_000,
    "orders": 60_000,
    "events": 50_000,
    "objects": 5_000,
}

#: Every table create_demo fills, in load order.
TABLES = (
    "auth.users",
    "storage.buckets",
    "storage.objects",
    "public.profiles",
    "public.products",
    "public.orders",
    "public.order_items",
    "public.events",
    "public.audit_log",
)

#: Objects whose presence means "this database is not empty enough for the demo".
_MARKERS = (
    "public.orders",
    "public.profiles",
    "public.products",
    "public.order_items",
    "public.events",
    "public.audit_log",
    "auth.users",
    "storage.objects",
    "storage.buckets",
)


def schema_sql() -> str:
    """The demo DDL, read from the package (``backupkit/sql/demo_schema.sql``)."""
    try:
        return resources.files("backupkit").joinpath("sql/demo_schema.sql").read_text(encoding="utf-8")
    except (NotADirectoryError, TypeError, FileNotFoundError):
        # A stale editable install can present backupkit as a namespace
        # package whose path resources cannot walk; the file sits next to us.
        return (Path(__file__).parent / "sql" / "demo_schema.sql").read_text(encoding="utf-8")


def _connect(dsn: str) -> psycopg.Connection:
    try:
        conn = psycopg.connect(dsn)
    except psycopg.OperationalError as exc:
        # psycopg's message names host and port but never the password.
        raise ConnectionFailed(
            f"cannot connect to the demo database: {str(exc).strip()}",
            hint="check that the server runs and the DSN's user, password and database are right",
        ) from None
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


# ---------------------------------------------------------------------------
# Deterministic pseudo-randomness, as session-local SQL functions.  Every row
# takes md5(<table>:<key>) once; part(h, k) reads its k-th 32-bit word (k=0..3).
# ---------------------------------------------------------------------------
_HELPERS = [
    """CREATE FUNCTION pg_temp.part(h text, k int) RETURNS bigint
         LANGUAGE sql IMMUTABLE PARALLEL SAFE
         AS $$ SELECT ('x' || substr(h, 1 + 8 * k, 8))::bit(32)::bigint $$""",
    """CREATE FUNCTION pg_temp.unit(h text, k int) RETURNS float8
         LANGUAGE sql IMMUTABLE PARALLEL SAFE
         AS $$ SELECT ('x' || substr(h, 1 + 8 * k, 8))::bit(32)::bigint / 4294967296.0 $$""",
    """CREATE FUNCTION pg_temp.pick(arr anyarray, h text, k int) RETURNS anyelement
         LANGUAGE sql IMMUTABLE PARALLEL SAFE
         AS $$ SELECT arr[1 + ('x' || substr(h, 1 + 8 * k, 8))::bit(32)::bigint % cardinality(arr)] $$""",
]

_FIRST = (
    "ARRAY['Ada','Grace','Alan','Linus','Margaret','Edsger','Barbara','Donald','Frances','Ken',"
    "'Zoë','José','Søren','Łukasz','Aoife','Chidi','Mei','Hiro','Ana','Ørjan','Noor','Émile',"
    "'Priya','Dmitri']"
)
_LAST = (
    "ARRAY['Lovelace','Hopper','Turing','Torvalds','Hamilton','Dijkstra','Liskov','Knuth','Allen',"
    "'Thompson','Müller','García','Kierkegaard','Nowak','O''Brien','Okafor','王','山田','Silva',"
    "'Ødegaard','Haddad','Zola','Patel','Ivanov']"
)

_PEOPLE = f"""
CREATE TEMP TABLE demo_people ON COMMIT DROP AS
SELECT i, h, md5('user:' || i)::uuid AS id,
       pg_temp.pick({_FIRST}, h, 0) AS first_name,
       pg_temp.pick({_LAST}, h, 1) AS last_name,
       '2023-01-01 00:00:00+00'::timestamptz
         + interval '365 days' * ((i - 1)::float8 / %(n)s)
         + interval '1 second' * (pg_temp.part(h, 2) % 86400) AS created_at
  FROM generate_series(1, %(n)s::int) i, md5('person:' || i) h
"""

_USERS = """
INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                        last_sign_in_at, raw_app_meta_data, raw_user_meta_data, is_super_admin,
                        phone, banned_until, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', id, 'authenticated', 'authenticated',
       lower(first_name || '.' || replace(last_name, '''', '')) || i || '@example.com',
       '$2a$10$' || substr(md5('pw:' || i) || md5('salt:' || i), 1, 53),
       CASE WHEN pg_temp.part(h, 3) % 10 <> 0 THEN created_at + interval '1 minute' * (pg_temp.part(h, 3) % 600) END,
       CASE WHEN pg_temp.part(h, 3) % 7 <> 0 THEN created_at + interval '1 hour' * (pg_temp.part(h, 3) % 9000) END,
       jsonb_build_object('provider', p.provider, 'providers', jsonb_build_array(p.provider)),
       jsonb_build_object('full_name', first_name || ' ' || last_name,
                          'locale', pg_temp.pick(ARRAY['en-GB','de-DE','fr-FR','ja-JP','pt-BR'], h, 1),
                          'marketing_opt_in', pg_temp.part(h, 2) % 3 = 0),
       i = 1,
       CASE WHEN pg_temp.part(h, 1) % 10 < 3 THEN '+1555' || lpad(i::text, 7, '0') END,
       CASE WHEN i % 997 = 0 THEN 'infinity'::timestamptz END,
       false, created_at, created_at + interval '1 second' * (pg_temp.part(h, 0) % 100000)
  FROM demo_people,
       LATERAL (SELECT pg_temp.pick(ARRAY['email','email','email','google','github'], h, 3) AS provider) p
 ORDER BY i
"""

_PROFILES = """
INSERT INTO public.profiles (id, username, full_name, avatar, tags, settings, plan, created_at, updated_at)
SELECT id,
       lower(first_name) || '_' || i,
       first_name || ' ' || last_name,
       CASE WHEN i % 101 = 0 THEN '\\x'::bytea
            WHEN i % 3 = 0 THEN '\\x89504e470d0a1a0a'::bytea
                                || decode(md5('avatar:' || i) || md5('avatar2:' || i), 'hex') END,
       ARRAY(SELECT t FROM unnest(ARRAY['beta','vip','early adopter','newsletter','needs "help"','a,b','NULL'])
                           WITH ORDINALITY AS u(t, k)
              WHERE (pg_temp.part(g, 0) >> (k * 3)::int) & 7 = 0 ORDER BY k),
       jsonb_build_object('theme', pg_temp.pick(ARRAY['light','dark','system'], g, 1),
                          'notifications', jsonb_build_object('email', pg_temp.part(g, 2) % 2 = 0,
                                                              'push', pg_temp.part(g, 2) % 5 = 0),
                          'language', pg_temp.pick(ARRAY['en','de','fr','ja','pt'], g, 3),
                          'beta_features', CASE WHEN pg_temp.part(g, 1) % 4 = 0
                                                THEN '["new-checkout", "dark-mode"]'::jsonb ELSE 'null'::jsonb END),
       CASE WHEN pg_temp.part(g, 3) % 100 < 70 THEN 'free'
            WHEN pg_temp.part(g, 3) % 100 < 90 THEN 'pro'
            WHEN pg_temp.part(g, 3) % 100 < 98 THEN 'team'
            ELSE 'enterprise' END::public.plan_tier,
       created_at + interval '3 seconds',
       CASE WHEN pg_temp.part(g, 0) % 4 = 0 THEN created_at + interval '1 day' * (pg_temp.part(g, 1) % 300) END
  FROM demo_people, md5('profile:' || i) g
 ORDER BY i
"""

_PRODUCTS = """
INSERT INTO public.products (id, sku, name, price, attributes, active, tags, created_at)
SELECT i,
       'SKU-' || lpad(i::text, 6, '0'),
       pg_temp.pick(ARRAY['Classic','Compact','Deluxe','Eco','Ultra','Vintage','Smart','Rugged','Tiny','Grand'], h, 0)
         || ' ' || pg_temp.pick(ARRAY['Kettle','Lamp','Backpack','Notebook','Headphones','Mug','Chair','Tent',
                                     'Keyboard','Blender','Scarf','Bottle'], h, 1)
         || CASE WHEN pg_temp.part(h, 2) % 3 = 0
                 THEN ' ' || pg_temp.pick(ARRAY['Mk II','XL','Pro','Ç Edition','2.0'], h, 3) ELSE '' END,
       round((99 + pg_temp.part(h, 2) % 20000) / 100.0 * CASE WHEN pg_temp.part(h, 3) % 50 = 0 THEN 10 ELSE 1 END, 2),
       jsonb_build_object('color', pg_temp.pick(ARRAY['red','green','blue','black','white','oak'], h, 3),
                          'weight_g', 50 + pg_temp.part(h, 0) % 5000,
                          'dimensions_cm', jsonb_build_object('w', 1 + pg_temp.part(h, 1) % 80,
                                                              'h', 1 + pg_temp.part(h, 2) % 80,
                                                              'd', 1 + pg_temp.part(h, 3) % 40),
                          'rating', round(1 + (pg_temp.part(h, 1) % 41) / 10.0, 1),
                          'discontinued_reason', CASE WHEN pg_temp.part(h, 0) % 10 = 0
                                                      THEN to_jsonb('supplier stopped'::text) ELSE 'null'::jsonb END),
       pg_temp.part(h, 0) % 10 <> 0,
       CASE WHEN pg_temp.part(h, 2) % 4 = 0 THEN NULL
            WHEN pg_temp.part(h, 2) % 4 = 1 THEN '{}'::text[]
            ELSE ARRAY[pg_temp.pick(ARRAY['new','sale','bestseller','gift idea','eco'], h, 1)] END,
       '2023-06-01 00:00:00+00'::timestamptz + interval '1 minute' * i
  FROM generate_series(1, %(n)s::int) i, md5('product:' || i) h
 ORDER BY i
"""

# Orders lo..hi and their lines.  Lines go to a temp table first so each
# order's total (lines + shipping fee) is known when the order is inserted.
_ITEMS_TMP = """
CREATE TEMP TABLE demo_items ON COMMIT DROP AS
SELECT o AS order_id, l AS line_no, p.id AS product_id,
       CASE WHEN pg_temp.part(lh, 0) % 8 = 0 THEN 2 + pg_temp.part(lh, 1) % 4 ELSE 1 END AS quantity,
       CASE WHEN pg_temp.part(lh, 2) % 20 = 0 THEN round(p.price * 0.85, 2) ELSE p.price END AS unit_price
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) o,
       LATERAL generate_series(1, 1 + (pg_temp.part(md5('order:' || o), 0) % 5)::int) l,
       LATERAL md5('line:' || o || ':' || l) lh
  JOIN public.products p ON p.id = 1 + pg_temp.part(lh, 3) % %(nprod)s::bigint
"""

_NOTES = (
    "ARRAY['Leave at the front door', E'Please ring twice.\\nThen wait.', E'Gate code:\\t4711',"
    " 'Deliver to C:\\Users\\ana\\Desktop', '\"Fragile\" – handle with care', 'Gift 🎁 — no invoice please',"
    " '\\N', '', 'O''Neill; DROP TABLE orders; --', 'comma, separated, note']"
)

_ORDERS = f"""
INSERT INTO public.orders (id, profile_id, status, total, placed_at, updated_at, shipping, note)
OVERRIDING SYSTEM VALUE
SELECT o, prof.id,
       s.status, coalesce(it.subtotal, 0) + s.fee, s.placed_at,
       CASE WHEN s.status <> 'pending'
            THEN s.placed_at
                 + interval '1 minute' * (1 + pg_temp.part(h, 2) % CASE WHEN %(fresh)s::boolean THEN 30 ELSE 4000 END)
       END,
       CASE WHEN s.method = 'pickup'
            THEN jsonb_build_object('method', s.method, 'fee', s.fee,
                                    'store', pg_temp.pick(ARRAY['Berlin Mitte','Lisboa','Osaka'], h, 3))
            ELSE jsonb_build_object('method', s.method, 'fee', s.fee,
                    'address', jsonb_build_object(
                        'line1', (1 + pg_temp.part(h, 3) % 200) || ' '
                                 || pg_temp.pick(ARRAY['Main St','Hauptstraße','Rue de la Paix','Rua Augusta',
                                                       'Elm Road'], h, 0),
                        'city', pg_temp.pick(ARRAY['Springfield','München','Paris','Porto','Kyoto','Lagos'], h, 2),
                        'postcode', lpad((pg_temp.part(h, 1) % 99999)::text, 5, '0'),
                        'country', pg_temp.pick(ARRAY['US','DE','FR','PT','JP','NG'], h, 2)),
                    'tracking', CASE WHEN s.status IN ('shipped','delivered') THEN '1Z' || upper(substr(h, 9, 16)) END)
       END,
       CASE WHEN pg_temp.part(h, 3) % 100 < 15 THEN pg_temp.pick({_NOTES}, h, 0) END
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) o
 CROSS JOIN LATERAL md5('order:' || o) h
  JOIN demo_profiles prof
    ON prof.n = 1 + floor(%(nprof)s::int * power(pg_temp.unit(h, 1), 2))::int
  LEFT JOIN (SELECT order_id, sum(quantity * unit_price) AS subtotal FROM demo_items GROUP BY order_id) it
         ON it.order_id = o
 CROSS JOIN LATERAL (
       SELECT %(t0)s::timestamptz
                + %(span)s::interval * ((o - %(lo)s::bigint)::float8 / (%(hi)s::bigint - %(lo)s::bigint + 1))
                + interval '1 second' * (pg_temp.part(h, 2) % 600) AS placed_at,
              CASE WHEN %(fresh)s::boolean
                     THEN CASE WHEN pg_temp.part(h, 1) % 10 < 6 THEN 'pending' ELSE 'paid' END
                   WHEN pg_temp.part(h, 2) % 100 < 3 THEN 'cancelled'
                   WHEN pg_temp.part(h, 2) % 100 < 5 THEN 'refunded'
                   WHEN (o - %(lo)s::bigint) < 0.9 * (%(hi)s::bigint - %(lo)s::bigint + 1) THEN 'delivered'
                   ELSE pg_temp.pick(ARRAY['pending','paid','shipped'], h, 3) END::public.order_status AS status,
              m.method,
              CASE WHEN m.method = 'pickup' THEN 0.00
                   WHEN m.method = 'express' THEN 14.99
                   WHEN coalesce(it.subtotal, 0) >= 100 THEN 0.00
                   ELSE 4.99 END AS fee
         FROM (SELECT pg_temp.pick(ARRAY['standard','standard','standard','express','pickup'], h, 0) AS method) m
 ) s
 ORDER BY o
"""

_ITEMS = """
INSERT INTO public.order_items (order_id, line_no, product_id, quantity, unit_price)
SELECT order_id, line_no, product_id, quantity, unit_price FROM demo_items ORDER BY order_id, line_no
"""

_EVENTS = """
INSERT INTO public.events (id, profile_id, kind, payload, client_ip, created_at)
SELECT e,
       CASE WHEN pg_temp.part(h, 1) % 10 <> 0 THEN prof.id END,
       k.kind,
       CASE k.kind
         WHEN 'page_view' THEN jsonb_build_object('path', '/products/' || (1 + pg_temp.part(h, 3) % %(nprod)s),
                                                  'referrer', CASE WHEN pg_temp.part(h, 0) % 3 = 0
                                                                   THEN 'https://www.google.com/' END,
                                                  'duration_ms', pg_temp.part(h, 3) % 60000)
         WHEN 'search' THEN jsonb_build_object('query', pg_temp.pick(ARRAY['kettle','lamp "xl"','mug','tent 2p',
                                                                           'chair\\oak','naïve café'], h, 3),
                                               'results', pg_temp.part(h, 0) % 120)
         WHEN 'add_to_cart' THEN jsonb_build_object('product_id', 1 + pg_temp.part(h, 3) % %(nprod)s,
                                                    'quantity', 1 + pg_temp.part(h, 0) % 3)
         WHEN 'login' THEN jsonb_build_object('method', pg_temp.pick(ARRAY['password','magiclink','google'], h, 3),
                                              'success', pg_temp.part(h, 0) % 20 <> 0)
         WHEN 'checkout' THEN jsonb_build_object('cart_value', round((pg_temp.part(h, 3) % 50000) / 100.0, 2),
                                                 'items', 1 + pg_temp.part(h, 0) % 6)
         ELSE '{}'::jsonb END,
       CASE WHEN pg_temp.part(h, 0) % 10 = 9 THEN NULL
            WHEN pg_temp.part(h, 0) % 10 = 8 THEN ('2001:db8::' || to_hex((pg_temp.part(h, 3) % 65535)::int))::inet
            ELSE ('10.' || pg_temp.part(h, 3) % 256 || '.' || pg_temp.part(h, 2) % 256
                  || '.' || pg_temp.part(h, 1) % 256)::inet END,
       '2024-01-01 00:00:00+00'::timestamptz + interval '366 days' * ((e - 1)::float8 / %(n)s)
         + interval '1 millisecond' * (pg_temp.part(h, 2) % 1000)
  FROM generate_series(1, %(n)s::bigint) e
 CROSS JOIN LATERAL md5('event:' || e) h
  JOIN demo_profiles prof ON prof.n = 1 + floor(%(nprof)s::int * pg_temp.unit(h, 2))::int
 CROSS JOIN LATERAL (SELECT CASE WHEN pg_temp.part(h, 0) % 100 < 50 THEN 'page_view'
                                 WHEN pg_temp.part(h, 0) % 100 < 65 THEN 'search'
                                 WHEN pg_temp.part(h, 0) % 100 < 80 THEN 'add_to_cart'
                                 WHEN pg_temp.part(h, 0) % 100 < 90 THEN 'login'
                                 WHEN pg_temp.part(h, 0) % 100 < 95 THEN 'checkout'
                                 ELSE 'logout' END AS kind) k
 ORDER BY e
"""

_BUCKETS = """
INSERT INTO storage.buckets (id, name, owner, public, file_size_limit, allowed_mime_types, created_at, updated_at)
VALUES ('avatars', 'avatars', NULL, true, 1048576, ARRAY['image/png','image/jpeg'],
        '2023-01-01 00:00:00+00', '2023-01-01 00:00:00+00'),
       ('product-images', 'product-images', md5('user:1')::uuid, true, 5242880, ARRAY['image/*'],
        '2023-01-01 00:05:00+00', '2023-02-01 12:00:00+00'),
       ('invoices', 'invoices', NULL, false, NULL, NULL,
        '2023-01-01 00:10:00+00', '2023-01-01 00:10:00+00')
"""

_OBJECTS = """
INSERT INTO storage.objects (id, bucket_id, name, owner, metadata, version, created_at, updated_at, last_accessed_at)
SELECT md5('object:' || i)::uuid, b.bucket,
       CASE b.bucket
         WHEN 'avatars' THEN u.id || '/avatar-' || i || '.png'
         WHEN 'product-images'
           THEN 'products/SKU-' || lpad((1 + pg_temp.part(h, 2) % %(nprod)s)::text, 6, '0') || '/' || i || '.jpg'
         ELSE u.id || '/invoices/2024/' || CASE WHEN i % 50 = 0 THEN 'Résumé final (' || i || ').pdf'
                                               ELSE 'INV-' || lpad(i::text, 6, '0') || '.pdf' END
       END,
       CASE WHEN b.bucket = 'product-images' THEN md5('user:1')::uuid ELSE u.id END,
       jsonb_build_object('eTag', '"' || md5('etag:' || i) || '"',
                          'size', 512 + pg_temp.part(h, 3) % 2000000,
                          'mimetype', CASE b.bucket WHEN 'avatars' THEN 'image/png'
                                                    WHEN 'product-images' THEN 'image/jpeg'
                                                    ELSE 'application/pdf' END,
                          'cacheControl', 'max-age=3600',
                          'lastModified', to_char(t.created_at, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                          'contentLength', 512 + pg_temp.part(h, 3) % 2000000,
                          'httpStatusCode', 200),
       md5('version:' || i)::uuid::text,
       t.created_at, t.created_at,
       CASE WHEN pg_temp.part(h, 0) % 3 <> 0 THEN t.created_at + interval '1 hour' * (pg_temp.part(h, 0) % 5000) END
  FROM generate_series(1, %(n)s::int) i
 CROSS JOIN LATERAL md5('object:' || i) h
 CROSS JOIN LATERAL (SELECT md5('user:' || (1 + pg_temp.part(h, 1) % %(nusers)s))::uuid AS id) u
 CROSS JOIN LATERAL (SELECT CASE WHEN pg_temp.part(h, 0) % 10 < 4 THEN 'avatars'
                                 WHEN pg_temp.part(h, 0) % 10 < 7 THEN 'product-images'
                                 ELSE 'invoices' END AS bucket) b
 CROSS JOIN LATERAL (SELECT '2023-02-01 00:00:00+00'::timestamptz
                              + interval '600 days' * ((i - 1)::float8 / %(n)s) AS created_at) t
 ORDER BY i
"""

# History for orders that left 'pending' before the demo began, in the format
# the audit_row() trigger writes (only the changed columns).
_AUDIT_SEED = """
INSERT INTO public.audit_log (id, table_name, record_id, action, old_data, new_data, changed_by, changed_at)
OVERRIDING SYSTEM VALUE
SELECT row_number() OVER (ORDER BY o.id), 'orders', o.id::text, 'UPDATE',
       jsonb_build_object('status', 'pending', 'updated_at', NULL),
       jsonb_build_object('status', o.status, 'updated_at', o.updated_at),
       CASE WHEN o.id % 3 = 0 THEN o.profile_id END,
       o.updated_at
  FROM public.orders o
 WHERE o.id % 10 = 0 AND o.status <> 'pending'
 ORDER BY o.id
"""

_SEQUENCES = """
SELECT setval(pg_get_serial_sequence(t, 'id'), coalesce(max_id, 1), max_id IS NOT NULL)
  FROM (VALUES ('public.products',  (SELECT max(id) FROM public.products)),
               ('public.orders',    (SELECT max(id) FROM public.orders)),
               ('public.events',    (SELECT max(id) FROM public.events)),
               ('public.audit_log', (SELECT max(id) FROM public.audit_log))) v(t, max_id)
"""


_PERCENT = re.compile(r"%(?!\(\w+\)s)")


def _run(conn: psycopg.Connection, query: str, params: dict | None = None) -> psycopg.Cursor:
    """Execute ``query``; with ``params``, a bare ``%`` (SQL modulo) is escaped first."""
    if params is None:
        return conn.execute(query)
    return conn.execute(_PERCENT.sub("%%", query), params)


# Like pg_restore: load first, then build foreign keys and secondary indexes in
# one pass each (per-row FK triggers and index upkeep would triple the load time).
_POST_DATA = """
SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', conrelid::regclass, conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', conrelid::regclass, conname, pg_get_constraintdef(oid)),
       2
  FROM pg_constraint
 WHERE contype = 'f' AND connamespace::regnamespace::text IN ('public', 'auth', 'storage')
UNION ALL
SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid), 1
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relnamespace::regnamespace::text IN ('public', 'auth', 'storage')
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                    WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))
 ORDER BY 3, 2
"""


def _drop_post_data(conn: psycopg.Connection) -> list[str]:
    """Drop FKs and secondary indexes; return the statements that recreate them."""
    rows = conn.execute(_POST_DATA).fetchall()
    for drop, _create, _order in sorted(rows, key=lambda r: -r[2]):  # FKs first
        conn.execute(drop)
    return [create for _drop, create, _order in rows]  # indexes, then FKs


def _rows(base: int, scale: float) -> int:
    return max(1, round(base * scale))


def _existing_demo_objects(conn: psycopg.Connection) -> list[str]:
    found = [name for name in _MARKERS if one_row(conn.execute("SELECT to_regclass(%s)", (name,)))[0] is not None]
    schemas = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname IN ('auth', 'storage') ORDER BY 1"
    ).fetchall()
    return found + [f"schema {s}" for (s,) in schemas if not any(f.startswith(s + ".") for f in found)]


_PROFILE_NUMBERS = """
CREATE TEMP TABLE demo_profiles ON COMMIT DROP AS
SELECT (row_number() OVER (ORDER BY id))::int AS n, id FROM public.profiles;
ALTER TABLE demo_profiles ADD PRIMARY KEY (n);
ANALYZE demo_profiles
"""


def _number_profiles(conn: psycopg.Connection) -> int:
    """Temp table demo_profiles(n, id): profiles numbered 1..count, to pick one by number."""
    conn.execute(_PROFILE_NUMBERS)
    return one_row(conn.execute("SELECT count(*) FROM demo_profiles"))[0]


def _insert_orders(conn: psycopg.Connection, lo: int, hi: int, t0: str, span: str, fresh: bool) -> tuple[int, int]:
    """Insert orders ``lo..hi`` and their lines; returns (orders, lines) inserted."""
    nprod = one_row(conn.execute("SELECT max(id) FROM public.products"))[0]
    nprof = _number_profiles(conn)
    _run(conn, _ITEMS_TMP, {"lo": lo, "hi": hi, "nprod": nprod})
    conn.execute("ANALYZE demo_items")
    orders = _run(conn, _ORDERS, {"lo": lo, "hi": hi, "t0": t0, "span": span, "fresh": fresh, "nprof": nprof}).rowcount
    lines = conn.execute(_ITEMS).rowcount
    conn.execute("DROP TABLE demo_items, demo_profiles")
    return orders, lines


def create_demo(dsn: str, *, scale: float = 1.0) -> dict[str, int]:
    """Create the demo schema in the (empty) database at ``dsn`` and fill it.

    ``scale`` multiplies every row count (1.0 gives a few hundred thousand
    rows; tests use 0.02).  The content depends only on ``scale``.  Returns
    ``{"schema.table": row count}``.  Raises ``ConfigError`` if the database
    already holds the demo (or tables or schemas it would create).
    """
    if not scale > 0:
        raise ConfigError(f"scale must be a positive number, not {scale!r}")
    n = {name: _rows(base, scale) for name, base in BASE_ROWS.items()}
    with _connect(dsn) as conn:
        existing = _existing_demo_objects(conn)
        if existing:
            raise ConfigError(
                f"the database already contains {', '.join(existing)}; the demo needs an empty database",
                hint="create a fresh database (CREATE DATABASE ...) for the demo, "
                "or use mutate_demo() to change an existing demo",
            )
        conn.execute(schema_sql())
        post_data = _drop_post_data(conn)
        conn.execute("SET LOCAL work_mem = '64MB'")
        conn.execute("SET LOCAL maintenance_work_mem = '128MB'")
        for stmt in _HELPERS:
            conn.execute(stmt)
        _run(conn, _PEOPLE, {"n": n["users"]})
        conn.execute(_USERS)
        conn.execute(_PROFILES)
        conn.execute("DROP TABLE demo_people")
        _run(conn, _PRODUCTS, {"n": n["products"]})
        _insert_orders(conn, 1, n["orders"], "2024-01-01 00:00:00+00", "366 days", fresh=False)
        nprof = _number_profiles(conn)
        _run(conn, _EVENTS, {"n": n["events"], "nprod": n["products"], "nprof": nprof})
        conn.execute("DROP TABLE demo_profiles")
        conn.execute(_BUCKETS)
        _run(conn, _OBJECTS, {"n": n["objects"], "nprod": n["products"], "nusers": n["users"]})
        conn.execute(_AUDIT_SEED)
        conn.execute(_SEQUENCES)
        for stmt in post_data:
            conn.execute(stmt)
        counts = {t: one_row(conn.execute(f"SELECT count(*) FROM {t}"))[0] for t in TABLES}
    return counts


_ADVANCE = """
UPDATE public.orders o
   SET status = CASE o.status
                  WHEN 'pending' THEN CASE WHEN pg_temp.part(h, 1) % 4 = 0 THEN 'cancelled' ELSE 'paid' END
                  WHEN 'paid' THEN 'shipped'
                  WHEN 'shipped' THEN 'delivered'
                  ELSE 'refunded' END::public.order_status,
       -- a coupon applied at payment time
       total = CASE WHEN o.status = 'pending' AND pg_temp.part(h, 1) % 4 = 1
                    THEN round(o.total * 0.9, 2) ELSE o.total END,
       updated_at = %(day)s::timestamptz + interval '1 second' * (pg_temp.part(h, 2) % 86400)
  FROM (SELECT id, md5(%(seed)s || ':order:' || id) AS h FROM public.orders) x
 WHERE x.id = o.id
   AND ((o.status IN ('pending', 'paid', 'shipped') AND pg_temp.part(x.h, 0) % 3 = 0)
        OR (o.status = 'delivered' AND pg_temp.part(x.h, 0) % 500 = 0))
"""

_PROFILE_EDITS = """
UPDATE public.profiles p
   SET settings = p.settings || jsonb_build_object('theme', 'dark', 'last_seen', %(day)s::date),
       tags = CASE WHEN 'returning' = ANY (p.tags) THEN p.tags ELSE array_append(p.tags, 'returning') END,
       updated_at = %(day)s::timestamptz
                    + interval '1 second' * (pg_temp.part(md5(%(seed)s || ':profile:' || p.id), 1) % 86400)
 WHERE pg_temp.part(md5(%(seed)s || ':profile:' || p.id), 0) % 100 = 0
"""

_RETENTION = """
DELETE FROM public.events
 WHERE id IN (SELECT id FROM public.events WHERE kind = 'page_view'
               ORDER BY created_at, id LIMIT %(k)s::int)
"""


def mutate_demo(dsn: str) -> dict[str, int]:
    """Apply one deterministic "day of app traffic" to a demo database.

    The day is the one after the latest order activity, so repeated calls
    move on day by day.  Orders advance in status (some with a coupon lowering the total),
    about 1% of profiles change settings and tags, new orders with their lines
    arrive, and the oldest page views are deleted.  Returns
    ``{"updated": n, "inserted": n, "deleted": n}`` counting rows in
    public.orders, public.order_items, public.profiles and public.events
    (the audit_log rows the order trigger writes are not counted).
    """
    with _connect(dsn) as conn:
        if one_row(conn.execute("SELECT to_regclass('public.orders')"))[0] is None:
            raise ConfigError(
                "this database holds no demo (public.orders is missing)",
                hint="run create_demo() on an empty database first",
            )
        for stmt in _HELPERS:
            conn.execute(stmt)
        day, max_id, n_orders, n_events = one_row(
            conn.execute(
                "SELECT date_trunc('day', greatest(max(placed_at), max(updated_at))) + interval '1 day',"
                " max(id), count(*), (SELECT count(*) FROM public.events) FROM public.orders"
            )
        )
        day_txt = day.strftime("%Y-%m-%d 00:00:00+00")
        seed = day.strftime("%Y-%m-%d")
        params = {"day": day_txt, "seed": seed}
        updated = _run(conn, _ADVANCE, params).rowcount
        updated += _run(conn, _PROFILE_EDITS, params).rowcount
        k = max(1, n_orders // 100)
        orders, lines = _insert_orders(conn, max_id + 1, max_id + k, day_txt, "1 day", fresh=True)
        deleted = _run(conn, _RETENTION, {"k": max(1, n_events // 50)}).rowcount
        conn.execute(_SEQUENCES)
    return {"updated": updated, "inserted": orders + lines, "deleted": deleted}
