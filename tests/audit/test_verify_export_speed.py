"""verify_export over parts of a file in other processes: the same result and the same first fault (line
and reason) as one process reading it all, whatever the tampering and wherever the file is split."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eventbus_client import verify as client
from eventbus_client.verify import ExportVerificationError, verify_export

ROOT = Path(__file__).resolve().parents[2]
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")


def make_export(folder: Path, rows: int = 120, *, checkpoint_at: int | None = 40) -> tuple[Path, str]:
    """An NDJSON audit export chained with the client's chain_hash, a signed purge checkpoint in it,
    ending with its signed head; returns (path, public key PEM)."""
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key()
    key_id = hashlib.sha256(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).hexdigest()

    def sign(statement: dict[str, Any]) -> str:
        return base64.b64encode(private.sign(client._message(statement))).decode()

    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    previous = client.GENESIS_HASH
    lines = []
    for n in range(1, rows + 1):
        row: dict[str, Any] = {
            "event_id": f"{n:08x}-1d8c-4f63-9e4a-{n:012x}",
            "event_type": "agent_switched",
            "event_category": "agent",
            "timestamp": f"2026-01-01T00:00:{n % 60:02d}.037000Z",
            "session_id": f"session-{n // 7}",
            "correlation_id": None,
            "causation_id": None,
            "data": {
                "to": "é\u2028«x»",
                "n": n,
                "score": (n % 9) / 2,
                "big": 1e16,
                "l": [1.0, {"b": 1, "a": 2}],
            },
            "source": "agent-runtime",
            "version": "1.0",
            "position": n,
            "entry_id": n,
            "kind": "event",
            "actor": "alice" if n % 3 else None,
        }
        if n == checkpoint_at:
            purge = {"before": "2030-01-01T00:00:00Z", "first_kept_id": 1, "anchor_hash": client.GENESIS_HASH}
            permit = {"reason": "retention", "granted_at": "2030-01-01T00:00:00Z", "key_id": key_id}
            permit["signature"] = sign(
                {
                    "type": client.PURGE_TYPE,
                    "reason": "retention",
                    "granted_at": permit["granted_at"],
                    "purge": purge,
                }
            )
            row.update(kind="checkpoint", event_type="audit_purged", data={**purge, "permit": permit})
        row["prev_hash"] = previous
        row["hash"] = previous = client.chain_hash(previous, row)
        lines.append(dumps(row) + "\n")
    head: dict[str, Any] = {
        "type": client.HEAD_TYPE,
        "entry_id": rows,
        "hash": previous,
        "count": rows,
        "signed_at": "2030-01-01T00:00:00Z",
        "key_id": key_id,
    }
    head["signature"] = sign(head)
    lines.append(dumps({"signed_head": head}) + "\n")
    path = folder / "trail.ndjson"
    path.write_text("".join(lines), encoding="utf-8")
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, pem.decode()


def lines_of(path: Path) -> list[str]:
    """The file's lines with their line breaks (split on "\\n" only: the rows hold U+2028)."""
    return [line + "\n" for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def outcome(path: Path, pem: str, **options: Any) -> tuple[Any, ...]:
    try:
        result = verify_export(path, pem, **options)
    except ExportVerificationError as error:
        return ("error", error.line, str(error))
    return ("ok", result)


@pytest.fixture
def split_everything(monkeypatch):
    """Every file split between processes, read in small blocks (lines across block ends)."""
    monkeypatch.setattr(client, "PARALLEL_MIN_LINES", 0)
    monkeypatch.setattr(client, "BLOCK_SIZE", 1000)


def tamperings(lines: list[str], rng: random.Random) -> list[tuple[str, list[str] | bytes]]:
    n = len(lines)
    body = "".join(lines).encode()
    cases: list[tuple[str, list[str] | bytes]] = [("intact", lines)]
    for at in (1, n // 3, n // 2, n // 2 + 1, 2 * n // 3, n - 2):
        cases += [
            (f"drop-{at}", lines[:at] + lines[at + 1 :]),
            (f"swap-{at}", [*lines[:at], lines[at + 1], lines[at], *lines[at + 2 :]]),
            (f"dup-{at}", [*lines[: at + 1], lines[at], *lines[at + 1 :]]),
            (f"blank-{at}", [*lines[:at], "\n", "  \n", *lines[at:]]),
            (f"garbage-{at}", [*lines[:at], "{not json\n", *lines[at:]]),
            (f"head-{at}", [*lines[:at], lines[-1], *lines[at:]]),
            (f"keyless-{at}", [*lines[:at], '{"hash": "x"}\n', *lines[at:]]),
            (f"edit-{at}", [*lines[:at], lines[at].replace('"n":', '"n": 1,"m":'), *lines[at + 1 :]]),
            (f"crlf-{at}", [*lines[:at], lines[at].replace("\n", "\r\n"), *lines[at + 1 :]]),
        ]
    cases += [
        ("no-head", lines[:-1]),
        ("no-final-newline", [*lines[:-1], lines[-1].rstrip("\n")]),
        ("cut-mid-line", [*lines[:-3], lines[-3][:50]]),
        ("head-only", lines[-1:]),
        ("two-heads-at-end", [*lines, lines[-1]]),
        ("row-after-head", [*lines, lines[3]]),
        ("not-json-after-head", [*lines, "]\n"]),
        ("checkpoint-unsigned", [line.replace('"reason":"retention"', '"reason":"other"') for line in lines]),
    ]
    for k in range(12):  # bytes flipped anywhere, some not UTF-8
        at = rng.randrange(len(body))
        cases.append((f"byte-{k}", body[:at] + bytes([rng.choice(b'0a"{,\n\xff\xc3')]) + body[at + 1 :]))
    return cases


def test_split_between_processes_gives_the_same_outcome_as_one_process(tmp_path, split_everything):
    path, pem = make_export(tmp_path)
    lines = lines_of(path)
    assert outcome(path, pem, workers=1)[0] == "ok"
    target = tmp_path / "case.ndjson"
    for name, content in tamperings(lines, random.Random(7)):
        target.write_bytes(content if isinstance(content, bytes) else "".join(content).encode())
        one = outcome(target, pem, workers=1)
        for workers in (2, 3):
            assert outcome(target, pem, workers=workers) == one, (name, workers)


def test_the_json_format_split_between_processes(tmp_path, split_everything):
    path, pem = make_export(tmp_path)
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    target = tmp_path / "trail.json"
    target.write_text("[\n" + ",\n".join(lines[:-1]) + "\n]\n", encoding="utf-8")
    (tmp_path / "trail.json.head.json").write_text(lines[-1], encoding="utf-8")
    one = outcome(target, pem, workers=1)
    assert one[0] == "ok" and one[1].rows == 120 and one[1].format == "json"
    assert outcome(target, pem, workers=3) == one
    bad = [*lines[:-1]]
    bad[70] = bad[70].replace('"alice"', '"mallory"')
    target.write_text("[\n" + ",\n".join(bad) + "\n]\n", encoding="utf-8")
    one = outcome(target, pem, workers=1)
    assert one[:2] == ("error", 72) and "does not match its hash" in one[2]
    assert outcome(target, pem, workers=3) == one


def test_the_first_fault_wins_across_parts(tmp_path, split_everything):
    path, pem = make_export(tmp_path, rows=200)
    lines = lines_of(path)
    lines[150] = lines[150].replace('"alice"', '"mallory"')  # in a later part
    lines[30] = lines[30].replace('"alice"', '"mallory"')  # in the first
    path.write_text("".join(lines), encoding="utf-8")
    for workers in (1, 2, 4):
        with pytest.raises(ExportVerificationError) as caught:
            verify_export(path, pem, workers=workers)
        assert caught.value.line == 31 and "does not match its hash" in caught.value.reason


def test_a_result_split_or_not(tmp_path, split_everything):
    path, pem = make_export(tmp_path, rows=300, checkpoint_at=250)
    one = verify_export(path, pem, workers=1)
    assert (one.rows, one.checkpoints, one.anchored, one.first_line, one.last_entry_id) == (
        300,
        1,
        True,
        1,
        300,
    )
    for workers in (2, 7):
        assert verify_export(path, pem, workers=workers) == one
    assert verify_export(path, None, workers=2) == verify_export(path, None, workers=1)


def test_a_failed_worker_process_is_replaced_by_this_one(tmp_path, split_everything, monkeypatch):
    path, pem = make_export(tmp_path)
    monkeypatch.setattr(client, "_WORKER", "raise SystemExit(3)")
    assert verify_export(path, pem, workers=2) == verify_export(path, pem, workers=1)


def test_small_files_stay_in_this_process(tmp_path, monkeypatch):
    path, pem = make_export(tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no process for a small file")

    monkeypatch.setattr(client, "_start_worker", refuse)
    assert verify_export(path, pem).rows == 120


def test_split_verification_in_a_fresh_interpreter_without_django(tmp_path):
    path, pem = make_export(tmp_path, rows=400)
    script = (
        "import sys\n"
        "from eventbus_client import verify, verify_export\n"
        "verify.PARALLEL_MIN_LINES = 0\n"
        f"result = verify_export({str(path)!r}, {pem!r}, workers=2)\n"
        "assert 'django' not in sys.modules\n"
        "print(result.rows, result.checkpoints)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT / "client",
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["400", "1"]


def test_an_empty_export_verifies_as_no_rows_unless_more_is_asked_for(tmp_path):
    from eventbus_client import ExportVerificationError, verify_export

    empty = tmp_path / "empty.ndjson"
    empty.write_text("")
    assert verify_export(empty, None).rows == 0
    with pytest.raises(ExportVerificationError):
        verify_export(empty, None, whole_trail=True)
