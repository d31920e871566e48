"""The snapshot's manifest as types: every key backupkit writes, what it means, and the docs made from them.

Each level of ``manifest.json`` is a ``TypedDict``; every field is
``Annotated[type, "one-line meaning"]`` and ``NotRequired`` when a snapshot may
lack it (older snapshots, or a key written only sometimes, like ``signed_by``).
``format_markdown()`` renders ``docs/snapshot-format.md`` from these classes, so
the reference cannot drift from the model; ``tests/test_snapshot_model.py`` checks
the model against the manifest a real backup writes, key by key.

Free of psycopg (and of everything else but ``typing``) at import time: fast
commands and ``manifest.py`` itself may import it.  The classes are defined leaves
first, ``Manifest`` last, and without ``from __future__ import annotations``: under
it Python 3.11's ``TypedDict`` cannot see ``NotRequired`` and calls every key required.
"""

import inspect
import types
import typing
from typing import Annotated, Literal, NotRequired, TypedDict


class Source(TypedDict):
    """Where the snapshot came from (``source``): never a password."""

    host: Annotated[str, "The DSN's host (`localhost` when it names none)."]
    port: Annotated[int, "The DSN's port (5432 when it names none)."]
    database: Annotated[str, "The database backed up (`current_database()`)."]
    user: Annotated[str, "The DSN's user (empty when neither the DSN nor `PGUSER` names one)."]
    server_version: Annotated[str, "The server's `server_version`, e.g. `18.6`."]
    server_version_num: Annotated[int, "The server's `server_version_num`, e.g. `180006`."]
    encoding: Annotated[str, "The database's `server_encoding`."]
    pg_dump_version: Annotated[str, "Major.minor version of the pg_dump that wrote `schema/`."]


class Column(TypedDict):
    """One entry of a table's ``columns``."""

    name: Annotated[str, "The column's name."]
    type: Annotated[str, "The declared type as `format_type` writes it (modifiers and domain names kept)."]
    base_type: Annotated[str, "The type with a domain resolved to its base type (what DuckDB reads the column as)."]
    enum: Annotated[bool, "True when the (base) type is an enum."]
    generated: Annotated[bool, "True for a generated column (STORED or VIRTUAL): not in the data files."]
    identity: Annotated[Literal["a", "d"] | None, "`a`: GENERATED ALWAYS AS IDENTITY, `d`: BY DEFAULT; null: neither."]
    not_null: Annotated[bool, "True when the column is NOT NULL."]


class ForeignKey(TypedDict):
    """One entry of a table's ``foreign_keys``."""

    name: Annotated[str, "The constraint's name."]
    ref_schema: Annotated[str, "Schema of the referenced table."]
    ref_table: Annotated[str, "Name of the referenced table."]
    columns: Annotated[list[str], "The referencing columns, in key order."]
    ref_columns: Annotated[list[str], "The referenced columns, in the same order."]


class RlsInfo(TypedDict):
    """A table's ``rls``."""

    enabled: Annotated[bool, "Row-level security is enabled on the table."]
    forced: Annotated[bool, "It is forced (applies to the table's owner too)."]
    bypassed: Annotated[bool, "It hid no rows from the backup (off, superuser, BYPASSRLS, or owner and not forced)."]


class DataFile(TypedDict):
    """One entry of a table's ``files``: a run of the table's rows, whole rows in table order.

    Large tables are split into chunks by ctid ranges that start at fixed page
    multiples, one COPY each, and each COPY's output is cut again into files of a few
    MB after rows chosen by their content (a row's hash; at least 4 MiB of COPY text, on
    average 6 MiB, at most 32 MiB plus a block), so a row that did not move is in the
    same chunk of the next snapshot, and a file whose rows did not change is the same
    file (which dedup and ``diff`` rely on; rows that did move are still matched exactly).
    """

    path: Annotated[
        str,
        "`data/<schema>.<table>.<NNNN><suffix>` (the chunk's first file) or `data/<schema>.<table>.<NNNN>.<PPP>"
        "<suffix>` (its next ones, `PPP` from `001`), relative to the snapshot folder.",
    ]
    bytes: Annotated[int, "Size of the stored file (compressed; and encrypted, in an encrypted snapshot)."]
    sha256: Annotated[str, "SHA-256 of the stored bytes (encrypted ones, in an encrypted snapshot), lowercase hex."]
    rows: Annotated[int, "Rows the file holds (`verify --deep` recounts them)."]
    text_bytes: NotRequired[
        Annotated[
            int, "Bytes of COPY output it holds: what a restore loads (absent in early snapshots: readers use `bytes`)."
        ]
    ]
    text_hash: NotRequired[
        Annotated[
            str,
            "`xxh3-128:<hex>` of the COPY text the file holds, computed while it was read: what the "
            "rows a restore loads must hash to (`backupkit drill`; absent before 2026-12-05).",
        ]
    ]
    shared: NotRequired[
        Annotated[
            bool,
            "`true`: the file is stored once for the whole repository, at `.shared/<first two hex digits of sha256>/"
            "<sha256>` beside the snapshot folders, and other snapshots may use it too; absent: in the snapshot "
            "folder at `path` (`backup --no-dedup`, encrypted and locked snapshots, earlier versions).",
        ]
    ]


class Table(TypedDict):
    """One entry of ``tables``: an ordinary table, a partition or an inheritance child.

    Partitioned parents hold no rows and have no entry (their partitions do), so every
    row is copied exactly once.  ``foreign_keys`` and ``indexes`` let restore pick
    dependencies (``--with-dependencies``) and check, before anything changes, that
    every referenced table is restored or already in the target.
    """

    schema: Annotated[str, "The table's schema."]
    name: Annotated[str, "The table's name."]
    parent: Annotated[str | None, "`schema.table` of its partitioned parent or (first) inheritance parent; null: none."]
    is_partition: Annotated[bool, "True for a partition (false for an inheritance child and a plain table)."]
    columns: Annotated[list[Column], "Every column in attribute order, generated ones included."]
    copy_columns: Annotated[list[str], "The data files' columns, in order: every column but the generated ones."]
    primary_key: Annotated[list[str] | None, "The primary key's columns in key order; null: no primary key."]
    foreign_keys: Annotated[list[ForeignKey], "The table's foreign keys, ordered by name."]
    indexes: Annotated[list[str], "Names of the table's indexes (those behind constraints included), sorted."]
    rls: Annotated[RlsInfo, "Row-level security on the table, and whether it hid rows from the backup."]
    data_format: NotRequired[
        Annotated[str, "How the data files are written (see Data files); absent: `csv` (format version 1)."]
    ]
    rows: Annotated[int, "Rows copied: the sum of the files' `rows`."]
    files: Annotated[list[DataFile], "The data files in order; their rows, one after another, are the table's."]


class SchemaFile(TypedDict):
    """One entry of ``schema_files``."""

    path: Annotated[str, "`schema/<name>`, relative to the snapshot folder."]
    bytes: Annotated[int, "Size of the stored file (encrypted, in an encrypted snapshot)."]
    sha256: Annotated[str, "SHA-256 of the stored bytes, lowercase hex."]


class Sequence(TypedDict):
    """One entry of ``sequences``.

    Sequences are not transactional: the value read may be ahead of the snapshot,
    never behind it, so restored ids never collide.
    """

    schema: Annotated[str, "The sequence's schema."]
    name: Annotated[str, "The sequence's name."]
    last_value: Annotated[int, "Its `last_value` when read."]
    is_called: Annotated[bool, "Its `is_called`: false means `nextval` returns `last_value` itself."]
    owned_by: Annotated[
        list[str] | None, "`[schema, table, column]` of the owning column (serial, identity); null: none."
    ]


class MaterializedView(TypedDict):
    """One entry of ``materialized_views``.

    A schema-only dump creates materialized views empty; restore refreshes the populated ones.
    """

    schema: Annotated[str, "The view's schema."]
    name: Annotated[str, "The view's name."]
    populated: Annotated[bool, "True when it held data (restore refreshes it)."]


class Extension(TypedDict):
    """One entry of ``extensions``.

    A restore must create a required extension the target lacks; one that is not
    required and that the target server does not offer is skipped with a note.
    """

    name: Annotated[str, "The extension's name."]
    version: Annotated[str, "Its installed version."]
    schema: Annotated[str, "The schema it was created in."]
    required: Annotated[bool, "True when an object of the backed-up schemas depends on it (type, function, opclass)."]


class PublicationTable(TypedDict):
    """One entry of a publication's ``tables``."""

    schema: Annotated[str, "The member table's schema."]
    name: Annotated[str, "The member table's name."]
    columns: Annotated[list[str] | None, "Its column list; null: every column."]
    row_filter: Annotated[str | None, "Its row filter (`WHERE` expression); null: none."]


class Publication(TypedDict):
    """One entry of ``publications``."""

    name: Annotated[str, "The publication's name."]
    owner: Annotated[str, "Its owner."]
    all_tables: Annotated[bool, "True for `FOR ALL TABLES`."]
    publish: Annotated[list[str], "The operations it publishes: `insert`, `update`, `delete`, `truncate`."]
    via_root: Annotated[bool, "`publish_via_partition_root`."]
    tables: Annotated[list[PublicationTable], "Its member tables, ordered by schema and name."]
    schemas: Annotated[list[str], "Its `FOR TABLES IN SCHEMA` schemas."]


class DefaultPrivilege(TypedDict):
    """One entry of ``default_privileges``."""

    role: Annotated[str, "The role whose new objects get these privileges (`FOR ROLE`)."]
    schema: Annotated[str | None, "The schema (`IN SCHEMA`); null: database-wide."]
    object_type: Annotated[
        str, "`tables`, `sequences`, `functions`, `types`, `schemas`; else the catalog's letter (`L`: large objects)."
    ]
    acl: Annotated[list[str], "The privileges as aclitem texts, `grantee=privileges/grantor` (empty grantee: PUBLIC)."]


class LargeObject(TypedDict):
    """One entry of ``large_objects`` (their data is in ``schema/database.dump``)."""

    oid: Annotated[int, "The large object's OID (pg_dump keeps it)."]
    owner: Annotated[str, "Its owner."]
    acl: Annotated[list[str] | None, "Its privileges as aclitem texts; null: the default ones."]


class Role(TypedDict):
    """One entry of ``roles``: a role the snapshot names, with its attributes; never a password.

    Listed: owners, grantees, policy roles, default-privilege roles, large-object and
    publication owners, that existed on the source (built-in ``pg_*`` roles left out).
    ``restore --create-roles`` creates the missing ones (NOLOGIN).
    """

    name: Annotated[str, "The role's name."]
    superuser: Annotated[bool, "SUPERUSER."]
    inherit: Annotated[bool, "INHERIT."]
    createrole: Annotated[bool, "CREATEROLE."]
    createdb: Annotated[bool, "CREATEDB."]
    login: Annotated[bool, "LOGIN."]
    replication: Annotated[bool, "REPLICATION."]
    bypassrls: Annotated[bool, "BYPASSRLS."]


class Encryption(TypedDict):
    """The manifest's ``encryption``: present only in an encrypted snapshot (``backup --recipient``).

    Every file but ``manifest.json`` and ``manifest.json.sig`` is then an age file
    (binary age-encryption.org/v1, X25519) encrypted to every recipient: a data file's
    zstd frames as one age stream, a schema file's bytes as they are.  Its entry's
    ``bytes`` and ``sha256`` are of the encrypted bytes, so `verify` needs no key.
    """

    scheme: Annotated[Literal["age"], "How the files are encrypted: `age` (age-encryption.org/v1)."]
    recipients: Annotated[
        list[str], "The age X25519 public keys (`age1…`) the files are encrypted to; any one's identity decrypts them."
    ]


class ObjectLock(TypedDict):
    """The manifest's ``object_lock``: present only in a snapshot taken with ``backup --object-lock-days``
    into an S3 bucket with Object Lock enabled.

    Every object of the snapshot was created with this S3 Object Lock retention, so no
    version of it can be deleted or overwritten before ``retain_until``; ``prune`` keeps the
    snapshot until then (reason "object lock until …").
    """

    mode: Annotated[
        Literal["GOVERNANCE", "COMPLIANCE"],
        "`GOVERNANCE`: users allowed to bypass governance retention may still delete; `COMPLIANCE`: nobody may.",
    ]
    retain_until: Annotated[
        str, "ISO 8601 UTC time the retention ends: `created_at` plus the days asked for, rounded up to a second."
    ]


class BucketFile(TypedDict):
    """One file of a Storage bucket (``storage.buckets[].files``), as the S3 endpoint described it.

    Its bytes are stored as they are (not compressed: most are images and documents
    already), named by their SHA-256 (``files/<sha256>``), so a file that did not change
    since an earlier snapshot is not stored again.
    """

    key: Annotated[str, "The object's key in the bucket (`storage.objects.name`)."]
    path: Annotated[str, "`files/<sha256>` (of the file's bytes), relative to the snapshot folder."]
    bytes: Annotated[int, "Size of the stored file (encrypted, in an encrypted snapshot)."]
    sha256: Annotated[str, "SHA-256 of the stored bytes (encrypted ones, in an encrypted snapshot), lowercase hex."]
    size: Annotated[int, "Size of the file itself."]
    content_sha256: Annotated[str, "SHA-256 of the file itself (equal to `sha256` unless encrypted)."]
    content_type: Annotated[str | None, "Its Content-Type."]
    cache_control: Annotated[str | None, "Its Cache-Control."]
    metadata: Annotated[dict[str, str], "Its user metadata (`x-amz-meta-*`)."]
    etag: Annotated[str, "The ETag the endpoint reported (without quotes)."]
    last_modified: Annotated[str, "ISO 8601 UTC time the endpoint says the file last changed."]
    shared: NotRequired[
        Annotated[bool, "`true`: stored once for the repository at `.shared/<sha256[:2]>/<sha256>` (as data files)."]
    ]


class BucketSettings(TypedDict):
    """A bucket's settings from its ``storage.buckets`` row, read in the backup's consistent moment."""

    public: Annotated[bool, "Anyone may read its files through the public URL."]
    file_size_limit: Annotated[int | None, "Largest file it accepts, in bytes (null: the project's limit)."]
    allowed_mime_types: Annotated[list[str] | None, "MIME types it accepts (null: any)."]


class Mismatch(TypedDict):
    """One difference between ``storage.objects`` rows and the bucket files (``storage.mismatches``)."""

    kind: Annotated[
        Literal["row_without_file", "file_without_row", "size", "content_type"],
        "What differs: a row whose file is missing, a file no row names, or the size or type the row records.",
    ]
    bucket: Annotated[str, "The bucket."]
    key: Annotated[str, "The object's key."]
    row: Annotated[str | None, "What the row says (size or MIME type), for `size` and `content_type`."]
    file: Annotated[str | None, "What the file is, for `size` and `content_type`."]


class Bucket(TypedDict):
    """One Supabase Storage bucket backed up with ``backup --storage-bucket`` (``storage.buckets``)."""

    name: Annotated[str, "The bucket's name (its S3 bucket and `storage.buckets.id`)."]
    settings: Annotated[BucketSettings | None, "Its `storage.buckets` row, or null when the database has none for it."]
    files: Annotated[list[BucketFile], "Every file, ordered by key."]
    bytes: Annotated[int, "Total size of its files."]


class Buckets(TypedDict):
    """The manifest's ``storage``: where the bucket files came from, and how they match the rows."""

    endpoint: Annotated[str, "The S3 endpoint read (scheme, host, port and path; never a key)."]
    buckets: Annotated[list[Bucket], "The buckets backed up, ordered by name."]
    objects_rows: Annotated[
        bool, "Whether the database had `storage.objects` to reconcile with (false: no reconciliation)."
    ]
    mismatches: Annotated[
        list[Mismatch], "`storage.objects` rows and files that do not match, at backup time (empty: all match)."
    ]


class Manifest(TypedDict):
    """The top level of ``manifest.json``."""

    format: Annotated[Literal["backupkit-snapshot"], "What makes the folder a backupkit snapshot."]
    format_version: Annotated[int, "The layout's version (2: text data files; 1: CSV); readers refuse a newer one."]
    id: Annotated[str, "The snapshot's folder name: UTC start `YYYYMMDDTHHMMSS.mmmZ`, then `-<label>` if labelled."]
    label: Annotated[str | None, "The backup's `--label` (`[A-Za-z0-9_.-]`, at most 64), or null."]
    created_at: Annotated[str, "ISO 8601 UTC time of the consistent moment (right after the snapshot was exported)."]
    finished_at: Annotated[str, "ISO 8601 UTC time the manifest was assembled, every table copied."]
    backupkit_version: Annotated[str, "Version of the backupkit that wrote the snapshot."]
    source: Annotated[Source, "The database backed up."]
    transaction_snapshot: Annotated[
        str, "The exported snapshot id (`pg_export_snapshot()`) that pg_dump and every COPY shared."
    ]
    rls_bypass: Annotated[bool, "True when the backing-up role was a superuser or had BYPASSRLS."]
    partial: Annotated[bool, "True when row-level security hid rows of some tables (a `--allow-partial` backup)."]
    partial_tables: Annotated[list[str], "`schema.table` of each table RLS filtered (empty unless `partial`)."]
    schemas: Annotated[list[str], "The schemas backed up (`--schema`, plus the schemas of `--table` names)."]
    include_tables: Annotated[
        list[str], "The `--table` names given (`schema.table`); empty: every table of the schemas."
    ]
    exclude_tables: Annotated[list[str], "The `--exclude-table` names given (`schema.table`)."]
    tables: Annotated[list[Table], "Every table copied, ordered by schema and name."]
    sequences: Annotated[list[Sequence], "The sequences the schema dump holds, with their values at backup time."]
    materialized_views: Annotated[
        list[MaterializedView], "Materialized views of the schemas in creation order (none with `--table`)."
    ]
    extensions: NotRequired[
        Annotated[list[Extension], "Every installed extension but plpgsql (absent before 2026-12)."]
    ]
    publications: NotRequired[
        Annotated[list[Publication], "Every publication of the database (absent before 2026-12)."]
    ]
    default_privileges: NotRequired[
        Annotated[list[DefaultPrivilege], "Every `ALTER DEFAULT PRIVILEGES` of the database (absent before 2026-12)."]
    ]
    large_objects: NotRequired[Annotated[list[LargeObject], "Every large object (absent before 2026-12)."]]
    roles: NotRequired[
        Annotated[list[Role], "The roles the snapshot names that exist on the source (absent before 2026-12)."]
    ]
    schema_files: Annotated[list[SchemaFile], "The files under `schema/`, sorted by path."]
    storage: NotRequired[
        Annotated[Buckets, "Only with `backup --storage-bucket`: the Supabase Storage files backed up beside the rows."]
    ]
    encryption: NotRequired[
        Annotated[Encryption, "Only in an encrypted snapshot: how, and to whom, its files are encrypted."]
    ]
    object_lock: NotRequired[
        Annotated[ObjectLock, "Only in a snapshot whose S3 objects are locked: the Object Lock retention they carry."]
    ]
    signed_by: NotRequired[
        Annotated[str, "Id of the key that signed `manifest.json.sig` (16 hex digits); only in signed snapshots."]
    ]
    manifest_sha256: Annotated[str, "SHA-256 of the manifest's canonical JSON without this key (see above)."]


class Field(typing.NamedTuple):
    """One key of a model class, as the docs and the tests see it."""

    name: str
    type: object  # the annotation without Annotated/NotRequired
    required: bool
    meaning: str


def is_model(tp: object) -> bool:
    """True for one of this module's TypedDict classes."""
    return isinstance(tp, type) and typing.is_typeddict(tp)


def fields(cls: type) -> list[Field]:
    """The keys of model class ``cls`` in declaration order, with type, required flag and meaning."""
    hints = typing.get_type_hints(cls, include_extras=True)
    required: frozenset[str] = cls.__required_keys__  # type: ignore[attr-defined]
    out = []
    for name, hint in hints.items():
        meaning = ""
        while True:  # NotRequired[Annotated[T, meaning]], or the other way round
            origin = typing.get_origin(hint)
            if origin is Annotated:
                meaning = meaning or str(hint.__metadata__[0])
                hint = hint.__origin__
            elif origin in (NotRequired, typing.Required):
                hint = typing.get_args(hint)[0]
            else:
                break
        out.append(Field(name, hint, name in required, meaning))
    return out


def models(root: type = Manifest) -> list[type]:
    """Every model class reachable from ``root``, in the order the docs show them (depth first)."""
    seen: list[type] = []

    def visit(tp: object) -> None:
        if is_model(tp):
            assert isinstance(tp, type)
            if tp in seen:
                return
            seen.append(tp)
            for f in fields(tp):
                visit(f.type)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return seen


def _anchor(cls: type) -> str:
    return cls.__name__.lower()


def type_text(tp: object) -> str:
    """A field's type as the docs show it, in JSON's terms."""
    if tp is type(None) or tp is None:
        return "null"
    if is_model(tp):
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
    for f in fields(cls):
        lines.append(
            f"| `{f.name}` | {_cell(type_text(f.type))} | {'yes' if f.required else 'no'} | {_cell(f.meaning)} |"
        )
    return "\n".join(lines) + "\n"


_INTRO = """\
# Snapshot format (version {version})

<!-- Generated from backupkit/snapshot/model.py: edit it, then run
     python -c 'from backupkit.snapshot.model import format_markdown; print(format_markdown(), end="")' \\
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
│   └── database.sql       # its DDL as plain SQL (for humans and diffs; no large-object data)
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
    from . import formats

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
    from . import manifest as mf  # lazily: manifest.py may come to import this module

    intro = _INTRO.format(version=mf.FORMAT_VERSION, format=mf.FORMAT, formats=_formats_table())
    return "\n".join([intro, *(_table(cls) for cls in models())])
