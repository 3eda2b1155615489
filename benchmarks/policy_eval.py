"""Evaluating the approval policy: 1,000 compiled rules against one request, in process, no database.

The rules (hitl.models.ApprovalRule, unsaved) are compiled once with hitl.policies.compile_rule, as
the server's RuleSet does; then `hitl.policies.evaluate` runs N times (default 2,000, after 100 warm-up
runs) for a request that only the last rule matches, so every rule is tried: most fail on their tool
glob (`tool_<i>_*`), one in ten has the request's tool and a CEL condition that is false for it (so the
condition runs), and the last rule (tool "*", a CEL condition that holds) decides.

Goal: under 1 ms at the median. Printed last: the median divided by the goal (below 1 is met).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import percentile, positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventbus_project.settings")

GOAL_MS = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rules", type=positive_int, default=1000)
    parser.add_argument("--runs", type=positive_int, default=2000)
    args = parser.parse_args()

    import django

    django.setup()
    from hitl.models import ApprovalRule
    from hitl.policies import compile_rule, evaluate

    rules = []
    for index in range(args.rules - 1):
        if index % 10 == 0:
            rule = ApprovalRule(
                id=index + 1,
                name=f"r{index}",
                tool="write_*",
                condition=f'arguments.size > {1000 + index} && agent == "nobody"',
                action="reject",
            )
        else:
            rule = ApprovalRule(id=index + 1, name=f"r{index}", tool=f"tool_{index}_*", action="approve")
        rules.append(rule)
    rules.append(
        ApprovalRule(
            id=args.rules,
            name="last",
            tool="*",
            condition='arguments.path.startsWith("/tmp/")',
            action="approve",
        )
    )
    started = time.perf_counter()
    compiled = [compile_rule(rule) for rule in rules]
    compile_ms = (time.perf_counter() - started) * 1000
    request: dict[str, Any] = {
        "tool_name": "write_file",
        "arguments": {"path": "/tmp/report.txt", "size": 10, "content": "x" * 200},
        "agent": "coder",
        "session_id": "s-1",
        "reason": "save the report",
    }
    for _ in range(100):
        evaluate(compiled, **request)
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        outcome = evaluate(compiled, **request)
        times.append((time.perf_counter() - started) * 1000)
        assert outcome.label == "last@1", outcome
    p50 = statistics.median(times)
    print(
        f"{args.rules} rules ({sum(1 for r in rules if r.condition)} with CEL conditions), compiled in "
        f"{compile_ms:.0f} ms; evaluate p50 {p50 * 1000:.0f} µs, p95 {percentile(times, 95) * 1000:.0f} µs "
        f"(goal < {GOAL_MS:g} ms: {'met' if p50 < GOAL_MS else 'MISSED'})"
    )
    print(f"p50 / goal: {p50 / GOAL_MS:.3f}")


if __name__ == "__main__":
    main()
