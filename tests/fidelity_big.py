"""Big, TOASTed values for the fidelity tests, generated server-side.

``add_toast_values(dsn, mb=20)`` fills ``public.big_values`` with a few values
of about ``mb`` megabytes each, built by PostgreSQL itself (string_agg over
generate_series, repeat), so the test process never holds a huge Python
string.  The values are deterministic: two databases given the same ``mb``
get equal fingerprints.
"""

from __future__ import annotations

import psycopg

_STATEMENTS = [
    "CREATE TABLE IF NOT EXISTS public.big_values (id int PRIMARY KEY, t text, b bytea)",
    # Row 1: multibyte text (pseudo-random CJK characters, some emoji), row 2:
    # bytea of raw sha256 bytes.  Each is a block of ~mb/64 MB repeated 64
    # times (quick to build); the repeats lie far beyond pglz's 4 kB window and
    # the data has no short repeats, so pglz gives up at once and both values
    # are stored out of line, uncompressed, in ~2 kB TOAST chunks.
    """INSERT INTO public.big_values (id, t, b)
       SELECT 1, repeat(string_agg(chr(CASE WHEN i %% 97 = 0 THEN 128512 + i %% 80
                                            ELSE 19968 + (('x' || left(md5(i::text), 7))::bit(28)::int
                                                          %% 20902) END),
                                   '' ORDER BY i), 64), NULL
       FROM generate_series(1, %(chars)s / 64) AS i
       ON CONFLICT (id) DO UPDATE SET t = EXCLUDED.t, b = EXCLUDED.b""",
    """INSERT INTO public.big_values (id, t, b)
       SELECT 2, NULL, string_agg(blk, ''::bytea)
       FROM (SELECT string_agg(sha256(i::text::bytea), ''::bytea ORDER BY i) AS blk
             FROM generate_series(1, %(sha)s / 64) AS i) AS s, generate_series(1, 64)
       ON CONFLICT (id) DO UPDATE SET t = EXCLUDED.t, b = EXCLUDED.b""",
    # Row 3: highly compressible values full of COPY-special characters (NUL,
    # 0xFF, backslash, newline, CR, comma, quote): compressed, then still
    # toasted, and both in one row (its text form is ~3 x mb MB).
    """INSERT INTO public.big_values (id, t, b)
       VALUES (3, repeat(E'line with \\\\ backslash, "quote", tab\\t and newline\\n', %(lines)s),
               decode(repeat('00ff5c0a0d2c22', %(units)s), 'hex'))
       ON CONFLICT (id) DO UPDATE SET t = EXCLUDED.t, b = EXCLUDED.b""",
]

_LINE = 'line with \\ backslash, "quote", tab\t and newline\n'  # the row-3 text unit


def add_toast_values(dsn: str, mb: int = 20) -> None:
    """Insert (or overwrite) rows 1-3 of ``public.big_values`` with ~``mb`` MB values each."""
    size = int(mb * 1024 * 1024)
    params = {
        "chars": size // 3,  # mostly 3-byte UTF-8 characters
        "sha": size // 32,  # 32 bytes per sha256
        "lines": size // len(_LINE.encode()),
        "units": size // 7,  # 7 bytes per decoded repeat unit
    }
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for stmt in _STATEMENTS:
            conn.execute(stmt, params if "%(" in stmt else None)
