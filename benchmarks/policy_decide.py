"""Approval policies over HTTP: how soon an agent hears a decision a rule made, against one a person made.

In a fresh database (a temporary SQLite file by default; `--database postgres`: a new database on the
PostgreSQL server), migrated, with a Daphne serving the project, tokens from `manage.py
create_api_token` (agent: --group agents, operator: --group operators), and `--rules` rules (default 50)
created through `POST /api/hitl/rules/` by the operator: one approves `read_*`, the others match other
tools (some with CEL conditions). Then N rounds (default 200, after 10 warm-up rounds), on keep-alive
`http.client` connections:

  1. policy: the agent POSTs /api/hitl/requests/ for `read_file`; the answer is the decided request
     (status approved, channel policy, rule "approve-reads@1"). Timed: the POST's round trip.
  2. person: the agent POSTs a request for `write_file` that no rule matches, and the operator POSTs its
     decision as soon as the request exists. Timed: from the request POST to the decision's answer.

Goal: the policy's decision answered in under 10 ms at the median. Printed last: person / policy (how
many times faster the agent hears a rule's decision than the quickest human one).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from typing import Any

from _common import (
    DEFAULT_POSTGRES_SERVER,
    api_token,
    daphne,
    manage,
    percentile,
    positive_int,
    postgres_database,
    sqlite_file,
)

WARMUP_ROUNDS = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Connection:
    """A keep-alive JSON connection with a Bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload)
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None


def make_rules(operator: Connection, count: int) -> None:
    status, answer = operator.send(
        "POST", "/api/hitl/rules/", {"name": "approve-reads", "tool": "read_*", "action": "approve"}
    )
    assert status == 201, answer
    for index in range(count - 1):
        body: dict[str, Any] = {
            "name": f"other-{index}",
            "tool": f"tool_{index}_*",
            "action": ["approve", "reject", "require"][index % 3],
            "priority": index % 7,
        }
        if index % 4 == 0:
            body["condition"] = f'has(arguments.n) && arguments.n > {index} && agent.startsWith("bench")'
        status, answer = operator.send("POST", "/api/hitl/rules/", body)
        assert status == 201, answer


def measure(port: int, agent_token: str, operator_token: str, rounds: int, rules: int) -> dict[str, Any]:
    agent = Connection(port, agent_token)
    operator = Connection(port, operator_token)
    make_rules(operator, rules)
    policy: list[float] = []
    person: list[float] = []
    for index in range(WARMUP_ROUNDS + rounds):
        body = {
            "session_id": "bench",
            "call_id": f"policy-{index}",
            "tool_name": "read_file",
            "arguments": {"path": f"/tmp/{index}"},
            "agent": "bench-agent",
        }
        started = time.perf_counter()
        status, answer = agent.send("POST", "/api/hitl/requests/", body)
        took = time.perf_counter() - started
        assert status == 201 and answer["status"] == "approved" and answer["rule"] == "approve-reads@1", (
            answer
        )
        body = {**body, "call_id": f"person-{index}", "tool_name": "write_file"}
        started = time.perf_counter()
        status, answer = agent.send("POST", "/api/hitl/requests/", body)
        assert status == 201 and answer["status"] == "pending", answer
        status, answer = operator.send(
            "POST", f"/api/hitl/requests/person-{index}/decision/", {"decision": "APPROVE"}
        )
        person_took = time.perf_counter() - started
        assert status == 200 and answer["status"] == "approved", answer
        if index >= WARMUP_ROUNDS:
            policy.append(took * 1000)
            person.append(person_took * 1000)
    return {
        "policy_p50": statistics.median(policy),
        "policy_p95": percentile(policy, 95),
        "person_p50": statistics.median(person),
        "person_p95": percentile(person, 95),
    }


def run(database: str, server: str, rounds: int, rules: int) -> dict[str, Any]:
    if database == "postgres":
        context = postgres_database(server, f"bench_policy_{os.getpid()}")
    else:
        context = sqlite_file("bench_policy_")
    with context as target:
        url = target if database == "postgres" else f"sqlite:///{target}"
        env = dict(os.environ, DATABASE_URL=url, EVENTS_LOG_LEVEL="WARNING")
        env.pop("REDIS_URL", None)
        manage(env, "migrate", "--noinput", "-v0")
        agent_token = api_token(env, "bench-agent", "agents")
        operator_token = api_token(env, "bench-operator", "operators")
        with daphne(env, log) as (port, _pid):
            return measure(port, agent_token, operator_token, rounds, rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=positive_int, default=200, help="timed rounds (200)")
    parser.add_argument("--rules", type=positive_int, default=50, help="rules in the policy (50)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-server", default=DEFAULT_POSTGRES_SERVER)
    args = parser.parse_args()
    figures = run(args.database, args.postgres_server.rstrip("/"), args.rounds, args.rules)
    print(
        f"{args.database}, {args.rules} rules, {args.rounds} rounds\n"
        f"  decided by a rule:            p50 {figures['policy_p50']:.2f} ms, "
        f"p95 {figures['policy_p95']:.2f} ms "
        f"(goal < 10 ms: {'met' if figures['policy_p50'] < 10 else 'MISSED'})\n"
        f"  decided by a person at once:  p50 {figures['person_p50']:.2f} ms, "
        f"p95 {figures['person_p95']:.2f} ms"
    )
    print(f"person / policy: {figures['person_p50'] / figures['policy_p50']:.2f}")


if __name__ == "__main__":
    main()
