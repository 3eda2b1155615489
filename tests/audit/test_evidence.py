"""Evidence an auditor can take away: signed heads and the witness file, verification that sees the end
of the chain, signed purge permits, portable exports verified offline, key rotation, retention."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from accounts.services import api_token_issue
from audit import signing
from audit.models import GENESIS_HASH, AuditEntry
from audit.services import audit_verify, chain_hash, events_purge
from eventbus_client.verify import chain_hash as client_chain_hash
from events.agent_events import AgentSwitchedEvent
from events.base import BaseEvent
from events.db_triggers import install_append_only
from events.event_bus import event_bus
from events.event_store import event_store

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def settle() -> None:
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)
    assert signing.publisher.flush(timeout=10)


def publish_critical(count: int, *, days_ago: float = 0, session: str = "s") -> None:
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    for n in range(count):
        event_bus.publish_sync(
            AgentSwitchedEvent(session_id=session, from_agent="a", to_agent=f"agent-{n}", timestamp=moment)
        )
        event_bus.publish_sync(
            BaseEvent("tick", "metrics", session_id=session, data={"n": n}, timestamp=moment)
        )
        settle()  # one commit each: one signed head each


def keygen(path: Path, *args: str) -> str:
    out = io.StringIO()
    call_command("audit_keygen", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def key(tmp_path, settings):
    private = tmp_path / "audit.pem"
    public = tmp_path / "audit.pub.pem"
    public.write_text(keygen(private))
    witness = tmp_path / "witness.jsonl"
    settings.AUDIT_SIGNING_KEY_FILE = str(private)
    settings.AUDIT_WITNESS_FILE = str(witness)
    signing.publisher.forget()
    yield SimpleNamespace(private=private, public=public, witness=witness, tmp=tmp_path)
    signing.publisher.flush(timeout=10)
    signing.publisher.forget()


def run(command: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def witnessed(path: Path) -> list[dict]:
    return [
        json.loads(line)["signed_head"] for line in path.read_text().splitlines() if "signed_head" in line
    ]


def tamper(sql: str, params: list) -> None:
    """What an attacker with the database does behind the app's back, the append-only triggers bypassed."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A "replica" session fires no ordinary triggers (what a superuser or a replication role may do).
            cursor.execute("SET session_replication_role = replica")
            try:
                cursor.execute(sql, params)
            finally:
                cursor.execute("SET session_replication_role = DEFAULT")
        else:
            cursor.execute("DROP TRIGGER audit_auditentry_no_update")
            cursor.execute("DROP TRIGGER audit_auditentry_no_delete")
            cursor.execute(sql, params)
            with connection.schema_editor() as editor:
                install_append_only(editor, "audit_auditentry")


def rewrite_newest_with_its_hash_recomputed() -> int:
    newest = AuditEntry.objects.order_by("-id").values().first()
    assert newest is not None
    forged = {**newest, "actor": "mallory"}
    tamper(
        "UPDATE audit_auditentry SET actor = %s, hash = %s WHERE id = %s",
        ["mallory", chain_hash(newest["prev_hash"], forged), newest["id"]],
    )
    return newest["id"]


# The attacks run on the database the tests have: on PostgreSQL (marked, so REQUIRE_SERVICES=1 demands
# it) with SET session_replication_role = replica, on SQLite by dropping the triggers.
VARIANTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# Signing keys


def test_keygen_writes_a_private_key_0600_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.pem"
    public = keygen(path)
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in path.read_text()
    assert signing.key_id(signing.load_public_key(public)) == signing.key_id(
        signing.load_private_key(path).public_key()
    )
    with pytest.raises(CommandError, match="exists"):
        keygen(path)
    assert keygen(path, "--force") != public


# Signed heads and the witness file


def test_every_commit_that_adds_entries_signs_and_witnesses_the_head(key):
    publish_critical(3)
    heads = witnessed(key.witness)
    entries = list(AuditEntry.objects.order_by("id").values("id", "hash"))
    assert [(h["entry_id"], h["hash"], h["count"]) for h in heads] == [
        (e["id"], e["hash"], n) for n, e in enumerate(entries, 1)
    ]
    trusted = signing.trusted_keys([signing.load_public_key(key.public)], [])
    assert all(signing.head_valid(head, trusted) for head in heads)
    assert (signing.publisher.latest() or {}).get("entry_id") == entries[-1]["id"]
    code, out = run("verify_audit", "--witness", str(key.witness), "--public-key", str(key.public))
    assert code == 0, out
    assert "3 witnessed heads" in out and "signatures checked" in out


def test_a_head_with_a_forged_signature_is_refused(key):
    publish_critical(2)
    lines = key.witness.read_text().splitlines()
    head = json.loads(lines[-1])["signed_head"]
    head["count"] += 1  # a different statement under the same signature
    key.witness.write_text("\n".join([*lines[:-1], json.dumps({"signed_head": head})]) + "\n")
    code, out = run("verify_audit", "--public-key", str(key.public))
    assert code == 1 and "not signed by a trusted key" in out


@pytest.mark.parametrize("where", VARIANTS)
def test_deleting_the_newest_entries_is_caught_by_the_witness(key, where):
    if (connection.vendor == "postgresql") != (where == "postgres"):
        pytest.skip(f"the {where} variant")
    publish_critical(5)
    entries = list(AuditEntry.objects.order_by("id").values_list("id", flat=True))
    tamper("DELETE FROM audit_auditentry WHERE id >= %s", [entries[3]])
    assert audit_verify(witness=[]).ok  # the chain alone cannot see it
    code, out = run("verify_audit", "--witness", str(key.witness))
    assert code == 1, out
    assert f"broken at entry {entries[3]}" in out and "no longer in the chain" in out
    code, _out = run("verify_audit")  # AUDIT_WITNESS_FILE by default
    assert code == 1


@pytest.mark.parametrize("where", VARIANTS)
def test_rewriting_the_newest_entry_with_its_hash_recomputed_is_caught(key, where):
    if (connection.vendor == "postgresql") != (where == "postgres"):
        pytest.skip(f"the {where} variant")
    publish_critical(4)
    victim = rewrite_newest_with_its_hash_recomputed()
    assert audit_verify(witness=[]).ok  # the chain alone cannot see it
    code, out = run("verify_audit", "--witness", str(key.witness), "--public-key", str(key.public))
    assert code == 1 and f"broken at entry {victim}" in out and "rewritten" in out


def test_the_head_endpoint_and_the_public_key(key):
    publish_critical(2)
    auditor = api_token_issue(username="auditor-1", group="auditors").token
    agent = api_token_issue(username="agent-1", group="agents").token
    operator = api_token_issue(username="operator-1", group="operators").token
    client = Client()
    as_auditor = {"Authorization": f"Bearer {auditor}"}
    response = client.get("/api/audit/head/", headers=as_auditor)
    assert response.status_code == 200
    head = response.json()
    last = AuditEntry.objects.order_by("-id").first()
    assert (head["entry_id"], head["hash"], head["count"], head["signed"]) == (last.id, last.hash, 2, True)
    trusted = signing.trusted_keys([signing.load_public_key(key.public)], [])
    assert signing.head_valid(head, trusted)

    # A process that has signed nothing (just restarted) signs the current head on request.
    signing.publisher.forget()
    again = client.get("/api/audit/head/", headers=as_auditor).json()
    assert (again["entry_id"], again["count"]) == (last.id, 2) and signing.head_valid(again, trusted)
    first = AuditEntry.objects.order_by("id").first()
    at = client.get(f"/api/audit/head/?entry_id={first.id}", headers=as_auditor).json()
    assert (at["entry_id"], at["hash"], at["count"]) == (first.id, first.hash, 1)
    assert client.get("/api/audit/head/?entry_id=999999", headers=as_auditor).status_code == 404
    assert client.get("/api/audit/head/?entry_id=x", headers=as_auditor).status_code == 400

    pem = client.get("/api/audit/public-key/", headers=as_auditor)
    assert pem.status_code == 200 and pem["Content-Type"].startswith("application/x-pem-file")
    assert pem.content.decode() == key.public.read_text()
    assert pem["X-Audit-Key-Id"] == head["key_id"]
    as_json = client.get("/api/audit/public-key/?format=json", headers=as_auditor).json()
    assert as_json["key_id"] == head["key_id"] and as_json["rotations"] == []

    for path in ("/api/audit/head/", "/api/audit/public-key/"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {agent}"}).status_code == 403
        assert client.get(path, headers={"Authorization": f"Bearer {operator}"}).status_code == 403


def test_without_a_key_the_head_is_unsigned_and_there_is_no_public_key(settings):
    settings.AUDIT_SIGNING_KEY_FILE = None
    publish_critical(1)
    auditor = api_token_issue(username="auditor-2", group="auditors").token
    client = Client()
    headers = {"Authorization": f"Bearer {auditor}"}
    head = client.get("/api/audit/head/", headers=headers).json()
    assert head["signed"] is False and head["signature"] is None and head["key_id"] is None
    assert head["count"] == 1
    missing = client.get("/api/audit/public-key/", headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == "no_signing_key"


# Purges


def test_a_signed_purge_verifies_and_witnessed_heads_it_removed_are_accepted(key, settings):
    settings.AUDIT_RETENTION_DAYS = 0
    publish_critical(3, days_ago=40, session="old")
    publish_critical(2, session="new")
    call_command(
        "purge_events", "--before", (datetime.now(UTC) - timedelta(days=30)).isoformat(), stdout=io.StringIO()
    )
    settle()
    checkpoint = AuditEntry.objects.get(kind=AuditEntry.Kind.CHECKPOINT)
    permit = checkpoint.data["permit"]
    assert permit["signature"] and permit["key_id"] == signing.signing_key().key_id
    assert checkpoint.data["purged_total"] == 3
    code, out = run("verify_audit", "--public-key", str(key.public))
    assert code == 0, out
    # Everything goes: the checkpoint starts a new chain, still verifiable and still counted.
    events_purge(before=datetime.now(UTC))
    settle()
    assert audit_verify(public_keys=[signing.load_public_key(key.public)]).ok
    heads = witnessed(key.witness)
    assert heads[-1]["count"] == 3 + 2 + 1 + 1


def test_a_forged_purge_permit_is_refused(key):
    publish_critical(4)
    entries = list(AuditEntry.objects.order_by("id").values())
    # The attacker: a permit by hand (anyone with INSERT can write one), the oldest entries deleted, and
    # a checkpoint chained to the end so the chain's new start is anchored.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO events_purgepermit (granted_at, reason, signature) VALUES (%s, %s, %s)",
            [datetime.now(UTC), "cleanup", "bm90IGEgc2lnbmF0dXJl"],
        )
        cursor.execute("DELETE FROM audit_auditentry WHERE id <= %s", [entries[1]["id"]])
        cursor.execute("DELETE FROM events_purgepermit")
    forged: dict[str, Any] = {
        "kind": "checkpoint",
        "position": None,
        "event_id": None,
        "event_type": "audit_purged",
        "event_category": "system",
        "timestamp": datetime.now(UTC),
        "session_id": None,
        "correlation_id": None,
        "actor": None,
        "data": {
            "before": "2030-01-01T00:00:00Z",
            "category": None,
            "events_deleted": 0,
            "audit_entries_deleted": 2,
            "first_kept_id": entries[2]["id"],
            "anchor_hash": entries[2]["prev_hash"],
            "purged_total": 2,
            "permit": {
                "reason": "cleanup",
                "granted_at": "2030-01-01T00:00:00Z",
                "key_id": "x",
                "signature": "AA==",
            },
        },
        "source": "purge_events",
    }
    digest = chain_hash(entries[-1]["hash"], forged)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditentry (kind, event_type, event_category, timestamp, data, source, "
            "prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                "checkpoint",
                "audit_purged",
                "system",
                forged["timestamp"]
                if connection.vendor == "postgresql"
                else str(forged["timestamp"].replace(tzinfo=None)),
                json.dumps(forged["data"]),
                "purge_events",
                entries[-1]["hash"],
                digest,
            ],
        )
    assert audit_verify(witness=[], public_keys=[]).ok  # without a key the forgery passes: the chain holds
    code, out = run("verify_audit", "--witness", "/dev/null", "--public-key", str(key.public))
    assert code == 1 and "purge checkpoint without a valid signature" in out


def test_a_permit_left_committed_is_refused(key):
    publish_critical(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO events_purgepermit (granted_at, reason) VALUES (%s, %s)", [datetime.now(UTC), "x"]
        )
    try:
        result = audit_verify()
        assert not result.ok and "append-only triggers are open" in (result.reason or "")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM events_purgepermit")


# Retention


def test_purge_refuses_a_date_inside_the_retention(settings):
    settings.AUDIT_RETENTION_DAYS = 183
    with pytest.raises(CommandError, match="AUDIT_RETENTION_DAYS=183"):
        call_command("purge_events", "--before", (datetime.now(UTC) - timedelta(days=100)).isoformat())
    with pytest.raises(Exception, match="inside the retention"):
        events_purge(before=datetime.now(UTC) - timedelta(days=182))


def test_a_scheduled_purge_purges_past_the_retention_and_is_recorded_even_when_empty(settings):
    settings.AUDIT_RETENTION_DAYS = 30
    publish_critical(2, days_ago=40, session="old")
    publish_critical(1, session="new")
    call_command("purge_events", "--scheduled", stdout=(out := io.StringIO()))
    assert "Deleted 4 events and 2 audit entries" in out.getvalue()
    call_command("purge_events", "--scheduled", stdout=(out := io.StringIO()))
    assert "Deleted 0 events and 0 audit entries" in out.getvalue()
    checkpoints = list(
        AuditEntry.objects.filter(kind=AuditEntry.Kind.CHECKPOINT).values_list("data", flat=True)
    )
    assert len(checkpoints) == 2 and all(
        data["scheduled"] and data["retention_days"] == 30 for data in checkpoints
    )
    assert checkpoints[1]["events_deleted"] == 0 and checkpoints[1]["purged_total"] == 2
    assert audit_verify().ok


# Exports


def export(path: Path, fmt: str = "ndjson", *args: str) -> Path:
    call_command(
        "export_audit",
        "--audit-only",
        "--format",
        fmt,
        "--output",
        str(path),
        *args,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    return path


def verify_file(path: Path, public: Path, *args: str) -> tuple[int, str]:
    return run("verify_export", str(path), "--public-key", str(public), *args)


def test_an_ndjson_export_carries_hashes_and_ends_with_a_signed_head(key):
    publish_critical(4)
    path = export(key.tmp / "trail.ndjson")
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines[:-1]]
    entries = list(AuditEntry.objects.order_by("id").values("id", "hash", "prev_hash", "actor"))
    assert [(r["entry_id"], r["hash"], r["prev_hash"], r["actor"]) for r in rows] == [
        (e["id"], e["hash"], e["prev_hash"], e["actor"]) for e in entries
    ]
    head = json.loads(lines[-1])["signed_head"]
    assert (head["entry_id"], head["hash"], head["count"]) == (entries[-1]["id"], entries[-1]["hash"], 4)
    code, out = verify_file(path, key.public)
    assert code == 0 and "4 rows chained from the start of the trail" in out, out


def mutate(path: Path, change) -> Path:
    lines = path.read_text().splitlines(keepends=True)
    target = path.with_name("bad-" + path.name)
    target.write_text("".join(change(lines)))
    return target


def _one_byte(lines):
    lines = list(lines)
    lines[2] = lines[2].replace('"to_agent":"agent-2"', '"to_agent":"agent-X"')
    return lines


def _drop(lines):
    return lines[:1] + lines[2:]


def _move(lines):
    return [lines[0], lines[2], lines[1], *lines[3:]]


def _bad_signature(lines):
    head = json.loads(lines[-1])
    signature = head["signed_head"]["signature"]
    head["signed_head"]["signature"] = ("B" if signature[0] != "B" else "C") + signature[1:]
    return [*lines[:-1], json.dumps(head) + "\n"]


def _cut_off(lines):
    return [*lines[:-2], lines[-1]]


def _no_head(lines):
    return lines[:-1]


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (_one_byte, 3, "does not match its hash"),
        (_drop, 2, "removed, moved or added"),
        (_move, 2, "removed, moved or added"),
        (_bad_signature, 5, "signature does not verify"),
        (_cut_off, 4, "does not name the last row"),
        (_no_head, 4, "cut off"),
    ],
    ids=["one-byte", "row-dropped", "row-moved", "head-signature", "last-row-dropped", "head-dropped"],
)
def test_a_tampered_export_fails_naming_the_line(key, change, line, says):
    from eventbus_client import ExportVerificationError, verify_export

    publish_critical(4)
    bad = mutate(export(key.tmp / "trail.ndjson"), change)
    with pytest.raises(ExportVerificationError) as caught:
        verify_export(bad, key.public.read_text())
    assert caught.value.line == line and says in str(caught.value)
    code, out = verify_file(bad, key.public)
    assert code == 1 and f"line {line}:" in out


def test_a_csv_export_comes_with_its_head_beside_it(key):
    from eventbus_client import ExportVerificationError, verify_export

    publish_critical(3)
    event_bus.publish_sync(
        AgentSwitchedEvent(session_id='tricky "s", ok', from_agent="é\u2028", to_agent='a,"b"')
    )
    settle()
    path = export(key.tmp / "trail.csv", "csv")
    sidecar = key.tmp / "trail.csv.head.json"
    assert (
        json.loads(sidecar.read_text())["signed_head"]["entry_id"]
        == AuditEntry.objects.order_by("-id").first().id
    )
    result = verify_export(path, key.public)
    assert result.rows == 4 and result.starts_at_genesis and result.format == "csv"
    code, out = verify_file(path, key.public)
    assert code == 0, out
    bad = mutate(path, lambda lines: [*lines[:2], *lines[3:]])
    (key.tmp / "bad-trail.csv.head.json").write_text(sidecar.read_text())
    with pytest.raises(ExportVerificationError) as caught:
        verify_export(bad, key.public)
    assert caught.value.line == 3
    # The first row dropped: a part of the trail, unless the whole trail is asked for.
    bad = mutate(path, lambda lines: [lines[0], *lines[2:]])
    assert not verify_export(bad, key.public).whole_trail
    with pytest.raises(ExportVerificationError) as caught:
        verify_export(bad, key.public, whole_trail=True)
    assert caught.value.line == 2 and "start of the trail" in str(caught.value)
    code, out = verify_file(bad, key.public, "--whole-trail")
    assert code == 1 and "line 2:" in out
    # The JSON format, with its sidecar, too.
    assert verify_export(export(key.tmp / "trail.json", "json"), key.public).rows == 4


def collect(response) -> bytes:
    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return asyncio.run(read())


def test_the_api_export_ends_with_a_signed_head_that_verifies(key):
    from eventbus_client import verify_export

    publish_critical(3)
    auditor = api_token_issue(username="auditor-3", group="auditors").token
    response = Client().get(
        "/api/audit/export/?format=ndjson&audit_only=true", headers={"Authorization": f"Bearer {auditor}"}
    )
    assert response.status_code == 200
    path = key.tmp / "api.ndjson"
    path.write_bytes(collect(response))
    assert json.loads(path.read_text().splitlines()[-1])["signed_head"]["count"] == 3
    assert verify_export(path, key.public).rows == 3
    # A plain export (not audit_only) has no head.
    plain = Client().get("/api/audit/export/?format=ndjson", headers={"Authorization": f"Bearer {auditor}"})
    assert b"signed_head" not in collect(plain)


def test_an_export_with_a_purge_checkpoint_verifies_and_a_forged_one_does_not(key, settings):
    from eventbus_client import ExportVerificationError, verify_export

    settings.AUDIT_RETENTION_DAYS = 0
    publish_critical(2, days_ago=40)
    publish_critical(2)
    events_purge(before=datetime.now(UTC) - timedelta(days=30))
    publish_critical(1)
    path = export(key.tmp / "trail.ndjson")
    result = verify_export(path, key.public, whole_trail=True)
    assert result.checkpoints == 1 and result.rows == 4 and not result.starts_at_genesis and result.anchored

    def forge(lines):
        row = json.loads(lines[2])
        assert row["kind"] == "checkpoint"
        row["data"]["permit"]["reason"] = "something else"
        row["hash"] = client_chain_hash(row["prev_hash"], row)
        following = json.loads(lines[3])
        following["prev_hash"] = row["hash"]
        return [*lines[:2], json.dumps(row) + "\n", json.dumps(following) + "\n", *lines[4:]]

    with pytest.raises(ExportVerificationError) as caught:
        verify_export(mutate(path, forge), key.public)
    assert caught.value.line == 3 and "purge checkpoint" in str(caught.value)


# Key rotation


def test_a_rotation_keeps_old_exports_and_heads_verifiable(key, settings):
    from eventbus_client import ExportVerificationError, verify_export

    publish_critical(2)
    old_export = export(key.tmp / "old.ndjson")
    new_private = key.tmp / "new.pem"
    new_public = key.tmp / "new.pub.pem"
    out = io.StringIO()
    call_command(
        "audit_keygen", "--rotate", str(key.private), str(new_private), stdout=out, stderr=io.StringIO()
    )
    new_public.write_text(out.getvalue())
    record = json.loads(key.witness.read_text().splitlines()[-1])["key_rotation"]
    assert record["statement"]["old_key_id"] == signing.key_id(signing.load_public_key(key.public))
    assert record["statement"]["new_key_id"] == signing.key_id(signing.load_public_key(new_public))
    assert signing.rotation_keys(record) is not None

    settings.AUDIT_SIGNING_KEY_FILE = str(new_private)
    publish_critical(2)
    new_export = export(key.tmp / "new.ndjson")

    assert verify_export(old_export, key.public).rows == 2  # the old key, as kept with the old export
    assert verify_export(new_export, new_public).rows == 4
    with pytest.raises(ExportVerificationError, match="signature"):
        verify_export(old_export, new_public)  # without the rotation record, the new key alone is not enough
    assert verify_export(old_export, new_public, rotations=key.witness).rows == 2
    assert verify_export(old_export, new_public, rotations=[record]).rows == 2
    # A rotation record signed by the new key only proves nothing.
    half = {**record, "old_signature": record["new_signature"]}
    with pytest.raises(ExportVerificationError):
        verify_export(old_export, new_public, rotations=[half])
    # The trail: heads signed by either key verify with the new key, the rotation being on record.
    code, text = run("verify_audit", "--public-key", str(new_public))
    assert code == 0, text
    code, text = run("verify_export", str(old_export), "--public-key", str(new_public))
    assert code == 0, text


# The client, alone


def test_the_client_computes_the_same_hashes_as_the_server():
    from audit import services
    from eventbus_client import verify as client

    moment = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    for data in [
        {"b": 1, "a": [1.0, 2.5, 1e16, -0.0, True, None], "é": 'ü\u2028"\\'},
        {"nested": {"z": {"y": [{"x": 3.0}]}}, "big": 12345678901234567890},
        {},
    ]:
        entry = {
            "kind": "event",
            "position": 7,
            "event_id": "6b1d8d8c-3f63-4e4a-9d55-1f7d7e6b0a01",
            "event_type": "agent_switched",
            "event_category": "agent",
            "timestamp": moment,
            "session_id": "s",
            "correlation_id": None,
            "actor": "alice",
            "data": data,
            "source": "x",
        }
        row = {**entry, "timestamp": "2026-03-04T05:06:07.890000Z"}
        assert services.canonical_json(services.entry_content(entry)) == client.canonical_json(
            client.entry_content(row)
        )
        assert services.chain_hash(GENESIS_HASH, entry) == client.chain_hash(GENESIS_HASH, row)
        # And through a JSON round trip, as verify_export reads a row.
        parsed = client._loads(json.dumps(row))
        assert client._dumps(client.entry_content(parsed)) == services.canonical_json(
            services.entry_content(entry)
        )


def test_the_client_verifies_in_a_process_without_django(key):
    publish_critical(3)
    path = export(key.tmp / "trail.ndjson")
    script = (
        "import sys, eventbus_client\n"
        f"result = eventbus_client.verify_export({str(path)!r}, open({str(key.public)!r}).read())\n"
        "assert 'django' not in sys.modules, 'django was imported'\n"
        "print(result.rows, result.key_id)\n"
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
    assert done.stdout.split() == ["3", signing.signing_key().key_id]
