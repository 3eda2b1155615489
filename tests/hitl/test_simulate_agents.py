"""manage.py simulate_agents: realistic sessions on the bus, approval requests that wait for a person."""

import asyncio
import io
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.services import api_token_issue
from core.errors import ApplicationError
from events.base import BaseEvent
from events.event_bus import event_bus
from events.event_store import event_store
from events.models import StoredEvent
from hitl.conf import tool_schema
from hitl.models import ApprovalRequest
from hitl.selectors import pending_approvals
from hitl.services import approval_decide
from hitl.simulation import SCENARIOS, SIMULATION_USER, TOOL_SCHEMAS, Simulation, SimulationOptions

RISKY_TOOLS = {tool.name for scenario in SCENARIOS for tool in scenario.risky}
AGENTS = {scenario.agent for scenario in SCENARIOS}


# An edit of each risky tool that its schema (hitl.simulation.TOOL_SCHEMAS) takes.
VALID_EDITS: dict[str, dict[str, Any]] = {
    "refund_payment": {"amount": 1.5},
    "send_email": {"subject": "Checked with the customer first"},
    "deploy_service": {"env": "staging"},
    "scale_service": {"replicas": 2},
    "execute_command": {"host": "bastion-2"},
    "delete_records": {"where": "id = 1"},
    "run_sql": {"database": "staging"},
    "export_data": {"include_pii": False},
    "post_message": {"channel": "#general"},
}


def valid_edit(tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {**arguments, **VALID_EDITS[tool_name]}


def stored(event_type: str | None = None, **data: Any) -> list[BaseEvent]:
    rows = StoredEvent.objects.order_by("position")
    if event_type is not None:
        rows = rows.filter(event_type=event_type)
    rows = rows.filter(**{f"data__{key}": value for key, value in data.items()})
    return [
        BaseEvent.from_dict(
            {
                "event_id": str(row.event_id),
                "event_type": row.event_type,
                "event_category": row.event_category,
                "timestamp": row.timestamp,
                "session_id": row.session_id,
                "correlation_id": row.correlation_id,
                "causation_id": row.causation_id,
                "data": row.data,
                "source": row.source,
                "version": row.version,
                "position": row.position,
            }
        )
        for row in rows
    ]


@pytest.mark.django_db(transaction=True)
def test_the_command_publishes_realistic_sessions_and_withdraws_its_requests_at_the_end():
    out = io.StringIO()
    call_command(
        "simulate_agents",
        *("--sessions", "3", "--rate", "200", "--duration", "1.5", "--seed", "7"),
        *("--approval-share", "0.5", "--max-waiting", "3"),
        stdout=out,
    )
    output = out.getvalue()
    events = stored()
    types = {str(event.event_type) for event in events}
    assert {
        "session_created",
        "message_added",
        "agent_processing_started",
        "agent_processing_completed",
        "agent_switched",
        "tool_execution_requested",
        "tool_execution_completed",
        "tool_approval_required",
        "tool_approval_cancelled",
    } <= types
    for event in events:  # every stored event survives JSON, as Redis and the API carry it
        assert BaseEvent.from_json(event.to_json()) == event

    # One trace per session: its events carry the session_created event's id and name their cause.
    simulated = [e for e in events if (e.session_id or "").startswith("sim-")]
    roots = {e.session_id: e for e in simulated if e.event_type == "session_created"}
    assert len(roots) >= 3
    ids = {e.event_id: e for e in simulated}
    for event in simulated:
        assert event.correlation_id == roots[event.session_id].event_id
        if event.source.startswith("simulator.") and event.event_type != "session_created":
            assert ids[str(event.causation_id)].session_id == event.session_id
    switches = [e for e in simulated if e.event_type == "agent_switched"]
    assert "triage" in {e.data["from_agent"] for e in switches}
    assert {e.data["to_agent"] for e in switches} <= AGENTS

    # The requests were real pending cards while it ran; none is left pending once it stopped.
    requests = list(ApprovalRequest.objects.select_related("requested_by"))
    assert requests and {r.status for r in requests} == {"cancelled"}
    for request in requests:
        assert request.tool_name in RISKY_TOOLS and request.agent in AGENTS and request.reason
        assert request.requested_by.get_username() == SIMULATION_USER
        assert request.correlation_id == roots[request.session_id].event_id
    required = stored("tool_approval_required")
    assert {e.data["call_id"] for e in required} == {r.call_id for r in requests}
    assert "approval requested: " in output and "session started (" in output
    assert f"Withdrew {len(requests)} pending approval request" in output
    assert "Summary: " in output and "approvals: " in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rate", "-1"], "--rate must be a positive number"),
        (["--rate", "0"], "--rate must be a positive number"),
        (["--rate", "nan"], "--rate must be a finite number"),
        (["--rate", "fast"], "invalid float value"),
        (["--sessions", "0"], "--sessions must be an integer from 1"),
        (["--duration", "-5"], "--duration must be 0"),
        (["--approval-share", "1.5"], "--approval-share must be a fraction from 0 to 1"),
        (["--failure-share", "-0.1"], "--failure-share must be a fraction from 0 to 1"),
        (["--approval-timeout", "0"], "--approval-timeout must be above 0"),
        (["--approval-timeout", "1e9"], "at most 604800 seconds"),
        (["--max-waiting", "0"], "--max-waiting must be an integer from 1"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_agents", *arguments, stdout=io.StringIO())


# The simulation itself, on the test's loop, with an operator deciding meanwhile.


async def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    """Poll `condition` (sync, in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        await event_store.flush()
        found = await database_sync_to_async(condition)()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def tool_outcome(event_type: str, call_id: str) -> BaseEvent | None:
    return next(iter(stored(event_type, call_id=call_id)), None)


async def start(**options: Any) -> tuple[Simulation, "asyncio.Future[Any]", list[str]]:
    # As the command does: the bus lives on this loop. Bound before anything publishes (creating a user
    # does), or the bus would start a loop of its own and the store's writer would live there.
    event_bus.bind(asyncio.get_running_loop())
    lines: list[str] = []
    defaults = {"rate": 100, "failure_share": 0.0, "seed": 11, "approval_timeout": 60}
    simulation = Simulation(SimulationOptions(**{**defaults, **options}), out=lines.append)
    return simulation, asyncio.ensure_future(simulation.run()), lines


@pytest.mark.django_db(transaction=True)
async def test_an_edited_call_runs_with_the_edited_arguments_and_a_rejected_one_never_runs():
    simulation, run, lines = await start(sessions=2, approval_share=1.0, max_waiting=2)
    operator = (await database_sync_to_async(api_token_issue)(username="olga", group="operators")).user
    first, second = (await wait_for(lambda: len(pending_approvals()) >= 2 and pending_approvals()))[:2]
    edited = valid_edit(first["tool_name"], first["arguments"])
    decide = database_sync_to_async(approval_decide)
    await decide(call_id=first["call_id"], user=operator, decision="EDIT", modified_args=edited)
    await decide(call_id=second["call_id"], user=operator, decision="REJECT", comment="not on a Friday")

    ran = await wait_for(lambda: tool_outcome("tool_execution_completed", first["call_id"]))
    refused = await wait_for(lambda: tool_outcome("tool_execution_failed", second["call_id"]))
    simulation.stop()
    summary = await asyncio.wait_for(run, 10)
    await event_store.flush()

    assert ran.data["arguments"] == edited and ran.data["tool_name"] == first["tool_name"]
    assert ran.causation_id is not None and ran.correlation_id == first["correlation_id"]
    assert refused.data["error_type"] == "ToolCallRejected" and refused.data["executed"] is False
    assert "not on a Friday" in refused.data["error_message"]
    never_ran = await database_sync_to_async(tool_outcome)("tool_execution_completed", second["call_id"])
    assert never_ran is None
    assert summary.approvals["edited"] == 1 and summary.approvals["rejected"] == 1
    assert any(f"{first['tool_name']} edited by olga -> runs with " in line for line in lines)
    assert any(
        f"{second['tool_name']} rejected by olga -> not run (not on a Friday)" in line for line in lines
    )
    # The queue never held more than --max-waiting, and nothing is left pending after the stop.
    assert await database_sync_to_async(pending_approvals)() == []


@pytest.mark.django_db(transaction=True)
async def test_a_decision_made_where_this_process_hears_nothing_is_found_by_polling():
    # Another server process decided and published on its own bus (no Redis): here only the row changes.
    simulation, run, lines = await start(sessions=1, approval_share=1.0, max_waiting=1, poll_interval=0.2)
    (request,) = await wait_for(pending_approvals)

    def decide_elsewhere() -> None:
        ApprovalRequest.objects.filter(call_id=request["call_id"]).update(
            status="approved", decided_at=timezone.now(), channel="page", decided_by_username="oleg"
        )

    await database_sync_to_async(decide_elsewhere)()
    # Found by re-reading the row (about every second), well within the wait's bound.
    ran = await wait_for(lambda: tool_outcome("tool_execution_completed", request["call_id"]), timeout=5)
    simulation.stop()
    await asyncio.wait_for(run, 10)
    assert ran.data["arguments"] == request["arguments"]
    assert any("approved by oleg -> runs" in line for line in lines)


@pytest.mark.django_db(transaction=True)
async def test_an_expired_request_is_never_run():
    simulation, run, lines = await start(sessions=1, approval_share=1.0, max_waiting=1, approval_timeout=0.3)
    (request,) = await wait_for(pending_approvals)
    refused = await wait_for(lambda: tool_outcome("tool_execution_failed", request["call_id"]))
    simulation.stop()
    summary = await asyncio.wait_for(run, 10)
    assert refused.data["error_type"] == "ApprovalExpired" and refused.data["executed"] is False
    assert await database_sync_to_async(tool_outcome)("tool_execution_completed", request["call_id"]) is None
    assert summary.approvals["expired"] >= 1


@pytest.mark.django_db(transaction=True)
async def test_once_ends_after_its_sessions_without_approvals():
    simulation, run, lines = await start(sessions=2, approval_share=0.0, once=True, failure_share=0.5)
    summary = await asyncio.wait_for(run, 20)
    await event_store.flush()
    assert summary.sessions == 2 and summary.turns >= 2 and summary.approvals["requested"] == 0
    created = await database_sync_to_async(stored)("session_created")
    assert len(created) == 2
    answers = await database_sync_to_async(stored)("message_added")
    assert {e.data["role"] for e in answers} == {"user", "assistant"}


@pytest.mark.django_db(transaction=True)
async def test_every_risky_tool_has_a_schema_its_own_calls_satisfy():
    assert set(TOOL_SCHEMAS) == RISKY_TOOLS == set(VALID_EDITS)
    simulation, run, lines = await start(sessions=1, approval_share=1.0, max_waiting=1)
    (request,) = await wait_for(pending_approvals)
    assert all(tool_schema(name) == TOOL_SCHEMAS[name] for name in RISKY_TOOLS)  # registered by the run
    simulation.stop()
    await asyncio.wait_for(run, 10)
    assert all(tool_schema(name) is None for name in RISKY_TOOLS)  # and only while it runs


@pytest.mark.django_db(transaction=True)
async def test_an_edit_the_schema_refuses_is_a_400_and_a_rejection_is_answered_not_ignored():
    simulation, run, lines = await start(sessions=1, approval_share=1.0, max_waiting=1)
    operator = (await database_sync_to_async(api_token_issue)(username="olga", group="operators")).user
    (request,) = await wait_for(pending_approvals)
    decide = database_sync_to_async(approval_decide)
    broken = {**request["arguments"], "unexpected": "x"}
    with pytest.raises(ApplicationError) as refused_edit:
        await decide(call_id=request["call_id"], user=operator, decision="EDIT", modified_args=broken)
    assert refused_edit.value.status == 400
    assert (await database_sync_to_async(pending_approvals)())[0]["call_id"] == request["call_id"]

    await decide(call_id=request["call_id"], user=operator, decision="REJECT", comment="too risky")
    failed = await wait_for(lambda: tool_outcome("tool_execution_failed", request["call_id"]))
    told = await wait_for(lambda: stored("message_added", call_id=request["call_id"]))
    alternatives: list[BaseEvent] = []
    if told[0].data["outcome"] == "other_path":
        alternatives = await wait_for(
            lambda: [e for e in stored("tool_execution_requested") if e.causation_id == told[0].event_id]
        )
    simulation.stop()
    summary = await asyncio.wait_for(run, 10)
    await event_store.flush()

    # The agent tells the user it stopped or took a path that needs no approval, after the refusal.
    (message,) = told
    assert message.data["role"] == "assistant" and message.data["approval_status"] == "rejected"
    assert message.data["outcome"] in ("stopped", "other_path")
    assert message.causation_id == failed.event_id
    assert summary.tools["stopped"] + summary.tools["other_path"] == 1
    assert any("I did not" in line and "too risky" in line for line in lines)
    if message.data["outcome"] == "other_path":
        (alternative,) = alternatives
        assert alternative.data["tool_name"] not in RISKY_TOOLS

    # The request hangs under the tool call it gates, the decision under the request.
    (asked,) = await database_sync_to_async(stored)("tool_execution_requested", call_id=request["call_id"])
    (required,) = await database_sync_to_async(stored)("tool_approval_required", call_id=request["call_id"])
    (decided,) = await database_sync_to_async(stored)("hitl_decision_made", call_id=request["call_id"])
    assert required.causation_id == asked.event_id and decided.causation_id == required.event_id
    assert asked.correlation_id == required.correlation_id == decided.correlation_id
