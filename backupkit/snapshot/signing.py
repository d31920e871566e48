"""Signed manifests: authenticity with an Ed25519 key kept away from the backups.

``manifest.json`` already vouches for every byte of a snapshot (each file's SHA-256
and its own ``manifest_sha256``), but anyone who can write the snapshot can reseal a
forged one (see ``manifest.digest``).  A signature made with a private key that is
*not* stored with the backups closes that gap: ``backup --sign-key`` signs the exact
bytes of ``manifest.json`` into ``manifest.json.sig`` before the snapshot is renamed
into place, and ``verify --public-key`` checks it.

Files:

* Private key: PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), unencrypted, mode 0600.
  A private key file that group or others may read or write is refused
  (``ConfigError``, exit 2), as ssh refuses such keys: chmod 600 it.
* Public key: SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), mode 0644.
  Both are the ordinary OpenSSL forms (``openssl pkey -in KEY -pubout`` derives the
  public key from the private one).
* ``manifest.json.sig`` in the snapshot: the 64-byte Ed25519 signature of
  ``manifest.json``'s bytes, base64, one line.

A key's id is the first 16 hex digits of the SHA-256 of its raw 32-byte public key;
reports show it, never the key itself.  Nothing here prints or logs a private key.

Environment: ``BACKUPKIT_SIGN_KEY`` (path of the private key, for ``backup``) and
``BACKUPKIT_PUBLIC_KEY`` (path of the public key, for ``verify``) stand in for the
options when those are not given (the command line resolves them, see ``sign_key_path``
and ``public_key_path``; the library functions take explicit paths only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, StorageError
from ..storage.location import locate
from .manifest import MANIFEST, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE, SnapshotArg  # noqa: F401 - re-exported

# cryptography is imported by the functions that use a key (~12 ms): every command imports
# this module for the key options, most runs use no key.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGN_KEY_ENV = "BACKUPKIT_SIGN_KEY"
PUBLIC_KEY_ENV = "BACKUPKIT_PUBLIC_KEY"
#: A key file larger than this is not a PEM Ed25519 key.
_MAX_KEY_BYTES = 64 << 10


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short, printable id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


#: An age secret key anywhere in a text, in either case: a variable copied with its quotes
#: (``"AGE-SECRET-KEY-1…"``), a ``NAME=`` or a ``;`` around it is a key all the same.
_AGE_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+", re.I)
#: How the base64 body of every Ed25519 PKCS#8 private key begins (a PEM without its lines).
_ED25519_PKCS8 = "MC4CAQAwBQYDK2VwBCIEI"


def is_key_material(text: str) -> bool:
    """Whether a "path" is in fact a key (an age identity, a PEM block or its body) or too long to be one."""
    return (
        "\n" in text
        or _AGE_SECRET.search(text) is not None
        or "-----BEGIN" in text
        or _ED25519_PKCS8 in text
        or len(text) > 4096
    )


def read_key_file(
    path: Path,
    what: str,
    *,
    private: bool,
    why: str = "anyone with it can sign forgeries",
    limit: int = _MAX_KEY_BYTES,
    make: str = "create a key pair with `backupkit keygen`",
) -> bytes:
    """The bytes of key file ``path`` (at most ``limit``); ConfigError when it is missing, not a
    regular file, too large or (``private``) readable or writable by group or others.

    Shared by the signing keys and the age identities (``backupkit.snapshot.encryption``):
    every key file backupkit reads is read here.  ``why`` ends the hint of the refusal of a
    private key others may read; ``make`` is the hint for a missing file.
    """
    if is_key_material(str(path)):
        # A secret put in BACKUPKIT_IDENTITY or BACKUPKIT_SIGN_KEY itself, as CI and Kubernetes
        # inject secrets: "no such file" would print the key, and notify and drills record it.
        raise ConfigError(
            f"the {what} was given as the key itself, not as the path of a file holding it",
            hint="save the key in a file only you can read (chmod 600) and give that file's path",
        )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"no {what} at {path}", hint=make) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the {what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise ConfigError(
                f"the {what} {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"chmod 600 {path}; keep it away from the backups ({why})",
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"the {what} {path} is too large to be a key file (over {limit} bytes)")
    return data


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file ``path``; ConfigError when it is missing, not
    such a key, or readable or writable by group or others."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = read_key_file(path, "signing key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # the message is the library's; it never contains the key
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key", hint="create one with `backupkit keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key", hint="create one with `backupkit keygen`")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file ``path``; ConfigError when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    data = read_key_file(path, "public key", private=False)
    if b"PRIVATE KEY" in data:
        raise ConfigError(
            f"{path} holds a private key, not a public key",
            hint="pass the public key written by `backupkit keygen --public-key`; "
            "the private key belongs only where backups are signed",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path} is not a PEM public key", hint="pass the file written by `backupkit keygen --public-key`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create key file ``path`` holding ``data`` with ``mode`` whatever the umask, durably;
    FileExistsError when it exists (a key is never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def keygen(private_key: Path | str, public_key: Path | str) -> str:
    """Write a new Ed25519 key pair (private 0600, public 0644) and return its key id.

    Neither file may exist (an existing key is never overwritten: snapshots signed with
    it would no longer verify).  Raises ConfigError for an existing file or the same path
    twice, StorageError when a file cannot be written.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_key, public_key = Path(private_key), Path(public_key)
    if private_key.absolute() == public_key.absolute():
        raise ConfigError("private_key and `public_key` must be different files")
    for p in (private_key, public_key):
        if os.path.lexists(p):
            raise ConfigError(
                f"{p} already exists; backupkit never overwrites a key",
                hint="choose another file name, or remove the old key if nothing needs it",
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for path, data, mode in ((private_key, pem, 0o600), (public_key, pub, 0o644)):
            write_new(path, data, mode)
            written.append(path)
    except FileExistsError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise ConfigError(f"{exc.filename} already exists; backupkit never overwrites a key") from None
    except OSError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise StorageError(f"cannot write {exc.filename or 'the key'}: {exc.strerror or exc}") from None
    return key_id(key.public_key())


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The contents of ``manifest.json.sig`` for these exact manifest bytes."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def write_signature(snapshot: SnapshotArg, key: Ed25519PrivateKey) -> None:
    """Sign the snapshot's manifest.json as it is stored into ``manifest.json.sig`` (write-once, durable)."""
    location = locate(snapshot)
    data = location.storage.read(location.key(MANIFEST), MAX_MANIFEST_BYTES)
    location.storage.write(location.key(SIGNATURE), sign(data, key))


def parse_signature(data: bytes) -> bytes | None:
    """The 64 raw signature bytes in a ``manifest.json.sig`` file's content, or None if malformed."""
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def check(manifest_bytes: bytes, signature: bytes, key: Ed25519PublicKey) -> bool:
    """True when ``signature`` (a .sig file's content) is ``key``'s signature of these bytes."""
    from cryptography.exceptions import InvalidSignature

    raw = parse_signature(signature)
    if raw is None:
        return False
    try:
        key.verify(raw, manifest_bytes)
    except InvalidSignature:
        return False
    return True


def _from_env(value: Path | str | None, env: str) -> Path | None:
    if value is not None and str(value) != "":
        return Path(value)
    if env not in os.environ:
        return None
    found = os.environ[env]
    if not found.strip():
        # Set to nothing ("$KEY" unset in a cron line): meant to sign or to check, so never a
        # snapshot left unsigned, or a signature left unchecked, without a word.
        raise ConfigError(f"{env} is set but empty", hint=f"give it the key file's path, or unset {env}")
    return Path(found)


def sign_key_path(option: Path | str | None) -> Path | None:
    """``--sign-key`` if given, else ``$BACKUPKIT_SIGN_KEY`` if set (ConfigError when set to nothing), else None."""
    return _from_env(option, SIGN_KEY_ENV)


def public_key_path(option: Path | str | None) -> Path | None:
    """``--public-key`` if given, else ``$BACKUPKIT_PUBLIC_KEY`` if set (ConfigError when set to nothing), else None."""
    return _from_env(option, PUBLIC_KEY_ENV)
