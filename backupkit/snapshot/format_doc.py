"""``docs/snapshot-format.md``, generated from the snapshot model: the prose, then one table per model class.

``format_markdown()`` writes the whole file from ``model``'s TypedDicts (their
docstrings, fields, types and meanings) and from the data-format registry, so the
reference cannot drift from what backups write; ``tests/test_snapshot_model.py``
checks that the committed file is current.
"""

import inspect
import types
import typing
from typing import Literal

from . import formats, model
from . import manifest as mf


def _anchor(cls: type) -> str:
    return cls.__name__.lower()


def type_text(tp: object) -> str:
    """A field's type as the docs show it, in JSON's terms."""
    if tp is type(None) or tp is None:
        return "null"
    if model.is_model(tp):
        assert isinstance(tp, type)
        return f"[{tp.__name__}](#{_anchor(tp)})"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"object of {type_text(args[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is Literal:
        return " or ".join(f"`{a!r}`".replace("'", '"') for a in args)
    names = {str: "string", int: "integer", bool: "boolean"}
    if tp in names:
        return names[tp]
    raise TypeError(f"no docs spelling for {tp!r}")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(cls: type) -> str:
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = [
        f"### {cls.__name__}",
        "",
        doc.replace("``", "`"),
        "",
        "| Field | Type | Required | Meaning |",
        "|---|---|---|---|",
    ]
    for f in model.fields(cls):
        lines.append(
            f"| `{f.name}` | {_cell(type_text(f.type))} | {'yes' if f.required else 'no'} | {_cell(f.meaning)} |"
        )
    return "\n".join(lines) + "\n"


_INTRO = """\
# Snapshot format (version {version})

<!-- Generated from backupkit/snapshot/model.py (by format_doc.py): edit the model, then run
     python -c 'from backupkit.snapshot.format_doc import format_markdown; print(format_markdown(), end="")' \\
       > docs/snapshot-format.md -->

A snapshot is a folder `DIR/<id>/` where `<id>` is the UTC start time
`YYYYMMDDTHHMMSS.mmmZ` (milliseconds keep two quick backups apart) optionally
followed by `-<label>` (label: `[A-Za-z0-9_.-]`, at most 64 characters).
It is built as `DIR/.tmp-<id>-<random>/` and renamed into place only when
complete and verified; a folder whose name starts with `.` is never a snapshot.
A snapshot is written once: nothing inside it changes after the rename (pins live
outside it, in `DIR/.pins/<id>`).

```
20261125T132200.123Z-before-migration/
├── manifest.json          # everything below, with sizes and SHA-256 (never encrypted)
├── manifest.json.sig      # only with backup --sign-key: Ed25519 signature of manifest.json
├── schema/
│   ├── schema.dump        # pg_dump --schema-only -Fc of the backed-up schemas (restore source, TOC-filterable)
│   ├── pre-data.sql       # the same, plain SQL, pre-data section (for humans and diffs)
│   ├── post-data.sql      # the same, post-data section
│   ├── database.dump      # pg_dump -Fc --exclude-schema=* -b: what lives outside the schemas
│   ├── database.sql       # its DDL as plain SQL (for humans and diffs; no large-object data)
│   ├── platform.dump      # Supabase: the project's own policies and triggers on auth/storage tables
│   └── cron_jobs.json     # only when the source has pg_cron: its scheduled jobs, commands included
├── data/                  # only the data files that are not shared (see below)
│   ├── public.orders.0000.copy.zst       # one or more files per table
│   ├── public.orders.0000.001.copy.zst   # the same COPY's next rows
│   └── ...
└── files/                 # only with backup --storage-bucket, and only files not shared
    └── <sha256>           # a Storage bucket file's bytes, named by their SHA-256
```

A snapshot holds exactly the files its manifest lists, plus `manifest.json` and
`manifest.json.sig`; `verify` reports any other file, and any link or special file,
as damage. Every listed file comes with its size and the SHA-256 of its stored
bytes (for a data file: the compressed bytes), so a file can be checked without
decompressing it (or, in an encrypted snapshot, decrypting it).

**Shared data files.** By default a repository stores each distinct data file once:
a data file whose entry says `"shared": true` is not in the snapshot folder but in
the repository's pool, `DIR/.shared/<first two hex digits of sha256>/<sha256>`, and
the next snapshot of unchanged rows refers to the same file instead of storing it
again (chunk boundaries stay put, files end after rows chosen by their content, and
compression is deterministic, so unchanged rows make the same file). `prune` removes
a pool file once no snapshot refers to it.
So a snapshot folder alone is not the whole snapshot: move snapshots with `backupkit
copy`, which carries their shared files; `backup --no-dedup` writes a folder that
stands alone. Encrypted and Object-Locked snapshots never share files. Storage bucket
files (`storage.buckets[].files`) are shared the same way, named by the SHA-256 of their
bytes, stored as they are (not compressed).

`schema.dump` is `pg_dump --schema-only --schema=...` for the schemas (and
`--table`/`--exclude-table` choices) of the backup. A schema-filtered pg_dump
leaves out everything that belongs to no schema, so a second `pg_dump
--format=custom --exclude-schema='*' -b` runs in the **same exported snapshot**
and writes `database.dump`: extensions (`CREATE EXTENSION ... WITH SCHEMA`),
publications and their members (column lists and row filters included),
database-wide default privileges (`ALTER DEFAULT PRIVILEGES` without `IN
SCHEMA`), large objects with their owner, grants, comments and data, and event
triggers. Restore takes from it only what fits the target (see
[recovery.md](recovery.md)). `database.sql` is its pre-data and post-data
rendered as SQL; the large objects' data stays in the archive only. Snapshots
written before 2026-12 have no `database.dump`/`database.sql` (and no
`extensions` … `roles` in the manifest); they still verify, restore and diff, the
restore then creating only what `schema.dump` holds.

`platform.dump` is `pg_dump --schema-only --section=post-data --table=...` of the
Supabase platform tables (`auth.users`, `storage.objects`, `realtime.messages`, ...) on
which the project made policies or triggers of its own, when the backed-up schemas leave
those tables out; it runs in the same exported snapshot. Only the objects the manifest's
`left_on_platform` names are taken from it: a whole restore makes again those the target
lacks. A role that may not dump those tables writes no such file (the backup warns).

`cron_jobs.json` holds pg_cron's jobs (Supabase Cron), read in the same exported
snapshot: `cron.job` belongs to the extension, so neither archive has its rows, and on
Supabase the `postgres` role may not insert them anyway. A whole-snapshot restore
schedules them again with `cron.schedule`, last, in its own transaction. Commands may
hold keys (an `Authorization` header of an Edge Function call), so they are in this
file, encrypted with the other schema files, and the manifest's `cron_jobs` names the
jobs without them. A backup by a role that may not see every job (pg_cron's row-level
security shows a role without BYPASSRLS only its own) fails, or with `--allow-partial`
is marked partial with `cron.job` among its `partial_tables`.

The roles' own settings (`ALTER ROLE ... SET`: Supabase's `statement_timeout` of
`anon`, `authenticated` and `authenticator`, a user's `app.*` setting for RLS
functions) and the database's own (`ALTER DATABASE ... SET`: Supabase's documented
way to set the project's `timezone` or `statement_timeout`) are nothing a restore runs:
a role's settings for every database are global objects, outside any pg_dump, and the
database's, like a role's in this database only, are in both archives' `DATABASE
PROPERTIES` entry, which pg_restore renders only with `--create` and which names the
source database. The manifest's `role_settings` records the roles' settings for the
roles of `roles` and for Supabase's API roles (`authenticator`, `anon`,
`authenticated`, `service_role`, when the source has them); `database_settings`
records the database's. A whole-snapshot restore says what differs in the target and
gives the statements that bring it back. A value that may be a secret (`pgrst.jwt_secret`,
any setting named like a password, key, token or JWT, or a value that looks like a JWT,
a key or an API token) is never recorded in the manifest: it holds `"(not recorded: may
be a secret)"` instead. (`schema.dump` and `database.dump` are pg_dump's archives: their
`DATABASE PROPERTIES` hold this database's settings as they are, as any pg_dump's do;
encrypt snapshots, `backup --recipient`, when those may be secrets.)

## Data files

Each table's rows are in one or more files under `data/`, named
`<schema>.<table>.<NNNN><suffix>` (`NNNN` the chunk number from `0000`; a chunk's
next files add `.<PPP>` from `001` before the suffix), the
schema and table name with any character outside `[A-Za-z0-9_-]` percent-encoded
(dots too), so names stay unique and portable. A table entry's `data_format`
says how its files are written:

{formats}

Data files are PostgreSQL `COPY ... TO STDOUT` output, no header, UTF-8, session
settings `DateStyle='ISO, YMD', IntervalStyle=postgres, TimeZone=UTC,
extra_float_digits=3`, compressed with zstd (since 2026-12 one frame per block of
about 1 MiB, at most ~5 MiB, the frames one after another, which `zstd -d`,
python-zstandard with `read_across_frames=True` and DuckDB read as one stream;
earlier files are one frame). Generated columns are not in the files (restore
recomputes them); a table entry's `copy_columns` names the columns that are, in
order.

`text` (`FORMAT text`, the format pg_dump uses): one line per row, columns
separated by a tab, NULL written `\\N`, and a backslash, tab, newline, carriage
return, backspace, form feed and vertical tab inside a value written `\\\\`, `\\t`,
`\\n`, `\\r`, `\\b`, `\\f`, `\\v`. Nothing is quoted, so the empty string is an empty
field.

`csv` (`FORMAT csv`, version 1 snapshots, backupkit before 2026-12): NULL is an
unquoted empty field, the empty string `""`; a quoted value may hold a newline, so
a line is not always a row. Their table entries have no `data_format`. Every
command still reads, verifies, restores and diffs them. The text format replaced
CSV because PostgreSQL writes it 15–20% faster and loads it 15–35% faster
(measured on the benchmark tables), and backup and restore are bound by the
server's CPU.

## Encryption

A snapshot taken with `backup --recipient age1…` (or `$BACKUPKIT_RECIPIENTS`) has
every file but `manifest.json` and `manifest.json.sig` encrypted with
[age](https://age-encryption.org/v1) to those X25519 public keys: the data files
after compression (their zstd frames as one age stream: `age -d -i KEY FILE | zstd -d`
gives the COPY text), and the schema files too, since function bodies, column
defaults and large objects hold data. The host that backs up needs only the public
keys, so it cannot read what it wrote. The manifest stays plain JSON (names, types,
row counts and sizes, no row values), so `list`, `prune`, `copy` and `verify` work
without a key; its `encryption` says how and to whom, and each file's `bytes` and
`sha256` are those of the stored, encrypted bytes. `restore` and `verify --deep`
need an identity (`--identity FILE`, `$BACKUPKIT_IDENTITY`: age-keygen's format,
mode 0600) of one of the recipients; `diff` and `sql` refuse encrypted snapshots.

## Versions

`format` is always `{format}` and `format_version` is {version}. A reader
refuses a manifest whose `format` is anything else ("not a backupkit manifest"),
and one whose `format_version` is newer than the newest it knows ("written by a
newer backupkit": upgrade backupkit to read it) instead of misreading it; it reads
every older version. A key that is not required below may be absent: the older
snapshots that lack it are read with the default its meaning gives.

## manifest.json

UTF-8 JSON, indented, written once with the rest of the snapshot. Every path in it
must be a plain relative path (no `..`, `.` or empty segments, no backslash) to a
regular file inside the snapshot; symlinks are refused, and no path may be listed
twice.

`manifest_sha256` is the SHA-256 of the manifest serialised with
`json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` with
that key removed; verify recomputes it, so an accidental or hand edit of the
manifest is detected. It is not a signature: someone who can write the snapshot
can rewrite a file and reseal the manifest consistently (see README,
Reliability). A snapshot taken with `backup --sign-key` also holds
`manifest.json.sig`: the base64 Ed25519 signature of the exact bytes of
`manifest.json`, whose `signed_by` field names the key (the first 16 hex digits
of the SHA-256 of the raw public key); `verify`/`restore --public-key` check it.

The tables below list every key backupkit writes, level by level
("Required: no" keys may be absent, see Versions).
"""


def _formats_table() -> str:
    lines = ["| `data_format` | File suffix | A line is a row | |", "|---|---|---|---|"]
    for f in formats.FORMATS.values():
        notes = [
            n
            for n, on in (
                ("what backups write", f is formats.WRITTEN),
                ("assumed when `data_format` is absent", f is formats.DEFAULT),
            )
            if on
        ]
        lines.append(f"| `{f.name}` | `{f.suffix}` | {'yes' if f.line_is_row else 'no'} | {'; '.join(notes)} |")
    return "\n".join(lines)


def format_markdown() -> str:
    """The whole of ``docs/snapshot-format.md``: the prose above, then one table per model class."""
    intro = _INTRO.format(version=mf.FORMAT_VERSION, format=mf.FORMAT, formats=_formats_table())
    return "\n".join([intro, *(_table(cls) for cls in model.models())])
