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
import sys
from collections.abc import Generator, Iterable, Iterator
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

# NDJSON and JSON exports are checked in byte ranges split on line breaks, each range by one process
# (this one and `workers - 1` others), read in blocks of this size; a file of fewer lines than
# PARALLEL_MIN_LINES (estimated from its first block) is checked by this process alone.
BLOCK_SIZE = 1 << 16
PARALLEL_MIN_LINES = 50_000
_CONTENT_KEY_SET = frozenset(CONTENT_KEYS)
_LINK_BROKEN = "prev_hash is not the previous row's hash: a row was removed, moved or added here"
_NOT_A_ROW = "not a row of an audit export (no hash, prev_hash or content key)"
_ROW_AFTER_HEAD = "a row after the signed head"
_SECOND_HEAD = "a second signed head"
_UNSIGNED_PURGE = "a purge checkpoint without a valid signature of a trusted key"


def verify_export(
    path: str | os.PathLike[str],
    public_key: Any,
    *,
    head: str | os.PathLike[str] | dict[str, Any] | None = None,
    rotations: Any = None,
    whole_trail: bool = False,
    workers: int | None = None,
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
    `workers`: how many processes check a large NDJSON or JSON export, each a part of the file (default
    `min(2, os.cpu_count())`; 1: this process alone); the result and the error are the same either way.
    """
    name = os.fspath(path)
    keys = trusted_keys(public_key, rotations) if public_key is not None else None
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
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
        elif first == "" and public_key is None and head is None and not whole_trail:
            # The export of an empty trail (or of filters nothing matched): nothing to check. With a key,
            # a head or the whole trail asked for, an empty file proves nothing and is refused below.
            return ExportVerification(
                rows=0, format="ndjson", head=None, first_prev_hash=None, last_entry_id=None, key_id=None
            )
        else:
            raise ExportVerificationError(
                "not an audit export (neither NDJSON, JSON nor CSV)", line=1, path=name
            )
        try:
            if kind == "csv":
                result = _verify(handle, kind, name, keys, head)
            else:
                result = _verify_lines(name, kind, keys, head, workers)
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


def _verify(
    handle: Any,
    kind: str,
    name: str,
    keys: dict[str, Any] | None,
    head_source: str | os.PathLike[str] | dict[str, Any] | None,
) -> ExportVerification:
    """The check of a CSV export (a record may span lines: read in one pass, by this process)."""
    previous: str | None = None
    first_prev: str | None = None
    last_entry: Any = None
    rows = 0
    checkpoints = 0
    anchored = False
    first_entry: Any = None
    first_line: int | None = None
    sha256 = hashlib.sha256
    dumps = _dumps
    number = 0
    for number, row in _csv_rows(handle):
        try:
            content = {key: row[key] for key in CONTENT_KEYS}
            prev_hash = row["prev_hash"]
            stated = row["hash"]
        except (KeyError, TypeError):
            raise ExportVerificationError(_NOT_A_ROW, line=number) from None
        if previous is None:
            first_prev = prev_hash
            first_entry = row.get("entry_id")
            first_line = number
        elif prev_hash != previous:
            raise ExportVerificationError(_LINK_BROKEN, line=number)
        try:
            digest = sha256((prev_hash + dumps(content)).encode()).hexdigest()
        except (TypeError, ValueError) as error:
            raise ExportVerificationError(f"the row cannot be hashed ({error})", line=number) from None
        if digest != stated:
            raise ExportVerificationError("the row's content does not match its hash", line=number)
        if content["kind"] == "checkpoint":
            checkpoints += 1
            if keys is not None and not _purge_valid(content["data"], keys):
                raise ExportVerificationError(_UNSIGNED_PURGE, line=number)
            data = content["data"] if isinstance(content["data"], dict) else {}
            if data.get("first_kept_id") == first_entry and data.get("anchor_hash") == first_prev:
                anchored = True
        previous = stated
        last_entry = row.get("entry_id")
        rows += 1
    return _conclude(
        kind, name, keys, head_source, None, None, number, rows, previous, last_entry,
        first_prev, first_line, checkpoints, anchored,
    )  # fmt: skip


def _conclude(
    kind: str,
    name: str,
    keys: dict[str, Any] | None,
    head_source: str | os.PathLike[str] | dict[str, Any] | None,
    head: Any,
    head_line: int | None,
    number: int,
    rows: int,
    previous: Any,
    last_entry: Any,
    first_prev: Any,
    first_line: int | None,
    checkpoints: int,
    anchored: bool,
) -> ExportVerification:
    """The checks of the file as a whole, once every row holds: rows, the head, its signature."""
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


# NDJSON and JSON: line by line, in byte ranges


def _json_item(line: str, kind: str) -> str | None:
    """A line's JSON text (None: a line of the JSON array's brackets, or an empty line)."""
    if kind == "ndjson":
        return line
    if line in ("[", "]", ""):
        return None
    return line[:-1] if line.endswith(",") else line


def _first_row(path: str, kind: str) -> tuple[Any, Any] | None:
    """(entry_id, prev_hash) of the file's first line when it is a row (None: anything else)."""
    try:
        with open(path, encoding="utf-8", newline="\n") as handle:
            for line in handle:
                item = _json_item(line.rstrip("\n"), kind)
                if item is None or not item.strip():
                    continue
                if item.startswith('{"signed_head"'):
                    return None
                row = _loads(item)
                for key in (*CONTENT_KEYS, "hash"):
                    row[key]  # noqa: B018 - a row has them all
                return row.get("entry_id"), row["prev_hash"]
    except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError is a ValueError
        return None
    return None


def _split(path: str, size: int, parts: int) -> list[tuple[int, int]]:
    """`parts` byte ranges of the file (fewer if it is short), each starting at the start of a line."""
    starts = [0]
    with open(path, "rb") as handle:
        for n in range(1, parts):
            handle.seek(max(size * n // parts - 1, starts[-1]))
            handle.readline()
            at = handle.tell()
            if starts[-1] < at < size:
                starts.append(at)
    return list(zip(starts, [*starts[1:], size], strict=True))


def _estimated_lines(path: str, size: int) -> float:
    with open(path, "rb") as handle:
        sample = handle.read(BLOCK_SIZE)
    if len(sample) >= size:
        return sample.count(b"\n") + (0 if sample.endswith(b"\n") else 1)
    return size * sample.count(b"\n") / max(len(sample), 1)


def _verify_lines(
    name: str,
    kind: str,
    keys: dict[str, Any] | None,
    head_source: str | os.PathLike[str] | dict[str, Any] | None,
    workers: int,
) -> ExportVerification:
    size = os.path.getsize(name)
    ranges = [(0, size)]
    anchor = None
    if workers > 1 and sys.executable and _estimated_lines(name, size) >= PARALLEL_MIN_LINES:
        anchor = _first_row(name, kind)
        if anchor is not None:  # otherwise the first line is at fault: no need for more processes
            ranges = _split(name, size, workers)
    children: list[Any] = []
    try:
        for start, end in ranges[1:]:
            children.append(_start_worker(name, kind, start, end, keys, anchor))
        parts = _Parts(name, kind, keys, head_source)
        parts.add(_scan(name, kind, ranges[0][0], ranges[0][1], keys, anchor))
        for child, (start, end) in zip(children, ranges[1:], strict=True):
            part = _worker_result(child)
            if part is None:  # the process failed: this one checks its range
                part = _scan(name, kind, start, end, keys, anchor)
            parts.add(part)
        return parts.conclude()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    stream.close()


class _Parts:
    """The ranges' findings joined in order: the links and the head between them, the first fault."""

    def __init__(self, name: str, kind: str, keys: Any, head_source: Any) -> None:
        self.name, self.kind, self.keys, self.head_source = name, kind, keys, head_source
        self.offset = 0
        self.rows = 0
        self.checkpoints = 0
        self.anchored = False
        self.previous: Any = None
        self.last_entry: Any = None
        self.first_prev: Any = None
        self.first_line: int | None = None
        self.head: Any = None
        self.head_line: int | None = None

    def add(self, part: dict[str, Any]) -> None:
        offset = self.offset
        item = part["first_item"]
        if self.head_line is not None and item is not None:
            raise ExportVerificationError(item[1], line=offset + item[0])
        first = part["first_row"]
        if first is not None:
            if self.first_line is None:
                self.first_prev = first[1]
                self.first_line = offset + first[0]
            elif first[1] != self.previous:
                raise ExportVerificationError(_LINK_BROKEN, line=offset + first[0])
        fault = part["fault"]
        if fault is not None:
            line, message, has_line = fault
            raise ExportVerificationError(message, line=offset + line if has_line else None)
        if part["rows"]:
            self.previous, self.last_entry = part["last"]
        self.rows += part["rows"]
        self.checkpoints += part["checkpoints"]
        self.anchored = self.anchored or part["anchored"]
        if part["head_line"] is not None:
            self.head, self.head_line = part["head"], offset + part["head_line"]
        self.offset += part["lines"]

    def conclude(self) -> ExportVerification:
        return _conclude(
            self.kind, self.name, self.keys, self.head_source, self.head, self.head_line, self.offset,
            self.rows, self.previous, self.last_entry, self.first_prev, self.first_line,
            self.checkpoints, self.anchored,
        )  # fmt: skip


def _blocks(path: str, start: int, end: int) -> Generator[tuple[str | None, bytes], None, None]:
    """The range's text in blocks of whole lines: (text, b"") or, at bytes that are not UTF-8,
    (the text of the lines before them or None, the rest of the block from the faulty line on)."""
    pending: list[bytes] = []
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            block = handle.read(min(BLOCK_SIZE, remaining))
            if not block:
                break
            remaining -= len(block)
            if remaining > 0:
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # a line longer than a block
                    pending.append(block)
                    continue
                block, rest = block[:cut], block[cut:]
            else:
                rest = b""
            if pending:
                block = b"".join([*pending, block])
                pending = []
            if rest:
                pending.append(rest)
            try:
                yield block.decode("utf-8"), b""
            except UnicodeDecodeError as error:
                cut = block.rfind(b"\n", 0, error.start) + 1
                yield (block[:cut].decode("utf-8") if cut else None), block[cut:]
                return
        if pending:
            block = b"".join(pending)
            try:
                yield block.decode("utf-8"), b""
            except UnicodeDecodeError as error:
                cut = block.rfind(b"\n", 0, error.start) + 1
                yield (block[:cut].decode("utf-8") if cut else None), block[cut:]


def _scan(
    path: str,
    kind: str,
    start: int,
    end: int,
    keys: Any,
    anchor: tuple[Any, Any] | None,
) -> dict[str, Any]:
    """Check the lines of bytes start..end (each row's hash, the links between its rows, the purge
    permits) up to the first at fault; what the next ranges need: the first and last rows, the head.

    Line numbers are counted from the range's start (1-based). `keys`: trusted keys, None, or a callable
    giving them (called at the first checkpoint). `anchor`: (entry_id, prev_hash) of the file's first
    row (None: this range's first row is the file's).
    """
    number = 0
    rows = 0
    checkpoints = 0
    anchored = False
    previous: Any = None
    last_entry: Any = None
    first_item: list[Any] | None = None  # [line, the error if a head came before it]
    first_row: list[Any] | None = None  # [line, prev_hash]
    head: Any = None
    head_line: int | None = None
    fault: list[Any] | None = None  # [line, reason, whether the line is named]
    first_entry, first_prev = anchor if anchor is not None else (None, None)
    sha256 = hashlib.sha256
    loads = _loads
    encode = _encode
    ndjson = kind == "ndjson"
    content_keys = _CONTENT_KEY_SET
    blocks = _blocks(path, start, end)
    for text, bad in blocks:
        if text is not None:
            lines = text.split("\n")
            unterminated = lines.pop()  # "" after the last line break
            if unterminated:
                lines.append(unterminated)
            last_number = number + len(lines)
            for line in lines:
                number += 1
                if ndjson:
                    item = line
                else:
                    if line in ("[", "]", ""):
                        continue
                    item = line[:-1] if line.endswith(",") else line
                if item.startswith('{"signed_head"'):
                    if first_item is None:
                        first_item = [number, _SECOND_HEAD]
                    if head_line is not None:
                        fault = [number, _SECOND_HEAD, True]
                        break
                    head_line = number
                    try:
                        head = loads(item)["signed_head"]
                    except (ValueError, KeyError, TypeError):
                        fault = [number, "the signed head line is not valid JSON", True]
                        break
                    continue
                try:
                    row = loads(item)
                except ValueError as error:
                    if not item.strip():  # an empty line (it does not parse: only rows are parsed twice)
                        continue
                    if ndjson and not (number == last_number and unterminated):
                        # The error as it reads with the line's line break (its position may differ).
                        reason = f"not JSON ({_parse_error(item + chr(10))})"
                    else:
                        reason = f"not JSON ({error.args[0]})"
                    if first_item is None:
                        first_item = [number, reason]
                    fault = [number, reason, True]
                    break
                if head_line is not None:
                    fault = [number, _ROW_AFTER_HEAD, True]
                    break
                try:  # the row less its other keys is its content (a copy where it has more keys)
                    prev_hash = row.pop("prev_hash")
                    stated = row.pop("hash")
                    entry_id = row.pop("entry_id", None)
                    row.pop("causation_id", None)
                    row.pop("version", None)
                    content = row if row.keys() == content_keys else {key: row[key] for key in CONTENT_KEYS}
                except (KeyError, TypeError, AttributeError):
                    if first_item is None:
                        first_item = [number, _ROW_AFTER_HEAD]
                    fault = [number, _NOT_A_ROW, True]
                    break
                if previous is None:
                    if first_item is None:
                        first_item = [number, _ROW_AFTER_HEAD]
                    first_row = [number, prev_hash]
                    if anchor is None:
                        first_entry, first_prev = entry_id, prev_hash
                elif prev_hash != previous:
                    fault = [number, _LINK_BROKEN, True]
                    break
                try:
                    digest = sha256((prev_hash + "".join(encode(content, 0))).encode()).hexdigest()
                except (TypeError, ValueError) as error:
                    fault = [number, f"the row cannot be hashed ({error})", True]
                    break
                if digest != stated:
                    fault = [number, "the row's content does not match its hash", True]
                    break
                if content["kind"] == "checkpoint":
                    checkpoints += 1
                    if callable(keys):
                        keys = keys()
                    if keys is not None and not _purge_valid(content["data"], keys):
                        fault = [number, _UNSIGNED_PURGE, True]
                        break
                    data = content["data"] if isinstance(content["data"], dict) else {}
                    if data.get("first_kept_id") == first_entry and data.get("anchor_hash") == first_prev:
                        anchored = True
                previous = stated
                last_entry = entry_id
                rows += 1
            if fault is not None:
                break
        if bad:
            line_end = bad.find(b"\n")
            try:
                bad[: line_end if line_end >= 0 else len(bad)].decode("utf-8")
            except UnicodeDecodeError as error:
                fault = [number + 1, f"not UTF-8 text: {error}", False]
            break
    blocks.close()
    return {
        "lines": number,
        "rows": rows,
        "checkpoints": checkpoints,
        "anchored": anchored,
        "first_item": first_item,
        "first_row": first_row,
        "last": [previous, last_entry],
        "head": head,
        "head_line": head_line,
        "fault": fault,
    }


def _parse_error(text: str) -> Any:
    try:
        _loads(text)
    except ValueError as error:
        return error.args[0]
    return None  # pragma: no cover - text that did not parse without its line break


def _c_encoder() -> Any:
    # _dumps without its per-call overhead and with no check for cycles (there are none in parsed JSON):
    # the same C encoder, called directly (chunks to join), or _dumps where there is no C encoder.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return lambda value, _level: [_dumps(value)]
    default = json.JSONEncoder().default
    return make(None, default, json.encoder.encode_basestring, None, ":", ",", True, False, False)


_encode = _c_encoder()


# The other processes: each runs this module alone (not the package: no httpx), reads its task as JSON
# on stdin and writes its range's findings as one JSON line on stdout.

_WORKER = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_eventbus_client_verify', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._worker_main()\n"
)
_RESULT = "eventbus-verify-range "


def _start_worker(
    path: str, kind: str, start: int, end: int, keys: dict[str, Any] | None, anchor: Any
) -> Any:
    import subprocess

    task = {
        "path": path,
        "kind": kind,
        "start": start,
        "end": end,
        "keys": None if keys is None else [_raw_key(key) for key in keys.values()],
        "anchor": anchor,
        "sys_path": [entry for entry in sys.path if isinstance(entry, str)],
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _WORKER, __file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert child.stdin is not None
    try:
        child.stdin.write(json.dumps(task).encode())
        child.stdin.close()
    except OSError:
        pass  # the process failed: its result says so
    return child


def _worker_result(child: Any) -> dict[str, Any] | None:
    out = child.stdout.read()
    if child.wait() != 0:
        return None
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith(_RESULT):
            try:
                part: dict[str, Any] = json.loads(line[len(_RESULT) :])
            except ValueError:
                return None
            return part
    return None


def _raw_key(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def _keys_from_raw(raw: list[str]) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(value)) for value in raw]
    return {_key_id(key): key for key in keys}


def _worker_main() -> None:
    task = json.loads(sys.stdin.buffer.read())
    sys.path[:] = task["sys_path"]
    raw = task["keys"]
    keys = None if raw is None else (lambda: _keys_from_raw(raw))
    anchor = task["anchor"]
    part = _scan(
        task["path"], task["kind"], task["start"], task["end"], keys, tuple(anchor) if anchor else None
    )
    sys.stdout.write(_RESULT + json.dumps(part) + "\n")
    sys.stdout.flush()
