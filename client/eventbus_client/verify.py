"""Offline verification of an audit export: every hash, every link, the signed head, the purge permits.

`verify_export(path, public_key)` reads an export of `GET /api/audit/export/?audit_only=true` (or of
`manage.py export_audit --audit-only`) line by line, in constant memory, with no database and none of the
server's code: NDJSON ending with its `{"signed_head": {...}}` line, or CSV / JSON with the head beside
it in `<file>.head.json` (`GET /api/audit/head/?entry_id=<last row's entry_id>` gives one). It raises
`ExportVerificationError` naming the first line that does not hold (`.line`, 1-based; None for the
file as a whole), and returns an `ExportVerification` otherwise.

What it checks (docs/auditors.md has the formats):

- each row's `hash` is SHA-256 of its `prev_hash` followed by the canonical JSON of its content (the
  keys `kind position event_id event_type event_category timestamp session_id correlation_id actor data
  source`: keys sorted, no spaces, UTF-8 kept, whole floats written as integers);
- each row's `prev_hash` is the row before's `hash` (a row dropped, moved or added breaks a link); the
  first row's is where the file starts (`GENESIS`, 64 zeros, for a whole trail);
- the signed head names the last row (its `entry_id` and `hash`: nothing was cut off the end), and its
  Ed25519 signature verifies with `public_key` (or a key a rotation record links to it);
- with a public key, every purge checkpoint row carries a valid signed permit.

`cryptography` is needed for signatures only (`pip install "eventbus-client[verify]"`); it is imported
when a public key is given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64
HEAD_TYPE = "eventbus.audit.head"
PURGE_TYPE = "eventbus.audit.purge"
ROTATION_TYPE = "eventbus.audit.key_rotation"
# The keys of an audit export's rows (CSV header order), and those a hash covers.
AUDIT_COLUMNS = (
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "causation_id",
    "data",
    "source",
    "version",
    "position",
    "entry_id",
    "kind",
    "actor",
    "prev_hash",
    "hash",
)
CONTENT_KEYS = (
    "kind",
    "position",
    "event_id",
    "event_type",
    "event_category",
    "timestamp",
    "session_id",
    "correlation_id",
    "actor",
    "data",
    "source",
)

__all__ = [
    "ExportVerification",
    "ExportVerificationError",
    "canonical_json",
    "chain_hash",
    "entry_content",
    "verify_export",
]


class ExportVerificationError(Exception):
    """The export does not hold: `line` is the first line at fault (1-based; None: the whole file)."""

    def __init__(self, message: str, *, line: int | None = None, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{at}{message}")
        self.reason = message
        self.line = line
        self.path = path


@dataclass
class ExportVerification:
    """What a verified export proves: `rows` chained rows from `first_prev_hash` (GENESIS: the whole
    trail) to the signed head `head`, signed by `key_id` (None when no key was given)."""

    rows: int
    format: str
    head: dict[str, Any] | None
    first_prev_hash: str | None
    last_entry_id: int | None
    key_id: str | None
    checkpoints: int = 0
    anchored: bool = False  # the first row is where a purge checkpoint in the file says the trail starts
    first_line: int | None = None

    @property
    def starts_at_genesis(self) -> bool:
        return self.first_prev_hash == GENESIS_HASH

    @property
    def whole_trail(self) -> bool:
        """The file starts where the trail starts: at GENESIS, or at a purge's anchor."""
        return self.starts_at_genesis or self.anchored


# The chain's hash, as the server computes it (audit/services.py: canonical_json, chain_hash)


def _normalise_numbers(value: Any) -> Any:
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is dict:
        return {key: _normalise_numbers(item) for key, item in value.items()}
    if type(value) is list or type(value) is tuple:
        return [_normalise_numbers(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces, UTF-8 kept, whole numbers as integers."""
    return json.dumps(
        _normalise_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_content(row: dict[str, Any]) -> dict[str, Any]:
    """What a row's hash covers (its timestamp as exported: ISO 8601, UTC, `Z`)."""
    return {key: row[key] for key in CONTENT_KEYS}


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """SHA-256 (hex) of `prev_hash` followed by the canonical JSON of the row's content."""
    return hashlib.sha256((prev_hash + canonical_json(entry_content(row))).encode()).hexdigest()


def _whole_floats_as_int(text: str) -> float | int:
    # json's parse_float: the normalisation of canonical_json done while parsing (only floats reach it).
    number = float(text)
    return int(number) if number.is_integer() else number


_loads = json.JSONDecoder(parse_float=_whole_floats_as_int).decode
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


# Keys and signatures (cryptography, imported when needed)


def _message(statement: dict[str, Any]) -> bytes:
    return json.dumps(
        statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def _load_public_key(value: Any) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError:  # pragma: no cover - depends on the installation
        raise ExportVerificationError(
            'checking signatures needs cryptography: pip install "eventbus-client[verify]"'
        ) from None
    if isinstance(value, Ed25519PublicKey):
        return value
    if isinstance(value, Ed25519PrivateKey):
        return value.public_key()
    if isinstance(value, str | bytes) and (
        b"-----BEGIN" in (value.encode() if isinstance(value, str) else value)
    ):
        data = value.encode() if isinstance(value, str) else value
    else:
        try:
            data = Path(os.fsdecode(value)).read_bytes()
        except (OSError, TypeError) as error:
            raise ExportVerificationError(f"cannot read the public key {value!r}: {error}") from None
    try:
        key: Any
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key = private.public_key() if isinstance(private, Ed25519PrivateKey) else None
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise ExportVerificationError(f"not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ExportVerificationError("the public key is not an Ed25519 key")
    return key


def _key_id(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _signature_valid(key: Any, statement: dict[str, Any], signature: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), _message(statement))
    except (InvalidSignature, ValueError):
        return False
    return True


def _rotation_keys(record: Any) -> tuple[Any, Any] | None:
    statement = record.get("statement") if isinstance(record, dict) else None
    if not isinstance(statement, dict) or statement.get("type") != ROTATION_TYPE:
        return None
    try:
        old = _load_public_key(str(statement["old_public_key"]))
        new = _load_public_key(str(statement["new_public_key"]))
    except (KeyError, ExportVerificationError):
        return None
    if _key_id(old) != statement.get("old_key_id") or _key_id(new) != statement.get("new_key_id"):
        return None
    if not (
        _signature_valid(new, statement, record.get("new_signature"))
        and _signature_valid(old, statement, record.get("old_signature"))
    ):
        return None
    return old, new


def _rotation_records(rotations: Any) -> Iterator[dict[str, Any]]:
    if rotations is None:
        return
    if isinstance(rotations, str | os.PathLike):
        with open(rotations, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    value = json.loads(line)
                    if isinstance(value, dict) and "key_rotation" in value:
                        yield value["key_rotation"]
                    elif isinstance(value, dict) and "statement" in value:
                        yield value
        return
    for record in rotations:
        yield record.get("key_rotation", record) if isinstance(record, dict) else record


def trusted_keys(public_key: Any, rotations: Any = None) -> dict[str, Any]:
    """The keys by key id: those given, and those valid rotation records link to them (either way)."""
    given = public_key if isinstance(public_key, list | tuple) else [public_key]
    trusted = {}
    for value in given:
        key = _load_public_key(value)
        trusted[_key_id(key)] = key
    links = [pair for pair in map(_rotation_keys, _rotation_records(rotations)) if pair is not None]
    grown = True
    while grown:
        grown = False
        for old, new in links:
            old_id, new_id = _key_id(old), _key_id(new)
            if (old_id in trusted) != (new_id in trusted):
                trusted.setdefault(old_id, old)
                trusted.setdefault(new_id, new)
                grown = True
    return trusted


def _head_valid(head: dict[str, Any], keys: dict[str, Any]) -> bool:
    key = keys.get(str(head.get("key_id")))
    if key is None:
        return False
    statement = {
        "type": HEAD_TYPE,
        "entry_id": head.get("entry_id"),
        "hash": head.get("hash"),
        "count": head.get("count"),
        "signed_at": head.get("signed_at"),
        "key_id": head.get("key_id"),
    }
    return _signature_valid(key, statement, head.get("signature"))


def _purge_valid(data: Any, keys: dict[str, Any]) -> bool:
    permit = data.get("permit") if isinstance(data, dict) else None
    if not isinstance(permit, dict):
        return False
    key = keys.get(str(permit.get("key_id")))
    if key is None:
        return False
    purge = {name: value for name, value in data.items() if name != "permit"}
    statement = {
        "type": PURGE_TYPE,
        "reason": permit.get("reason"),
        "granted_at": permit.get("granted_at"),
        "purge": purge,
    }
    return _signature_valid(key, statement, permit.get("signature"))


# Reading the formats


def _csv_fields(record: str) -> list[str | None]:
    """One CSV record of the export: every value quoted ("" doubled), a null empty and unquoted."""
    fields: list[str | None] = []
    size = len(record)
    at = 0
    while True:
        if at < size and record[at] == '"':
            parts = []
            start = at + 1
            while True:
                quote = record.index('"', start)
                if quote + 1 < size and record[quote + 1] == '"':
                    parts.append(record[start : quote + 1])
                    start = quote + 2
                    continue
                parts.append(record[start:quote])
                at = quote + 1
                break
            fields.append("".join(parts))
        else:
            comma = record.find(",", at)
            end = size if comma == -1 else comma
            if end != at:
                raise ValueError("an unquoted value")
            fields.append(None)
            at = end
        if at >= size:
            return fields
        if record[at] != ",":
            raise ValueError("text after a closing quote")
        at += 1


def _csv_rows(handle: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = enumerate(handle, 1)
    header_line = next(lines, None)
    expected = ",".join(f'"{name}"' for name in AUDIT_COLUMNS)
    if header_line is None or header_line[1].rstrip("\n") != expected:
        raise ExportVerificationError(
            "not an audit export: the CSV header is not " + expected, line=1 if header_line else None
        )
    for number, line in lines:
        record = line
        while record.count('"') % 2:  # a quoted value with a line break in it: the record goes on
            following = next(lines, None)
            if following is None:
                raise ExportVerificationError("the file ends inside a quoted value", line=number)
            record += following[1]
        record = record[:-1] if record.endswith("\n") else record
        if not record:
            continue
        try:
            values = _csv_fields(record)
            if len(values) != len(AUDIT_COLUMNS):
                raise ValueError(f"{len(values)} values, not {len(AUDIT_COLUMNS)}")
            row: dict[str, Any] = dict(zip(AUDIT_COLUMNS, values, strict=True))
            row["data"] = _loads(row["data"]) if row["data"] is not None else None
            for name in ("position", "entry_id"):
                if row[name] is not None:
                    row[name] = int(row[name])
        except ValueError as error:
            raise ExportVerificationError(f"not a row of an audit export ({error})", line=number) from None
        yield number, row


def _read_head(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportVerificationError(f"cannot read the signed head {path}: {error}") from None
    head = value.get("signed_head", value) if isinstance(value, dict) else None
    if not isinstance(head, dict):
        raise ExportVerificationError(f"{path} holds no signed head")
    return head


def _open_text(path: str | os.PathLike[str]) -> Any:
    return open(path, encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by the caller


# The check


def verify_export(
    path: str | os.PathLike[str],
    public_key: Any,
    *,
    head: str | os.PathLike[str] | dict[str, Any] | None = None,
    rotations: Any = None,
    whole_trail: bool = False,
) -> ExportVerification:
    """Check an audit export offline; raise ExportVerificationError naming the first line at fault.

    `public_key`: the server's public key (PEM text or bytes, a PEM file's path, a cryptography key, or a
    list of them); None checks hashes and links only, which proves nothing about who wrote the file.
    `head`: the signed head of a CSV or JSON export (default `<path>.head.json`); an NDJSON export
    carries its own as its last line. `rotations`: key rotation records (a list, or a file of JSON
    lines such as a witness file) linking older keys to `public_key`. `whole_trail`: refuse a file that
    does not start where the trail starts (GENESIS, or the anchor of a purge checkpoint in the file):
    without it the first row's `prev_hash` is taken as the start of a part of the trail (an export with
    `after` or `since`), so rows cut off the beginning go unseen (the result's `whole_trail` says which).
    """
    name = os.fspath(path)
    keys = trusted_keys(public_key, rotations) if public_key is not None else None
    try:
        handle = _open_text(path)
    except OSError as error:
        raise ExportVerificationError(f"cannot read {name}: {error}", path=name) from None
    with handle:
        first = handle.read(1)
        handle.seek(0)
        if first == "{":
            kind = "ndjson"
        elif first == "[":
            kind = "json"
        elif first == '"':
            kind = "csv"
        else:
            raise ExportVerificationError(
                "not an audit export (neither NDJSON, JSON nor CSV)", line=1, path=name
            )
        try:
            result = _verify(handle, kind, name, keys, head)
        except ExportVerificationError as error:
            if error.path is None:
                error.path = name
                error.args = (f"{name}: {error.args[0]}",)
            raise
        except UnicodeDecodeError as error:
            raise ExportVerificationError(f"not UTF-8 text: {error}", path=name) from None
        if whole_trail and not result.whole_trail:
            raise ExportVerificationError(
                "the first row is not the start of the trail (rows were cut off the beginning, or this is a "
                "part of the trail)",
                line=result.first_line,
                path=name,
            )
        return result


def _json_rows(handle: Iterable[str], kind: str) -> Iterator[tuple[int, str]]:
    """(line number, the line's JSON text) of NDJSON or of the JSON array's object lines."""
    if kind == "ndjson":
        yield from enumerate(handle, 1)
        return
    for number, line in enumerate(handle, 1):
        text = line.rstrip("\n")
        if text in ("[", "]", ""):
            continue
        yield number, text[:-1] if text.endswith(",") else text


def _verify(
    handle: Any,
    kind: str,
    name: str,
    keys: dict[str, Any] | None,
    head_source: str | os.PathLike[str] | dict[str, Any] | None,
) -> ExportVerification:
    previous: str | None = None
    first_prev: str | None = None
    last_entry: Any = None
    rows = 0
    checkpoints = 0
    anchored = False
    first_entry: Any = None
    first_line: int | None = None
    head: dict[str, Any] | None = None
    head_line: int | None = None
    sha256 = hashlib.sha256
    loads = _loads
    dumps = _dumps
    source: Iterator[tuple[int, Any]] = _csv_rows(handle) if kind == "csv" else _json_rows(handle, kind)
    number = 0
    for number, item in source:
        if kind == "csv":
            row = item
        else:
            if item.startswith('{"signed_head"'):
                if head_line is not None:
                    raise ExportVerificationError("a second signed head", line=number)
                head_line = number
                try:
                    head = loads(item)["signed_head"]
                except (ValueError, KeyError, TypeError):
                    raise ExportVerificationError(
                        "the signed head line is not valid JSON", line=number
                    ) from None
                continue
            if not item.strip():
                continue
            try:
                row = loads(item)
            except ValueError as error:
                raise ExportVerificationError(f"not JSON ({error.args[0]})", line=number) from None
        if head_line is not None:
            raise ExportVerificationError("a row after the signed head", line=number)
        try:
            content = {
                "kind": row["kind"],
                "position": row["position"],
                "event_id": row["event_id"],
                "event_type": row["event_type"],
                "event_category": row["event_category"],
                "timestamp": row["timestamp"],
                "session_id": row["session_id"],
                "correlation_id": row["correlation_id"],
                "actor": row["actor"],
                "data": row["data"],
                "source": row["source"],
            }
            prev_hash = row["prev_hash"]
            stated = row["hash"]
        except (KeyError, TypeError):
            raise ExportVerificationError(
                "not a row of an audit export (no hash, prev_hash or content key)", line=number
            ) from None
        if previous is None:
            first_prev = prev_hash
            first_entry = row.get("entry_id")
            first_line = number
        elif prev_hash != previous:
            raise ExportVerificationError(
                "prev_hash is not the previous row's hash: a row was removed, moved or added here",
                line=number,
            )
        try:
            digest = sha256((prev_hash + dumps(content)).encode()).hexdigest()
        except (TypeError, ValueError) as error:
            raise ExportVerificationError(f"the row cannot be hashed ({error})", line=number) from None
        if digest != stated:
            raise ExportVerificationError("the row's content does not match its hash", line=number)
        if content["kind"] == "checkpoint":
            checkpoints += 1
            if keys is not None and not _purge_valid(content["data"], keys):
                raise ExportVerificationError(
                    "a purge checkpoint without a valid signature of a trusted key", line=number
                )
            data = content["data"] if isinstance(content["data"], dict) else {}
            if data.get("first_kept_id") == first_entry and data.get("anchor_hash") == first_prev:
                anchored = True
        previous = stated
        last_entry = row.get("entry_id")
        rows += 1
    if rows == 0:
        raise ExportVerificationError("no rows: nothing to verify")
    if kind != "ndjson":
        head_file = None
        if isinstance(head_source, dict):
            head = head_source.get("signed_head", head_source)
        else:
            head_file = Path(head_source) if head_source is not None else Path(name + ".head.json")
            head = _read_head(head_file)
        head_line = None
    elif head is None:
        raise ExportVerificationError(
            'the export ends without its {"signed_head": ...} line: it was cut off', line=number
        )
    assert head is not None
    if head.get("entry_id") != last_entry or head.get("hash") != previous:
        raise ExportVerificationError(
            f"the signed head (entry {head.get('entry_id')}) does not name the last row "
            f"(entry {last_entry}): rows were cut off the end or added",
            line=head_line,
        )
    key_id = None
    if keys is not None:
        if head.get("signature") is None:
            raise ExportVerificationError("the head is not signed (the server had no key)", line=head_line)
        if not _head_valid(head, keys):
            raise ExportVerificationError(
                "the head's signature does not verify with the public key (or a key rotated from it)",
                line=head_line,
            )
        key_id = str(head.get("key_id"))
    return ExportVerification(
        rows=rows,
        format=kind,
        head=head,
        first_prev_hash=first_prev,
        last_entry_id=last_entry,
        key_id=key_id,
        checkpoints=checkpoints,
        anchored=anchored,
        first_line=first_line,
    )
