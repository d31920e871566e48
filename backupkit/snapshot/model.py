"""The snapshot's manifest as types: every key backupkit writes and what it means.

Each level of ``manifest.json`` is a ``TypedDict``; every field is
``Annotated[type, "one-line meaning"]`` and ``NotRequired`` when a snapshot may
lack it (older snapshots, or a key written only sometimes, like ``signed_by``).
``models()`` and ``fields()`` read the classes back as data: ``format_doc`` renders
``docs/snapshot-format.md`` from them, so the reference cannot drift from the model,
and ``tests/test_snapshot_model.py`` checks the model against the manifest a real
backup writes, key by key.

Free of psycopg (and of everything else but ``typing``) at import time: fast
commands and ``manifest.py`` itself may import it.  The classes are defined leaves
first, ``Manifest`` last, and without ``from __future__ import annotations``: under
it Python 3.11's ``TypedDict`` cannot see ``NotRequired`` and calls every key required.
"""

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


class RoleSettings(TypedDict):
    """The manifest's ``role_settings``: the own settings (``ALTER ROLE ... SET``) of the roles in
    ``roles`` and of Supabase's API roles (``authenticator``, ``anon``, ``authenticated``,
    ``service_role``, when the source has them), from ``pg_db_role_setting``, each as
    ``{role: {setting: value}}``.

    No dump in the snapshot carries them, and a new project has the platform's (Supabase:
    ``statement_timeout`` of ``anon`` and ``authenticated``), so a restore can name the
    differences with the statements that bring them back.  A value that may be a secret (its
    setting's name holds `password`, `secret`, `key`, `token`, ...: `pgrst.jwt_secret`; or
    the value looks like a JWT, a PEM key, a password in a connection string, or a long random
    string) is never recorded: it reads `"(not recorded: may be a secret)"`.  A role with no
    settings is absent, except Supabase's API roles: those the source has are always in
    ``all_databases`` (``{}`` when they have none), so a restore can name a setting the target's
    has and the source's had not.
    """

    all_databases: Annotated[
        dict[str, dict[str, str]], "Settings for every database (`ALTER ROLE role SET`), by role and setting name."
    ]
    this_database: Annotated[
        dict[str, dict[str, str]],
        "Settings for the backed-up database only (`ALTER ROLE role IN DATABASE db SET`), by role and setting name.",
    ]


class CronJob(TypedDict):
    """One entry of the manifest's ``cron_jobs``: a pg_cron job of the source (``cron.job``), without
    its command, which may hold keys and is in ``schema/cron_jobs.json`` (encrypted with the other
    schema files; the same fields, ``command`` added, in jobid order)."""

    name: Annotated[str | None, "`jobname` (null: an unnamed job)."]
    schedule: Annotated[str, "Its cron schedule, as pg_cron has it (`0 3 * * *`, `@hourly`, `30 seconds`)."]
    database: Annotated[str, "The database it runs in."]
    username: Annotated[str, "The role it runs as."]
    active: Annotated[bool, "Whether it runs (`cron.alter_job(..., active := false)` pauses it)."]


class PlatformObject(TypedDict):
    """One entry of the manifest's ``left_on_platform``: a Supabase project's own policy or
    trigger on a table of the platform's ``auth``, ``storage`` or ``realtime`` schema, which
    the backed-up schemas leave out (kept in ``schema/platform.dump``, made again by a whole
    restore into a new project that lacks it)."""

    kind: Annotated[str, "`policy` or `trigger`."]
    name: Annotated[str, "Its name."]
    schema: Annotated[str, "Its table's schema."]
    table: Annotated[str, "Its table's name."]
    oid: NotRequired[
        Annotated[
            int,
            "Its oid in the source (`pg_policy`, `pg_trigger`), read at the consistent moment: its entry in "
            "`schema/platform.dump` (absent in snapshots without that file).",
        ]
    ]


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
    role_settings: NotRequired[
        Annotated[
            RoleSettings,
            "The own settings of the roles in `roles` and Supabase's API roles, no secret (absent before 2026-12-07).",
        ]
    ]
    database_settings: NotRequired[
        Annotated[
            dict[str, str],
            "The backed-up database's own settings (`ALTER DATABASE db SET`: Supabase's `timezone`, "
            '`statement_timeout`), by name; a possible secret\'s value is `"(not recorded: may be a secret)"` '
            "(absent before 2026-12-07).",
        ]
    ]
    cron_jobs: NotRequired[
        Annotated[
            list[CronJob],
            "Only when the source has pg_cron (Supabase Cron): its scheduled jobs, which a whole "
            "restore schedules again (absent before 2026-12-07).",
        ]
    ]
    left_on_platform: NotRequired[
        Annotated[
            list[PlatformObject],
            "Only when there are some: the project's own policies and triggers on Supabase's auth, storage "
            "and realtime tables that the backed-up schemas leave out, kept in `schema/platform.dump` when the "
            "backup could dump those tables (a whole restore into a new project makes again those it lacks, "
            "and names those it cannot; absent before 2026-12-07).",
        ]
    ]
    schema_files: Annotated[
        list[SchemaFile], "The files under `schema/`, sorted by path (`cron_jobs.json`, when present, last)."
    ]
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
