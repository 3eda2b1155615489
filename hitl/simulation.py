"""Simulated agent sessions for demos: realistic events on the bus and approval requests for risky tools.

`manage.py simulate_agents` runs a `Simulation`: N sessions at work at once, each started when another
ends or steps aside. In a session a user asks something, a triage agent hands over to a specialist
(billing, devops, data, research), the specialist calls tools and answers; 1 to 3 such turns. Safe
tools complete or fail with realistic errors; risky ones (refunds, emails, deploys, deletes...) go
through `hitl.services.approval_request`, so a pending card appears on the approval page, and the
session waits for the decision, stepping aside so the feed keeps moving (at most `max_waiting` requests
are pending; beyond that agents pick safe tools). The tool then runs with the decided arguments (the
edited ones after an EDIT); a rejected, expired or cancelled call never runs, and the agent says so in
a `tool_execution_failed` event (`error_type` ToolCallRejected / ApprovalExpired / ApprovalCancelled,
`data.executed` false), then reacts as an agent should: it tells the user (a `message_added` from the
assistant, `data.outcome` "stopped" or "other_path") and either stops the turn there or takes a path
that needs no approval (a safe tool), never carrying on as if the call had run. Each risky tool has a
JSON Schema (TOOL_SCHEMAS, registered with `hitl.conf.register_tool_schema` while a run lasts), so an
edit that breaks it is refused as in real use (400 naming the argument) when the decision is made in a
process that has them registered: this one; a server started apart (`make demo`) only when its
settings name them in HITL_TOOL_SCHEMAS. The approval request names the tool call's
`tool_execution_requested` as its cause, so the trace shows the request and its decision under it.

Every event goes through the process-wide bus, so this process's store writes it and live feeds of any
server process show it (they follow the store). All events of a session share one `correlation_id`, the
`event_id` of its `session_created` event, and name their cause, so the admin's trace view shows the
session as a tree. The decision is usually made in the server process: with Redis the distributed bus
wakes `await_decision` at once; without it this process hears nothing, so the wait re-reads the request
every `poll_interval` seconds. Database work runs in worker threads in short transactions (never held
while sleeping), so this runs beside a Daphne on the same SQLite file.

A stopped simulation (end of `duration`, Ctrl-C) withdraws the approval requests it is still waiting
for (`approval_cancel`), so no stale card is left on the page.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from accounts.roles import AGENTS
from accounts.services import roles_setup
from core.errors import ApplicationError
from events.agent_events import (
    AgentErrorOccurredEvent,
    AgentProcessingCompletedEvent,
    AgentProcessingStartedEvent,
    AgentSwitchedEvent,
)
from events.base import BaseEvent
from events.event_bus import event_bus
from events.session_events import MessageAddedEvent, SessionCreatedEvent
from events.tool_events import (
    ToolExecutionCompletedEvent,
    ToolExecutionFailedEvent,
    ToolExecutionRequestedEvent,
)

from .conf import hitl_settings, register_tool_schema, tool_schema, unregister_tool_schema
from .services import Decision, approval_cancel, approval_request, await_decision

if TYPE_CHECKING:
    from django.contrib.auth.models import User

SIMULATION_USER = "agent-simulator"
TRIAGE = "triage"
T = TypeVar("T")

Args = dict[str, Any]
Ctx = dict[str, Any]

# What the agent reports when a held call does not run, by the request's final status.
NOT_RUN = {
    "rejected": ("ToolCallRejected", "the operator rejected the call"),
    "expired": ("ApprovalExpired", "nobody decided before the request expired"),
    "cancelled": ("ApprovalCancelled", "the approval request was withdrawn"),
}


# The catalogue: agents, what users ask them, and their tools.


@dataclass(frozen=True)
class Tool:
    """A tool an agent calls: how it builds arguments, what it returns, how it fails."""

    name: str
    arguments: Callable[[random.Random, Ctx], Args]
    result: Callable[[random.Random, Args], Any]
    errors: tuple[tuple[str, str], ...] = ()
    reason: Callable[[Args], str] | None = None  # why it needs approval: set for risky tools only


@dataclass(frozen=True)
class Scenario:
    """A specialist agent with its users' requests, its safe tools and its risky ones."""

    agent: str
    switch_reason: str
    system_prompt: str
    prompts: tuple[str, ...]
    replies: tuple[str, ...]
    tools: tuple[Tool, ...]
    risky: tuple[Tool, ...]


def _ident(rng: random.Random, prefix: str, length: int = 14) -> str:
    return prefix + "".join(
        rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789") for _ in range(length)
    )


def _money(value: Any) -> str:
    return f"${value:,.2f}" if isinstance(value, int | float) else str(value)


PEOPLE = (
    ("maria.lopez@acme.io", "Maria"),
    ("j.okafor@northwind.example", "James"),
    ("chen.wei@globex.example", "Wei"),
    ("anna.schmidt@initech.example", "Anna"),
    ("p.dubois@umbrella.example", "Pierre"),
)
SERVICES = ("checkout", "api-gateway", "payments", "search", "notifications")
PLANS = (("Starter", 19.0), ("Pro", 49.0), ("Business", 199.0))


def _context(rng: random.Random) -> Ctx:
    """The facts one session is about, so its prompts, arguments and results agree."""
    email, name = rng.choice(PEOPLE)
    plan, price = rng.choice(PLANS)
    major, minor, patch = 2, rng.randint(10, 19), rng.randint(1, 9)
    return {
        "email": email,
        "name": name,
        "customer_id": _ident(rng, "cus_"),
        "payment_id": _ident(rng, "pi_", 24),
        "plan": plan,
        "amount": price,
        "service": rng.choice(SERVICES),
        "version": f"v{major}.{minor}.{patch}",
        "previous_version": f"v{major}.{minor}.{patch - 1}",
        "replicas": rng.choice((4, 6, 8)),
        "ticket": f"T-{rng.randint(40000, 49999)}",
        "quarter": rng.choice(("2025-Q2", "2025-Q3")),
    }


BILLING = Scenario(
    agent="billing_agent",
    switch_reason="Payment, invoice or refund question",
    system_prompt="You are the billing assistant of Acme Cloud. Verify the customer before any refund.",
    prompts=(
        "I was charged twice for my {plan} plan this month ({amount_str} each). Please refund the duplicate.",
        "Why did my last invoice jump to {amount_str}? I'm on the {plan} plan. Account {email}.",
        "Please cancel my subscription and refund the unused days. My account is {email}.",
    ),
    replies=(
        "I found the duplicate charge and handled the refund; you'll get a confirmation email shortly.",
        "Your invoice includes the prorated upgrade from last month; I've sent you the breakdown.",
        "I've looked into your account; the details are in your inbox.",
    ),
    tools=(
        Tool(
            "lookup_customer",
            lambda rng, c: {"email": c["email"]},
            lambda rng, a: {"customer_id": _ident(rng, "cus_"), "status": "active", "since": "2023-04-12"},
            (("NotFoundError", "no customer with that email in billing"),),
        ),
        Tool(
            "list_invoices",
            lambda rng, c: {"customer_id": c["customer_id"], "limit": 5},
            lambda rng, a: {
                "invoices": [
                    {"id": _ident(rng, "in_"), "status": "paid", "amount": rng.choice((19.0, 49.0, 199.0))}
                    for _ in range(rng.randint(2, 4))
                ]
            },
            (("TimeoutError", "billing API did not answer within 10 s"),),
        ),
        Tool(
            "get_payment",
            lambda rng, c: {"payment_id": c["payment_id"]},
            lambda rng, a: {"payment_id": a.get("payment_id"), "status": "succeeded", "currency": "USD"},
            (("RateLimitError", "Stripe: 429 Too Many Requests"),),
        ),
    ),
    risky=(
        Tool(
            "refund_payment",
            lambda rng, c: {
                "payment_id": c["payment_id"],
                "amount": c["amount"],
                "currency": "USD",
                "reason": "duplicate",
            },
            lambda rng, a: {
                "refund_id": _ident(rng, "re_", 24),
                "status": "succeeded",
                "amount": a.get("amount"),
            },
            (("CardError", "the charge has already been refunded"),),
            lambda a: f"Refund of {_money(a.get('amount'))} to a customer: refunds move money.",
        ),
        Tool(
            "send_email",
            lambda rng, c: {
                "to": c["email"],
                "subject": "About your Acme Cloud invoice",
                "body": f"Hi {c['name']},\n\nwe refunded the duplicate charge of {_money(c['amount'])}. "
                "It shows on your statement within 5-10 days.\n\nAcme Cloud billing",
            },
            lambda rng, a: {"message_id": f"<{uuid.UUID(int=rng.getrandbits(128)).hex}@mail.acme.io>"},
            (("SMTPRecipientsRefused", "550 5.1.1 mailbox unavailable"),),
            lambda a: f"Sends an email to {a.get('to')} on behalf of the company.",
        ),
    ),
)

DEVOPS = Scenario(
    agent="devops_agent",
    switch_reason="Production infrastructure request",
    system_prompt="You are the on-call assistant. Read before you write; production changes need approval.",
    prompts=(
        "{service} is returning 502s since the last deploy. Can you roll it back to {previous_version}?",
        "The job queue is at 40k, please scale the {service} workers up.",
        "Ship {service} {version} to production, the release notes are approved.",
    ),
    replies=(
        "The rollback is done and the error rate is back under 0.1%.",
        "The workers are scaled up; the queue is draining at about 900 jobs/s.",
        "I've checked the rollout; details are in #deploys.",
    ),
    tools=(
        Tool(
            "get_service_status",
            lambda rng, c: {"service": c["service"], "env": "production"},
            lambda rng, a: {
                "service": a.get("service"),
                "healthy_pods": rng.randint(1, 3),
                "desired_pods": 6,
                "error_rate": round(rng.uniform(0.05, 0.3), 3),
            },
            (("ConnectionError", "kube-apiserver 10.0.0.1:6443: connection refused"),),
        ),
        Tool(
            "query_logs",
            lambda rng, c: {"service": c["service"], "since": "15m", "level": "error", "limit": 50},
            lambda rng, a: {
                "matches": rng.randint(200, 5000),
                "top_message": "upstream connect error or disconnect/reset before headers",
            },
            (("PermissionError", "403: serviceaccount ci-bot cannot get pods/log in namespace prod"),),
        ),
        Tool(
            "list_deployments",
            lambda rng, c: {"service": c["service"], "limit": 3},
            lambda rng, a: {
                "deployments": [{"version": f"v2.{rng.randint(10, 19)}.{i}", "by": "ci"} for i in (3, 2, 1)]
            },
            (("TimeoutError", "Argo CD API did not answer within 15 s"),),
        ),
    ),
    risky=(
        Tool(
            "deploy_service",
            lambda rng, c: {
                "service": c["service"],
                "version": c["previous_version"],
                "env": "production",
                "strategy": "rolling",
            },
            lambda rng, a: {
                "rollout": "complete",
                "version": a.get("version"),
                "duration_s": rng.randint(40, 180),
            },
            (("RolloutFailed", "progress deadline exceeded: 2 of 6 pods not ready"),),
            lambda a: f"Deploys {a.get('service')} {a.get('version')} to {a.get('env')}.",
        ),
        Tool(
            "scale_service",
            lambda rng, c: {
                "service": f"{c['service']}-worker",
                "replicas": c["replicas"] * 2,
                "env": "production",
            },
            lambda rng, a: {"replicas": a.get("replicas"), "ready": a.get("replicas")},
            (("QuotaExceeded", "exceeded quota: cpu limit 64 cores in namespace prod"),),
            lambda a: f"Scales {a.get('service')} to {a.get('replicas')} replicas in production (cost).",
        ),
        Tool(
            "execute_command",
            lambda rng, c: {
                "command": f"kubectl -n prod rollout restart deployment/{c['service']}",
                "host": "bastion-1",
            },
            lambda rng, a: {"exit_code": 0, "stdout": "deployment.apps restarted"},
            (("CalledProcessError", "exit status 1: error: deployments.apps not found"),),
            lambda a: "Runs a shell command on a production bastion host.",
        ),
    ),
)

DATA = Scenario(
    agent="data_agent",
    switch_reason="Needs the data warehouse or the production database",
    system_prompt="You answer data questions with SQL. Never write to production without approval.",
    prompts=(
        "How many customers churned in {quarter}, by plan?",
        "Remove the test accounts created by last night's load test from the users table.",
        "Export the EU customers with invoices overdue by 60+ days for the collections team.",
    ),
    replies=(
        "Churn by plan is in the table above; Starter accounts for most of it.",
        "Done: the load-test accounts are gone and the counts match.",
        "The export is in the collections bucket; the link expires in 7 days.",
    ),
    tools=(
        Tool(
            "query_warehouse",
            lambda rng, c: {
                "database": "analytics",
                "sql": "SELECT plan, count(*) AS churned FROM customers "
                f"WHERE churned_at >= date '{c['quarter'][:4]}-07-01' GROUP BY plan ORDER BY 2 DESC",
            },
            lambda rng, a: {
                "row_count": 3,
                "rows": [[plan, rng.randint(5, 400)] for plan, _ in PLANS],
            },
            (
                ("QueryTimeout", "canceling statement due to statement timeout (30000 ms)"),
                ("ProgrammingError", 'column "churn_date" does not exist'),
            ),
        ),
        Tool(
            "describe_table",
            lambda rng, c: {"database": "production", "table": "users"},
            lambda rng, a: {
                "columns": ["id", "email", "created_at", "plan", "region"],
                "rows_estimate": 182_340,
            },
        ),
    ),
    risky=(
        Tool(
            "delete_records",
            lambda rng, c: {
                "database": "production",
                "table": "users",
                "where": "email LIKE '%@loadtest.example.com'",
                "estimated_rows": rng.randint(800, 2000),
            },
            lambda rng, a: {"deleted": a.get("estimated_rows") or rng.randint(1, 100)},
            (("IntegrityError", "update or delete on table users violates foreign key on invoices"),),
            lambda a: (
                f"Deletes about {a.get('estimated_rows')} rows from {a.get('database')}.{a.get('table')}."
            ),
        ),
        Tool(
            "run_sql",
            lambda rng, c: {
                "database": "production",
                "sql": "UPDATE invoices SET status = 'collections' "
                "WHERE due_date < now() - interval '60 days' AND region = 'EU'",
            },
            lambda rng, a: {"rows_affected": rng.randint(10, 300)},
            (("LockNotAvailable", "could not obtain lock on relation invoices"),),
            lambda a: f"Writes to the {a.get('database')} database.",
        ),
        Tool(
            "export_data",
            lambda rng, c: {
                "query": "overdue_invoices_eu_60d",
                "destination": "s3://acme-exports/collections/overdue-eu.csv",
                "include_pii": True,
            },
            lambda rng, a: {"rows": rng.randint(50, 900), "location": a.get("destination")},
            (("AccessDenied", "s3:PutObject denied by bucket policy"),),
            lambda a: "Copies customer personal data out of the warehouse (GDPR).",
        ),
    ),
)

RESEARCH = Scenario(
    agent="research_agent",
    switch_reason="Open research question",
    system_prompt="You research questions on the web and cite your sources.",
    prompts=(
        "Summarise what's new in evaluating retrieval-augmented generation this year.",
        "Compare PostgreSQL logical replication with Debezium for our change-data-capture pipeline.",
        "Find the current rate limits of the major LLM APIs and post a summary to the team.",
    ),
    replies=(
        "Here is a summary with five sources; the main trend is LLM-as-judge with human calibration.",
        "Short version: logical replication is simpler, Debezium gives you Kafka and schema history.",
        "I've collected the limits in a table and shared it with the team.",
    ),
    tools=(
        Tool(
            "web_search",
            lambda rng, c: {
                "query": rng.choice(("RAG evaluation benchmark 2025", "debezium vs logical replication")),
                "max_results": 5,
            },
            lambda rng, a: {
                "results": [
                    {
                        "title": f"Result {i} for {a.get('query')}",
                        "url": f"https://example.org/{_ident(rng, '', 8)}",
                    }
                    for i in range(1, 4)
                ]
            },
            (("HTTPError", "503 Service Unavailable from the search API"),),
        ),
        Tool(
            "fetch_url",
            lambda rng, c: {
                "url": f"https://arxiv.org/abs/25{rng.randint(1, 12):02d}.{rng.randint(10000, 19999)}"
            },
            lambda rng, a: {"status": 200, "bytes": rng.randint(20_000, 90_000), "url": a.get("url")},
            (("TimeoutError", "fetch took longer than 15 s"), ("HTTPError", "404 Not Found")),
        ),
    ),
    risky=(
        Tool(
            "post_message",
            lambda rng, c: {
                "channel": "#eng-research",
                "text": "Summary of today's research: LLM-as-judge dominates RAG evaluation; see thread.",
            },
            lambda rng, a: {
                "ts": f"{int(time.time())}.{rng.randint(100000, 999999)}",
                "channel": a.get("channel"),
            },
            (("SlackApiError", "not_in_channel"),),
            lambda a: f"Posts to the company Slack channel {a.get('channel')}.",
        ),
        Tool(
            "send_email",
            lambda rng, c: {
                "to": "engineering@acme.io",
                "subject": "Research summary",
                "body": "Hi all,\n\nthe summary you asked for is attached.\n",
            },
            lambda rng, a: {"message_id": f"<{uuid.UUID(int=rng.getrandbits(128)).hex}@mail.acme.io>"},
            (("SMTPRecipientsRefused", "550 5.1.1 mailbox unavailable"),),
            lambda a: f"Sends an email to {a.get('to')} on behalf of the company.",
        ),
    ),
)

SCENARIOS = (BILLING, DEVOPS, DATA, RESEARCH)


def _object(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required or properties),
        "additionalProperties": False,
    }


_TEXT = {"type": "string", "minLength": 1, "maxLength": 2000}
_EMAIL = {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", "maxLength": 254}
_SERVICE = {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,62}$"}

# The JSON Schemas of the risky tools' arguments: what an operator's edit must keep (a refund within
# the limit, a real address, a known environment, a bounded number of replicas...).
TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "refund_payment": _object(
        {
            "payment_id": {"type": "string", "pattern": "^pi_[A-Za-z0-9]{8,40}$"},
            "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": 5000},
            "currency": {"enum": ["USD", "EUR", "GBP"]},
            "reason": {"enum": ["duplicate", "fraudulent", "requested_by_customer"]},
        }
    ),
    "send_email": _object(
        {"to": _EMAIL, "subject": {"type": "string", "minLength": 1, "maxLength": 200}, "body": _TEXT}
    ),
    "deploy_service": _object(
        {
            "service": _SERVICE,
            "version": {"type": "string", "pattern": "^v\\d+\\.\\d+\\.\\d+$"},
            "env": {"enum": ["staging", "production"]},
            "strategy": {"enum": ["rolling", "blue_green", "canary"]},
        }
    ),
    "scale_service": _object(
        {
            "service": _SERVICE,
            "replicas": {"type": "integer", "minimum": 0, "maximum": 50},
            "env": {"enum": ["staging", "production"]},
        }
    ),
    "execute_command": _object({"command": _TEXT, "host": {"type": "string", "pattern": "^bastion-[0-9]+$"}}),
    "delete_records": _object(
        {
            "database": {"enum": ["production", "staging"]},
            "table": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
            "where": {"type": "string", "minLength": 3},  # never an unbounded delete
            "estimated_rows": {"type": "integer", "minimum": 0, "maximum": 100_000},
        },
        "database",
        "table",
        "where",
    ),
    "run_sql": _object({"database": {"enum": ["production", "staging", "analytics"]}, "sql": _TEXT}),
    "export_data": _object(
        {
            "query": {"type": "string", "pattern": "^[a-z0-9_]+$"},
            "destination": {"type": "string", "pattern": "^s3://acme-exports/"},
            "include_pii": {"type": "boolean"},
        }
    ),
    "post_message": _object({"channel": {"type": "string", "pattern": "^#[a-z0-9_-]+$"}, "text": _TEXT}),
}


def register_tool_schemas() -> list[str]:
    """Register TOOL_SCHEMAS for the simulated tools that have no schema yet (settings win); their names."""
    registered = []
    for name, schema in TOOL_SCHEMAS.items():
        if tool_schema(name) is None:
            register_tool_schema(name, schema)
            registered.append(name)
    return registered


# What an agent says when a held call did not run, and what it does next.
STOPPED_REPLY = "I did not {action}: {why}. I stopped there; tell me how you want to proceed."
OTHER_PATH_REPLY = "I did not {action}: {why}. I took another way instead ({tool}), which needs no approval."
MODEL_ERRORS = (
    ("RateLimitError", "429 from the model provider: rate limit reached, retry in 20 s"),
    ("ContextWindowExceededError", "prompt of 131,712 tokens exceeds the model's 128,000"),
)


# Options and results


@dataclass(frozen=True)
class SimulationOptions:
    """How much to simulate; `validate()` names the first bad value."""

    sessions: int = 3  # sessions at work at once (those waiting for a decision step aside)
    rate: float = 5.0  # events per second, all sessions together
    duration: float = 0.0  # seconds; 0 runs until stopped
    approval_share: float = 0.25  # of tool calls, held for approval
    failure_share: float = 0.1  # of tool runs, failing
    approval_timeout: float = 120.0  # seconds an approval request waits
    max_waiting: int = 10  # approval requests pending at once; beyond, agents pick safe tools
    seed: int | None = None
    once: bool = False  # start `sessions` sessions, end when they have
    poll_interval: float = 1.0  # seconds between re-reads of a request nobody wakes us for

    def validate(self) -> None:
        """Raise ValueError naming the first option that makes no sense."""
        for name, number in (
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--approval-share", self.approval_share),
            ("--failure-share", self.failure_share),
            ("--approval-timeout", self.approval_timeout),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, not {number!r}")
        if (
            isinstance(self.sessions, bool)
            or not isinstance(self.sessions, int)
            or not 1 <= self.sessions <= 1000
        ):
            raise ValueError(f"--sessions must be an integer from 1 to 1000, not {self.sessions!r}")
        if not self.rate > 0:
            raise ValueError(f"--rate must be a positive number of events per second, not {self.rate!r}")
        if not self.duration >= 0:
            raise ValueError(
                f"--duration must be 0 (until stopped) or a positive number of seconds, not {self.duration!r}"
            )
        for name, value in (
            ("--approval-share", self.approval_share),
            ("--failure-share", self.failure_share),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction from 0 to 1, not {value!r}")
        if (
            isinstance(self.max_waiting, bool)
            or not isinstance(self.max_waiting, int)
            or not 1 <= self.max_waiting <= 10_000
        ):
            raise ValueError(f"--max-waiting must be an integer from 1 to 10000, not {self.max_waiting!r}")
        maximum = hitl_settings().max_timeout_s
        if not 0 < self.approval_timeout <= maximum:
            raise ValueError(
                f"--approval-timeout must be above 0 and at most {maximum:g} seconds (HITL_MAX_TIMEOUT_S), "
                f"not {self.approval_timeout!r}"
            )
        if not self.poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, not {self.poll_interval!r}")


@dataclass
class SimulationSummary:
    """What a run did, for the last lines of the command."""

    sessions: int = 0
    turns: int = 0
    events: Counter[str] = field(default_factory=Counter)
    tools: Counter[str] = field(default_factory=Counter)  # completed, failed, not_run, stopped, other_path
    approvals: Counter[str] = field(default_factory=Counter)  # requested, then one per final status
    elapsed_s: float = 0.0

    def lines(self) -> list[str]:
        """The summary as a few human lines."""
        total = sum(self.events.values())
        rate = total / self.elapsed_s if self.elapsed_s > 0 else 0.0
        decided = ", ".join(
            f"{self.approvals[status]} {status}"
            for status in ("approved", "edited", "rejected", "expired", "cancelled", "withdrawn")
            if self.approvals[status]
        )
        return [
            f"Summary: {self.sessions} sessions, {self.turns} turns, {total} events "
            f"in {self.elapsed_s:.1f} s ({rate:.1f}/s).",
            f"  tools: {self.tools['completed']} completed, {self.tools['failed']} failed, "
            f"{self.tools['not_run']} not run (refused: {self.tools['stopped']} stopped, "
            f"{self.tools['other_path']} took another path).",
            f"  approvals: {self.approvals['requested']} requested" + (f": {decided}." if decided else "."),
        ]


class _Stopped(Exception):
    """The simulation is stopping: end this session where it is."""


class Pacer:
    """Spaces the events of every session so that together they go out at `rate` per second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@transaction.atomic
def simulation_user_ensure(username: str = SIMULATION_USER) -> User:
    """The account the simulated agents act as (an agent, no password); it may cancel its own requests."""
    user_model = get_user_model()
    user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
    if user is None:
        user = user_model(**{user_model.USERNAME_FIELD: username})
        user.set_unusable_password()
        user.save()
    group = Group.objects.filter(name=AGENTS).first()
    if group is None:
        roles_setup()
        group = Group.objects.get(name=AGENTS)
    if not user.groups.filter(pk=group.pk).exists():
        user.groups.add(group)
    return user


@dataclass
class _Session:
    session_id: str
    rng: random.Random
    context: Ctx
    correlation_id: str = ""
    last_event_id: str | None = None
    agent: str = TRIAGE
    at_work: bool = True  # counts among the sessions at work (not waiting for a decision)


class Simulation:
    """Runs the simulated sessions on the running loop; see the module docstring.

    `sessions` of them are at work at once. One that waits for a decision steps aside (another starts,
    as other users keep chatting) and, once decided, goes on at once. At most `max_waiting`
    requests are pending at once: beyond that the agents pick tools that need no approval, so the feed
    keeps moving however long the queue goes undecided.
    """

    def __init__(self, options: SimulationOptions, *, out: Callable[[str], None] = print) -> None:
        options.validate()
        self.options = options
        self.out = out
        self.summary = SimulationSummary()
        self._pacer = Pacer(options.rate)
        self._stop = asyncio.Event()
        self._at_work = 0  # sessions at work: not ended, not waiting for a decision
        self._room = asyncio.Event()  # set when one leaves work
        self._tasks: set[asyncio.Future[None]] = set()
        self._user: User | None = None
        self._waiting: set[str] = set()  # call_ids held for approval, not yet decided
        self._inflight: set[asyncio.Future[Any]] = set()
        self._started = 0
        self._failures = 0
        self._error: Exception | None = None
        self._queue_full = False

    def stop(self) -> None:
        """Ask the run to end: sessions stop where they are and pending requests are withdrawn."""
        self._stop.set()

    @property
    def username(self) -> str:
        return self._user.get_username() if self._user is not None else SIMULATION_USER

    async def run(self) -> SimulationSummary:
        """Run until `duration` passes, `stop()` is called or (with `once`) every session ended."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + self.options.duration if self.options.duration else None
        self._user = await self._db(simulation_user_ensure)
        registered = register_tool_schemas()  # for this run: forgotten at its end
        spawner: asyncio.Future[None] = asyncio.ensure_future(self._spawn())
        try:
            while not self._stop.is_set():
                if spawner.done() and not self._tasks:
                    break  # `once`: every session ended
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
                watched = {stopper, *(task for task in self._tasks if not task.done())}
                if not spawner.done():
                    watched.add(spawner)
                try:
                    await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
        finally:
            self._stop.set()
            everything = [spawner, *self._tasks]
            for task in everything:
                task.cancel()
            await asyncio.gather(*everything, return_exceptions=True)
            await self._withdraw_pending()
            await event_bus.drain(timeout=10)
            for name in registered:
                unregister_tool_schema(name)
            self.summary.elapsed_s = time.monotonic() - started
        if self._error is not None:
            raise self._error
        return self.summary

    # Plumbing

    async def _db(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run an ORM function in a worker thread; a stop waits for it rather than abandon it halfway."""
        task = asyncio.ensure_future(database_sync_to_async(fn, thread_sensitive=False)(**kwargs))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _withdraw_pending(self) -> None:
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        withdrawn = 0
        for call_id in sorted(self._waiting):
            try:
                await database_sync_to_async(approval_cancel, thread_sensitive=False)(
                    call_id=call_id, user=self._user
                )
            except ApplicationError as error:
                self.out(f"  could not withdraw {call_id}: {error.message}")
                continue
            withdrawn += 1
        self._waiting.clear()
        if withdrawn:
            self.summary.approvals["withdrawn"] += withdrawn
            self.out(f"Withdrew {withdrawn} pending approval request{'s' if withdrawn != 1 else ''}.")

    async def _emit(
        self, session: _Session, event: BaseEvent, *, cause: str | None | bool = True
    ) -> BaseEvent:
        """Publish `event` in the session's trace: caused by `cause` (by default the session's last event)."""
        if self._stop.is_set():
            raise _Stopped
        await self._pacer.wait()
        if self._stop.is_set():
            raise _Stopped
        event.correlation_id = session.correlation_id or event.event_id
        if cause is True:
            event.causation_id = session.last_event_id
        elif isinstance(cause, str):
            event.causation_id = cause
        event.actor = self.username
        await event_bus.publish(event)
        session.last_event_id = event.event_id
        self.summary.events[str(event.event_type)] += 1
        return event

    # Sessions

    async def _spawn(self) -> None:
        """Start a session whenever one of the `sessions` places at work is free."""
        while not self._stop.is_set():
            if self.options.once and self._started >= self.options.sessions:
                return
            while self._at_work >= self.options.sessions:
                self._room.clear()
                await self._room.wait()
            self._at_work += 1
            number = self._started
            self._started += 1
            task = asyncio.ensure_future(self._session_task(number))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _session_task(self, number: int) -> None:
        seed = self.options.seed
        # One generator per session, seeded from (seed, its number): a session's script is the same on
        # every run with that seed however the sessions interleave.
        rng = random.Random(f"{seed}:{number}") if seed is not None else random.Random()
        session = _Session(session_id=f"sim-{uuid.uuid4().hex[:12]}", rng=rng, context=_context(rng))
        try:
            await self._session(session)
            self._failures = 0
        except _Stopped:
            pass
        except Exception as error:
            self._failures += 1
            self.out(f"[{session.session_id}] session failed: {type(error).__name__}: {error}")
            if self._failures >= 3:  # the same trouble again and again (no database?): give up
                self._error = error
                self._stop.set()
            else:
                await asyncio.sleep(1.0)
        finally:
            if session.at_work:
                self._leave_work(session)

    def _leave_work(self, session: _Session) -> None:
        session.at_work = False
        self._at_work -= 1
        self._room.set()

    async def _session(self, session: _Session) -> None:
        rng = session.rng
        scenario = rng.choice(SCENARIOS)
        created = SessionCreatedEvent(
            session_id=session.session_id, system_prompt=scenario.system_prompt, source="simulator.sessions"
        )
        session.correlation_id = created.event_id
        await self._emit(session, created, cause=None)
        self.summary.sessions += 1
        turns = rng.choice((1, 1, 2, 2, 3))
        for turn in range(turns):
            if turn > 0:
                # The user reads the answer and types the next question.
                await asyncio.sleep(rng.uniform(0.5, 2.0) / max(1.0, self.options.rate / 5))
                if rng.random() < 0.25:
                    scenario = rng.choice(SCENARIOS)
            await self._turn(session, scenario, first=turn == 0)
            self.summary.turns += 1

    async def _turn(self, session: _Session, scenario: Scenario, *, first: bool) -> None:
        rng, context = session.rng, session.context
        prompt = rng.choice(scenario.prompts).format(amount_str=_money(context["amount"]), **context)
        asked = await self._emit(
            session,
            MessageAddedEvent(
                session_id=session.session_id,
                role="user",
                content_length=len(prompt),
                source="simulator.chat",
            ),
        )
        if first:
            self.out(f"[{session.session_id}] session started ({scenario.agent}): {prompt!r}")
        if session.agent != scenario.agent:
            if session.agent == TRIAGE:
                triage_start = time.monotonic()
                started = await self._emit(
                    session, self._agent_started(session, TRIAGE, prompt), cause=asked.event_id
                )
                await self._emit(
                    session,
                    self._agent_completed(session, TRIAGE, triage_start, True),
                    cause=started.event_id,
                )
                reason, confidence = scenario.switch_reason, rng.choice(("high", "high", "medium"))
            else:
                reason = f"Follow-up is outside {session.agent}'s scope"
                confidence = rng.choice(("medium", "low"))
            await self._emit(
                session,
                AgentSwitchedEvent(
                    session_id=session.session_id,
                    from_agent=session.agent,
                    to_agent=scenario.agent,
                    reason=reason,
                    confidence=confidence,
                    source="simulator.orchestrator",
                ),
            )
            session.agent = scenario.agent
        begun = time.monotonic()
        started = await self._emit(session, self._agent_started(session, scenario.agent, prompt))
        success = True
        refusal: str | None = None  # what the agent told the user after a call was not approved
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            risky = rng.random() < self.options.approval_share and self._may_ask()
            tool = rng.choice(scenario.risky if risky else scenario.tools)
            outcome = await self._call_tool(session, scenario, tool, cause=started.event_id)
            if outcome is False:
                success = False
            elif isinstance(outcome, str):
                refusal = outcome
                break  # the agent does not carry on with the plan a person refused
        if rng.random() < self.options.failure_share / 3:
            error_type, message = rng.choice(MODEL_ERRORS)
            await self._emit(
                session,
                AgentErrorOccurredEvent(
                    session_id=session.session_id,
                    agent_type=scenario.agent,
                    error_message=message,
                    error_type=error_type,
                    source="simulator.orchestrator",
                ),
                cause=started.event_id,
            )
            success = False
        done = await self._emit(
            session, self._agent_completed(session, scenario.agent, begun, success), cause=started.event_id
        )
        if refusal is not None:
            reply = refusal
        elif success:
            reply = rng.choice(scenario.replies)
        else:
            reply = "Sorry, I could not finish that; details are in the log."
        await self._emit(
            session,
            MessageAddedEvent(
                session_id=session.session_id,
                role="assistant",
                content_length=len(reply),
                agent_name=scenario.agent,
                source="simulator.chat",
            ),
            cause=done.event_id,
        )

    @staticmethod
    def _agent_started(session: _Session, agent: str, prompt: str) -> BaseEvent:
        return AgentProcessingStartedEvent(
            session_id=session.session_id, agent_type=agent, message=prompt, source="simulator.orchestrator"
        )

    @staticmethod
    def _agent_completed(session: _Session, agent: str, since: float, success: bool) -> BaseEvent:
        return AgentProcessingCompletedEvent(
            session_id=session.session_id,
            agent_type=agent,
            duration_ms=round((time.monotonic() - since) * 1000, 1),
            success=success,
            source="simulator.orchestrator",
        )

    # Tools

    async def _call_tool(
        self, session: _Session, scenario: Scenario, tool: Tool, *, cause: str
    ) -> bool | str:
        """Request one tool call, hold it for approval if risky, run it or not: False if it failed,
        True if it ran, or what the agent told the user when the call was not approved (see _refused)."""
        rng = session.rng
        arguments = tool.arguments(rng, session.context)
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        requested = await self._emit(
            session,
            ToolExecutionRequestedEvent(
                session_id=session.session_id,
                tool_name=tool.name,
                arguments=arguments,
                call_id=call_id,
                agent=scenario.agent,
                source="simulator.tool_executor",
            ),
            cause=cause,
        )
        if tool.reason is not None:
            decision = await self._hold(
                session, scenario, tool, call_id, arguments, causation_id=requested.event_id
            )
            if not decision.approved:
                error_type, message = NOT_RUN.get(decision.status, ("ToolCallRejected", decision.status))
                if decision.comment:
                    message = f"{message}: {decision.comment}"
                await self._emit(
                    session,
                    ToolExecutionFailedEvent(
                        session_id=session.session_id,
                        tool_name=tool.name,
                        call_id=call_id,
                        error_message=message,
                        error_type=error_type,
                        agent=scenario.agent,
                        source="simulator.tool_executor",
                        data={"executed": False, "approval_status": decision.status},
                    ),
                    cause=requested.event_id,
                )
                self.summary.tools["not_run"] += 1
                return await self._refused(session, scenario, tool, decision, message)
            arguments = decision.arguments  # the edited ones after an EDIT
        return await self._run_tool(session, scenario, tool, call_id, arguments, cause=requested.event_id)

    async def _refused(
        self, session: _Session, scenario: Scenario, tool: Tool, decision: Decision, why: str
    ) -> str:
        """The agent's reaction to a call that was not approved: it tells the user, then either stops
        the turn or takes a path that needs no approval (a safe tool); returns what it told the user."""
        rng = session.rng
        action = tool.name.replace("_", " ")
        alternative = rng.choice(scenario.tools) if scenario.tools and rng.random() < 0.5 else None
        if alternative is None:
            text, outcome = STOPPED_REPLY.format(action=action, why=why), "stopped"
        else:
            text = OTHER_PATH_REPLY.format(action=action, why=why, tool=alternative.name)
            outcome = "other_path"
        told = await self._emit(
            session,
            MessageAddedEvent(
                session_id=session.session_id,
                role="assistant",
                content_length=len(text),
                agent_name=scenario.agent,
                source="simulator.chat",
                data={"outcome": outcome, "call_id": decision.call_id, "approval_status": decision.status},
            ),
        )
        self.summary.tools[outcome] += 1
        self.out(f"[{session.session_id}] {scenario.agent}: {text}")
        if alternative is not None:
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            arguments = alternative.arguments(rng, session.context)
            requested = await self._emit(
                session,
                ToolExecutionRequestedEvent(
                    session_id=session.session_id,
                    tool_name=alternative.name,
                    arguments=arguments,
                    call_id=call_id,
                    agent=scenario.agent,
                    source="simulator.tool_executor",
                ),
                cause=told.event_id,
            )
            await self._run_tool(session, scenario, alternative, call_id, arguments, cause=requested.event_id)
        return text

    async def _run_tool(
        self, session: _Session, scenario: Scenario, tool: Tool, call_id: str, arguments: Args, *, cause: str
    ) -> bool:
        rng = session.rng
        duration_ms = round(rng.lognormvariate(5.5, 0.8), 1)  # a few hundred ms, sometimes seconds
        if tool.errors and rng.random() < self.options.failure_share:
            error_type, message = rng.choice(tool.errors)
            await self._emit(
                session,
                ToolExecutionFailedEvent(
                    session_id=session.session_id,
                    tool_name=tool.name,
                    call_id=call_id,
                    error_message=message,
                    error_type=error_type,
                    duration_ms=duration_ms,
                    agent=scenario.agent,
                    source="simulator.tool_executor",
                    data={"executed": True, "arguments": arguments},
                ),
                cause=cause,
            )
            self.summary.tools["failed"] += 1
            if tool.reason is not None:
                self.out(f"[{session.session_id}] {tool.name} failed: {error_type}: {message}")
            return False
        await self._emit(
            session,
            ToolExecutionCompletedEvent(
                session_id=session.session_id,
                tool_name=tool.name,
                call_id=call_id,
                result=tool.result(rng, arguments),
                duration_ms=duration_ms,
                agent=scenario.agent,
                source="simulator.tool_executor",
                data={"arguments": arguments},
            ),
            cause=cause,
        )
        self.summary.tools["completed"] += 1
        return True

    def _may_ask(self) -> bool:
        """Whether the approval queue has room for one more request (say so when it fills or frees)."""
        full = len(self._waiting) >= self.options.max_waiting
        if full != self._queue_full:
            self._queue_full = full
            self.out(
                f"  {len(self._waiting)} approval requests are waiting: agents pick tools that need no "
                "approval until some are decided"
                if full
                else "  the approval queue has room again"
            )
        return not full

    async def _hold(
        self,
        session: _Session,
        scenario: Scenario,
        tool: Tool,
        call_id: str,
        arguments: Args,
        *,
        causation_id: str | None = None,
    ) -> Decision:
        """Ask for approval (caused by the call's `tool_execution_requested`) and wait for the decision;
        the session waits, the others go on."""
        assert tool.reason is not None
        if self._stop.is_set():
            raise _Stopped
        await self._pacer.wait()  # the request's tool_approval_required event takes a slot too
        self._waiting.add(call_id)
        await self._db(
            approval_request,
            call_id=call_id,
            session_id=session.session_id,
            tool_name=tool.name,
            arguments=arguments,
            reason=tool.reason(arguments),
            agent=scenario.agent,
            correlation_id=session.correlation_id,
            causation_id=causation_id,
            timeout_s=self.options.approval_timeout,
            requested_by=self._user,
        )
        self.summary.events["tool_approval_required"] += 1
        self.summary.approvals["requested"] += 1
        self.out(
            f"[{session.session_id}] approval requested: {tool.name} {_compact(arguments)} "
            f"(call_id {call_id}, {self.options.approval_timeout:g} s to decide)"
        )
        # Step aside while a person decides: another session takes this one's place at work.
        self._leave_work(session)
        decision = await self._wait_for(call_id)
        self._waiting.discard(call_id)
        # Back to work at once (for a moment more than `sessions` may be at work): the person who decided
        # sees the outcome now rather than when another session ends.
        session.at_work = True
        self._at_work += 1
        self.summary.approvals[decision.status] += 1
        who = f" by {decision.decided_by}" if decision.decided_by else ""
        if decision.status == "edited":
            outcome = f"runs with {_compact(decision.arguments)}"
        elif decision.approved:
            outcome = "runs"
        else:
            outcome = "not run" + (f" ({decision.comment})" if decision.comment else "")
        self.out(f"[{session.session_id}] {tool.name} {decision.status}{who} -> {outcome}")
        return decision

    async def _wait_for(self, call_id: str) -> Decision:
        """The decision on `call_id`: woken by the bus, or found by re-reading the request every poll."""
        while True:
            if self._stop.is_set():
                raise _Stopped
            waiter = asyncio.ensure_future(await_decision(call_id, timeout=self.options.poll_interval))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
            if not waiter.done():
                waiter.cancel()
                raise _Stopped
            decision = waiter.result()
            if decision is not None:
                return decision


def _compact(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"
