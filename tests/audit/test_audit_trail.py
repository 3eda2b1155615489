"""The tamper-evident trail: verification, tampering caught at the right entry, purge, the signals bridge."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection, transaction

from audit.models import AuditEntry
from audit.services import audit_verify, events_purge
from events.agent_events import AgentErrorOccurredEvent, AgentSwitchedEvent
from events.base import BaseEvent
from events.db_triggers import install_append_only
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_retention(settings):
    # These tests purge days-old events; AUDIT_RETENTION_DAYS is tested in tests/audit/test_evidence.py.
    settings.AUDIT_RETENTION_DAYS = 0


def settle() -> None:
    event_bus.drain_sync(timeout=10)
    event_store.flush_sync(timeout=10)


def publish_critical(count: int, *, days_ago: float = 0, session: str = "s") -> None:
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    for n in range(count):
        event_bus.publish_sync(
            AgentSwitchedEvent(session_id=session, from_agent="a", to_agent=f"agent-{n}", timestamp=moment)
        )
        event_bus.publish_sync(
            BaseEvent("tick", "metrics", session_id=session, data={"n": n}, timestamp=moment)
        )
    settle()


def tamper(sql: str, params: list) -> None:
    """Change a row behind the app's back: with the append-only trigger out of the way."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER USER")
            cursor.execute(sql, params)
            cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER USER")
        else:
            cursor.execute("DROP TRIGGER audit_auditentry_no_update")
            cursor.execute("DROP TRIGGER audit_auditentry_no_delete")
            cursor.execute(sql, params)
            with connection.schema_editor() as editor:
                install_append_only(editor, "audit_auditentry")


def run_verify() -> tuple[int, str]:
    try:
        call_command("verify_audit", stdout=(out := _Capture()))
    except SystemExit as exit_:
        return int(exit_.code or 0), out.text
    return 0, out.text


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_a_clean_chain_verifies():
    publish_critical(5)
    result = audit_verify()
    assert result.ok and result.entries == 5
    code, out = run_verify()
    assert code == 0 and "holds: 5 entries" in out


def test_an_edited_entry_is_caught_exactly_where_it_was_edited():
    publish_critical(6)
    victim = AuditEntry.objects.order_by("id")[3]
    tamper("UPDATE audit_auditentry SET actor = %s WHERE id = %s", ["mallory", victim.id])
    result = audit_verify()
    assert not result.ok and result.broken_entry == victim.id
    assert "content" in (result.reason or "")
    code, out = run_verify()
    assert code == 1 and f"broken at entry {victim.id}" in out


def test_a_deleted_entry_is_caught_at_the_entry_after_it():
    publish_critical(6)
    entries = list(AuditEntry.objects.order_by("id"))
    tamper("DELETE FROM audit_auditentry WHERE id = %s", [entries[2].id])
    result = audit_verify()
    assert not result.ok and result.broken_entry == entries[3].id


def test_a_rehashed_entry_is_caught_by_the_next_link():
    publish_critical(4)
    entries = list(AuditEntry.objects.order_by("id"))
    tamper("UPDATE audit_auditentry SET hash = %s WHERE id = %s", ["f" * 64, entries[1].id])
    result = audit_verify()
    assert not result.ok and result.broken_entry == entries[1].id


def test_purge_deletes_old_events_and_keeps_the_chain_verifiable():
    publish_critical(4, days_ago=40, session="old")
    publish_critical(3, session="new")
    cutoff = datetime.now(UTC) - timedelta(days=30)

    dry = events_purge(before=cutoff, dry_run=True)
    assert (dry.events, dry.audit_entries, dry.dry_run) == (8, 4, True)
    assert StoredEvent.objects.filter(session_id="old").count() == 8

    call_command("purge_events", "--before", cutoff.isoformat(), stdout=(out := _Capture()))
    assert "Deleted 8 events and 4 audit entries" in out.text
    assert not StoredEvent.objects.filter(session_id="old").exists()
    assert StoredEvent.objects.filter(session_id="new").count() == 6
    checkpoint = AuditEntry.objects.get(kind=AuditEntry.Kind.CHECKPOINT)
    assert checkpoint.data["events_deleted"] == 8 and checkpoint.data["audit_entries_deleted"] == 4
    result = audit_verify()
    assert result.ok and result.entries == 4  # three events and the checkpoint

    # The chain goes on after the purge, and a second purge of everything still verifies.
    publish_critical(2, session="newer")
    assert audit_verify().ok
    events_purge(before=datetime.now(UTC) - timedelta(seconds=0))
    assert audit_verify().ok


def test_purge_of_one_category_keeps_the_audit_trail():
    publish_critical(3, days_ago=40)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    result = events_purge(before=cutoff, category="metrics")
    assert (result.events, result.audit_entries) == (3, 0)
    assert StoredEvent.objects.filter(event_category="metrics").count() == 0
    assert StoredEvent.objects.filter(event_category="agent").count() == 3
    assert audit_verify().ok and AuditEntry.objects.count() == 4


def test_purge_refuses_nonsense(capsys):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a date"):
        call_command("purge_events", "--before", "last tuesday")
    with pytest.raises(CommandError, match="future"):
        call_command("purge_events", "--before", (datetime.now(UTC) + timedelta(days=1)).isoformat())


def test_a_rolled_back_change_publishes_nothing():
    seen: list[str] = []
    event_bus.subscribe(event_type="model_changed", handler=lambda e: seen.append(e.data["pk"]))
    with pytest.raises(RuntimeError), transaction.atomic():
        get_user_model().objects.create(username="ghost")
        raise RuntimeError("roll back")
    user = get_user_model().objects.create(username="kept")
    settle()
    assert seen == [str(user.pk)]
    assert StoredEvent.objects.filter(event_type="model_changed").count() == 1


def test_group_membership_changes_are_bridged():
    user = get_user_model().objects.create(username="op")
    settle()
    user.groups.add(Group.objects.create(name="operators"))
    settle()
    actions = list(
        StoredEvent.objects.filter(event_type="model_changed").values_list("data__action", flat=True)
    )
    assert actions.count("groups_changed") == 1


def test_sign_in_sign_out_and_failed_sign_in_reach_the_audit_trail(client):
    get_user_model().objects.create_user(username="olga", password="correct horse battery")
    assert client.login(username="olga", password="correct horse battery")
    client.logout()
    assert authenticate(username="olga", password="wrong") is None
    settle()
    entries = list(
        AuditEntry.objects.filter(event_category="system")
        .order_by("id")
        .values_list("event_type", "actor", "data")
    )
    assert [(kind, actor) for kind, actor, _ in entries] == [
        ("operator_signed_in", "olga"),
        ("operator_signed_out", "olga"),
        ("operator_sign_in_failed", None),
    ]
    assert entries[2][2]["username"] == "olga"
    assert "wrong" not in str(entries)
    assert audit_verify().ok


def test_the_actor_is_recorded_on_the_audit_entry():
    event = AgentErrorOccurredEvent(session_id="s", agent_type="coder", error_message="x")
    event.actor = "agent-runtime-1"
    event_bus.publish_sync(event, wait_for_handlers=True)
    assert AuditEntry.objects.get(event_id=event.event_id).actor == "agent-runtime-1"
    assert StoredEvent.objects.get(event_id=event.event_id).actor == "agent-runtime-1"


def test_verify_api_answers_auditors_and_refuses_others():
    from django.test import Client

    from accounts.services import api_token_issue

    publish_critical(3)
    auditor = api_token_issue(username="auditor-1", group="auditors").token
    agent = api_token_issue(username="agent-1", group="agents").token
    client = Client()
    ok = client.get("/api/audit/verify/", headers={"Authorization": f"Bearer {auditor}"})
    assert ok.status_code == 200 and ok.json() == {"ok": True, "entries": 3}
    assert client.get("/api/audit/verify/").status_code == 401
    refused = client.get("/api/audit/verify/", headers={"Authorization": f"Bearer {agent}"})
    assert refused.status_code == 403 and refused.json()["code"]

    victim = AuditEntry.objects.order_by("id")[1]
    tamper("UPDATE audit_auditentry SET data = %s WHERE id = %s", ['{"forged": true}', victim.id])
    broken = client.get("/api/audit/verify/", headers={"Authorization": f"Bearer {auditor}"}).json()
    assert broken["ok"] is False and broken["broken_entry"] == victim.id
