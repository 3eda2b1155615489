"""The agent side of the agent event bus: what an agent runtime installs (`pip install ./client`).

No Django and none of the server's code: httpx and the standard library only (integrations import their
framework when used).
"""

from .hitl import (
    ApprovalDecision,
    ApprovalRejected,
    ApprovalTimeout,
    HITLClient,
    HITLError,
    HITLUnavailable,
    require_approval,
)
from .publisher import AsyncEventPublisher, EventPublisher
from .verify import ExportVerificationError, verify_export

__version__ = "0.1.0"

__all__ = [
    "ApprovalDecision",
    "ApprovalRejected",
    "ApprovalTimeout",
    "AsyncEventPublisher",
    "EventPublisher",
    "ExportVerificationError",
    "HITLClient",
    "HITLError",
    "HITLUnavailable",
    "require_approval",
    "verify_export",
]
