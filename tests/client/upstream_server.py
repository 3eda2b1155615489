"""A tiny MCP server (the SDK's MCPServer, stdio) that tests/client/test_mcp_gate.py puts behind the gate.

Each tool call is appended as a JSON line to $UPSTREAM_CALL_LOG when set, so a test can tell whether
the upstream ran a call at all.
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("upstream-test", instructions="A test server for the gate.")


def _log(tool: str, arguments: dict[str, object]) -> None:
    path = os.environ.get("UPSTREAM_CALL_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_file(path: str) -> str:
    """Read a (pretend) file."""
    _log("read_file", {"path": path})
    return f"contents of {path}"


@server.tool(annotations=ToolAnnotations(destructive_hint=True, read_only_hint=False))
def delete_records(table: str, where: str = "") -> str:
    """Delete rows of a table."""
    _log("delete_records", {"table": table, "where": where})
    return f"deleted from {table} where {where or 'true'}"


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """Say the text back."""
    _log("echo", {"text": text, "times": times})
    return " ".join([text] * times)


@server.tool()
def fail(reason: str) -> str:
    """Always fails (a tool error, isError: true)."""
    _log("fail", {"reason": reason})
    raise ValueError(reason)


@server.tool()
def crash() -> str:
    """The server process exits at once, without answering."""
    _log("crash", {})
    sys.stdout.flush()
    os._exit(3)


@server.resource("memo://greeting", mime_type="text/plain")
def greeting() -> str:
    """A fixed text."""
    return "hello from upstream"


@server.resource("memo://notes/{name}")
def note(name: str) -> str:
    """A note by name."""
    return f"note {name}"


@server.prompt()
def review(subject: str) -> str:
    """Ask for a review."""
    return f"Please review {subject}."


if __name__ == "__main__":
    server.run()
