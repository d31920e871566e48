-- Fidelity fixture: every built-in type family and the awkward cases a
-- table-by-table COPY backup must survive.  Plain SQL, no psql meta-commands:
-- run it in one go with psycopg ``conn.execute(script)`` on a FRESH database.
-- All data is deterministic (no random(), no now()), so two databases built
-- from this script have equal fingerprints (tests/fingerprint.py).
--
-- The script runs as one implicit transaction, so an enum value added with
-- ALTER TYPE ... ADD VALUE is not used in data here (PostgreSQL forbids using
-- it before commit).
--
-- Beyond the tables it holds what lives outside them: extensions in their own
-- schema (citext, hstore in ``ext``) used by public columns, publications,
-- large objects, default privileges, and two roles that own or are granted
-- them (created if missing, never dropped: see "Roles" below).  Loading it
-- therefore needs a superuser.
--
-- It loads on PostgreSQL 15 and later (the cross-version test loads it into
-- 15): features newer than 15 are used only behind a server_version_num test
-- (VIRTUAL generated columns, interval 'infinity'), and only extensions that
-- both Debian's PostgreSQL 15 contrib and the embedded server ship.

SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, MDY';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 3;
SET search_path = public;

-- ---------------------------------------------------------------------------
-- Types: enum, domains, composite
-- ---------------------------------------------------------------------------
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"', 'with space');
-- added later, sorts between existing labels (non-integer enumsortorder)
ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';
ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'happy';

CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN short_code AS varchar(8) NOT NULL DEFAULT 'NONE'
    CONSTRAINT short_code_upper CHECK (VALUE = upper(VALUE));

CREATE TYPE pair AS (label text, qty numeric(10, 2), tags text[]);
COMMENT ON TYPE pair IS 'a (label, qty, tags) composite';

-- ---------------------------------------------------------------------------
-- Numbers
-- ---------------------------------------------------------------------------
CREATE TABLE numbers (
    id       int PRIMARY KEY,
    i2       smallint,
    i4       integer,
    i8       bigint,
    n        numeric,
    n_fixed  numeric(12, 4),
    f4       real,
    f8       double precision,
    m        money,
    b        boolean
);
INSERT INTO numbers VALUES
 (1, -32768, -2147483648, -9223372036854775808, 'NaN', -99999999.9999,
     '-Infinity', '-Infinity', '-92233720368547758.08', false),
 (2, 32767, 2147483647, 9223372036854775807, 'Infinity', 99999999.9999,
     'Infinity', 'Infinity', '92233720368547758.07', true),
 (3, 0, 0, 0, '-Infinity', 0, 'NaN', 'NaN', '0', NULL),
 (4, 0, 0, 0, '0.000000000000000000000000000000000000000000000000010', 0.0001,
     '-0', '-0', '-0.01', true),
 -- > 38 significant digits, trailing zeros (scale must survive), huge exponent
 (5, 1, 1, 1, '123456789012345678901234567890123456789012345678901234567890.123456789012345678901234567890000',
     1.5, '3.40282347e38', '1.7976931348623157e308', '1234567.89', false),
 (6, -1, -1, -1, '-1e1000', -1.5, '1.4e-45', '5e-324', '-1234567.89', true),
 (7, 2, 2, 2, '1e-1000', 2.25, '1.17549435e-38', '2.2250738585072014e-308', '0.01', false),
 (8, 3, 3, 3, '0.1', 3, '0.1', '0.1', '1.00', true),
 (9, 4, 4, 4, '-0', -0.0000, '1.00000012', '0.30000000000000004', '-0', NULL),
 (10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- ---------------------------------------------------------------------------
-- Text: every character COPY cares about
-- ---------------------------------------------------------------------------
CREATE TABLE texts (
    id      int PRIMARY KEY,
    t       text,
    vc      varchar(50),
    c       char(6),
    ch      "char",
    nm      name,
    t_c     text COLLATE "C"
);
INSERT INTO texts VALUES
 (1,  '', '', '', '', '', ''),
 (2,  NULL, NULL, NULL, NULL, NULL, NULL),
 (3,  '\N', '\N', '\N', '\', '\N', '\N'),
 (4,  '\.', '\.', '\.', '.', '\.', '\.'),
 (5,  E'line1\n\\.\nline3', E'a\\.', 'x', 'x', 'x', E'\\.\n'),
 (6,  'NULL', 'NULL', 'NULL', 'N', 'NULL', 'null'),
 (7,  E'tab\there', E'cr\rhere', E'lf\nhe', E'\t', E'nl\n', E'crlf\r\nend'),
 (8,  E'back\\slash \\\\ double \\t not-a-tab', '\\', '\', '\', '\\', E'\\'),
 (9,  'single '' quote', 'double " quote', '"', '''', '"q"', ''''''),
 (10, 'comma, separated, values', ',', ',,', ',', ',', E',\n,'),
 (11, '  leading and trailing spaces  ', ' ', ' ', ' ', ' ', E' \t '),
 (12, 'héllo wörld — ñ ç ß', '日本語テキスト', 'äöü', 'a', 'Ω', 'ἀρχή'),
 (13, E'emoji 👍🏽 family 👨\u200D👩\u200D👧 flag 🇳🇿', '🙂', '🙂🙂', 'e', '🐘', E'\U0001F600'),
 (14, E'bom \uFEFF ls \u2028 ps \u2029 rtl \u202Eabc', E'zero\u200Bwidth', E'e\u0301', 'z', E'\u00A0', E'\u0001\u001F\u007F'),
 (15, E'{"a":1}', '{1,2}', '(1,2)', '{', '[x]', 'a|b|c'),
 (16, E'"quoted, with comma"\n"and newline"', E'\\N\n\\.', 'NULL', 'n', 'N', '""'),
 (17, repeat('long ', 2000), repeat('v', 50), 'abcdef', 'q', repeat('n', 63), 'end');

-- ---------------------------------------------------------------------------
-- Binary: all 256 byte values, empty vs NULL
-- ---------------------------------------------------------------------------
CREATE TABLE binaries (id int PRIMARY KEY, b bytea);
INSERT INTO binaries
SELECT 1, decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex')
FROM generate_series(0, 255) AS i;
INSERT INTO binaries
SELECT 2, decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i DESC), 'hex')
FROM generate_series(0, 255) AS i;
INSERT INTO binaries VALUES
 (3, ''::bytea), (4, NULL), (5, '\x00'), (6, '\x5c4e'), (7, '\x5c2e0a'), (8, '\x0d0a');

-- ---------------------------------------------------------------------------
-- Date and time
-- ---------------------------------------------------------------------------
CREATE TABLE times (
    id    int PRIMARY KEY,
    d     date,
    ts    timestamp,
    tstz  timestamptz,
    tm    time,
    tmtz  timetz,
    iv    interval,
    ts0   timestamp(0),
    iv_ym interval YEAR TO MONTH
);
INSERT INTO times VALUES
 -- interval 'infinity' exists from PostgreSQL 17; older servers get a finite extreme
 (1, 'infinity', 'infinity', 'infinity', '00:00:00', '00:00:00+00',
     (CASE WHEN current_setting('server_version_num')::int >= 170000 THEN 'infinity'
           ELSE '178000000 years 1 day' END)::interval,
     'infinity', '1 year'),
 (2, '-infinity', '-infinity', '-infinity', '24:00:00', '24:00:00-15:59',
     (CASE WHEN current_setting('server_version_num')::int >= 170000 THEN '-infinity'
           ELSE '-178000000 years -1 day' END)::interval,
     '-infinity', '-1 year -1 month'),
 (3, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC', '23:59:59.999999',
     '23:59:59.999999+15:59', '1 year 2 mons -3 days 04:05:06.789', '0001-01-01 00:00:00 BC', '0'),
 (4, '5874897-12-31', '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '12:34:56.5',
     '12:34:56.5+05:30', '-1 years -2 mons +3 days -04:05:06.000001', '2000-02-29 23:59:59',
     '178000000 years'),
 (5, '2000-02-29', '2000-02-29 12:00:00.000001', '2024-03-31 01:30:00+13:45', '00:00:00.000001',
     '00:00:00-00:00:01', '1 mon -30 days 720:00:00', '1999-12-31 23:59:59', '-178000000 years'),
 (6, '1970-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '06:00', '06:00+01', '0',
     '1970-01-01', '0'),
 (7, '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00-00:01:15', '01:02:03', '01:02:03-03:30',
     '-2147483648 months -2147483648 days -9223372036854.775807 seconds',
     '1900-01-01', '-2147483647 months'),
 (8, '1582-10-10', '1582-10-10 10:10:10.5', '2038-01-19 03:14:08+00', '12:00', '12:00+14',
     '2147483647 months 2147483647 days 9223372036854.775806 seconds', '2038-01-19 03:14:08',
     '2147483647 months'),
 (9, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- ---------------------------------------------------------------------------
-- Misc scalar types: uuid, json/jsonb, xml, network, bit strings, text search, pg_lsn
-- ---------------------------------------------------------------------------
CREATE TABLE misc (
    id    int PRIMARY KEY,
    u     uuid,
    j     json,
    jb    jsonb,
    -- The embedded server is built without libxml: xml values cannot even be
    -- input, so this column holds only NULLs (its type must still round-trip).
    x     xml,
    ip    inet,
    net   cidr,
    mac   macaddr,
    mac8  macaddr8,
    bt    bit(8),
    vb    varbit(64),
    tv    tsvector,
    tq    tsquery,
    lsn   pg_lsn
);
INSERT INTO misc VALUES
 (1, '00000000-0000-0000-0000-000000000000',
     '{"a":1,  "a" : 2 ,"b":[1, 2 ],   "c":{}}',
     '{"a": 1, "b": {"c": [1, 2.50, null, true, "x\"y"]}, "big": 1e40, "tiny": 1e-40}',
     NULL, '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00',
     B'00000000', B'', '', '', '0/0'),
 (2, 'ffffffff-ffff-ffff-ffff-ffffffffffff',
     E'[\n  "\\u0000 escaped nul stays text in json",\n\t1.000, -0, 1E+2 ]',
     '[{"nested": {"deeper": ["\u00e9", "\ud83d\ude00"]}}, [], {}, "", null, -0.0, 1.000]',
     NULL, '192.168.100.128/25', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
     B'10101010', B'1', 'a fat:1A cat:2B,3C sat ''it''''s'' \\slash', 'fat & (rat | !cat) <-> sat:*',
     '16/B374D848'),
 (3, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '"just a string with \"quotes\" and \\backslash"',
     '"top-level string"',
     NULL, '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff',
     B'11111111', B'1010101010101010101010101010101010101010101010101010101010101010',
     'a:1,2,3 b:4A', '!a', 'FFFFFFFF/FFFFFFFF'),
 (4, '123e4567-e89b-12d3-a456-426614174000', 'null', 'null', NULL,
     '2001:db8:85a3::8a2e:370:7334/64', '192.168.0.0/24', '01:23:45:67:89:ab', '01:23:45:ff:fe:67:89:ab',
     B'00000001', B'0000', '''multi word'' ''with:colon''', '''a b'' & c', '1/1'),
 (5, NULL, '  {"ws" :   true }  ', '{}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- ---------------------------------------------------------------------------
-- Geometry (including -0 and extreme floats inside geometric values)
-- ---------------------------------------------------------------------------
CREATE TABLE geometry (
    id    int PRIMARY KEY,
    p     point,
    l     line,
    s     lseg,
    bx    box,
    pa    path,
    po    polygon,
    ci    circle
);
INSERT INTO geometry VALUES
 (1, '(1.5,-0)', '{1,-1,0}', '[(0,0),(1,1)]', '((1,1),(0,0))', '[(0,0),(1,1),(2,0)]',
     '((0,0),(1,1),(2,0))', '<(0,0),1>'),
 (2, '(NaN,Infinity)', '{0,1,-1e300}', '[(-1e-300,2),(3,-Infinity)]', '((1e308,1e308),(-1e308,-1e308))',
     '((0,0),(1,1),(2,0))', '((0.1,0.2),(0.3,0.4),(0.5,0.6),(0.7,0.8))', '<(0.1,0.2),0.30000000000000004>'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- ---------------------------------------------------------------------------
-- Ranges and multiranges
-- ---------------------------------------------------------------------------
CREATE TABLE ranges (
    id   int PRIMARY KEY,
    r4   int4range,
    r8   int8range,
    rn   numrange,
    rts  tsrange,
    rtz  tstzrange,
    rd   daterange,
    mr4  int4multirange,
    mrn  nummultirange,
    mrd  datemultirange
);
INSERT INTO ranges VALUES
 (1, 'empty', 'empty', 'empty', 'empty', 'empty', 'empty', '{}', '{}', '{}'),
 (2, '[1,10)', '(,)', '(,)', '[-infinity,infinity]', '(,infinity)', '[2000-01-01,)',
     '{[1,3), [5,7)}', '{(,0), [1.5,2.5], (3,)}', '{[2000-01-01,2000-02-01), [2001-01-01,)}'),
 (3, '(0,5]', '[-9223372036854775808,9223372036854775807)', '[-0.000001,1e30)',
     '["2000-01-01 00:00","2000-01-01 00:00:00.000001")', '["2000-01-01 00:00+00","2000-01-02 00:00-12")',
     '(2000-01-01,2000-01-02]', '{empty}', '{[NaN,NaN]}', '{[-infinity,infinity]}'),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- ---------------------------------------------------------------------------
-- Arrays, enums, domains, composites
-- ---------------------------------------------------------------------------
CREATE TABLE arrays (
    id     int PRIMARY KEY,
    ai     int[],
    ai2    int[][],
    at     text[],
    af     float8[],
    ab     bytea[],
    ap     pair[],
    am     mood[],
    aj     jsonb[],
    ats    timestamptz[],
    lower1 int[]
);
INSERT INTO arrays VALUES
 (1, '{}', '{{1,2,3},{4,5,6}}', '{}', '{NaN,Infinity,-Infinity,-0,0}', '{}', '{}', '{}', '{}', '{}',
     '[0:2]={10,20,30}'),
 (2, '{1,NULL,3}', '{{{1,2},{3,4}},{{5,6},{NULL,8}}}',
     ARRAY['plain', 'with,comma', 'with "double" quotes', 'with {braces}', 'NULL', NULL, '',
           E'back\\slash', E'new\nline', ' spaced ', '\N', '\.'],
     '{1.5,NULL,1e-320}', ARRAY['\x00ff'::bytea, ''::bytea, NULL],
     ARRAY[ROW('a, "b"', 1.50, '{x,"y z"}')::pair, ROW(NULL, NULL, NULL)::pair, NULL,
           ROW('', 0, '{}')::pair, ROW(E'(paren)\\', -0.01, ARRAY[NULL, 'NULL'])::pair],
     ARRAY['sad', 'it''s "complicated"', 'with space']::mood[],
     ARRAY['{"k": "v,}"}'::jsonb, 'null'::jsonb, NULL],
     ARRAY['infinity'::timestamptz, '2000-01-01 00:00:00.5+03'],
     '[-5:-4]={1,2}'),
 (3, NULL, '{{NULL,NULL},{NULL,NULL}}', ARRAY[NULL]::text[], NULL, NULL, NULL, NULL, NULL, NULL, NULL);

CREATE TABLE typed (
    id     int PRIMARY KEY,
    m      mood,
    p      posint,
    code   short_code,
    pr     pair,
    pr_nn  pair NOT NULL DEFAULT ROW('default', 1, '{}')::pair
);
INSERT INTO typed VALUES
 (1, 'sad', 1, 'ABC', ROW('a', 1.5, '{x,y}'), ROW('', 0, '{}')),
 (2, 'it''s "complicated"', 2147483647, 'NONE', ROW(NULL, NULL, NULL), ROW(E'q"u,o(t)e\\', -1, ARRAY[NULL]::text[])),
 (3, 'with space', 7, DEFAULT, NULL, DEFAULT),
 (4, NULL, NULL, 'X', ROW('', NULL, '{}'), ROW(NULL, NULL, NULL));

-- ---------------------------------------------------------------------------
-- Names that need quoting, reserved-word columns
-- ---------------------------------------------------------------------------
CREATE SCHEMA "Odd Schema.v1";
COMMENT ON SCHEMA "Odd Schema.v1" IS 'schema whose name needs quoting';
CREATE TABLE "Odd Schema.v1"."Mixed ""Case"".Table" (
    "select"               int PRIMARY KEY,
    "from"                 text,
    "user"                 text,
    "Column With Spaces"   text,
    "a ""quoted"", col."   text,
    "ÜniCödé"              text
);
INSERT INTO "Odd Schema.v1"."Mixed ""Case"".Table" VALUES
 (1, 'from value', 'user value', 'spaces', 'q"c', 'ü'),
 (2, NULL, '', E'\\N', ',', '🐘'),
 (3, 'x', 'y', 'z', 'w', 'v');
CREATE INDEX "Odd ""idx"".name" ON "Odd Schema.v1"."Mixed ""Case"".Table" ("from", "user");
CREATE TABLE "Odd Schema.v1".lower_case_in_odd_schema (id int PRIMARY KEY, ref int
    REFERENCES "Odd Schema.v1"."Mixed ""Case"".Table" ("select"));
INSERT INTO "Odd Schema.v1".lower_case_in_odd_schema VALUES (1, 1), (2, NULL), (3, 3);
CREATE SEQUENCE "Odd Schema.v1"."Seq ""quoted"" name" START 5;
SELECT setval('"Odd Schema.v1"."Seq ""quoted"" name"', 77);

-- ---------------------------------------------------------------------------
-- Keys: no primary key with duplicates, composite PK, circular and self FKs
-- ---------------------------------------------------------------------------
CREATE TABLE no_pk_dups (a int, b text, c float8);
INSERT INTO no_pk_dups VALUES
 (1, 'dup', 0.5), (1, 'dup', 0.5), (1, 'dup', 0.5),
 (2, 'pair', -0), (2, 'pair', -0),
 (3, NULL, NULL), (3, NULL, NULL),
 (4, 'single', 'NaN');

CREATE TABLE composite_pk (
    tenant  int,
    k       text,
    seq     smallint,
    payload jsonb,
    PRIMARY KEY (tenant, k, seq)
);
INSERT INTO composite_pk VALUES
 (1, 'a', 1, '{"v": 1}'), (1, 'a', 2, '{"v": 2}'), (1, 'b', 1, NULL), (2, 'a', 1, '[]');

CREATE TABLE circ_a (id int PRIMARY KEY, b_id int NOT NULL, label text);
CREATE TABLE circ_b (id int PRIMARY KEY, a_id int, label text);
INSERT INTO circ_a VALUES (1, 10, 'a1'), (2, 20, 'a2'), (3, 10, 'a3');
INSERT INTO circ_b VALUES (10, 1, 'b10'), (20, 2, 'b20'), (30, NULL, 'b30');
ALTER TABLE circ_a ADD CONSTRAINT circ_a_b_fk FOREIGN KEY (b_id) REFERENCES circ_b (id);
ALTER TABLE circ_b ADD CONSTRAINT circ_b_a_fk FOREIGN KEY (a_id) REFERENCES circ_a (id)
    DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE employees (
    id         int PRIMARY KEY,
    name       text NOT NULL,
    manager_id int REFERENCES employees (id) ON DELETE SET NULL
);
-- children before parents in id order (and the root last) on purpose
INSERT INTO employees VALUES (1, 'root', NULL);
INSERT INTO employees VALUES (2, 'mid', 1), (3, 'leaf', 2), (4, 'self', 4);
UPDATE employees SET manager_id = 3 WHERE id = 1;  -- a cycle through self-FK rows

-- ---------------------------------------------------------------------------
-- Triggers: firing them during a restore would change audit_log and the data
-- ---------------------------------------------------------------------------
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl     text NOT NULL,
    op      text NOT NULL,
    row_id  int
);
CREATE TABLE trigger_target (id int PRIMARY KEY, note text);
CREATE FUNCTION trigger_target_mark() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.note := coalesce(NEW.note, '') || ' [marked by trigger]';
    RETURN NEW;
END
$fn$;
CREATE FUNCTION trigger_target_audit() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO audit_log (tbl, op, row_id) VALUES (TG_TABLE_NAME, TG_OP, NEW.id);
    RETURN NULL;
END
$fn$;
INSERT INTO trigger_target VALUES (1, 'before triggers existed'), (2, NULL);
CREATE TRIGGER trigger_target_mark BEFORE INSERT OR UPDATE ON trigger_target
    FOR EACH ROW EXECUTE FUNCTION trigger_target_mark();
CREATE TRIGGER trigger_target_audit AFTER INSERT OR UPDATE ON trigger_target
    FOR EACH ROW EXECUTE FUNCTION trigger_target_audit();
INSERT INTO trigger_target VALUES (3, 'inserted with triggers');
CREATE TRIGGER trigger_target_disabled AFTER DELETE ON trigger_target
    FOR EACH ROW EXECUTE FUNCTION trigger_target_audit();
ALTER TABLE trigger_target DISABLE TRIGGER trigger_target_disabled;
COMMENT ON TRIGGER trigger_target_audit ON trigger_target IS 'writes audit_log';

-- ---------------------------------------------------------------------------
-- Partitioning and inheritance
-- ---------------------------------------------------------------------------
CREATE TABLE measurements (
    id      bigint NOT NULL,
    logdate date NOT NULL,
    reading numeric(8, 3),
    PRIMARY KEY (id, logdate)
) PARTITION BY RANGE (logdate);
CREATE TABLE measurements_2023 PARTITION OF measurements
    FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurements_2024 PARTITION OF measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_early PARTITION OF measurements
    FOR VALUES FROM (MINVALUE) TO ('2023-01-01');
CREATE TABLE measurements_default PARTITION OF measurements DEFAULT;
CREATE INDEX measurements_reading_idx ON measurements (reading);
INSERT INTO measurements
SELECT i, date '2022-06-01' + (i * 7), (i * 1.125)::numeric(8, 3)
FROM generate_series(1, 200) AS i;
INSERT INTO measurements VALUES (1000, 'infinity', NULL), (1001, '-infinity', -0.5);

CREATE TABLE inh_parent (id int PRIMARY KEY, name text);
CREATE TABLE inh_child (extra text, flag boolean DEFAULT true) INHERITS (inh_parent);
CREATE TABLE inh_grandchild (more int) INHERITS (inh_child);
INSERT INTO inh_parent VALUES (1, 'parent only'), (2, 'parent two');
INSERT INTO inh_child VALUES (1, 'child with same id as parent', 'x', false), (3, 'child', NULL, NULL);
INSERT INTO inh_grandchild VALUES (4, 'grandchild', 'gx', true, 42);

-- ---------------------------------------------------------------------------
-- Row level security: ENABLE + FORCE and a restrictive policy hiding rows
-- ---------------------------------------------------------------------------
CREATE TABLE rls_secret (id int PRIMARY KEY, owner_name text, visible boolean NOT NULL, body text);
INSERT INTO rls_secret VALUES
 (1, 'alice', true, 'visible row'), (2, 'bob', false, 'hidden row'), (3, 'carol', false, 'hidden too');
ALTER TABLE rls_secret ENABLE ROW LEVEL SECURITY;
ALTER TABLE rls_secret FORCE ROW LEVEL SECURITY;
CREATE POLICY rls_secret_all ON rls_secret AS PERMISSIVE FOR ALL TO PUBLIC USING (true);
CREATE POLICY rls_secret_only_visible ON rls_secret AS RESTRICTIVE FOR SELECT TO PUBLIC
    USING (visible);
CREATE POLICY rls_secret_no_insert ON rls_secret AS RESTRICTIVE FOR INSERT TO PUBLIC
    WITH CHECK (false);

-- ---------------------------------------------------------------------------
-- Generated and identity columns, sequences
-- ---------------------------------------------------------------------------
-- VIRTUAL generated columns exist from PostgreSQL 18; on older servers (the
-- cross-version test loads this script into 15) the column is STORED instead.
DO $do$
BEGIN
    EXECUTE format($ddl$
CREATE TABLE generated_cols (
    id          int GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 10) PRIMARY KEY,
    alt_id      bigint GENERATED BY DEFAULT AS IDENTITY,
    price       numeric(10, 2) NOT NULL,
    qty         int NOT NULL,
    total       numeric(12, 2) GENERATED ALWAYS AS (price * qty) STORED,
    label       text GENERATED ALWAYS AS ('item #' || id::text) %s
)$ddl$, CASE WHEN current_setting('server_version_num')::int >= 180000 THEN 'VIRTUAL' ELSE 'STORED' END);
END
$do$;
INSERT INTO generated_cols (price, qty) VALUES (1.50, 2), (0.01, 1000), (-3, 3);
INSERT INTO generated_cols (alt_id, price, qty) VALUES (-5, 9.99, 0);
INSERT INTO generated_cols (id, alt_id, price, qty) OVERRIDING SYSTEM VALUE VALUES (7, 999, 1, 1);

CREATE TABLE serials (id serial PRIMARY KEY, big bigserial, small smallserial, note text);
INSERT INTO serials (note) VALUES ('one'), ('two'), ('three');
SELECT setval('serials_id_seq', 1000);
SELECT setval('serials_big_seq', 9000000000, true);

CREATE SEQUENCE standalone_not_called START WITH 42;
SELECT setval('standalone_not_called', 42, false);
CREATE SEQUENCE odd_params_seq AS integer INCREMENT BY -3 MINVALUE -100 MAXVALUE 50 START WITH 20
    CACHE 5 CYCLE;
SELECT nextval('odd_params_seq') FROM generate_series(1, 4);
CREATE UNLOGGED SEQUENCE unlogged_seq;
SELECT setval('unlogged_seq', 12);

-- ---------------------------------------------------------------------------
-- Views, materialized views, comments, constraints, indexes
-- ---------------------------------------------------------------------------
CREATE TABLE products (
    id        int PRIMARY KEY,
    sku       text NOT NULL,
    name      text NOT NULL,
    price     numeric(10, 2) DEFAULT 0 CONSTRAINT price_nonneg CHECK (price >= 0),
    active    boolean NOT NULL DEFAULT true,
    valid     daterange,
    CONSTRAINT products_sku_key UNIQUE (sku),
    CONSTRAINT products_name_len CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT products_no_overlap EXCLUDE USING gist (valid WITH &&)
);
CREATE UNIQUE INDEX products_lower_name_idx ON products (lower(name));
CREATE INDEX products_active_price_idx ON products (price DESC NULLS LAST) WHERE active;
CREATE INDEX products_name_include_idx ON products (name) INCLUDE (price);
COMMENT ON TABLE products IS 'Products: a table with a comment';
COMMENT ON COLUMN products.sku IS 'stock keeping unit, with ''quotes'' and a
newline';
INSERT INTO products VALUES
 (1, 'SKU-1', 'Widget', 9.99, true, '[2020-01-01,2021-01-01)'),
 (2, 'SKU-2', 'Gadget', 0, false, '[2021-01-01,2022-01-01)'),
 (3, 'SKU-3', 'Gizmo', NULL, true, NULL);
-- a NOT VALID check that existing rows violate, and a UNIQUE NULLS NOT DISTINCT
ALTER TABLE products ADD CONSTRAINT products_price_small CHECK (price < 5) NOT VALID;
CREATE TABLE nulls_not_distinct (a int, b int, CONSTRAINT nnd_uniq UNIQUE NULLS NOT DISTINCT (a, b));
INSERT INTO nulls_not_distinct VALUES (1, NULL), (NULL, 1), (NULL, NULL);

CREATE VIEW active_products AS
    SELECT id, sku, upper(name) AS name_upper FROM products WHERE active;
COMMENT ON VIEW active_products IS 'a view';
CREATE MATERIALIZED VIEW product_stats AS
    SELECT count(*) AS n, sum(price) AS total, max(name) AS last_name FROM products;
CREATE UNIQUE INDEX product_stats_n_idx ON product_stats (n);
CREATE MATERIALIZED VIEW product_names_unpopulated AS
    SELECT id, name FROM products WITH NO DATA;

-- a table that had a column dropped (attnums with a hole)
CREATE TABLE dropped_col (id int PRIMARY KEY, gone text, kept text, gone_too int, last int);
INSERT INTO dropped_col VALUES (1, 'x', 'kept one', 1, 10), (2, 'y', NULL, 2, 20);
ALTER TABLE dropped_col DROP COLUMN gone;
ALTER TABLE dropped_col DROP COLUMN gone_too;
ALTER TABLE dropped_col ADD COLUMN added_later text DEFAULT 'filled by default';

CREATE UNLOGGED TABLE unlogged_tbl (id int PRIMARY KEY, v text);
INSERT INTO unlogged_tbl VALUES (1, 'unlogged');

GRANT SELECT ON products TO PUBLIC;
GRANT SELECT (id, name) ON employees TO PUBLIC;

-- an empty table, and a small table with no index at all
CREATE TABLE empty_table (id int PRIMARY KEY, v text, n numeric);
CREATE TABLE no_index (k text, v int);
INSERT INTO no_index VALUES ('b', 2), ('a', 1), ('c', NULL);

-- ---------------------------------------------------------------------------
-- A wide table: 300 columns of assorted types
-- ---------------------------------------------------------------------------
DO $do$
DECLARE
    cols text := 'id int PRIMARY KEY';
    vals text;
    types text[] := ARRAY['int', 'text', 'float8', 'numeric', 'boolean', 'date', 'jsonb', 'bytea'];
    i int;
    r int;
BEGIN
    FOR i IN 1..299 LOOP
        cols := cols || format(', c%s %s', i, types[1 + i % 8]);
    END LOOP;
    EXECUTE format('CREATE TABLE wide_table (%s)', cols);
    FOR r IN 1..3 LOOP
        vals := r::text;
        FOR i IN 1..299 LOOP
            vals := vals || ', ' || CASE
                WHEN (i + r) % 11 = 0 THEN 'NULL'
                WHEN 1 + i % 8 = 1 THEN (i * r)::text
                WHEN 1 + i % 8 = 2 THEN quote_literal(format(E'r%s,c%s "\\ %s', r, i, repeat('x', i % 5)))
                WHEN 1 + i % 8 = 3 THEN quote_literal(((i * r)::float8 / 7)::text) || '::float8'
                WHEN 1 + i % 8 = 4 THEN quote_literal(((i * r)::numeric / 7)::text)
                WHEN 1 + i % 8 = 5 THEN (i % 2 = 0)::text
                WHEN 1 + i % 8 = 6 THEN quote_literal((date '2000-01-01' + i * r)::text)
                WHEN 1 + i % 8 = 7 THEN quote_literal(json_build_object('i', i, 'r', r)::text)
                ELSE quote_literal('\x' || md5(i::text || r::text)) || '::bytea'
            END;
        END LOOP;
        EXECUTE format('INSERT INTO wide_table VALUES (%s)', vals);
    END LOOP;
END
$do$;

-- ---------------------------------------------------------------------------
-- Roles: owners and grantees of the objects below.  Roles are cluster-wide and
-- this script is loaded many times on one server, possibly at the same time:
-- create them only if missing, never drop them.  A concurrent loader's
-- uncommitted CREATE ROLE makes ours wait, then fail with unique_violation
-- (duplicate_object when it is already committed): both mean "exists".
-- ---------------------------------------------------------------------------
DO $do$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['bk_fid_owner', 'bk fid Reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$do$;

-- ---------------------------------------------------------------------------
-- Extensions in their own schema, used by tables elsewhere: restoring the
-- tables needs the extension (and its schema) first
-- ---------------------------------------------------------------------------
CREATE SCHEMA ext;
CREATE EXTENSION citext WITH SCHEMA ext;
CREATE EXTENSION hstore WITH SCHEMA ext;
CREATE DOMAIN email_address AS ext.citext CHECK (VALUE ~ '@');
CREATE TABLE ext_typed (
    id      int PRIMARY KEY,
    email   email_address,
    nick    ext.citext NOT NULL DEFAULT 'Anonymous'::ext.citext,
    aliases ext.citext[],
    attrs   ext.hstore,
    CONSTRAINT ext_typed_nick_key UNIQUE (nick)
);
CREATE INDEX ext_typed_attrs_idx ON ext_typed USING gin (attrs);
INSERT INTO ext_typed VALUES
 (1, 'Alice@Example.COM', 'Alice', '{ALICE,"Al Ice",NULL}', 'a=>1, "b c"=>NULL, "quo\"te"=>"x,y"'),
 (2, 'bob@example.com', 'bOB', '{}', ''),
 (3, NULL, DEFAULT, NULL, NULL),
 (4, 'ünï@cödé.example', 'ÜNÏ', ARRAY['ß', 'SS'], '"=>"=>"\\", k=>""');

-- ---------------------------------------------------------------------------
-- Publications: a column list and row filters, one for a whole schema, a plain
-- one, an empty one (none FOR ALL TABLES: tables without a replica identity,
-- like no_pk_dups, could then not be updated)
-- ---------------------------------------------------------------------------
CREATE PUBLICATION fid_pub_filtered
    FOR TABLE products (id, sku, price, active) WHERE (price > 0 AND active),
        TABLE ext_typed WHERE (id > 1 AND id <> 3)
    WITH (publish = 'insert, truncate');
COMMENT ON PUBLICATION fid_pub_filtered IS 'column list and row filters';
CREATE PUBLICATION fid_pub_schema FOR TABLES IN SCHEMA "Odd Schema.v1";
CREATE PUBLICATION fid_pub_plain FOR TABLE employees, composite_pk;
CREATE PUBLICATION "fid pub Root" FOR TABLE measurements WHERE (reading IS NOT NULL)
    WITH (publish_via_partition_root = true, publish = 'insert');
CREATE PUBLICATION fid_pub_empty WITH (publish = '');

-- ---------------------------------------------------------------------------
-- Large objects (fixed OIDs: pg_dump keeps them): an owner, grants, a comment,
-- content spanning several 2 kB pages, an empty one
-- ---------------------------------------------------------------------------
SELECT lo_from_bytea(4242001, convert_to(repeat('large object ✓ ', 400), 'UTF8')
                              || decode(repeat('00ff5c0a', 64), 'hex'));
ALTER LARGE OBJECT 4242001 OWNER TO bk_fid_owner;
GRANT SELECT ON LARGE OBJECT 4242001 TO "bk fid Reader";
GRANT SELECT, UPDATE ON LARGE OBJECT 4242001 TO PUBLIC;
COMMENT ON LARGE OBJECT 4242001 IS 'owned by bk_fid_owner, readable by "bk fid Reader"';
SELECT lo_from_bytea(4242002, '');

-- ---------------------------------------------------------------------------
-- Default privileges: database-wide (no IN SCHEMA) and schema-scoped, for a
-- role other than the one loading this script
-- ---------------------------------------------------------------------------
ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner GRANT SELECT ON TABLES TO "bk fid Reader";
ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO "bk fid Reader";
ALTER DEFAULT PRIVILEGES FOR ROLE bk_fid_owner IN SCHEMA "Odd Schema.v1"
    GRANT INSERT ON TABLES TO "bk fid Reader";

RESET search_path;
