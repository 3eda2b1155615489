"""An agent runtime in a process of its own: asks for approval of one tool call and waits for it.

Run by the browser tests as `python -m tests.e2e.agent_wait --url URL --call-id ID --tool NAME
--arguments JSON` with the agent's API token in $AGENT_TOKEN. Like a real agent it has no Django: only
hitl.client. When a person has decided, it prints the decision as one line of JSON and exits 0 (on an
error of the call: the error as JSON, exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from hitl.client import HITLClient, HITLError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--call-id", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--arguments", required=True, help="the proposed arguments, a JSON object")
    parser.add_argument("--session-id", default="browser-test")
    parser.add_argument("--reason", default="")
    parser.add_argument("--agent", default="agent1")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="the request's own deadline")
    options = parser.parse_args()

    client = HITLClient(options.url, os.environ["AGENT_TOKEN"], retries=2, poll_wait=30)
    try:
        decision = client.request_approval_sync(
            tool_name=options.tool,
            arguments=json.loads(options.arguments),
            session_id=options.session_id,
            call_id=options.call_id,
            reason=options.reason,
            agent=options.agent,
            timeout_s=options.timeout_s,
        )
    except HITLError as error:
        print(json.dumps({"error": str(error), "code": error.code}), flush=True)
        return 2
    print(json.dumps(dataclasses.asdict(decision)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
