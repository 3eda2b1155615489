"""The project's settings with tools' risk levels, for the desk's browser tests
(tests/e2e/test_browser_hitl_desk.py): one tool rated by HITL_TOOL_RISK, one by its schema's x-risk."""

from eventbus_project.settings import *  # noqa: F403

HITL_TOOL_RISK = {"delete_*": "high", "deploy_*": "medium", "send_email": "low"}
# No HITL_TOOL_RISK entry names wipe_disk: its schema's "x-risk" rates it.
HITL_TOOL_SCHEMAS = {"wipe_disk": {"type": "object", "x-risk": "high"}}
