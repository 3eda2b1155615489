"""The agent-side HITL client, kept importable here: it lives in the `eventbus_client` distribution
(`pip install ./client`), which agent processes install without this server."""

from eventbus_client.hitl import (
    ApprovalDecision,
    ApprovalRejected,
    ApprovalTimeout,
    HITLClient,
    HITLError,
    HITLUnavailable,
    require_approval,
)

__all__ = [
    "ApprovalDecision",
    "ApprovalRejected",
    "ApprovalTimeout",
    "HITLClient",
    "HITLError",
    "HITLUnavailable",
    "require_approval",
]
