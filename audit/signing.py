"""Signatures of the audit trail: signed heads, signed purge permits, key rotations, the witness file.

The key is an Ed25519 private key in a PEM file outside the database (`AUDIT_SIGNING_KEY_FILE`; written by
`manage.py audit_keygen`). Without one nothing is signed: heads are published with `signature` null.

Everything signed is a JSON object, signed as its canonical text (`message_bytes`: keys sorted, no
spaces, UTF-8), with a `type` naming what it is so one signature can never stand for another kind:

- a head: `{"type": "eventbus.audit.head", "entry_id", "hash", "count", "signed_at", "key_id"}`;
- a purge: `{"type": "eventbus.audit.purge", "reason", "granted_at", "purge": <the checkpoint's data
  without "permit">}`;
- a key rotation: `{"type": "eventbus.audit.key_rotation", "old_key_id", "old_public_key",
  "new_key_id", "new_public_key", "rotated_at"}`, signed by both keys.

A signature is standard base64 of the 64 bytes; `key_id` is the SHA-256 (hex) of the raw 32-byte public
key. docs/auditors.md describes the formats for people checking them by hand, and
client/eventbus_client/verify.py checks them with no Django.

After each commit that appends entries, `entries_committed` (a `transaction.on_commit` callback
registered by audit.services) queues the new head's (entry id, hash, count); a background thread, within
COALESCE_S (20 ms), signs the newest head queued (about 35 us; it covers every entry before it, so the
commits of those 20 ms share it), keeps it as this process's latest and appends it to
`AUDIT_WITNESS_FILE` (one JSON line per head, under `fcntl.flock`, flushed and fsynced), so neither the
writer thread nor the event loop waits on signing or on the disk.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from events.base import format_timestamp

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger("audit")

# A head is signed at most this long after its commit; the commits of that moment share one signed head
# (the newest covers every entry before it), so signing costs one signature per moment, not per commit.
COALESCE_S = 0.02

HEAD_TYPE = "eventbus.audit.head"
PURGE_TYPE = "eventbus.audit.purge"
ROTATION_TYPE = "eventbus.audit.key_rotation"
ALGORITHM = "Ed25519"


class SigningError(Exception):
    """A key that cannot be read or written, or a statement that does not verify."""


# Canonical text and keys


def message_bytes(value: dict[str, Any]) -> bytes:
    """What is signed: the object's canonical JSON (sorted keys, no spaces, UTF-8 kept)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningError(f"cannot read the audit signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(value: str | bytes | Path) -> Ed25519PublicKey:
    """A public key from PEM text, or from a file holding it (a private key's file gives its public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(value, Path):
        data = b""
    else:
        data = value.encode() if isinstance(value, str) else value
    if b"-----BEGIN" not in data:
        try:
            data = Path(os.fsdecode(value)).read_bytes()
        except OSError as error:
            raise SigningError(f"cannot read the public key {value!s}: {error}") from None
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if isinstance(private, Ed25519PrivateKey):
                return private.public_key()
            raise SigningError("not an Ed25519 key")
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise SigningError(f"not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError("not an Ed25519 public key")
    return key


def write_private_key(path: Path, key: Ed25519PrivateKey, *, force: bool = False) -> None:
    """Write the PEM with mode 0600; refuse to overwrite an existing file unless `force`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SigningError(f"{path} exists: refusing to overwrite a key (use --force)") from None
    except OSError as error:
        raise SigningError(f"cannot write {path}: {error}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file overwritten with --force keeps no wider mode
        handle.write(private_pem(key))
        handle.flush()
        os.fsync(handle.fileno())


def sign(key: Ed25519PrivateKey, statement: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(message_bytes(statement))).decode()


def signature_valid(public: Ed25519PublicKey, statement: dict[str, Any], signature: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signature, str):
        return False
    try:
        public.verify(base64.b64decode(signature, validate=True), message_bytes(statement))
    except (InvalidSignature, ValueError):
        return False
    return True


# The configured key


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_id: str
    public_pem: str


_key_cache: dict[tuple[str, int], SigningKey] = {}
_key_lock = threading.Lock()


def signing_key() -> SigningKey | None:
    """The key of AUDIT_SIGNING_KEY_FILE (read once per file version), or None when none is set."""
    path = getattr(settings, "AUDIT_SIGNING_KEY_FILE", None)
    if not path:
        return None
    try:
        version = os.stat(path).st_mtime_ns
    except OSError as error:
        raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY_FILE={path}: {error}") from None
    cache_key = (str(path), version)
    with _key_lock:
        found = _key_cache.get(cache_key)
        if found is None:
            try:
                private = load_private_key(path)
            except SigningError as error:
                raise ImproperlyConfigured(f"AUDIT_SIGNING_KEY_FILE: {error}") from None
            public = private.public_key()
            found = SigningKey(private, public, key_id(public), public_pem(public))
            _key_cache.clear()
            _key_cache[cache_key] = found
        return found


# Heads


def head_statement(head: dict[str, Any]) -> dict[str, Any]:
    """What a head's signature covers."""
    return {
        "type": HEAD_TYPE,
        "entry_id": head["entry_id"],
        "hash": head["hash"],
        "count": head["count"],
        "signed_at": head["signed_at"],
        "key_id": head["key_id"],
    }


def make_head(entry_id: int | None, hash_: str, count: int, key: SigningKey | None = None) -> dict[str, Any]:
    """A head signed now with `key` (the configured one by default); unsigned when there is none."""
    if key is None:
        key = signing_key()
    head: dict[str, Any] = {
        "entry_id": entry_id,
        "hash": hash_,
        "count": count,
        "signed_at": format_timestamp(datetime.now(UTC)),
        "key_id": key.key_id if key else None,
        "signature": None,
    }
    if key is not None:
        head["signature"] = sign(key.private, head_statement(head))
    return head


def head_valid(head: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> bool:
    """Whether the head is signed by one of `keys` (by key id)."""
    public = keys.get(str(head.get("key_id")))
    return public is not None and signature_valid(public, head_statement(head), head.get("signature"))


# Purge permits


def purge_statement(reason: str, granted_at: str, purge: dict[str, Any]) -> dict[str, Any]:
    return {"type": PURGE_TYPE, "reason": reason, "granted_at": granted_at, "purge": purge}


def sign_purge(reason: str, purge: dict[str, Any]) -> dict[str, Any]:
    """A purge permit: {reason, granted_at, key_id, signature} (signature and key_id null with no key)."""
    key = signing_key()
    granted_at = format_timestamp(datetime.now(UTC))
    permit: dict[str, Any] = {"reason": reason, "granted_at": granted_at, "key_id": None, "signature": None}
    if key is not None:
        permit["key_id"] = key.key_id
        permit["signature"] = sign(key.private, purge_statement(reason, granted_at, purge))
    return permit


def purge_valid(data: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> bool:
    """Whether a checkpoint's data carries a permit signed by one of `keys` over the rest of the data."""
    permit = data.get("permit")
    if not isinstance(permit, dict):
        return False
    public = keys.get(str(permit.get("key_id")))
    if public is None:
        return False
    purge = {key: value for key, value in data.items() if key != "permit"}
    statement = purge_statement(permit.get("reason"), permit.get("granted_at"), purge)  # type: ignore[arg-type]
    return signature_valid(public, statement, permit.get("signature"))


# Key rotation


def rotation_record(old: Ed25519PrivateKey, new: Ed25519PrivateKey) -> dict[str, Any]:
    """A rotation statement, signed by the new key and by the old one."""
    statement = {
        "type": ROTATION_TYPE,
        "old_key_id": key_id(old.public_key()),
        "old_public_key": public_pem(old.public_key()),
        "new_key_id": key_id(new.public_key()),
        "new_public_key": public_pem(new.public_key()),
        "rotated_at": format_timestamp(datetime.now(UTC)),
    }
    return {
        "statement": statement,
        "new_signature": sign(new, statement),
        "old_signature": sign(old, statement),
    }


def rotation_keys(record: dict[str, Any]) -> tuple[Ed25519PublicKey, Ed25519PublicKey] | None:
    """(old, new) public keys of a rotation record whose statement both keys signed; None otherwise."""
    statement = record.get("statement")
    if not isinstance(statement, dict) or statement.get("type") != ROTATION_TYPE:
        return None
    try:
        old = load_public_key(str(statement["old_public_key"]))
        new = load_public_key(str(statement["new_public_key"]))
    except (KeyError, SigningError):
        return None
    if key_id(old) != statement.get("old_key_id") or key_id(new) != statement.get("new_key_id"):
        return None
    if not (
        signature_valid(new, statement, record.get("new_signature"))
        and signature_valid(old, statement, record.get("old_signature"))
    ):
        return None
    return old, new


def trusted_keys(
    keys: Iterable[Ed25519PublicKey], rotations: Iterable[dict[str, Any]]
) -> dict[str, Ed25519PublicKey]:
    """`keys` by key id, plus every key a valid rotation record links to one of them (either way)."""
    trusted = {key_id(key): key for key in keys}
    links = [pair for pair in (rotation_keys(record) for record in rotations) if pair is not None]
    grown = True
    while grown:
        grown = False
        for old, new in links:
            old_id, new_id = key_id(old), key_id(new)
            if (old_id in trusted) != (new_id in trusted):
                trusted.setdefault(old_id, old)
                trusted.setdefault(new_id, new)
                grown = True
    return trusted


# The witness file


def witness_path() -> str | None:
    return getattr(settings, "AUDIT_WITNESS_FILE", None) or None


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append whole lines to `path` under an exclusive flock; flushed and fsynced before returning."""
    data = "".join(line if line.endswith("\n") else line + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def witness_line(head: dict[str, Any]) -> str:
    return json.dumps({"signed_head": head}, separators=(",", ":"), ensure_ascii=False)


def read_witness(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each line: `{"signed_head": {...}}`, a bare head, or `{"key_rotation":
    {...}}`; a line that is not JSON (a torn last write) raises SigningError naming it."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                raise SigningError(f"{path} line {number}: not JSON") from None
            if not isinstance(value, dict):
                raise SigningError(f"{path} line {number}: not a JSON object")
            yield number, value


class HeadPublisher:
    """This process's latest signed head, and the thread that signs committed heads and appends them to
    the witness file (so the committing thread only queues a tuple)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._latest: dict[str, Any] | None = None
        self._to_sign: list[tuple[int, str, int]] = []  # (entry_id, hash, count) committed, not yet signed
        self._pending: list[tuple[str, str]] = []  # (path, line) to append
        self._busy = False
        self._flushing = 0
        self._thread: threading.Thread | None = None
        self.signed = 0
        self.written = 0
        self.failures = 0

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._latest is None else dict(self._latest)

    def forget(self) -> None:
        with self._lock:
            self._latest = None

    def committed(self, entry_id: int, hash_: str, count: int) -> None:
        """A commit appended entries up to `entry_id`: have its head signed and witnessed, soon."""
        with self._lock:
            self._to_sign.append((entry_id, hash_, count))
            self._wake()

    def publish(self, head: dict[str, Any], *, witness: bool = True) -> None:
        """Keep `head` as the latest (unless a newer entry's head is already kept) and witness it."""
        with self._lock:
            self._keep(head)
            path = witness_path() if witness else None
            if path:
                self._pending.append((path, witness_line(head)))
                self._wake()

    def _keep(self, head: dict[str, Any]) -> None:
        latest = self._latest
        if latest is None or (head["entry_id"] or 0) >= (latest["entry_id"] or 0):
            self._latest = head

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="audit-heads", daemon=True)
            self._thread.start()
        self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._to_sign:
                    if not self._lock.wait(timeout=30):
                        self._thread = None
                        return
                if self._to_sign and not self._flushing:
                    # Let the commits of the next moment arrive: their newest head covers them all.
                    self._lock.wait_for(lambda: self._flushing, timeout=COALESCE_S)
                to_sign, self._to_sign = self._to_sign[-1:], []
                lines, self._pending = self._pending, []
                self._busy = True
            try:
                self._sign(to_sign, lines)
                self._write(lines)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _sign(self, to_sign: list[tuple[int, str, int]], lines: list[tuple[str, str]]) -> None:
        if not to_sign:
            return
        try:
            key = signing_key()
            path = witness_path()
            for entry_id, hash_, count in to_sign:
                head = make_head(entry_id, hash_, count, key)
                self.signed += 1
                if path:
                    lines.append((path, witness_line(head)))
            with self._lock:
                self._keep(head)
        except Exception:
            logger.exception("audit: cannot sign the heads of %d commits", len(to_sign))

    def _write(self, lines: list[tuple[str, str]]) -> None:
        by_path: dict[str, list[str]] = {}
        for path, line in lines:
            by_path.setdefault(path, []).append(line)
        for path, group in by_path.items():
            try:
                append_lines(path, group)
                self.written += len(group)
            except OSError:
                self.failures += len(group)
                logger.exception("audit: cannot append %d signed heads to %s", len(group), path)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every head committed so far is signed and witnessed; False on timeout."""
        with self._lock:
            self._flushing += 1
            self._lock.notify_all()
            try:
                return self._lock.wait_for(
                    lambda: not self._pending and not self._to_sign and not self._busy, timeout=timeout
                )
            finally:
                self._flushing -= 1


publisher = HeadPublisher()
atexit.register(publisher.flush, 10.0)


def entries_committed(entry_id: int, hash_: str, count: int) -> None:
    """transaction.on_commit callback of every transaction that appended entries: queue the new head
    for signing and witnessing. Never raises (the commit has happened)."""
    try:
        publisher.committed(entry_id, hash_, count)
    except Exception:
        logger.exception("audit: cannot queue the head of entry %s", entry_id)
